// Loss registry, standalone loss kernels and metrics.
#include "common.hpp"
#include "nerve/loss.hpp"

namespace nerve::bind {

namespace {
// Targets arrive already normalised by the Python layer: labels as int64 1-D,
// values as float32 with pred's shape (distillation passes both).
Target make_target(const py::object& labels, const py::object& values, Index rows, Index cols) {
  Target t;
  if (!labels.is_none()) {
    auto lab = labels.cast<py::array>();
    require(py::isinstance<LabelArray>(lab) && lab.ndim() == 1 && (lab.flags() & py::array::c_style),
            "labels must be a C-contiguous int64 array of shape (batch,)");
    // Messages are built only on failure: a training step must not allocate.
    if (lab.shape(0) != rows)
      throw ValueError("labels: expected " + std::to_string(rows) + " labels, got " +
                       std::to_string(lab.shape(0)));
    t.labels = static_cast<const std::int64_t*>(lab.data());
  }
  if (!values.is_none()) {
    auto val = values.cast<py::array>();
    Index r, c;
    matrix_shape(val, r, c, "target");
    if (r != rows || c != cols)
      throw ValueError("target: expected shape (" + std::to_string(rows) + ", " +
                       std::to_string(cols) + "), got " + shape_str(val));
    t.values = fptr(val);
  }
  return t;
}
}  // namespace

Target target_from_python(const py::object& labels, const py::object& values, Index rows, Index cols) {
  return make_target(labels, values, rows, cols);
}

void bind_loss(py::module_& m) {
  py::class_<Loss>(m, "Loss")
      .def_property_readonly("kind", [](const Loss& l) { return static_cast<int>(l.kind); })
      .def_readonly("class_weight", &Loss::class_weight);

  m.def("loss_registry", [] {
    py::list rows;
    for (const LossInfo& info : loss_registry()) {
      py::dict d;
      d["name"] = info.name;
      d["aliases"] = info.aliases;
      py::dict params;
      for (const auto& p : info.params) params[py::str(p.first)] = p.second;
      d["params"] = params;
      d["classification"] = info.classification;
      d["class_weight"] = info.class_weight;
      rows.append(d);
    }
    return rows;
  });

  m.def("margin_lambda", &margin_lambda, py::arg("loss"), py::arg("iter"),
        "lambda of the large_margin_softmax / sphereface annealing at iteration `iter` (network step + 1)");

  m.def("make_loss", &make_loss, py::arg("name"), py::arg("params"),
        py::arg("class_weight") = std::vector<float>{});

  m.def(
      "loss_forward_backward",
      [](const Loss& loss, py::array pred, py::object labels, py::object values, bool want_grad) {
        Index rows, cols;
        matrix_shape(pred, rows, cols, "pred");
        Target t = make_target(labels, values, rows, cols);
        validate_target(loss, t, rows, cols);
        py::object grad = py::none();
        float* g = nullptr;
        if (want_grad) {
          FloatArray ga(std::vector<py::ssize_t>(pred.shape(), pred.shape() + pred.ndim()));
          g = ga.mutable_data();
          grad = ga;
        }
        const float* p = fptr(pred);
        double value;
        {
          py::gil_scoped_release nogil;
          value = loss_forward_backward(loss, p, t, rows, cols, g);
        }
        return py::make_tuple(value, grad);
      },
      py::arg("loss"), py::arg("pred"), py::arg("labels"), py::arg("values"), py::arg("want_grad"));

  m.def(
      "count_correct",
      [](py::array pred, py::object labels, py::object values, bool logits) {
        Index rows, cols;
        matrix_shape(pred, rows, cols, "pred");
        Target t = make_target(labels, values, rows, cols);
        if (t.labels) {
          for (Index i = 0; i < rows; ++i)
            require(t.labels[i] >= 0 && t.labels[i] < std::max<Index>(cols, 2),
                    "label " + std::to_string(t.labels[i]) + " at row " + std::to_string(i) +
                        " is outside [0, " + std::to_string(std::max<Index>(cols, 2)) + ")");
        }
        return logits ? count_correct_logit_threshold(fptr(pred), t, rows, cols)
                      : count_correct(fptr(pred), t, rows, cols);
      },
      py::arg("pred"), py::arg("labels"), py::arg("values"), py::arg("logits") = false,
      "Rows classified correctly; logits=True: one output column is a logit (threshold 0)");
}

}  // namespace nerve::bind
