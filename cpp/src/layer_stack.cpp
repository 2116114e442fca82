// LayerStack: the chain of layers shared by Network and Residual.
#include <algorithm>
#include <string>

#include "nerve/layer.hpp"

namespace nerve {

LayerStack::LayerStack(std::vector<std::shared_ptr<Layer>> layers_, Index in, const std::string& owner)
    : layers(std::move(layers_)), in_features(in) {
  Index width = in;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const std::string where = "layer " + std::to_string(i);
    require(layers[i] != nullptr, owner + ": " + where + " is null");
    require(layers[i]->in_features == width,
            owner + ": " + where + " (" + layers[i]->type() + ") expects " +
                std::to_string(layers[i]->in_features) + " input features, but the previous layer gives " +
                std::to_string(width));
    width = layers[i]->out_features;
  }
  out_features = width;
  outputs_.resize(layers.size());
  rows_.assign(layers.size() + 1, 0);
  steps_.assign(layers.size() + 1, 1);
}

Index LayerStack::out_steps(Index steps) const {
  for (auto& layer : layers) steps = layer->out_steps(steps);
  return steps;
}

Index LayerStack::out_rows(Index rows, Index steps) const {
  require(steps > 0 && rows % steps == 0, "the rows of a sequence batch must be a multiple of its steps");
  return rows / steps * out_steps(steps);
}

void LayerStack::plan(Index capacity) {
  if (capacity <= capacity_) return;
  Index widest = std::max(in_features, out_features);
  for (std::size_t i = 0; i < layers.size(); ++i) {
    layers[i]->plan(capacity);
    outputs_[i].reserve(checked_mul(capacity, layers[i]->out_features, "layer output buffer"));
    widest = std::max(widest, layers[i]->out_features);
  }
  const Index grad_size = checked_mul(capacity, widest, "gradient buffer");
  grad_a_.reserve(grad_size);
  grad_b_.reserve(grad_size);
  capacity_ = capacity;
}

void LayerStack::check_batch(Index batch, bool training, Index steps) const {
  require(steps > 0 && batch % steps == 0, "the rows of a sequence batch must be a multiple of its steps");
  for (auto& layer : layers) {
    layer->check_batch(batch, training && layer->trainable);
    const Index next = layer->out_steps(steps);
    batch = batch / steps * next;
    steps = next;
  }
}

const float* LayerStack::forward(const float* x, Index batch, const StepContext& ctx) {
  StepContext sub = ctx;
  const float* in = x;
  Index rows = batch, steps = ctx.steps;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    sub.training = ctx.training && layers[i]->trainable;
    sub.steps = steps;
    rows_[i] = rows;
    steps_[i] = steps;
    layers[i]->forward(in, outputs_[i].data(), rows, sub);
    in = outputs_[i].data();
    const Index next = layers[i]->out_steps(steps);
    rows = rows / steps * next;
    steps = next;
  }
  rows_[layers.size()] = rows;
  steps_[layers.size()] = steps;
  return in;
}

void LayerStack::backward(const float* x, const float* dout, float* dx, Index batch,
                          const StepContext& ctx, bool accumulate, std::size_t lowest) {
  float* cur = grad_a_.data();
  float* other = grad_b_.data();
  if (layers.empty()) {
    if (dx && dout != dx) std::copy(dout, dout + batch * out_features, dx);
    return;
  }
  // The rows and steps of every layer are those the last forward saw.
  (void)batch;
  const Index out_rows = rows_[layers.size()];
  // Layers overwrite the dy they are given, so the chain works on its own copy.
  if (dout != cur) std::copy(dout, dout + out_rows * out_features, cur);
  StepContext sub = ctx;
  for (std::size_t i = layers.size(); i-- > lowest;) {
    const float* xi = i == 0 ? x : outputs_[i - 1].data();
    float* dxi = i > lowest ? other : (i == 0 ? dx : nullptr);
    sub.training = ctx.training && layers[i]->trainable;
    sub.steps = steps_[i];
    layers[i]->backward(xi, outputs_[i].data(), cur, dxi, rows_[i], sub, accumulate);
    std::swap(cur, other);
  }
}

double LayerStack::regularize(bool add_grad) {
  double total = 0.0;
  for (auto& layer : layers) total += layer->regularize(add_grad);
  return total;
}

void LayerStack::apply_constraints() {
  for (auto& layer : layers) layer->apply_constraints();
}

std::vector<ParamRef*> LayerStack::params() {
  std::vector<ParamRef*> all;
  for (auto& layer : layers)
    for (ParamRef* p : layer->params()) all.push_back(p);
  return all;
}

std::vector<AlignedBuffer*> LayerStack::buffers() {
  std::vector<AlignedBuffer*> all;
  for (auto& layer : layers)
    for (AlignedBuffer* b : layer->buffers()) all.push_back(b);
  return all;
}

}  // namespace nerve
