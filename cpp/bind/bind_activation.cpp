// Activation registry and standalone kernels (nv.activations.get(...).forward/backward).
#include "common.hpp"
#include "nerve/activation.hpp"

namespace nerve::bind {

void bind_activation(py::module_& m) {
  py::class_<Activation>(m, "Activation")
      .def_property_readonly("kind", [](const Activation& a) { return static_cast<int>(a.kind); })
      .def_property_readonly("name", [](const Activation& a) { return activation_info(a.kind).name; })
      .def_property_readonly("width_factor", [](const Activation& a) { return activation_info(a.kind).width_factor; })
      .def_readonly("alpha", &Activation::alpha)
      .def_readonly("beta", &Activation::beta)
      .def_readonly("threshold", &Activation::threshold)
      .def_readonly("lower", &Activation::lower)
      .def_readonly("upper", &Activation::upper)
      .def_readonly("straight_through", &Activation::straight_through)
      .def_readonly("approximate_tanh", &Activation::approximate_tanh)
      .def_property_readonly("passes_gradient", &activation_backward_is_identity,
                             "True where the derivative is 1 everywhere (dz = dy)");

  m.def("activation_registry", [] {
    py::list rows;
    for (const ActInfo& info : activation_registry()) {
      py::dict d;
      d["name"] = info.name;
      d["aliases"] = info.aliases;
      py::dict params;
      for (const auto& p : info.params) params[py::str(p.name)] = p.default_value;
      d["params"] = params;
      d["rowwise"] = info.rowwise;
      d["width_factor"] = info.width_factor;
      d["grad_from_output"] = info.grad_from == GradFrom::Output;
      d["formula"] = info.formula;
      rows.append(d);
    }
    return rows;
  });

  m.def("make_activation", &make_activation, py::arg("name"), py::arg("params"));

  m.def(
      "activation_forward",
      [](const Activation& a, py::array x, bool training, std::uint64_t seed, std::uint64_t stream,
         std::uint64_t step) {
        Index rows, cols;
        matrix_shape(x, rows, cols, "x");
        const int wf = activation_info(a.kind).width_factor;
        FloatArray y(std::vector<py::ssize_t>{rows, cols * wf});
        ActContext ctx{training, seed, stream, step};
        // The kernel only writes z when a bias is given; none is here.
        float* z = const_cast<float*>(fptr(x));
        float* out = y.mutable_data();
        {
          py::gil_scoped_release nogil;
          activation_forward(a, z, nullptr, out, rows, cols, ctx);
        }
        return y;
      },
      py::arg("act"), py::arg("x"), py::arg("training") = false, py::arg("seed") = 0,
      py::arg("stream") = 0, py::arg("step") = 0);

  m.def(
      "activation_backward",
      [](const Activation& a, py::array x, py::array y, py::array dy, bool training,
         std::uint64_t seed, std::uint64_t stream, std::uint64_t step) {
        Index rows, cols, yr, yc, dr, dc;
        matrix_shape(x, rows, cols, "x");
        matrix_shape(y, yr, yc, "y");
        matrix_shape(dy, dr, dc, "dy");
        const int wf = activation_info(a.kind).width_factor;
        require(yr == rows && yc == cols * wf && dr == rows && dc == cols * wf,
                "activation backward: dy must have shape (" + std::to_string(rows) + ", " +
                    std::to_string(cols * wf) + "), got " + shape_str(dy));
        FloatArray dx(std::vector<py::ssize_t>{rows, cols});
        ActContext ctx{training, seed, stream, step};
        const float *xp = fptr(x), *yp = fptr(y), *dyp = fptr(dy);
        float* out = dx.mutable_data();
        {
          py::gil_scoped_release nogil;
          activation_backward(a, xp, yp, dyp, out, rows, cols, ctx);
        }
        return dx;
      },
      py::arg("act"), py::arg("x"), py::arg("y"), py::arg("dy"), py::arg("training") = false,
      py::arg("seed") = 0, py::arg("stream") = 0, py::arg("step") = 0);
}

}  // namespace nerve::bind
