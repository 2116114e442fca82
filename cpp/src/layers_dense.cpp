#include <algorithm>
#include <cmath>

#include "nerve/gemm.hpp"
#include "nerve/layer.hpp"
#include "nerve/parallel.hpp"

namespace nerve {

namespace {
ActContext act_context(const StepContext& ctx, std::uint64_t stream) {
  ActContext a;
  a.training = ctx.training;
  a.seed = ctx.seed;
  a.stream = stream;
  a.step = ctx.step;
  return a;
}
}  // namespace

Dense::Dense(Index in, Index units_, const Activation& act_, bool use_bias_)
    : units(units_), act(act_), use_bias(use_bias_) {
  require(in > 0, "Dense: input features must be positive, got " + std::to_string(in));
  require(units_ > 0, "Dense: units must be positive, got " + std::to_string(units_));
  const ActInfo& info = activation_info(act.kind);
  in_features = in;
  out_features = units * info.width_factor;
  keeps_z_ = info.grad_from == GradFrom::Input || info.width_factor != 1;
}

std::vector<ParamRef*> Dense::params() {
  if (use_bias) return {&kernel, &bias};
  return {&kernel};
}

void Dense::plan(Index capacity) {
  const ActInfo& info = activation_info(act.kind);
  if (keeps_z_) z_.reserve(capacity * units);
  if (info.width_factor != 1) dz_.reserve(capacity * units);
}

void Dense::forward(const float* x, float* y, Index batch, const StepContext& ctx) {
  // GEMM straight into the output when the derivative can be taken from y;
  // otherwise into z, which backward needs. The bias + activation tail is one
  // pass over the result either way.
  float* z = keeps_z_ ? z_.data() : y;
  gemm(false, false, batch, units, in_features, x, in_features, kernel.value(), units, z, units,
       false);
  activation_forward(act, z, use_bias ? bias.value() : nullptr, y, batch, units,
                     act_context(ctx, stream));
}

void Dense::backward(const float* x, const float* y, float* dy, float* dx, Index batch,
                     const StepContext& ctx, bool accumulate) {
  const ActInfo& info = activation_info(act.kind);
  // dz overwrites dy in place unless the activation changed the width.
  float* dz = info.width_factor == 1 ? dy : dz_.data();
  activation_backward(act, keeps_z_ ? z_.data() : nullptr, y, dy, dz, batch, units,
                      act_context(ctx, stream));
  if (trainable) {
    if (use_bias) column_sums(dz, batch, units, bias.grad(), accumulate);
    gemm(true, false, in_features, units, batch, x, in_features, dz, units, kernel.grad(), units,
         accumulate);
  }
  if (dx)
    gemm(false, true, batch, in_features, units, dz, units, kernel.value(), units, dx, in_features,
         false);
}

namespace {
// Adds l1*sum|w| + l2*sum w^2 and (optionally) its gradient to g.
double apply_penalty(const Penalty& pen, const float* w, float* g, Index n, bool add_grad) {
  if (!pen.active()) return 0.0;
  double abs_sum = 0.0, sq_sum = 0.0;
  for (Index i = 0; i < n; ++i) {
    abs_sum += std::fabs(w[i]);
    sq_sum += static_cast<double>(w[i]) * w[i];
  }
  if (add_grad) {
    const float l1 = static_cast<float>(pen.l1), two_l2 = static_cast<float>(2.0 * pen.l2);
#pragma omp simd
    for (Index i = 0; i < n; ++i) {
      const float sign = w[i] > 0.0f ? 1.0f : (w[i] < 0.0f ? -1.0f : 0.0f);
      g[i] += l1 * sign + two_l2 * w[i];
    }
  }
  return pen.l1 * abs_sum + pen.l2 * sq_sum;
}
}  // namespace

double Dense::regularize(bool add_grad) {
  const bool grads = add_grad && trainable;
  double total = apply_penalty(kernel_penalty, kernel.value(), kernel.grad(), kernel.size, grads);
  if (use_bias) total += apply_penalty(bias_penalty, bias.value(), bias.grad(), bias.size, grads);
  return total;
}

void Dense::apply_constraints() {
  if (max_norm <= 0.0 || !trainable) return;
  float* w = kernel.value();
  const Index rows = in_features;
  if (max_norm_axis == 0) {
    // Per output unit: column j of W holds the incoming weights of unit j.
    for (Index j = 0; j < units; ++j) {
      double sq = 0.0;
      for (Index i = 0; i < rows; ++i) sq += static_cast<double>(w[i * units + j]) * w[i * units + j];
      const double norm = std::sqrt(sq);
      if (norm > max_norm) {
        // Keras: w * clip(norm, 0, max) / (eps + norm)
        const float scale = static_cast<float>(max_norm / (1e-7 + norm));
        for (Index i = 0; i < rows; ++i) w[i * units + j] *= scale;
      }
    }
  } else {
    for (Index i = 0; i < rows; ++i) {
      double sq = 0.0;
      for (Index j = 0; j < units; ++j) sq += static_cast<double>(w[i * units + j]) * w[i * units + j];
      const double norm = std::sqrt(sq);
      if (norm > max_norm) {
        const float scale = static_cast<float>(max_norm / (1e-7 + norm));
        for (Index j = 0; j < units; ++j) w[i * units + j] *= scale;
      }
    }
  }
}

ActivationLayer::ActivationLayer(Index in, const Activation& act_) : act(act_) {
  require(in > 0, "Activation: input features must be positive");
  in_features = in;
  out_features = in * activation_info(act.kind).width_factor;
}

void ActivationLayer::forward(const float* x, float* y, Index batch, const StepContext& ctx) {
  // No bias: the kernel only reads x (its documented contract), so the
  // previous layer's output stays intact for that layer's backward.
  activation_forward(act, const_cast<float*>(x), nullptr, y, batch, in_features,
                     act_context(ctx, stream));
}

void ActivationLayer::backward(const float* x, const float* y, float* dy, float* dx, Index batch,
                               const StepContext& ctx, bool /*accumulate*/) {
  if (!dx) return;
  activation_backward(act, x, y, dy, dx, batch, in_features, act_context(ctx, stream));
}

}  // namespace nerve
