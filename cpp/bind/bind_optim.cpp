// Optimizers over arena slices, and the functional clipping helpers.
#include "common.hpp"
#include "nerve/layer.hpp"
#include "nerve/optim/adam.hpp"
#include "nerve/optimizer.hpp"

namespace nerve::bind {

namespace {

// An optimizer plus the arenas its spans point into, kept alive with it.
struct BoundOptimizer {
  Optimizer opt;
  std::vector<std::shared_ptr<ParamArena>> arenas;
  BoundOptimizer(const HyperValues& h, const Clipping& c) : opt(h, c) {}
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
    require(arena != nullptr, "parameter slice without an arena");
    check_slice(arena->size(), offset, size, "parameter slice");
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

// name -> value pairs from a Python dict (bools as 0/1).
std::vector<std::pair<std::string, double>> to_pairs(const py::dict& values) {
  std::vector<std::pair<std::string, double>> out;
  for (const auto& kv : values) out.emplace_back(kv.first.cast<std::string>(), kv.second.cast<double>());
  return out;
}

py::dict hyper_dict(const HyperValues& h) {
  py::dict d;
  const auto& specs = h.policy->hyper();
  for (std::size_t i = 0; i < specs.size(); ++i) {
    if (specs[i].flag) d[specs[i].name] = h.v[i] != 0.0;
    else d[specs[i].name] = h.v[i];
  }
  return d;
}

}  // namespace

void bind_optim(py::module_& m) {
  // Adam's decaying-lanes path (nerve/optim/adam.hpp): a speed choice with
  // the same bits either way, for tests and build_info().
  m.def("adam_decaying_lanes", [] {
    static const char* names[] = {"auto", "off", "on"};
    py::dict d;
    d["mode"] = names[adam_decaying_mode() + 1];
    d["in_use"] = decaying_lanes_in_use();
    const DecayingProbe t = adam_decaying_probe();
    d["probe_plain_s"] = t.plain_s;
    d["probe_lanes_s"] = t.lanes_s;
    return d;
  });
  m.def(
      "set_adam_decaying_lanes",
      [](const std::string& mode) {
        require(mode == "auto" || mode == "on" || mode == "off",
                "decaying-lanes mode must be 'auto', 'on' or 'off', got '" + mode + "'");
        set_adam_decaying_mode(mode == "auto" ? kDecayingAuto : mode == "on" ? kDecayingOn : kDecayingOff);
      },
      py::arg("mode"));
  // The table Python builds its optimizer classes from (nerve/optimizers.py).
  m.def("optimizer_table", [] {
    py::list rows;
    for (const Policy* p : optimizer_policies()) {
      py::dict d;
      d["name"] = p->name();
      d["doc"] = p->doc();
      py::list hyper;
      for (const HyperSpec& s : p->hyper()) {
        py::dict h;
        h["name"] = s.name;
        h["default"] = s.flag ? py::object(py::bool_(s.default_value != 0.0)) : py::object(py::float_(s.default_value));
        h["flag"] = s.flag;
        h["lo"] = s.lo;
        h["hi"] = s.hi;
        h["lo_open"] = s.lo_bound == Bound::Open;
        h["hi_open"] = s.hi_bound == Bound::Open;
        h["group"] = s.group ? py::object(py::str(s.group)) : py::object(py::none());
        h["layout"] = s.layout;
        hyper.append(h);
      }
      d["hyper"] = hyper;
      py::list scalars;
      for (const ScalarSpec& s : p->scalars()) {
        py::dict h;
        h["name"] = s.name;
        h["init"] = s.init;
        h["lo"] = s.lo;
        h["hi"] = s.hi;
        scalars.append(h);
      }
      d["scalars"] = scalars;
      d["has_weight_decay"] = p->index_of("weight_decay") >= 0;
      rows.append(d);
    }
    return rows;
  });

  py::class_<BoundOptimizer>(m, "Optimizer")
      .def(py::init([](const std::string& name, const py::dict& values, double clipvalue, double clipnorm,
                       double global_clipnorm) {
             const HyperValues h = make_hyper(optimizer_policy(name), to_pairs(values));
             return std::make_unique<BoundOptimizer>(h, Clipping{clipvalue, clipnorm, global_clipnorm});
           }),
           py::arg("name"), py::arg("values"), py::arg("clipvalue") = 0.0, py::arg("clipnorm") = 0.0,
           py::arg("global_clipnorm") = 0.0)
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
      .def_property_readonly("name", [](BoundOptimizer& b) { return std::string(b.opt.policy().name()); })
      .def_property_readonly("hyper", [](BoundOptimizer& b) { return hyper_dict(b.opt.hyper()); },
                             "name -> value of every hyper-parameter (a copy)")
      .def("get", [](BoundOptimizer& b, const std::string& name) { return b.opt.get(name); }, py::arg("name"))
      .def("set", [](BoundOptimizer& b, const std::string& name, double v) { b.opt.set(name, v); },
           py::arg("name"), py::arg("value"))
      .def(
          "validate",
          [](BoundOptimizer& b, const py::dict& changes) {
            HyperValues h = b.opt.hyper();
            for (const auto& kv : to_pairs(changes)) {
              const int i = h.policy->index_of(kv.first.c_str());
              require(i >= 0, std::string(h.policy->name()) + " has no hyper-parameter '" + kv.first + "'");
              h.v[static_cast<std::size_t>(i)] = kv.second;
            }
            validate_hyper(h);
          },
          py::arg("changes"), "Raises ValueError if these changes would make the hyper-parameters invalid")
      .def_property(
          "lr", [](BoundOptimizer& b) { return b.opt.lr(); }, [](BoundOptimizer& b, double lr) { b.opt.set_lr(lr); })
      .def_property(
          "iterations", [](BoundOptimizer& b) { return b.opt.iterations; },
          [](BoundOptimizer& b, std::int64_t t) {
            require(t >= 0, "iterations must be >= 0");
            b.opt.iterations = t;
          })
      .def_property(
          "scalar_state", [](BoundOptimizer& b) { return b.opt.scalar_state; },
          [](BoundOptimizer& b, const std::vector<double>& v) {
            const auto& specs = b.opt.policy().scalars();
            require(v.size() == specs.size(), "scalar state of the wrong length");
            for (std::size_t i = 0; i < v.size(); ++i)
              require(v[i] > specs[i].lo && v[i] <= specs[i].hi,
                      std::string(specs[i].name) + " must be in (" + format_value(specs[i].lo) + ", " +
                          format_value(specs[i].hi) + "], got " + format_value(v[i]));
            b.opt.scalar_state = v;
          },
          "The policy's scalars kept between steps (NAdam: the running product of mu_t), in double")
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
