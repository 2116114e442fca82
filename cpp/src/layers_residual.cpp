// Residual block y = x + f(x) (He et al., 2016), f a LayerStack.
#include <algorithm>

#include "nerve/layer.hpp"
#include "nerve/rng.hpp"

namespace nerve {

namespace {
Index first_width(const std::vector<std::shared_ptr<Layer>>& layers) {
  require(!layers.empty(), "Residual: needs at least one layer");
  require(layers.front() != nullptr, "Residual: layer 0 is null");
  return layers.front()->in_features;
}
}  // namespace

Residual::Residual(std::vector<std::shared_ptr<Layer>> layers)
    : body(layers, first_width(layers), "Residual") {
  const Index d = body.in_features;
  require(body.out_features == d, "Residual: f must map " + std::to_string(d) + " features to " +
                                      std::to_string(d) + " so that x + f(x) is defined, but its layers give " +
                                      std::to_string(body.out_features));
  // x + f(x) adds row by row: f must give one output row per input row.
  require(body.out_steps(2) == 2 && body.out_steps(7) == 7,
          "Residual: f must keep the time steps of a sequence (a recurrent layer inside needs "
          "return_sequences=True)");
  in_features = out_features = d;
}

void Residual::set_streams() {
  // Sub-layers draw from streams derived from this block's, so two dropouts
  // inside (or a dropout inside and one outside) never share masks.
  for (std::size_t i = 0; i < body.layers.size(); ++i) body.layers[i]->stream = mix_seed(stream, 1000 + i);
}

void Residual::forward(const float* x, float* y, Index batch, const StepContext& ctx) {
  body.plan(batch);
  set_streams();
  const float* fx = body.forward(x, batch, ctx);
  const Index n = batch * in_features;
#pragma omp simd
  for (Index i = 0; i < n; ++i) y[i] = x[i] + fx[i];
}

void Residual::backward(const float* x, const float* /*y*/, float* dy, float* dx, Index batch,
                        const StepContext& ctx, bool accumulate) {
  body.plan(batch);
  set_streams();
  // dL/df = dy; dL/dx = dy + J_f^T dy. The body works on its own copy of dy.
  body.backward(x, dy, dx, batch, ctx, accumulate);
  if (dx) {
    const Index n = batch * in_features;
#pragma omp simd
    for (Index i = 0; i < n; ++i) dx[i] += dy[i];
  }
}

double Residual::regularize(bool add_grad) { return body.regularize(add_grad && trainable); }

void Residual::apply_constraints() {
  if (trainable) body.apply_constraints();
}

}  // namespace nerve
