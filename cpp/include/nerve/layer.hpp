// Layers: virtual dispatch per layer, templates only inside kernels.
//
// A layer's parameters live in a ParamArena (values + gradients, one
// contiguous aligned block per model); the layer keeps (arena, offset, size)
// references. Activation buffers belong to the Network, which hands each layer
// its input x and output y; a layer only keeps what its backward needs beyond
// those (e.g. Dense's pre-activation when the derivative needs it).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "nerve/activation.hpp"
#include "nerve/arena.hpp"
#include "nerve/common.hpp"
#include "nerve/gemm.hpp"
#include "nerve/loss.hpp"
#include "nerve/optimizer.hpp"

namespace nerve {

// One model's parameters and their gradients, with the same layout.
struct ParamArena {
  AlignedBuffer values;
  AlignedBuffer grads;
  // Pruning masks (nv.pruning): empty, or one float per value, 1 = keep,
  // 0 = pruned. Allocated only when a model is pruned; apply_mask() re-zeroes
  // pruned values after every update so they stay exactly zero.
  AlignedBuffer mask;
  explicit ParamArena(Index n) : values(n), grads(n) {}
  Index size() const { return values.size(); }
  bool has_mask() const { return mask.size() > 0; }
  void enable_mask() {
    if (!has_mask()) mask.resize(size(), 1.0f);
  }
  void apply_mask();
};

// A parameter tensor inside an arena.
struct ParamRef {
  std::shared_ptr<ParamArena> arena;
  Index offset = 0;
  Index size = 0;
  float* value() const { return arena ? arena->values.data() + offset : nullptr; }
  float* grad() const { return arena ? arena->grads.data() + offset : nullptr; }
  bool bound() const { return arena != nullptr; }
};

class Layer;

// What a margin layer (LargeMarginDense, SphereDense) needs in a training
// forward: the batch's labels and the loss holding the margin's parameters.
// Network::forward_loss sets it for its last layer only (`layer`).
struct MarginTarget {
  const Layer* layer = nullptr;
  const std::int64_t* labels = nullptr;
  const Loss* loss = nullptr;
};

struct StepContext {
  bool training = false;
  std::uint64_t seed = 0;
  std::uint64_t step = 0;  // advances once per training step; keys dropout/rrelu draws
  // Set by Network::train_step between the optimizer's begin_step() and
  // finish_step(): a layer may then update its parameters in its own backward
  // (Optimizer::update_slice) once their gradient, penalty included, is
  // complete, and mark them updated. Dense does so at batches of 1 to 4.
  Optimizer* optimizer = nullptr;
  // Time steps of the layer's input: a (batch, steps, features) sequence
  // travels as batch * steps row-major rows, so per-row layers (Dense,
  // activations, dropout, batch norm over all rows) work on sequences
  // unchanged; a recurrent layer reads the `rows` it is given as
  // rows / steps sequences of `steps` rows each. 1 for plain (batch, features).
  Index steps = 1;
  // Set only in Network::forward_loss's training forward (see MarginTarget).
  const MarginTarget* margin = nullptr;
};

// Keras-scale weight penalty: l1 * sum|w| + l2 * sum w^2.
struct Penalty {
  double l1 = 0.0, l2 = 0.0;
  bool active() const { return l1 != 0.0 || l2 != 0.0; }
};

class Layer {
 public:
  virtual ~Layer() = default;
  virtual std::string type() const = 0;

  Index in_features = 0;
  Index out_features = 0;
  bool trainable = true;
  std::uint64_t stream = 0;  // distinguishes this layer's random draws

  virtual std::vector<ParamRef*> params() { return {}; }

  // Steps of the output for an input of `steps` steps: the same for every
  // per-row layer; 1 for a recurrent layer that returns only its last state.
  virtual Index out_steps(Index steps) const { return steps; }

  // Non-trainable state saved with the model (batch norm's running statistics).
  virtual std::vector<AlignedBuffer*> buffers() { return {}; }

  // Throws ValueError when this layer cannot run on `batch` rows (batch norm
  // in training needs 2). Called before any layer runs, so a bad batch
  // changes nothing.
  virtual void check_batch(Index /*batch*/, bool /*training*/) const {}

  // Reserves workspace for batches of up to `capacity` rows (no allocation
  // afterwards for any batch <= capacity).
  virtual void plan(Index /*capacity*/) {}

  // y (batch x out_features) from x (batch x in_features).
  virtual void forward(const float* x, float* y, Index batch, const StepContext& ctx) = 0;

