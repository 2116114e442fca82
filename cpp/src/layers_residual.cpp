// Residual block y = x + f(x) (He et al., 2016), f a stack of sub-layers, and
// the pruning masks' re-zeroing pass.
#include <algorithm>

#include "nerve/layer.hpp"
#include "nerve/parallel.hpp"
#include "nerve/rng.hpp"

namespace nerve {

Residual::Residual(std::vector<std::shared_ptr<Layer>> layers_) : layers(std::move(layers_)) {
  require(!layers.empty(), "Residual: needs at least one layer");
  for (std::size_t i = 0; i < layers.size(); ++i)
    require(layers[i] != nullptr, "Residual: layer " + std::to_string(i) + " is null");
  const Index d = layers.front()->in_features;
  Index width = d;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    require(layers[i]->in_features == width,
            "Residual: layer " + std::to_string(i) + " (" + layers[i]->type() + ") expects " +
                std::to_string(layers[i]->in_features) + " input features, but gets " +
                std::to_string(width));
    width = layers[i]->out_features;
  }
  require(width == d, "Residual: f must map " + std::to_string(d) + " features to " +
                          std::to_string(d) + " so that x + f(x) is defined, but its layers give " +
                          std::to_string(width));
  in_features = out_features = d;
  outputs_.resize(layers.size());
}

std::vector<ParamRef*> Residual::params() {
  std::vector<ParamRef*> all;
  for (auto& l : layers)
    for (ParamRef* p : l->params()) all.push_back(p);
  return all;
}

std::vector<AlignedBuffer*> Residual::buffers() {
  std::vector<AlignedBuffer*> all;
  for (auto& l : layers)
    for (AlignedBuffer* b : l->buffers()) all.push_back(b);
  return all;
}

void Residual::check_batch(Index batch, bool training) const {
  for (auto& l : layers) l->check_batch(batch, training && l->trainable);
}

void Residual::plan(Index capacity) {
  Index widest = in_features;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    layers[i]->plan(capacity);
    outputs_[i].reserve(capacity * layers[i]->out_features);
    widest = std::max(widest, layers[i]->out_features);
  }
  grad_a_.reserve(capacity * widest);
  grad_b_.reserve(capacity * widest);
}

void Residual::set_streams() {
  // Sub-layers draw from streams derived from this block's, so two dropouts
  // inside (or a dropout inside and one outside) never share masks.
  for (std::size_t i = 0; i < layers.size(); ++i) layers[i]->stream = mix_seed(stream, 1000 + i);
}

void Residual::forward(const float* x, float* y, Index batch, const StepContext& ctx) {
  plan(batch);
  set_streams();
  StepContext sub = ctx;
  const float* in = x;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    sub.training = ctx.training && layers[i]->trainable;
    layers[i]->forward(in, outputs_[i].data(), batch, sub);
    in = outputs_[i].data();
  }
  const Index n = batch * in_features;
#pragma omp simd
  for (Index i = 0; i < n; ++i) y[i] = x[i] + in[i];
}

void Residual::backward(const float* x, const float* /*y*/, float* dy, float* dx, Index batch,
                        const StepContext& ctx, bool accumulate) {
  plan(batch);
  set_streams();
  const Index n = batch * in_features;
  // dL/df = dy (sub-layers overwrite their dy, so they get a copy); dL/dx = dy + J_f^T dy.
  float* cur = grad_a_.data();
  float* other = grad_b_.data();
  std::copy(dy, dy + n, cur);
  StepContext sub = ctx;
  for (std::size_t i = layers.size(); i-- > 0;) {
    const float* xi = i == 0 ? x : outputs_[i - 1].data();
    float* dxi = i > 0 ? other : dx;
    sub.training = ctx.training && layers[i]->trainable;
    layers[i]->backward(xi, outputs_[i].data(), cur, dxi, batch, sub, accumulate);
    std::swap(cur, other);
  }
  if (dx) {
#pragma omp simd
    for (Index i = 0; i < n; ++i) dx[i] += dy[i];
  }
}

double Residual::regularize(bool add_grad) {
  double total = 0.0;
  for (auto& l : layers) total += l->regularize(add_grad && trainable);
  return total;
}

void Residual::apply_constraints() {
  if (!trainable) return;
  for (auto& l : layers) l->apply_constraints();
}

void ParamArena::apply_mask() {
  if (!has_mask()) return;
  float* p = values.data();
  const float* m = mask.data();
  const Index n = size();
  constexpr Index kPiece = 1 << 16;
  const Index pieces = (n + kPiece - 1) / kPiece;
  const int threads = threads_for(2.0 * n, pieces);
  parallel_for(pieces, threads, [&](Index c) {
    const Index end = std::min(n, (c + 1) * kPiece);
#pragma omp simd
    for (Index i = c * kPiece; i < end; ++i) p[i] = m[i] != 0.0f ? p[i] : 0.0f;
  });
}

}  // namespace nerve
