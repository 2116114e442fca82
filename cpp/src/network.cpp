#include "nerve/network.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "nerve/gemm.hpp"

namespace nerve {

Network::Network(Index input_dim, std::vector<std::shared_ptr<Layer>> layers)
    : input_dim_(input_dim) {
  require(input_dim > 0, "input_dim must be positive, got " + std::to_string(input_dim));
  stack_ = LayerStack(std::move(layers), input_dim, "model");
  for (std::size_t i = 0; i < stack_.layers.size(); ++i) {
    Layer& layer = *stack_.layers[i];
    bool any = false;  // Layer::params() builds a vector: ask once here, not in every backward
    for (ParamRef* p : layer.params()) {
      require(p->size == 0 || p->bound(),
              "layer " + std::to_string(i) + " (" + layer.type() + ") has unbound parameters");
      any = any || p->size > 0;
      if (p->bound() && std::find(arenas_.begin(), arenas_.end(), p->arena.get()) == arenas_.end())
        arenas_.push_back(p->arena.get());
    }
    has_params_.push_back(any);
  }
}

void Network::plan(Index capacity) {
  require(capacity > 0, "batch size must be positive");
  if (capacity <= capacity_) return;
  stack_.plan(capacity);
  capacity_ = capacity;
}

void Network::check_batch(Index batch, bool training, Index steps) const {
  stack_.check_batch(batch, training, steps);
}

const float* Network::forward(const float* x, Index batch, bool training, Index steps,
                             const MarginTarget* margin) {
  check_batch(batch, training, steps);
  plan(batch);
  StepContext ctx{training, seed, step};
  ctx.steps = steps;
  ctx.margin = margin;
  const float* y = stack_.forward(x, batch, ctx);
  input_ = x;
  last_training_ = training;
  last_batch_ = batch;
  last_steps_ = steps;
  last_out_rows_ = stack_.out_rows(batch, steps);
  return y;
}

void Network::backward(const float* dout, Index batch, bool accumulate, float* dx, Optimizer* update) {
  if (input_ == nullptr || !last_training_ || batch != last_batch_)
    throw ValueError("backward: call a training forward on a batch of " + std::to_string(batch) + " rows first");
  // Below the lowest layer with trainable parameters nobody needs a gradient
  // (frozen prefixes cost nothing), unless the caller asks for dL/dx.
  std::size_t lowest = stack_.layers.size();
  for (std::size_t i = 0; i < stack_.layers.size(); ++i)
    if (stack_.layers[i]->trainable && has_params_[i]) {
      lowest = i;
      break;
    }
  if (dx) lowest = 0;
  StepContext ctx{last_training_, seed, step, update};
  ctx.steps = last_steps_;
  stack_.backward(input_, dout, dx, batch, ctx, accumulate, lowest);
}

double Network::regularize(bool add_grad) { return stack_.regularize(add_grad); }

void Network::apply_masks() {
  for (ParamArena* a : arenas_) a->apply_mask();
}

void Network::apply_constraints() { stack_.apply_constraints(); }

void Network::check_finite(const float* x, Index rows, Index cols, const char* what) const {
  Index r = 0, c = 0;
  if (!all_finite(x, rows, cols, &r, &c))
    throw ValueError(std::string(what) + " contains NaN or Inf at row " + std::to_string(r) +
                     ", column " + std::to_string(c));
}

// Per-sample weights (Keras semantics): the batch loss is sum_i w_i l_i / batch,
// where l_i is row i's own loss, so d loss / d pred_i is w_i times the
// unweighted row gradient (every loss is a mean of per-row terms over the rows;
// cross_entropy's weight= divides by the batch's class-weight sum instead, and
// is combined here row by row). The per-row losses are recomputed without a
// gradient: one cheap pass over the output, next to the backward's GEMMs.
static double weight_rows(const Loss& loss, const float* y, const Target& target, Index batch, Index out,
                          float* grad) {
  double total = 0.0;
  for (Index i = 0; i < batch; ++i) {
    const double w = target.weights[i];
    Target row;
    if (target.values) row.values = target.values + i * out;
    if (target.labels) row.labels = target.labels + i;
    total += w * loss_forward_backward(loss, y + i * out, row, 1, out, nullptr);
    float* g = grad + i * out;
    for (Index j = 0; j < out; ++j) g[j] = static_cast<float>(g[j] * w);
  }
  return total / static_cast<double>(batch);
}

StepResult Network::forward_loss(const char* who, const float* x, Index batch, const Target& target,
                                 const Loss& loss, bool count, bool data_checked, Index steps) {
  if (batch <= 0) require(false, std::string(who) + ": empty batch");  // the string only when it fails
  const Index out = output_dim();
  check_batch(batch, true, steps);
  // The loss is over the output's rows: sequences x steps for a sequence
  // output, one row per sequence after a recurrent layer's last state.
  const Index out_rows = output_rows(batch, steps);
  if (!data_checked) {
    check_finite(x, batch, input_dim_, "input batch");
    validate_target(loss, target, out_rows, out);
    if (target.values && loss.kind != LossKind::Distillation)
      check_finite(target.values, out_rows, out, "target batch");
  }
  // large_margin_softmax / sphereface: the last layer applies the margin in
  // this forward (it needs the labels and the loss's parameters).
  MarginTarget margin;
  if (loss.kind == LossKind::LargeMarginSoftmax || loss.kind == LossKind::SphereFace) {
    const auto* head = stack_.layers.empty() ? nullptr : dynamic_cast<const MarginDense*>(stack_.layers.back().get());
    if (!head || head->loss_kind() != loss.kind) {
      const bool lsm = loss.kind == LossKind::LargeMarginSoftmax;
      throw ValueError(std::string("loss '") + (lsm ? "large_margin_softmax" : "sphereface") + "' needs a " +
                       (lsm ? "LargeMarginDense" : "SphereDense") +
                       " output layer (the layer applies the angular margin: it needs |x| and |W_y|); the last "
                       "layer is " + (stack_.layers.empty() ? std::string("missing") : stack_.layers.back()->type()));
    }
    margin.layer = head;
    margin.labels = target.labels;
    margin.loss = &loss;
  }
  const float* y = forward(x, batch, true, steps, margin.layer ? &margin : nullptr);
  StepResult result;
  float* dy = loss_grad();
  result.loss = loss_forward_backward(loss, y, target, out_rows, out, dy);
  if (target.weights) result.loss = weight_rows(loss, y, target, out_rows, out, dy);
  if (count)
    // One logit column (trained with BCE-with-logits) is decided at 0, not 0.5.
    result.correct = loss.kind == LossKind::BinaryCrossEntropyWithLogits
                         ? count_correct_logit_threshold(y, target, out_rows, out)
                         : count_correct(y, target, out_rows, out);
  return result;
}

StepResult Network::compute_gradients(const float* x, Index batch, const Target& target, const Loss& loss,
                                      bool count, bool data_checked, float grad_scale, Index steps) {
  require(std::isfinite(grad_scale), "compute_gradients: grad_scale must be finite");
  StepResult result = forward_loss("compute_gradients", x, batch, target, loss, count, data_checked, steps);
  float* dy = loss_grad();
  if (grad_scale != 1.0f)
    for (Index i = 0, n = last_out_rows_ * output_dim(); i < n; ++i) dy[i] *= grad_scale;
  backward(dy, batch, false, nullptr, nullptr);
  return result;
}

double Network::apply_update(Optimizer& opt) {
  // train_step's order without the fused slices: validation and per-step
  // scalars, penalty gradients, the update, masks, constraints.
  opt.begin_step();
  const double penalty = regularize(true);
  opt.finish_step();
  apply_masks();
  apply_constraints();
  step += 1;
  return penalty;
}

StepResult Network::train_step(const float* x, Index batch, const Target& target, const Loss& loss,
                               Optimizer& opt, bool count, bool data_checked, Index steps) {
  StepResult result = forward_loss("train_step", x, batch, target, loss, count, data_checked, steps);
  // The optimizer's step in pieces: validation and per-step scalars first,
  // then the layers' own updates inside backward (when allowed), then every
  // parameter not updated yet. Same kernels, same order per element as
  // opt.step() after backward and penalties, so the result is the same bits.
  opt.begin_step();
  backward(loss_grad(), batch, false, nullptr, fuse_updates && opt.slices_allowed() ? &opt : nullptr);
  result.loss += regularize(true);
  opt.finish_step();
  apply_masks();  // before the constraints: max-norm rescaling keeps zeros at zero
  apply_constraints();
  step += 1;
  forget_input();  // x belongs to the caller: no pointer to it outlives the step
  return result;
}

}  // namespace nerve