  // Given dy = dL/dy (may be overwritten: it is scratch after this call),
  // writes dx = dL/dx when dx is not null, and the parameter gradients (added
  // when accumulate, assigned otherwise) when the layer is trainable.
  virtual void backward(const float* x, const float* y, float* dy, float* dx, Index batch,
                        const StepContext& ctx, bool accumulate) = 0;

  // Weight penalties: returns their value; with add_grad, adds their gradient.
  virtual double regularize(bool /*add_grad*/) { return 0.0; }
  // Constraints applied after every update (max-norm).
  virtual void apply_constraints() {}
};

// y = act(x W + b), W: (in, units) row-major, b: (units).
class Dense : public Layer {
 public:
  Dense(Index in, Index units, const Activation& act, bool use_bias);
  std::string type() const override { return "Dense"; }
  std::vector<ParamRef*> params() override;
  void plan(Index capacity) override;
  void forward(const float* x, float* y, Index batch, const StepContext& ctx) override;
  void backward(const float* x, const float* y, float* dy, float* dx, Index batch,
                const StepContext& ctx, bool accumulate) override;
  double regularize(bool add_grad) override;
  void apply_constraints() override;
  // Predict-only use (optimize_for_inference): keeps the kernel packed for
  // the GEMM, so evaluation forwards skip packing it; results are the same
  // bits. The kernel must not change afterwards (training forwards ignore the
  // packing, but a later evaluation forward would use the stale one).
  void pack_kernel() { packed_kernel_.pack(in_features, units, kernel.value(), units); }
  bool kernel_packed() const { return !packed_kernel_.empty(); }

  Index units;
  Activation act;
  bool use_bias;
  ParamRef kernel, bias;
  Penalty kernel_penalty, bias_penalty;
  double max_norm = 0.0;  // > 0: every output unit's incoming weight vector is kept within it
  int max_norm_axis = 0;

 private:
  // Batches of 1 to 4: dW and dX in one pass over the rows of W, which also
  // applies the optimizer's update to those rows when ctx.optimizer allows.
  void small_batch_backward(const float* x, const float* dz, float* dx, Index batch, const StepContext& ctx,
                            bool accumulate);

  // The last backward updated the kernel (and added its penalty gradient):
  // the next regularize() reports the penalty of the weights before the
  // update, computed then, and adds no gradient.
  bool kernel_updated_ = false;
  double kernel_penalty_before_update_ = 0.0;
  bool keeps_z_ = false;   // the activation's derivative needs the pre-activation
  AlignedBuffer z_;        // pre-activation, when kept
  AlignedBuffer dz_;       // dL/dz, when the activation changes the width (crelu)
  PackedB packed_kernel_;  // pack_kernel()
};

// An activation on its own (nv.layers.Activation).
class ActivationLayer : public Layer {
 public:
  ActivationLayer(Index in, const Activation& act);
  std::string type() const override { return "Activation"; }
  void forward(const float* x, float* y, Index batch, const StepContext& ctx) override;
  void backward(const float* x, const float* y, float* dy, float* dx, Index batch,
                const StepContext& ctx, bool accumulate) override;
  Activation act;
};

// Batch normalization over the features of a (batch, features) input, with
// PyTorch BatchNorm1d semantics (Ioffe & Szegedy, 2015):
//   training:   y = γ (x − μ_B) / √(σ²_B + ε) + β with the biased batch variance,
//               running ← (1 − momentum) running + momentum · batch statistic,
//               the running variance taking the unbiased σ²_B · B / (B − 1);
//   evaluation: y = γ (x − running_mean) / √(running_var + ε) + β.
// Statistics are two-pass sums in double over fixed row chunks, so they do
// not depend on the thread count.
class BatchNorm : public Layer {
 public:
  BatchNorm(Index features, double momentum, double eps);
  std::string type() const override { return "BatchNorm"; }
  std::vector<ParamRef*> params() override { return {&gamma, &beta}; }
  std::vector<AlignedBuffer*> buffers() override { return {&running_mean, &running_var, &num_batches_tracked}; }
  void check_batch(Index batch, bool training) const override;
  void plan(Index capacity) override;
  void forward(const float* x, float* y, Index batch, const StepContext& ctx) override;
  void backward(const float* x, const float* y, float* dy, float* dx, Index batch,
                const StepContext& ctx, bool accumulate) override;

