// Layers and the Network: the per-layer API (forward/backward on numpy
// arrays, for users and tests) and the fused training step, one call per
// batch or per run of batches.
#include <algorithm>
#include <vector>

#include "common.hpp"
#include "nerve/gemm.hpp"
#include "nerve/network.hpp"
#include "nerve/parallel.hpp"
#include "nerve/recurrent.hpp"

namespace nerve::bind {

Target target_from_python(const py::object& labels, const py::object& values, Index rows, Index cols);
Optimizer& unwrap_optimizer(py::object o);

namespace {

// Optional per-row sample weights: None or a C-contiguous float32 (rows,) array
// (the Python layer converts and checks values). No conversion here: the
// pointer stays valid only because it points into the caller's own array.
const float* weights_from_python(const py::object& w, Index rows) {
  if (w.is_none()) return nullptr;
  using W = py::array_t<float, py::array::c_style>;
  require(py::isinstance<W>(w), "sample weights must be a C-contiguous float32 array");
  W arr = py::reinterpret_borrow<W>(w);
  require(arr.ndim() == 1 && arr.shape(0) == rows,
          "sample weights must have shape (" + std::to_string(rows) + ",)");
  return arr.data();
}

FloatArray new_matrix(Index rows, Index cols) { return FloatArray(std::vector<py::ssize_t>{rows, cols}); }

void bind_param(ParamRef& ref, const std::shared_ptr<ParamArena>& arena, Index offset, Index size) {
  require(arena != nullptr, "parameter slice without an arena");
  check_slice(arena->size(), offset, size, "parameter slice");
  ref.arena = arena;
  ref.offset = offset;
  ref.size = size;
}

// The Network plus what the Python-facing calls need to keep between calls.
struct PyNetwork {
  Network net;
  // The manual forward(training=True) copies its input here (in a buffer
  // planned to the largest batch, no allocation per call): backward() must
  // never read the caller's array, which may have changed or been freed since.
  AlignedBuffer saved_x;
  Index saved_rows = 0;         // rows of the saved training forward; 0: none to back-propagate
  AlignedBuffer batch_x;        // gathered rows for train_batches
  AlignedBuffer batch_values;
  std::vector<std::int64_t> batch_labels;
  std::vector<float> batch_weights;

  PyNetwork(Index input_dim, std::vector<std::shared_ptr<Layer>> layers)
      : net(input_dim, std::move(layers)) {}

  // x: (rows, input_dim); a batch of sequences of `steps` steps is
  // (sequences * steps, input_dim), sequence b's step t in row b * steps + t.
  void check_input(const py::array& x, Index& rows, Index steps = 1) const {
    Index cols;
    matrix_shape(x, rows, cols, "x");
    if (x.ndim() == 1) cols = 1;
    // The message is built only on failure: a step must not allocate.
    if (!(x.ndim() == 2 && cols == net.input_dim()))
      throw ValueError("x: expected shape (batch, " + std::to_string(net.input_dim()) + "), got " +
                       shape_str(x));
    require(rows > 0, "x is empty");
    require(steps > 0, "steps must be positive");
    if (rows % steps != 0)
      throw ValueError("x: " + std::to_string(rows) + " rows are not whole sequences of " + std::to_string(steps) +
                       " steps");
  }

  // Copies rows idx[0, m) of x (and of the targets) into the batch buffers;
  // returns the batch's target. The buffers hold at least m rows. (The same
  // gather as train_batches' loop, for compute_gradients_rows.)
  Target gather(const float* xp, const Target& all, const std::int64_t* idx, Index m) {
    const Index in = net.input_dim(), out = net.output_dim();
    // The gather streams m rows from all over x: shared over the
    // threads like any streaming loop (one thread copying 512
    // rows of 784 floats cost fit ~3% of a 2-thread step).
    constexpr Index kGatherRows = 32;
    const Index blocks = (m + kGatherRows - 1) / kGatherRows;
    const int threads = threads_for(stream_work(static_cast<double>(m) * (in + out)), blocks);
    parallel_for(blocks, threads, [&](Index blk) {
      for (Index r = blk * kGatherRows, end = std::min(m, r + kGatherRows); r < end; ++r) {
        const Index src = idx[r];
        std::copy(xp + src * in, xp + (src + 1) * in, batch_x.data() + r * in);
        if (all.values)
          std::copy(all.values + src * out, all.values + (src + 1) * out, batch_values.data() + r * out);
        if (all.labels) batch_labels[r] = all.labels[src];
        if (all.weights) batch_weights[r] = all.weights[src];
      }
    });
    Target t;
    if (all.values) t.values = batch_values.data();
    if (all.labels) t.labels = batch_labels.data();
    if (all.weights) t.weights = batch_weights.data();
    return t;
  }

