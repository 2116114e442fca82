#include "nerve/network.hpp"

#include <algorithm>
#include <string>

#include "nerve/gemm.hpp"

namespace nerve {

Network::Network(Index input_dim, std::vector<std::shared_ptr<Layer>> layers)
    : input_dim_(input_dim), layers_(std::move(layers)) {
  require(input_dim > 0, "input_dim must be positive, got " + std::to_string(input_dim));
  Index width = input_dim;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    require(layers_[i] != nullptr, "layer " + std::to_string(i) + " is null");
    require(layers_[i]->in_features == width,
            "layer " + std::to_string(i) + " (" + layers_[i]->type() + ") expects " +
                std::to_string(layers_[i]->in_features) + " input features, but the previous layer gives " +
                std::to_string(width));
    for (ParamRef* p : layers_[i]->params())
      require(p->size == 0 || p->bound(),
              "layer " + std::to_string(i) + " (" + layers_[i]->type() + ") has unbound parameters");
    width = layers_[i]->out_features;
    for (ParamRef* p : layers_[i]->params())
      if (p->bound() && std::find(arenas_.begin(), arenas_.end(), p->arena.get()) == arenas_.end())
        arenas_.push_back(p->arena.get());
  }
  outputs_.resize(layers_.size());
  // Layer::params() builds a vector: ask once here, not in every backward.
  for (auto& layer : layers_) {
    bool any = false;
    for (ParamRef* p : layer->params()) any = any || p->size > 0;
    has_params_.push_back(any);
  }
}

void Network::plan(Index capacity) {
  require(capacity > 0, "batch size must be positive");
  if (capacity <= capacity_) return;
  Index widest = input_dim_;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    layers_[i]->plan(capacity);
    outputs_[i].reserve(capacity * layers_[i]->out_features);
    widest = std::max(widest, layers_[i]->out_features);
  }
  grad_a_.reserve(capacity * widest);
  grad_b_.reserve(capacity * widest);
  capacity_ = capacity;
}

void Network::check_batch(Index batch, bool training) const {
  for (auto& layer : layers_) layer->check_batch(batch, training && layer->trainable);
}

const float* Network::forward(const float* x, Index batch, bool training) {
  check_batch(batch, training);
  plan(batch);
  StepContext ctx{training, seed, step};
  const float* in = x;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    // A frozen layer runs as in evaluation (e.g. frozen batch norm uses its running statistics).
    ctx.training = training && layers_[i]->trainable;
    layers_[i]->forward(in, outputs_[i].data(), batch, ctx);
    in = outputs_[i].data();
  }
  input_ = x;
  last_training_ = training;
  last_batch_ = batch;
  return in;
}

void Network::backward(const float* dout, Index batch, bool accumulate, float* dx) {
  if (input_ == nullptr || batch != last_batch_)
    throw ValueError("backward: call forward on a batch of " + std::to_string(batch) + " rows first");
  // Lowest layer whose gradient anyone needs.
  std::size_t lowest = layers_.size();
  for (std::size_t i = 0; i < layers_.size(); ++i)
    if (layers_[i]->trainable && has_params_[i]) {  // = has_trainable_params(), without allocating
      lowest = i;
      break;
    }
  if (dx) lowest = 0;
  const Index out_width = output_dim();
  float* cur = grad_a_.data();
  float* other = grad_b_.data();
  if (dout != cur) std::copy(dout, dout + batch * out_width, cur);
  if (layers_.empty()) {
    if (dx) std::copy(cur, cur + batch * out_width, dx);
    return;
  }
  StepContext ctx{last_training_, seed, step};
  for (std::size_t i = layers_.size(); i-- > lowest;) {
    const float* x = i == 0 ? input_ : outputs_[i - 1].data();
    float* dxi = i > lowest ? other : (i == 0 ? dx : nullptr);
    ctx.training = last_training_ && layers_[i]->trainable;
    layers_[i]->backward(x, outputs_[i].data(), cur, dxi, batch, ctx, accumulate);
    std::swap(cur, other);
  }
}

double Network::regularize(bool add_grad) {
  double total = 0.0;
  for (auto& layer : layers_) total += layer->regularize(add_grad);
  return total;
}

void Network::apply_masks() {
  for (ParamArena* a : arenas_) a->apply_mask();
}

void Network::apply_constraints() {
  for (auto& layer : layers_) layer->apply_constraints();
}

void Network::check_finite(const float* x, Index rows, Index cols, const char* what) const {
  Index r = 0, c = 0;
  if (!all_finite(x, rows, cols, &r, &c))
    throw ValueError(std::string(what) + " contains NaN or Inf at row " + std::to_string(r) +
                     ", column " + std::to_string(c));
}

StepResult Network::train_step(const float* x, Index batch, const Target& target, const Loss& loss,
                               Optimizer& opt, bool count) {
  require(batch > 0, "train_step: empty batch");
  const Index out = output_dim();
  check_finite(x, batch, input_dim_, "input batch");
  check_batch(batch, true);
  validate_target(loss, target, batch, out);
  if (target.values && loss.kind != LossKind::Distillation)
    check_finite(target.values, batch, out, "target batch");

  const float* y = forward(x, batch, true);
  StepResult result;
  result.loss = loss_forward_backward(loss, y, target, batch, out, loss_grad());
  if (count) result.correct = count_correct(y, target, batch, out);
  backward(loss_grad(), batch, false, nullptr);
  result.loss += regularize(true);
  opt.step();
  apply_masks();  // before the constraints: max-norm rescaling keeps zeros at zero
  apply_constraints();
  step += 1;
  return result;
}

}  // namespace nerve