  double momentum, eps;
  ParamRef gamma, beta;
  AlignedBuffer running_mean, running_var;
  // Training batches seen (one float, as PyTorch's num_batches_tracked; exact
  // up to 2^24). momentum < 0 means PyTorch's momentum=None: the running
  // statistics are then the cumulative average, factor 1/num_batches_tracked.
  AlignedBuffer num_batches_tracked;

 private:
  std::vector<double> mean_, invstd_;          // of the last forward, per feature
  std::vector<double> partial_a_, partial_b_;  // per row chunk x feature sums
  std::vector<double> work_;                   // per-feature sums in backward
  std::vector<float> coef_;                    // per-feature coefficients of dx
};

// Inverted dropout (Srivastava et al., 2014): in training each element is
// kept with probability 1 − rate and scaled by 1/(1 − rate); identity in
// evaluation. The mask of element i is a pure function of (seed, layer
// stream, step, i) and is recomputed in backward instead of stored.
class Dropout : public Layer {
 public:
  Dropout(Index features, double rate);
  std::string type() const override { return "Dropout"; }
  void forward(const float* x, float* y, Index batch, const StepContext& ctx) override;
  void backward(const float* x, const float* y, float* dy, float* dx, Index batch,
                const StepContext& ctx, bool accumulate) override;
  double rate;
};

// Alpha dropout for SELU nets (Klambauer et al., 2017), PyTorch's formula:
// dropped units take α' = −λα, then y = a·x̃ + b with
// a = ((1 − p)(1 + p α'²))^(−1/2), b = −a α' p, keeping zero mean and unit
// variance. Identity in evaluation.
class AlphaDropout : public Layer {
 public:
  AlphaDropout(Index features, double rate);
  std::string type() const override { return "AlphaDropout"; }
  void forward(const float* x, float* y, Index batch, const StepContext& ctx) override;
  void backward(const float* x, const float* y, float* dy, float* dx, Index batch,
                const StepContext& ctx, bool accumulate) override;
  double rate;
};

// Additive Gaussian noise N(0, stddev²) in training only (Keras GaussianNoise).
class GaussianNoise : public Layer {
 public:
  GaussianNoise(Index features, double stddev);
  std::string type() const override { return "GaussianNoise"; }
  void forward(const float* x, float* y, Index batch, const StepContext& ctx) override;
  void backward(const float* x, const float* y, float* dy, float* dx, Index batch,
                const StepContext& ctx, bool accumulate) override;
  double stddev;
};

// A chain of layers and the buffers between them: the body of a Network and
// of a Residual block. Layer i reads the output of layer i - 1 (the input x
// for layer 0); backward walks the chain down with two ping-pong gradient
// buffers. A frozen layer runs as in evaluation (ctx.training is cleared for
// it), so a frozen batch norm uses its running statistics.
class LayerStack {
 public:
  LayerStack() = default;
  // Checks that each layer takes the previous one's width; `owner` starts
  // the error messages ("layer 2 (Dense) of Residual expects ...").
  LayerStack(std::vector<std::shared_ptr<Layer>> layers, Index in_features, const std::string& owner);

  std::vector<std::shared_ptr<Layer>> layers;
  Index in_features = 0;
  Index out_features = 0;

  // Sizes every buffer for batches of up to `capacity` rows (no allocation
  // later for any batch <= capacity).
  void plan(Index capacity);
  // `batch` rows of `steps` steps each sequence (rows / steps sequences).
  void check_batch(Index batch, bool training, Index steps = 1) const;
  // Steps and rows of the last layer's output for an input of `rows` rows of
  // `steps` steps; throws ValueError when rows is not a multiple of steps.
  Index out_steps(Index steps) const;
  Index out_rows(Index rows, Index steps) const;
  // Runs the chain on x (`batch` rows, ctx.steps steps); returns the last
  // output (x itself when empty), of out_rows(batch, ctx.steps) rows.
  const float* forward(const float* x, Index batch, const StepContext& ctx);
  // Back-propagates dout (copied unless it already is grad_buffer()) through
  // the layers above `lowest`; layer `lowest` writes dx only when it is layer 0.
  // `batch` and ctx.steps are those of the last forward's input.
  void backward(const float* x, const float* dout, float* dx, Index batch, const StepContext& ctx,
                bool accumulate, std::size_t lowest = 0);
  // Where a caller may write dL/d(output) directly (saves the copy).
  float* grad_buffer() { return grad_a_.data(); }

