// Optimizers over arena slices, and the functional clipping helpers.
#include "common.hpp"
#include "nerve/layer.hpp"
#include "nerve/optimizer.hpp"

namespace nerve::bind {

namespace {

// An optimizer plus the arenas its spans point into, kept alive with it.
struct BoundOptimizer {
  Optimizer opt;
  std::vector<std::shared_ptr<ParamArena>> arenas;
  BoundOptimizer(OptKind kind, const OptHyper& h) : opt(kind, h) {}
};

// (arena, offset, size, decay) tuples -> spans; adjacent slices of one arena
// with the same decay flag merge into one span, so a model's parameters are
// usually one or two long runs for the fused kernel.
std::vector<ParamSpan> to_spans(const py::list& items, std::vector<std::shared_ptr<ParamArena>>& keep,
                                bool merge) {
  std::vector<ParamSpan> spans;
  keep.clear();
  for (const auto& item : items) {
    auto t = item.cast<py::tuple>();
    require(t.size() == 4, "each parameter slice is (arena, offset, size, decay)");
    auto arena = t[0].cast<std::shared_ptr<ParamArena>>();
    const Index offset = t[1].cast<Index>(), size = t[2].cast<Index>();
    const bool decay = t[3].cast<bool>();
    require(arena && offset >= 0 && size >= 0 && offset + size <= arena->size(),
            "parameter slice outside its arena");
    keep.push_back(arena);
    ParamSpan s{arena->values.data() + offset, arena->grads.data() + offset, size, decay};
    if (merge && !spans.empty()) {
      ParamSpan& last = spans.back();
      if (last.p + last.n == s.p && last.g + last.n == s.g && last.decay == s.decay) {
        last.n += s.n;
        continue;
      }
    }
    spans.push_back(s);
  }
  return spans;
}

}  // namespace

void bind_optim(py::module_& m) {
  py::enum_<OptKind>(m, "OptKind")
      .value("SGD", OptKind::SGD)
      .value("Adagrad", OptKind::Adagrad)
      .value("RMSprop", OptKind::RMSprop)
      .value("Adadelta", OptKind::Adadelta)
      .value("Adam", OptKind::Adam)
      .value("AdamW", OptKind::AdamW)
      .value("Adamax", OptKind::Adamax)
      .value("NAdam", OptKind::NAdam)
      .value("Ftrl", OptKind::Ftrl);

  py::class_<OptHyper>(m, "OptHyper")
      .def(py::init<>())
      .def_readwrite("lr", &OptHyper::lr)
      .def_readwrite("weight_decay", &OptHyper::weight_decay)
      .def_readwrite("momentum", &OptHyper::momentum)
      .def_readwrite("dampening", &OptHyper::dampening)
      .def_readwrite("nesterov", &OptHyper::nesterov)
      .def_readwrite("beta1", &OptHyper::beta1)
      .def_readwrite("beta2", &OptHyper::beta2)
      .def_readwrite("eps", &OptHyper::eps)
      .def_readwrite("amsgrad", &OptHyper::amsgrad)
      .def_readwrite("momentum_decay", &OptHyper::momentum_decay)
      .def_readwrite("lr_decay", &OptHyper::lr_decay)
      .def_readwrite("initial_accumulator_value", &OptHyper::initial_accumulator_value)
      .def_readwrite("alpha", &OptHyper::alpha)
      .def_readwrite("centered", &OptHyper::centered)
      .def_readwrite("learning_rate_power", &OptHyper::learning_rate_power)
      .def_readwrite("ftrl_initial_accumulator", &OptHyper::ftrl_initial_accumulator)
      .def_readwrite("l1", &OptHyper::l1)
      .def_readwrite("l2", &OptHyper::l2)
      .def_readwrite("l2_shrinkage", &OptHyper::l2_shrinkage)
      .def_readwrite("ftrl_beta", &OptHyper::ftrl_beta)
      .def_readwrite("clipvalue", &OptHyper::clipvalue)
      .def_readwrite("clipnorm", &OptHyper::clipnorm)
      .def_readwrite("global_clipnorm", &OptHyper::global_clipnorm);

  m.def("validate_hyper", &validate_hyper, py::arg("kind"), py::arg("hyper"));
  m.def("state_slot_names", &state_slot_names, py::arg("kind"), py::arg("hyper"));

  py::class_<BoundOptimizer>(m, "Optimizer")
      .def(py::init([](OptKind kind, const OptHyper& h) {
             validate_hyper(kind, h);
             return std::make_unique<BoundOptimizer>(kind, h);
           }),
           py::arg("kind"), py::arg("hyper"))
      .def(
          "bind",
          [](BoundOptimizer& b, const py::list& slices, bool merge) {
            auto spans = to_spans(slices, b.arenas, merge);
            b.opt.bind(spans);
          },
          py::arg("slices"), py::arg("merge") = true)
      .def("step",
           [](BoundOptimizer& b) {
             py::gil_scoped_release nogil;
             b.opt.step();
           })
      .def_property(
          "hyper", [](BoundOptimizer& b) { return b.opt.hyper(); },
          [](BoundOptimizer& b, const OptHyper& h) {
            validate_hyper(b.opt.kind(), h);
            b.opt.hyper() = h;
          })
      .def_property(
          "lr", [](BoundOptimizer& b) { return b.opt.hyper().lr; },
          [](BoundOptimizer& b, double lr) {
            OptHyper h = b.opt.hyper();
            h.lr = lr;
            validate_hyper(b.opt.kind(), h);
            b.opt.hyper().lr = lr;
          })
      .def_property(
          "iterations", [](BoundOptimizer& b) { return b.opt.iterations; },
          [](BoundOptimizer& b, std::int64_t t) {
            require(t >= 0, "iterations must be >= 0");
            b.opt.iterations = t;
          })
      .def_property(
          "nadam_mu_product", [](BoundOptimizer& b) { return b.opt.nadam_mu_product; },
          [](BoundOptimizer& b, double v) { b.opt.nadam_mu_product = v; })
      .def_property_readonly("slot_names", [](BoundOptimizer& b) { return b.opt.slot_names; })
      .def_property_readonly("total_size", [](BoundOptimizer& b) { return b.opt.total_size(); })
      .def_property_readonly("span_count", [](BoundOptimizer& b) { return b.opt.spans().size(); })
      .def(
          "slot",
          [](py::object self, std::size_t i) {
            auto& b = self.cast<BoundOptimizer&>();
            require(i < b.opt.slots.size(), "no state slot " + std::to_string(i));
            AlignedBuffer& buf = b.opt.slots[i];
            return py::array_t<float>({static_cast<py::ssize_t>(buf.size())},
                                      {static_cast<py::ssize_t>(sizeof(float))}, buf.data(), self);
          },
          py::arg("index"), "Zero-copy view of state slot `index` (concatenated over the spans)");

  m.def(
      "clip_grad_value",
      [](const py::list& slices, double clip_value) {
        std::vector<std::shared_ptr<ParamArena>> keep;
        auto spans = to_spans(slices, keep, false);
        require(clip_value >= 0, "clip_value must be >= 0, got " + std::to_string(clip_value));
        clip_grad_value(spans, clip_value);
      },
      py::arg("slices"), py::arg("clip_value"));
  m.def(
      "clip_grad_norm",
      [](const py::list& slices, double max_norm) {
        std::vector<std::shared_ptr<ParamArena>> keep;
        auto spans = to_spans(slices, keep, false);
        require(max_norm >= 0, "max_norm must be >= 0, got " + std::to_string(max_norm));
        return clip_grad_norm(spans, max_norm);
      },
      py::arg("slices"), py::arg("max_norm"));
}

// Exposed for bind_layers (Network.train_step takes the optimizer).
Optimizer& unwrap_optimizer(py::object o) { return o.cast<BoundOptimizer&>().opt; }

}  // namespace nerve::bind