  // Room for batches of `cap` rows in the gather buffers.
  void reserve_batch(Index cap, const Target& all) {
    batch_x.reserve(cap * net.input_dim());
    if (all.values) batch_values.reserve(cap * net.output_dim());
    if (all.labels && static_cast<Index>(batch_labels.size()) < cap) batch_labels.resize(cap);
    if (all.weights && static_cast<Index>(batch_weights.size()) < cap) batch_weights.resize(cap);
  }
};

}  // namespace

void bind_layers(py::module_& m) {
  py::class_<Layer, std::shared_ptr<Layer>>(m, "Layer")
      .def_property_readonly("type", &Layer::type)
      .def_readonly("in_features", &Layer::in_features)
      .def_readonly("out_features", &Layer::out_features)
      .def_readwrite("trainable", &Layer::trainable)
      .def_readwrite("stream", &Layer::stream)
      .def(
          "forward_np",
          [](Layer& l, py::array x, bool training, std::uint64_t seed, std::uint64_t step, Index steps) {
            Index rows, cols;
            matrix_shape(x, rows, cols, "x");
            require(x.ndim() == 2 && cols == l.in_features,
                    l.type() + ": expected input of shape (batch, " + std::to_string(l.in_features) +
                        "), got " + shape_str(x));
            require(steps > 0 && rows % steps == 0, "x: rows must be whole sequences of `steps` steps");
            FloatArray y = new_matrix(rows / steps * l.out_steps(steps), l.out_features);
            float* out = y.mutable_data();
            const float* in = fptr(x);
            StepContext ctx{training, seed, step};
            ctx.steps = steps;
            {
              py::gil_scoped_release nogil;
              l.plan(rows);
              l.forward(in, out, rows, ctx);
            }
            return y;
          },
          py::arg("x"), py::arg("training"), py::arg("seed") = 0, py::arg("step") = 0, py::arg("steps") = 1)
      .def(
          "backward_np",
          [](Layer& l, py::array x, py::array y, py::array dy, bool training, std::uint64_t seed,
             std::uint64_t step, bool want_dx, Index steps) {
            Index rows, cols, yr, yc, dr, dc;
            matrix_shape(x, rows, cols, "x");
            matrix_shape(y, yr, yc, "y");
            matrix_shape(dy, dr, dc, "dy");
            require(steps > 0 && rows % steps == 0, "x: rows must be whole sequences of `steps` steps");
            const Index out_rows = rows / steps * l.out_steps(steps);
            require(dr == out_rows && dc == l.out_features && yr == out_rows && yc == l.out_features,
                    l.type() + ": expected dy of shape (" + std::to_string(out_rows) + ", " +
                        std::to_string(l.out_features) + "), got " + shape_str(dy));
            FloatArray scratch = new_matrix(out_rows, l.out_features);  // dy is overwritten
            std::copy(fptr(dy), fptr(dy) + out_rows * l.out_features, scratch.mutable_data());
            py::object dx_obj = py::none();
            float* dx = nullptr;
            if (want_dx) {
              FloatArray dxa = new_matrix(rows, l.in_features);
              dx = dxa.mutable_data();
              dx_obj = dxa;
            }
            const float *xp = fptr(x), *yp = fptr(y);
            float* dyp = scratch.mutable_data();
            {
              py::gil_scoped_release nogil;
              StepContext ctx{training, seed, step};
              ctx.steps = steps;
              l.plan(rows);
              l.backward(xp, yp, dyp, dx, rows, ctx, true);
            }
            return dx_obj;
          },
          py::arg("x"), py::arg("y"), py::arg("dy"), py::arg("training"), py::arg("seed") = 0,
          py::arg("step") = 0, py::arg("want_dx") = true, py::arg("steps") = 1,
          "Parameter gradients are accumulated (PyTorch semantics); returns dL/dx")
      .def("regularize", &Layer::regularize, py::arg("add_grad"))
      .def("apply_constraints", &Layer::apply_constraints)
      .def("check_batch", &Layer::check_batch, py::arg("batch"), py::arg("training"))
      .def("out_steps", &Layer::out_steps, py::arg("steps"))
      .def(
          "buffers",
          [](py::object self) {
            // Zero-copy views of the non-trainable state; `self` keeps it alive.
            py::list out;
            for (AlignedBuffer* b : self.cast<Layer&>().buffers())
              out.append(py::array_t<float>({static_cast<py::ssize_t>(b->size())},
                                            {static_cast<py::ssize_t>(sizeof(float))}, b->data(), self));
            return out;
          },
          "Non-trainable state (e.g. batch norm running statistics) as writable numpy views");

  py::class_<Dense, Layer, std::shared_ptr<Dense>>(m, "Dense")
      .def(py::init<Index, Index, const Activation&, bool>(), py::arg("in_features"),
           py::arg("units"), py::arg("activation"), py::arg("use_bias"))
      .def(
          "bind_params",
          [](Dense& d, std::shared_ptr<ParamArena> arena, Index kernel_offset, Index bias_offset) {
            bind_param(d.kernel, arena, kernel_offset, checked_mul(d.in_features, d.units, "Dense kernel"));
            if (d.use_bias) bind_param(d.bias, arena, bias_offset, d.units);
          },
          py::arg("arena"), py::arg("kernel_offset"), py::arg("bias_offset"))
      .def_readonly("units", &Dense::units)
      .def_readonly("use_bias", &Dense::use_bias)
      .def(
          "set_penalties",
          [](Dense& d, double kl1, double kl2, double bl1, double bl2) {
            d.kernel_penalty = {kl1, kl2};
            d.bias_penalty = {bl1, bl2};
          },
          py::arg("kernel_l1"), py::arg("kernel_l2"), py::arg("bias_l1"), py::arg("bias_l2"))
      .def(
          "set_max_norm",
          [](Dense& d, double max_value, int axis) {
            require(max_value >= 0, "max_norm must be >= 0");
            require(axis == 0 || axis == 1, "max_norm axis must be 0 or 1");
            d.max_norm = max_value;
            d.max_norm_axis = axis;
          },
          py::arg("max_value"), py::arg("axis"))
      .def(
          "pack_kernel",
          [](Dense& d) {
            require(d.kernel.bound(), "pack_kernel: the Dense kernel is not bound to an arena");
            d.pack_kernel();
          },
          "Keeps the kernel packed for evaluation forwards (predict-only models: the kernel must not "
          "change afterwards).")
      .def_property_readonly("kernel_packed", &Dense::kernel_packed);

  py::class_<ActivationLayer, Layer, std::shared_ptr<ActivationLayer>>(m, "ActivationLayer")
      .def(py::init<Index, const Activation&>(), py::arg("in_features"), py::arg("activation"));

  py::class_<BatchNorm, Layer, std::shared_ptr<BatchNorm>>(m, "BatchNorm")
      .def(py::init<Index, double, double>(), py::arg("features"), py::arg("momentum"), py::arg("eps"))
      .def(
          "bind_params",
          [](BatchNorm& l, std::shared_ptr<ParamArena> arena, Index gamma_offset, Index beta_offset) {
            bind_param(l.gamma, arena, gamma_offset, l.in_features);
            bind_param(l.beta, arena, beta_offset, l.in_features);
          },
          py::arg("arena"), py::arg("gamma_offset"), py::arg("beta_offset"))
      .def_readonly("momentum", &BatchNorm::momentum)
      .def_readonly("eps", &BatchNorm::eps);

  py::class_<Dropout, Layer, std::shared_ptr<Dropout>>(m, "Dropout")
      .def(py::init<Index, double>(), py::arg("features"), py::arg("rate"))
      .def_readonly("rate", &Dropout::rate);
  py::class_<AlphaDropout, Layer, std::shared_ptr<AlphaDropout>>(m, "AlphaDropout")
      .def(py::init<Index, double>(), py::arg("features"), py::arg("rate"))
      .def_readonly("rate", &AlphaDropout::rate);
  py::class_<GaussianNoise, Layer, std::shared_ptr<GaussianNoise>>(m, "GaussianNoise")
      .def(py::init<Index, double>(), py::arg("features"), py::arg("stddev"))
      .def_readonly("stddev", &GaussianNoise::stddev);
  py::class_<Residual, Layer, std::shared_ptr<Residual>>(m, "Residual")
      .def(py::init<std::vector<std::shared_ptr<Layer>>>(), py::arg("layers"))
      .def_property_readonly("layers", [](Residual& r) { return r.body.layers; });

  // Learnable activations (layers_activation.cpp).
  py::class_<PReLU, Layer, std::shared_ptr<PReLU>>(m, "PReLU")
      .def(py::init<Index, bool>(), py::arg("in_features"), py::arg("shared"))
      .def_readonly("shared", &PReLU::shared)
      .def(
          "bind_params",
          [](PReLU& l, std::shared_ptr<ParamArena> arena, Index offset) {
            bind_param(l.alpha, arena, offset, l.shared ? 1 : l.in_features);
          },
          py::arg("arena"), py::arg("offset"));

  py::class_<SwishLayer, Layer, std::shared_ptr<SwishLayer>>(m, "Swish")
      .def(py::init<Index, float, bool>(), py::arg("in_features"), py::arg("beta"),
           py::arg("learnable"))
      .def_readonly("learnable", &SwishLayer::learnable)
      .def_property_readonly("beta", &SwishLayer::beta)
      .def(
          "bind_params",
          [](SwishLayer& l, std::shared_ptr<ParamArena> arena, Index offset) {
            require(l.learnable, "Swish: a fixed beta has no parameter to bind");
            bind_param(l.beta_param, arena, offset, 1);
          },
          py::arg("arena"), py::arg("offset"));

  py::class_<Maxout, Layer, std::shared_ptr<Maxout>>(m, "Maxout")
      .def(py::init<Index, Index, Index, bool>(), py::arg("in_features"), py::arg("units"),
           py::arg("pieces"), py::arg("use_bias"))
      .def_readonly("units", &Maxout::units)
      .def_readonly("pieces", &Maxout::pieces)
      .def_readonly("inner", &Maxout::inner, "the Dense layer to units * pieces columns");

  // Sequence layers (layers_recurrent.cpp).
  py::class_<Embedding, Layer, std::shared_ptr<Embedding>>(m, "Embedding")
      .def(py::init<Index, Index>(), py::arg("vocab_size"), py::arg("dim"))
      .def_readonly("vocab_size", &Embedding::vocab)
      .def_readonly("dim", &Embedding::dim)
      .def(
          "bind_params",
          [](Embedding& l, std::shared_ptr<ParamArena> arena, Index offset) {
            bind_param(l.table, arena, offset, checked_mul(l.vocab, l.dim, "Embedding table"));
          },
          py::arg("arena"), py::arg("offset"));
  py::class_<Recurrent, Layer, std::shared_ptr<Recurrent>>(m, "Recurrent")
      .def(py::init([](Index in, Index units, const std::string& cell, bool return_sequences, bool bidirectional) {
             CellKind k;
             if (cell == "tanh") k = CellKind::RnnTanh;
             else if (cell == "relu") k = CellKind::RnnRelu;
             else if (cell == "lstm") k = CellKind::Lstm;
             else if (cell == "gru") k = CellKind::Gru;
             else throw ValueError("unknown recurrent cell '" + cell + "' (tanh, relu, lstm, gru)");
             return std::make_shared<Recurrent>(in, units, k, return_sequences, bidirectional);
           }),
           py::arg("in_features"), py::arg("units"), py::arg("cell"), py::arg("return_sequences"),
           py::arg("bidirectional"))
      .def_readonly("units", &Recurrent::units)
      .def_readonly("return_sequences", &Recurrent::return_sequences)
      .def_readonly("directions", &Recurrent::directions)
      .def(
          "bind_params",
          [](Recurrent& l, std::shared_ptr<ParamArena> arena, std::vector<Index> offsets) {
            // In params() order: per direction kernel, recurrent_kernel, bias (, recurrent_bias).
            const Index G = l.gates() * l.units;
            const std::size_t per = l.cell == CellKind::Gru ? 4 : 3;
            require(offsets.size() == per * l.directions, "Recurrent.bind_params: wrong number of offsets");
            for (int d = 0; d < l.directions; ++d) {
              const Index* o = offsets.data() + per * d;
              bind_param(l.dir[d].kernel, arena, o[0], checked_mul(l.in_features, G, "recurrent kernel"));
              bind_param(l.dir[d].recurrent_kernel, arena, o[1], checked_mul(l.units, G, "recurrent kernel"));
              bind_param(l.dir[d].bias, arena, o[2], G);
              if (per == 4) bind_param(l.dir[d].recurrent_bias, arena, o[3], G);
            }
          },
          py::arg("arena"), py::arg("offsets"));
  // Margin-softmax heads (layers_margin.cpp).
  py::class_<CosineDense, Layer, std::shared_ptr<CosineDense>>(m, "CosineDense")
      .def(py::init<Index, Index>(), py::arg("in_features"), py::arg("units"))
      .def_readonly("units", &CosineDense::units)
      .def(
          "bind_params",
          [](CosineDense& l, std::shared_ptr<ParamArena> arena, Index offset) {
            bind_param(l.kernel, arena, offset, checked_mul(l.in_features, l.units, "CosineDense kernel"));
          },
          py::arg("arena"), py::arg("offset"));
  py::class_<MarginDense, Layer, std::shared_ptr<MarginDense>>(m, "MarginDense")
      .def(py::init<Index, Index, bool>(), py::arg("in_features"), py::arg("units"), py::arg("normalize_weights"))
      .def_readonly("units", &MarginDense::units)
      .def_readonly("normalize_weights", &MarginDense::normalize_weights)
      .def(
          "bind_params",
          [](MarginDense& l, std::shared_ptr<ParamArena> arena, Index offset) {
            bind_param(l.kernel, arena, offset, checked_mul(l.in_features, l.units, "margin layer kernel"));
          },
          py::arg("arena"), py::arg("offset"));

  py::class_<PyNetwork>(m, "Network")
      .def(py::init<Index, std::vector<std::shared_ptr<Layer>>>(), py::arg("input_dim"),
           py::arg("layers"))
      .def_property_readonly("input_dim", [](PyNetwork& n) { return n.net.input_dim(); })
      .def_property_readonly("output_dim", [](PyNetwork& n) { return n.net.output_dim(); })
      .def("output_steps", [](PyNetwork& n, Index steps) { return n.net.output_steps(steps); },
           py::arg("steps"))
      .def_property(
          "seed", [](PyNetwork& n) { return n.net.seed; },
          [](PyNetwork& n, std::uint64_t s) { n.net.seed = s; })
      .def_property(
          "step", [](PyNetwork& n) { return n.net.step; },
          [](PyNetwork& n, std::uint64_t s) { n.net.step = s; })
      .def_property(
          "fuse_updates", [](PyNetwork& n) { return n.net.fuse_updates; },
          [](PyNetwork& n, bool on) { n.net.fuse_updates = on; },
          "train_step may update Dense weights inside backward at batches of 1-4 (bit-identical; "
          "False forces the separate optimizer pass, for comparisons)")
      .def(
          "forward",
          [](PyNetwork& n, py::array x, bool training, Index steps) {
            Index rows;
            n.check_input(x, rows, steps);
            n.net.check_finite(fptr(x), rows, n.net.input_dim(), "x");
            const Index in = n.net.input_dim();
            n.saved_rows = 0;  // the layers' saved activations are replaced from here on
            const float* src = fptr(x);
            if (training) {
              // Keep a private copy: backward() reads it after Python may have changed or freed x.
              n.saved_x.reserve(checked_mul(rows, in, "saved input"));
              std::copy(src, src + rows * in, n.saved_x.data());
              src = n.saved_x.data();
            }
            const Index out_rows = n.net.output_rows(rows, steps);
            FloatArray out = new_matrix(out_rows, n.net.output_dim());
            float* o = out.mutable_data();
            {
              py::gil_scoped_release nogil;
              const float* y = n.net.forward(src, rows, training, steps);
              std::copy(y, y + out_rows * n.net.output_dim(), o);
            }
            if (training) {
              n.net.step += 1;
              n.saved_rows = rows;
            } else {
              n.net.forget_input();
            }
            return out;
          },
          py::arg("x"), py::arg("training") = false, py::arg("steps") = 1)
      .def(
          "backward",
          [](PyNetwork& n, py::array dout, bool accumulate, bool want_dx) {
            Index rows, cols;
            matrix_shape(dout, rows, cols, "grad");
            // RuntimeError (call order, like PyTorch's backward through a freed graph).
            if (n.saved_rows == 0)
              throw std::runtime_error(
                  "backward: the last forward of this model was not a training forward; call "
                  "forward(x, training=True) first (predict, evaluate, train_step, fit and an "
                  "evaluation forward replace the activations backward needs)");
            const Index batch = n.saved_rows;
            const Index out_rows = n.net.last_out_rows();
            require(dout.ndim() == 2 && rows == out_rows && cols == n.net.output_dim(),
                    "backward: expected a gradient of shape (" + std::to_string(out_rows) + ", " +
                        std::to_string(n.net.output_dim()) + "), got " + shape_str(dout));
            py::object dx_obj = py::none();
            float* dx = nullptr;
            if (want_dx) {
              FloatArray dxa = new_matrix(batch, n.net.input_dim());
              dx = dxa.mutable_data();
              dx_obj = dxa;
            }
            const float* g = fptr(dout);
            {
              py::gil_scoped_release nogil;
              // The step counter moved on after the training forward; the
              // backward must see the same random draws (dropout, rrelu).
              const std::uint64_t saved = n.net.step;
              if (saved > 0) n.net.step = saved - 1;
              n.net.backward(g, batch, accumulate, dx);
              n.net.step = saved;
            }
            return dx_obj;
          },
          py::arg("grad"), py::arg("accumulate") = true, py::arg("want_dx") = false)
      .def("regularize", [](PyNetwork& n, bool add_grad) { return n.net.regularize(add_grad); },
           py::arg("add_grad"))
      .def("apply_constraints", [](PyNetwork& n) { n.net.apply_constraints(); })
      .def("apply_masks", [](PyNetwork& n) { n.net.apply_masks(); },
           "Re-zeroes pruned parameters (what train_step does after every update)")
      .def("check_batch",
           [](PyNetwork& n, Index batch, bool training, Index steps) {
             n.net.check_batch(checked_mul(batch, steps, "batch rows"), training, steps);
           },
           py::arg("batch"), py::arg("training"), py::arg("steps") = 1,
           "batch: samples (sequences of `steps` rows each)")
      .def(
          "train_step",
          [](PyNetwork& n, py::array x, py::object labels, py::object values, const Loss& loss,
             py::object opt, bool count, py::object weights, Index steps) {
            Index rows;
            n.check_input(x, rows, steps);
            const Index out_rows = n.net.output_rows(rows, steps);
            Target t = target_from_python(labels, values, out_rows, n.net.output_dim());
            t.weights = weights_from_python(weights, out_rows);
            Optimizer& o = unwrap_optimizer(opt);
            const float* xp = fptr(x);
            StepResult r;
            n.saved_rows = 0;
            {
              py::gil_scoped_release nogil;
              r = n.net.train_step(xp, rows, t, loss, o, count, false, steps);
            }
            return py::make_tuple(r.loss, r.correct);
          },
          py::arg("x"), py::arg("labels"), py::arg("values"), py::arg("loss"), py::arg("optimizer"),
          py::arg("count") = false, py::arg("weights") = py::none(), py::arg("steps") = 1)
      .def(
          "train_batches",
          [](PyNetwork& n, py::array X, py::object labels, py::object values, LabelArray order,
             Index batch_size, const Loss& loss, py::object opt, bool count, py::object weights, Index steps) {
            // `order` and batch_size count samples: rows, or sequences of
            // `steps` rows (whose targets have output_steps rows each).
            Index all_rows;
            n.check_input(X, all_rows, steps);
            const Index rows = all_rows / steps;                // samples
            const Index ts = n.net.output_steps(steps);         // target rows per sample
            const Index out_rows = rows * ts;
            const float* all_weights = weights_from_python(weights, out_rows);
            require(batch_size > 0, "batch_size must be positive, got " + std::to_string(batch_size));
            const Index in = n.net.input_dim(), out = n.net.output_dim();
            // Whole-array checks first: nothing is trained if any batch would fail.
            Target all = target_from_python(labels, values, out_rows, out);
            n.net.check_finite(fptr(X), all_rows, in, "x");
            validate_target(loss, all, out_rows, out);
            if (all.values && loss.kind != LossKind::Distillation) n.net.check_finite(all.values, out_rows, out, "y");
            require(order.ndim() == 1, "order must be 1-D");
            const Index count_rows = order.shape(0);
            const std::int64_t* idx = order.data();
            for (Index i = 0; i < count_rows; ++i)
              require(idx[i] >= 0 && idx[i] < rows, "order index out of range");
            Optimizer& o = unwrap_optimizer(opt);
            const Index batches = (count_rows + batch_size - 1) / batch_size;
            if (batches > 0) {  // e.g. batch norm refuses a last batch of one row: say so before training
              n.net.check_batch(std::min(batch_size, count_rows) * steps, true, steps);
              n.net.check_batch((count_rows - (batches - 1) * batch_size) * steps, true, steps);
            }
            const Index cap = std::min(batch_size, count_rows);
            const Index in_s = checked_mul(steps, in, "sequence row"), out_s = ts * out;
            n.batch_x.reserve(checked_mul(cap, in_s, "batch buffer"));
            if (all.values) n.batch_values.reserve(checked_mul(cap, out_s, "batch target buffer"));
            if (all.labels && static_cast<Index>(n.batch_labels.size()) < cap * ts) n.batch_labels.resize(cap * ts);
            if (all_weights && static_cast<Index>(n.batch_weights.size()) < cap * ts) n.batch_weights.resize(cap * ts);
            py::array_t<double> losses(batches);
            py::array_t<std::int64_t> correct(batches);
            double* lp = losses.mutable_data();
            std::int64_t* cp = correct.mutable_data();
            const float* xp = fptr(X);
            n.saved_rows = 0;
            {
              py::gil_scoped_release nogil;
              n.net.plan(cap * steps);
              for (Index b = 0; b < batches; ++b) {
                const Index start = b * batch_size, m = std::min(batch_size, count_rows - start);
                // The gather streams m rows from all over x: shared over the
                // threads like any streaming loop (one thread copying 512
                // rows of 784 floats cost fit ~3% of a 2-thread step).
                constexpr Index kGatherRows = 32;
                const Index blocks = (m + kGatherRows - 1) / kGatherRows;
                const int threads = threads_for(stream_work(static_cast<double>(m) * (in_s + out_s)), blocks);
                parallel_for(blocks, threads, [&](Index blk) {
                  for (Index r = blk * kGatherRows, end = std::min(m, r + kGatherRows); r < end; ++r) {
                    const Index src = idx[start + r];
                    std::copy(xp + src * in_s, xp + (src + 1) * in_s, n.batch_x.data() + r * in_s);
                    if (all.values)
                      std::copy(all.values + src * out_s, all.values + (src + 1) * out_s,
                                n.batch_values.data() + r * out_s);
                    for (Index k = 0; k < ts; ++k) {
                      if (all.labels) n.batch_labels[r * ts + k] = all.labels[src * ts + k];
                      if (all_weights) n.batch_weights[r * ts + k] = all_weights[src * ts + k];
                    }
                  }
                });
                Target t;
                if (all.values) t.values = n.batch_values.data();
                if (all.labels) t.labels = n.batch_labels.data();
                if (all_weights) t.weights = n.batch_weights.data();
                // x and the targets were checked whole above.
                StepResult res = n.net.train_step(n.batch_x.data(), m * steps, t, loss, o, count, true, steps);
                lp[b] = res.loss;
                cp[b] = res.correct;
              }
            }
            return py::make_tuple(losses, correct);
          },
          py::arg("x"), py::arg("labels"), py::arg("values"), py::arg("order"),
          py::arg("batch_size"), py::arg("loss"), py::arg("optimizer"), py::arg("count") = false,
          py::arg("weights") = py::none(), py::arg("steps") = 1,
          "Runs train_step over x[order] in batches (rows of the loss gradient scaled by weights[row] "
          "when given); returns per-batch losses and correct counts")
      .def(
          "compute_gradients",
          [](PyNetwork& n, py::array x, py::object labels, py::object values, const Loss& loss, bool count,
             double grad_scale, py::object weights, Index steps) {
            Index rows;
            n.check_input(x, rows, steps);
            const Index out_rows = n.net.output_rows(rows, steps);
            Target t = target_from_python(labels, values, out_rows, n.net.output_dim());
            t.weights = weights_from_python(weights, out_rows);
            const float* xp = fptr(x);
            StepResult r;
            {
              py::gil_scoped_release nogil;
              r = n.net.compute_gradients(xp, rows, t, loss, count, false, static_cast<float>(grad_scale), steps);
            }
            return py::make_tuple(r.loss, r.correct);
          },
          py::arg("x"), py::arg("labels"), py::arg("values"), py::arg("loss"), py::arg("count") = false,
          py::arg("grad_scale") = 1.0, py::arg("weights") = py::none(), py::arg("steps") = 1,
          "First half of train_step: forward, loss and backward; assigns every trainable gradient "
          "(of the data loss, times grad_scale) and updates nothing. Returns (loss, correct)")
      .def(
          "compute_gradients_rows",
          [](PyNetwork& n, py::array X, py::object labels, py::object values, LabelArray rows_idx,
             const Loss& loss, bool count, double grad_scale, py::object weights) {
            Index rows;
            n.check_input(X, rows);
            Target all = target_from_python(labels, values, rows, n.net.output_dim());
            all.weights = weights_from_python(weights, rows);
            require(rows_idx.ndim() == 1 && rows_idx.shape(0) > 0, "rows must be a non-empty 1-D array");
            const Index m = rows_idx.shape(0);
            const std::int64_t* idx = rows_idx.data();
            for (Index i = 0; i < m; ++i) require(idx[i] >= 0 && idx[i] < rows, "row index out of range");
            n.net.check_batch(m, true);
            n.reserve_batch(m, all);
            const float* xp = fptr(X);
            StepResult r;
            {
              py::gil_scoped_release nogil;
              n.net.plan(m);
              const Target t = n.gather(xp, all, idx, m);
              // Only the gathered rows are checked (NaN/Inf, label range):
              // O(batch), not O(x); errors name the row of x.
              const Index in = n.net.input_dim(), out = n.net.output_dim();
              Index br = 0, bc = 0;
              if (!all_finite(n.batch_x.data(), m, in, &br, &bc))
                throw ValueError("x contains NaN or Inf at row " + std::to_string(idx[br]) + ", column " +
                                 std::to_string(bc));
              if (t.values && loss.kind != LossKind::Distillation && !all_finite(t.values, m, out, &br, &bc))
                throw ValueError("y contains NaN or Inf at row " + std::to_string(idx[br]) + ", column " +
                                 std::to_string(bc));
              validate_target(loss, t, m, out);
              r = n.net.compute_gradients(n.batch_x.data(), m, t, loss, count, true,
                                          static_cast<float>(grad_scale));
            }
            return py::make_tuple(r.loss, r.correct);
          },
          py::arg("x"), py::arg("labels"), py::arg("values"), py::arg("rows"), py::arg("loss"),
          py::arg("count") = false, py::arg("grad_scale") = 1.0, py::arg("weights") = py::none(),
          "compute_gradients on the rows x[rows] (gathered into a reused buffer, as train_batches)")
      .def(
          "apply_update",
          [](PyNetwork& n, py::object opt) {
            Optimizer& o = unwrap_optimizer(opt);
            py::gil_scoped_release nogil;
            return n.net.apply_update(o);
          },
          py::arg("optimizer"),
          "Second half of train_step: penalty gradients, clipping, the optimizer update, masks, "
          "constraints, step += 1. Returns the weight penalty (train_step adds it to the loss)")
      .def(
          "predict",
          [](PyNetwork& n, py::array X, Index batch_size, Index steps) {
            Index all_rows;
            n.check_input(X, all_rows, steps);
            require(batch_size > 0, "batch_size must be positive");
            n.net.check_finite(fptr(X), all_rows, n.net.input_dim(), "x");
            // Batches of batch_size samples (sequences of `steps` rows).
            const Index rows = all_rows / steps, ts = n.net.output_steps(steps);
            const Index in = n.net.input_dim() * steps, out = n.net.output_dim() * ts;
            FloatArray result = new_matrix(rows * ts, n.net.output_dim());
            float* o = result.mutable_data();
            const float* xp = fptr(X);
            n.saved_rows = 0;
            {
              py::gil_scoped_release nogil;
              for (Index start = 0; start < rows; start += batch_size) {
                const Index m = std::min(batch_size, rows - start);
                const float* y = n.net.forward(xp + start * in, m * steps, false, steps);
                std::copy(y, y + m * out, o + start * out);
              }
              n.net.forget_input();  // no pointer to X outlives this call
            }
            return result;
          },
          py::arg("x"), py::arg("batch_size") = 256, py::arg("steps") = 1);
}

}  // namespace nerve::bind