  double regularize(bool add_grad);
  void apply_constraints();
  std::vector<ParamRef*> params();
  std::vector<AlignedBuffer*> buffers();

 private:
  Index capacity_ = 0;
  std::vector<AlignedBuffer> outputs_;  // outputs_[i]: output of layer i
  // Rows and steps of each layer's input in the last forward (sized when
  // built: no allocation per step); entry layers.size() is the output's.
  std::vector<Index> rows_, steps_;
  AlignedBuffer grad_a_, grad_b_;
};

// A residual block y = x + f(x) (He et al., 2016), f a LayerStack mapping
// d features back to d (checked when built).
class Residual : public Layer {
 public:
  explicit Residual(std::vector<std::shared_ptr<Layer>> layers);
  std::string type() const override { return "Residual"; }
  std::vector<ParamRef*> params() override { return body.params(); }
  std::vector<AlignedBuffer*> buffers() override { return body.buffers(); }
  void check_batch(Index batch, bool training) const override { body.check_batch(batch, training); }
  void plan(Index capacity) override { body.plan(capacity); }
  // Sequences pass through as rows: f must keep the steps (checked when built).
  void forward(const float* x, float* y, Index batch, const StepContext& ctx) override;
  void backward(const float* x, const float* y, float* dy, float* dx, Index batch,
                const StepContext& ctx, bool accumulate) override;
  double regularize(bool add_grad) override;
  void apply_constraints() override;

  LayerStack body;  // f

 private:
  void set_streams();
};

// ---------------------------------------------------------------------------
// Learnable activations (layers_activation.cpp).

// Parametric ReLU (He et al. 2015; PyTorch nn.PReLU): y = x if x > 0 else a x.
// shared: one slope for every feature; otherwise one slope per feature
// (column). dL/da sums x dy over the elements with x <= 0, in a fixed order.
class PReLU : public Layer {
 public:
  PReLU(Index in, bool shared);
  std::string type() const override { return "PReLU"; }
  std::vector<ParamRef*> params() override { return {&alpha}; }
  void forward(const float* x, float* y, Index batch, const StepContext& ctx) override;
  void backward(const float* x, const float* y, float* dy, float* dx, Index batch,
                const StepContext& ctx, bool accumulate) override;
  bool shared;
  ParamRef alpha;  // 1 or in_features slopes

 private:
  AlignedBuffer col_grad_;  // per-column sums before the shared slope adds them up
};

// Swish with a (optionally learnable) beta (Ramachandran et al. 2017):
// y = x sigmoid(beta x). dL/dbeta = sum dy x^2 s (1 - s), s = sigmoid(beta x),
// summed in fixed chunks so it does not depend on the thread count.
class SwishLayer : public Layer {
 public:
  SwishLayer(Index in, float beta, bool learnable);
  std::string type() const override { return "Swish"; }
  std::vector<ParamRef*> params() override {
    if (learnable) return {&beta_param};
    return {};
  }
  void plan(Index capacity) override;
  void forward(const float* x, float* y, Index batch, const StepContext& ctx) override;
  void backward(const float* x, const float* y, float* dy, float* dx, Index batch,
                const StepContext& ctx, bool accumulate) override;
  float beta() const { return learnable ? *beta_param.value() : fixed_beta; }
  float fixed_beta;
  bool learnable;
  ParamRef beta_param;  // one float when learnable

 private:
  // Per-chunk sums of dL/dbeta, as doubles in an aligned buffer (two floats
  // each) so the no-allocation-per-step accounting covers it. Sized by plan.
  AlignedBuffer partial_;
};

// Maxout (Goodfellow et al. 2013): z = x W + b with units * pieces columns,
// y[:, j] = max(z[:, j*pieces + k], k = 0..pieces-1). Unit j owns the
// `pieces` consecutive columns j*pieces .. j*pieces + pieces - 1, so one row
// of a unit's pieces is contiguous. The affine part is a Dense layer (same
// initializers, penalties and max-norm); backward sends each dy to the piece
// that won the max (the first one on ties).
class Maxout : public Layer {
 public:
  Maxout(Index in, Index units, Index pieces, bool use_bias);
  std::string type() const override { return "Maxout"; }
  std::vector<ParamRef*> params() override { return inner->params(); }
  void plan(Index capacity) override;
  void forward(const float* x, float* y, Index batch, const StepContext& ctx) override;
  void backward(const float* x, const float* y, float* dy, float* dx, Index batch,
                const StepContext& ctx, bool accumulate) override;
  double regularize(bool add_grad) override;
  void apply_constraints() override;
  Index units, pieces;
  std::shared_ptr<Dense> inner;  // in -> units * pieces, identity activation

 private:
  AlignedBuffer z_, dz_;
};

// ---------------------------------------------------------------------------
// Margin-softmax heads (layers_margin.cpp).

// y_ij = cos θ_ij = <u_i, v_j>, u_i = x_i / max(‖x_i‖, eps), v_j = W[:, j] /
// max(‖W[:, j]‖, eps), eps = 1e-12 (torch.nn.functional.normalize). No bias.
// The head of the cosface / arcface losses (Wang et al. 2018, Deng et al. 2019).
class CosineDense : public Layer {
 public:
  CosineDense(Index in, Index units);
  std::string type() const override { return "CosineDense"; }
  std::vector<ParamRef*> params() override { return {&kernel}; }
  void plan(Index capacity) override;
  void forward(const float* x, float* y, Index batch, const StepContext& ctx) override;
  void backward(const float* x, const float* y, float* dy, float* dx, Index batch,
                const StepContext& ctx, bool accumulate) override;
  Index units;
  ParamRef kernel;  // (in, units)

 protected:
  AlignedBuffer u_;      // normalised input rows (batch x in)
  AlignedBuffer xnorm_;  // ‖x_i‖ (batch)
  AlignedBuffer v_;      // normalised kernel columns (in x units)
  AlignedBuffer wnorm_;  // ‖W[:, j]‖ (units)
  AlignedBuffer dv_;     // dL/dv (in x units)
  AlignedBuffer sums_;   // per-column double sums (2 floats each)
  double* sums() { return reinterpret_cast<double*>(sums_.data()); }
};

// The layer half of the large_margin_softmax (L-Softmax, Liu et al. 2016) and
// sphereface (A-Softmax, Liu et al. 2017) pairs. f = x V, V = W (L-Softmax)
// or W with L2-normalised columns (SphereFace, normalize_weights): at
// evaluation, and in any forward without a margin target, y = f (the plain
// logits W·x, or ‖x‖ cos θ). In a training forward of a network whose loss is
// the matching margin loss, the label's logit becomes
//   f_y' = r (λ c + ψ(c)) / (1 + λ),  r = ‖x‖ ‖V_y‖,  c = cos θ_y = f_y / r,
//   ψ = (−1)^k T_m(c) − 2k on θ ∈ [kπ/m, (k+1)π/m]
// (T_m the Chebyshev polynomial: cos mθ = T_m(cos θ)), λ = max(lambda_min,
// base (1 + gamma iter)^(−power)), iter = network step + 1 (the authors' Caffe
// counter), and the loss is softmax cross-entropy on y.
// The margin is applied here, not in the loss, because it needs ‖x‖ and
// ‖W_y‖, which only the layer has.
class MarginDense : public Layer {
 public:
  MarginDense(Index in, Index units, bool normalize_weights);
  std::string type() const override { return normalize_weights ? "SphereDense" : "LargeMarginDense"; }
  std::vector<ParamRef*> params() override { return {&kernel}; }
  void plan(Index capacity) override;
  void forward(const float* x, float* y, Index batch, const StepContext& ctx) override;
  void backward(const float* x, const float* y, float* dy, float* dx, Index batch,
                const StepContext& ctx, bool accumulate) override;
  // The loss kind this layer pairs with.
  LossKind loss_kind() const { return normalize_weights ? LossKind::SphereFace : LossKind::LargeMarginSoftmax; }
  Index units;
  bool normalize_weights;
  ParamRef kernel;  // (in, units)

 private:
  const float* weights() const { return normalize_weights ? v_.data() : kernel.value(); }
  AlignedBuffer v_, wnorm_, dv_;  // normalised kernel, its column norms, dL/dV (in x units)
  AlignedBuffer xnorm_;           // ‖x_i‖ (batch)
  AlignedBuffer sums_;            // per-column double sums (2 floats each)
  double* sums() { return reinterpret_cast<double*>(sums_.data()); }
  // Per row of the last margin forward: dL/dr coefficient (φ(c) − c φ'(c)) and
  // φ'(c); label < 0 where no margin was applied.
  AlignedBuffer dphi_, rest_;
  std::vector<std::int64_t> label_;
  bool margin_applied_ = false;
};

}  // namespace nerve
