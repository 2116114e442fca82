#include <algorithm>
#include <cmath>

#include "nerve/gemm.hpp"
#include "nerve/skinny.hpp"
#include "nerve/layer.hpp"
#include "nerve/parallel.hpp"
#include "nerve/vec.hpp"

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

// The penalty helpers are compiled once (noinline, noclone): inlined into two callers,
// GCC may contract a*b + c into an FMA in one copy and not in the other, and
// the fused step (which calls them on slices) would lose bit-identity with
// regularize().

// l1 * sum|w| + l2 * sum w^2, summed in order in double.
__attribute__((noinline, noclone)) double penalty_value(const Penalty& pen, const float* w, Index n) {
  double abs_sum = 0.0, sq_sum = 0.0;
  for (Index i = 0; i < n; ++i) {
    abs_sum += std::fabs(w[i]);
    sq_sum += static_cast<double>(w[i]) * w[i];
  }
  return pen.l1 * abs_sum + pen.l2 * sq_sum;
}

// g += its gradient, element by element (so any slice gives the same values).
__attribute__((noinline, noclone)) void add_penalty_grad(const Penalty& pen, const float* w, float* g, Index n) {
  const float l1 = static_cast<float>(pen.l1), two_l2 = static_cast<float>(2.0 * pen.l2);
#pragma omp simd
  for (Index i = 0; i < n; ++i) {
    const float sign = w[i] > 0.0f ? 1.0f : (w[i] < 0.0f ? -1.0f : 0.0f);
    g[i] += l1 * sign + two_l2 * w[i];
  }
}

// The penalty's value and (optionally) its gradient added to g.
double apply_penalty(const Penalty& pen, const float* w, float* g, Index n, bool add_grad) {
  if (!pen.active()) return 0.0;
  const double value = penalty_value(pen, w, n);
  if (add_grad) add_penalty_grad(pen, w, g, n);
  return value;
}

// Up to this batch, backward makes one pass over the rows of W for dW and dX
// (and the fused update); larger batches use GEMM.
constexpr Index kMaxRowBatch = 4;
// Elements of W per block of that pass. The boundaries depend on the shape
// alone, so threads split the blocks without changing any result; 8K
// elements keep a block's weights, gradient and optimizer state (16-20 B per
// element) in L2 from the gradient to the update.
constexpr Index kRowBlockElems = 8192;
// The dot products of dX run U independent FMA chains of vectors (vec.hpp's
// vf: 8 lanes at avx2, 16 at avx512, 1 at generic) per batch row (enough to
// hide the FMA latency: 4 at batch 1-2; 2 at 3-4, where the batch rows give
// the parallelism and registers run short). The chains are then added in a
// fixed tree, so the result depends on the shape (and the level) alone.
template <int B>
constexpr int kChains = B <= 2 ? 4 : 2;

// The U chains pairwise, then the lanes in reduce_add's fixed tree.
template <int U>
float chain_sum(const simd::vf* acc) {
  if constexpr (U == 4) return simd::reduce_add((acc[0] + acc[1]) + (acc[2] + acc[3]));
  else return simd::reduce_add(acc[0] + acc[1]);
}

// For rows [r0, r1) of W (in x units) and a batch of B rows:
//   dx[b, i] = sum_j dz[b, j] W[i, j]                         (when dx)
//   g[i, j] = (accumulate ? g[i, j] : 0) + x[0, i] dz[0, j] + ... + x[B-1, i] dz[B-1, j]
//                                                             (when g; FMA in that order)
// One read of each row of W serves the whole batch's dX. The fused and the
// plain backward both use it, so they agree bit for bit.
template <int B>
void gradient_rows(const float* x, Index in, const float* dz, Index units, const float* w, float* g, float* dx,
                   Index r0, Index r1, bool accumulate) {
  using simd::vf;
  constexpr int W = simd::kLanes;
  constexpr int U = kChains<B>, kLanes = W * U;
  const Index vec_end = units / kLanes * kLanes;
  for (Index i = r0; i < r1; ++i) {
    const float* __restrict wi = w + i * units;
    if (dx) {
      vf acc[B][U];
      for (int b = 0; b < B; ++b)
        for (int u = 0; u < U; ++u) acc[b][u] = vf(0.0f);
      for (Index j = 0; j < vec_end; j += kLanes) {
        vf wv[U];
        for (int u = 0; u < U; ++u) wv[u] = simd::load<vf>(wi + j + W * u);
        for (int b = 0; b < B; ++b)
          for (int u = 0; u < U; ++u)
            acc[b][u] = simd::fma_(simd::load<vf>(dz + b * units + j + W * u), wv[u], acc[b][u]);
      }
      for (int b = 0; b < B; ++b) {
        float sum = chain_sum<U>(acc[b]);
        for (Index j = vec_end; j < units; ++j) sum = std::fma(dz[b * units + j], wi[j], sum);
        dx[b * in + i] = sum;
      }
    }
    if (g) {
      float xi[B];
      for (int b = 0; b < B; ++b) xi[b] = x[b * in + i];
      float* __restrict gi = g + i * units;
#pragma omp simd
      for (Index j = 0; j < units; ++j) {
        float acc = accumulate ? gi[j] : 0.0f;  // never 0 * g: g may hold NaN garbage
        for (int b = 0; b < B; ++b) acc = std::fma(xi[b], dz[b * units + j], acc);
        gi[j] = acc;
      }
    }
  }
}
}  // namespace

Dense::Dense(Index in, Index units_, const Activation& act_, bool use_bias_)
    : units(units_), act(act_), use_bias(use_bias_) {
  require(in > 0, "Dense: input features must be positive, got " + std::to_string(in));
  require(units_ > 0, "Dense: units must be positive, got " + std::to_string(units_));
  const ActInfo& info = activation_info(act.kind);
  in_features = in;
  out_features = checked_mul(units, info.width_factor, "Dense output width");
  checked_mul(in, units, "Dense kernel");  // the kernel's element count must be representable
  keeps_z_ = info.grad_from == GradFrom::Input || info.width_factor != 1;
}

std::vector<ParamRef*> Dense::params() {
  if (use_bias) return {&kernel, &bias};
  return {&kernel};
}

void Dense::plan(Index capacity) {
  const ActInfo& info = activation_info(act.kind);
  const Index n = checked_mul(capacity, units, "Dense pre-activation buffer");
  if (keeps_z_) z_.reserve(n);
  if (info.width_factor != 1) dz_.reserve(n);
}

void Dense::forward(const float* x, float* y, Index batch, const StepContext& ctx) {
  // GEMM straight into the output when the derivative can be taken from y;
  // otherwise into z, which backward needs. The bias + activation tail is one
  // pass over the result either way.
  float* z = keeps_z_ ? z_.data() : y;
  // 2-16 rows (avx512: 2-32), in training as in predict: W read as it lies (skinny.hpp).
  if (skinny_applies(batch, units, in_features))
    skinny_gemm(batch, units, in_features, x, in_features, kernel.value(), units, z, units);
  else if (!ctx.training && !packed_kernel_.empty())
    gemm_prepacked(batch, units, in_features, x, in_features, kernel.value(), units, packed_kernel_, z,
                   units);
  else
    gemm(false, false, batch, units, in_features, x, in_features, kernel.value(), units, z, units,
         false);
  activation_forward(act, z, use_bias ? bias.value() : nullptr, y, batch, units,
                     act_context(ctx, stream));
}

void Dense::backward(const float* x, const float* y, float* dy, float* dx, Index batch,
                     const StepContext& ctx, bool accumulate) {
  const ActInfo& info = activation_info(act.kind);
  const ActContext actx = act_context(ctx, stream);
  const float* z = keeps_z_ ? z_.data() : nullptr;
  kernel_updated_ = false;
  // dz overwrites dy in place unless the activation changed the width.
  float* dz = info.width_factor == 1 ? dy : dz_.data();
  bool dz_and_grads_done = false;  // dZ, the bias sums and dW made by the fused pass below
  if (batch > kMaxRowBatch && trainable && info.width_factor == 1 &&
      activation_backward_is_elementwise(act, actx)) {
    // dW = X^T dZ packs dZ once for the whole product (the large ones): the
    // derivative (dZ made from dY in place) and the bias sums ride along that
    // sweep, each row of dZ in L1, instead of two passes over dY and dZ of
    // their own (bench/README.md, "Levers").
    struct Rows {
      const Activation& act;
      const ActContext& actx;
      const float *z, *y;
      Index units;
    } rows{act, actx, z, y, units};
    BRowPass pass;
    if (!activation_backward_is_identity(act)) {
      pass.ctx = &rows;
      pass.rewrite = [](const void* p, Index row, Index n, float* b) {
        const Rows& r = *static_cast<const Rows*>(p);
        const Index at = row * r.units;
        activation_backward_run(r.act, r.z ? r.z + at : nullptr, r.y + at, b, b, n, r.actx);
      };
    }
    if (use_bias) {
      pass.col_sums = bias.grad();
      pass.accumulate_sums = accumulate;
    }
    dz_and_grads_done = gemm_b_pass(true, in_features, units, batch, x, in_features, dz, units,
                                   kernel.grad(), units, accumulate, pass);
  }
  if (!dz_and_grads_done) {
    activation_backward(act, z, y, dy, dz, batch, units, actx);
    if (trainable && use_bias) column_sums(dz, batch, units, bias.grad(), accumulate);
    if (batch <= kMaxRowBatch) {
      small_batch_backward(x, dz, dx, batch, ctx, accumulate);
      return;
    }
    if (trainable)
      gemm(true, false, in_features, units, batch, x, in_features, dz, units, kernel.grad(), units,
           accumulate);
  }
  if (dx)
    gemm(false, true, batch, in_features, units, dz, units, kernel.value(), units, dx, in_features,
         false);
}

void Dense::small_batch_backward(const float* x, const float* dz, float* dx, Index batch,
                                 const StepContext& ctx, bool accumulate) {
  float* g = trainable ? kernel.grad() : nullptr;
  if (!g && !dx) return;
  float* w = kernel.value();
  // The update may join only a plain training step: the gradient must be
  // complete after this pass (no accumulation) and the layer trained.
  SpanSlice slice;
  if (ctx.optimizer && ctx.training && trainable && !accumulate) slice = ctx.optimizer->find(w, kernel.size);
  const bool update = slice.found();
  if (update && kernel_penalty.active())
    // The loss reports the penalty of the weights it was computed with.
    kernel_penalty_before_update_ = penalty_value(kernel_penalty, w, kernel.size);

  const Index rows_per_block = std::max<Index>(1, kRowBlockElems / units);
  const Index blocks = (in_features + rows_per_block - 1) / rows_per_block;
  // Without a penalty to add to g first, the optimizer makes g in its own
  // pass (update_outer); dX still needs W before the update, so it comes first.
  const bool outer = update && !kernel_penalty.active();
  const double work = static_cast<double>(in_features) * units * (4.0 * batch + (update ? 12.0 : 0.0));
  parallel_for(blocks, threads_for(work, blocks), [&](Index blk) {
    const Index r0 = blk * rows_per_block, r1 = std::min(in_features, r0 + rows_per_block);
    const Index e0 = r0 * units, n = (r1 - r0) * units;
    const auto rows = [&](float* grad, float* dxp) {
      switch (batch) {
        case 1: gradient_rows<1>(x, in_features, dz, units, w, grad, dxp, r0, r1, accumulate); break;
        case 2: gradient_rows<2>(x, in_features, dz, units, w, grad, dxp, r0, r1, accumulate); break;
        case 3: gradient_rows<3>(x, in_features, dz, units, w, grad, dxp, r0, r1, accumulate); break;
        default: gradient_rows<4>(x, in_features, dz, units, w, grad, dxp, r0, r1, accumulate); break;
      }
    };
    if (outer) {
      if (dx) rows(nullptr, dx);
      const OuterGrad og{x + r0, in_features, dz, r1 - r0, units, static_cast<int>(batch)};
      if (!ctx.optimizer->update_outer(slice.sub(e0, n), og)) {
        rows(g, nullptr);
        ctx.optimizer->update_slice(slice.sub(e0, n));
      }
      return;
    }
    rows(g, dx);
    if (update) {
      // Same order of operations as regularize() then Optimizer::step().
      if (kernel_penalty.active()) add_penalty_grad(kernel_penalty, w + e0, g + e0, n);
      ctx.optimizer->update_slice(slice.sub(e0, n));
    }
  });
  if (update) {
    ctx.optimizer->mark_updated(slice);
    kernel_updated_ = true;
  }
}

double Dense::regularize(bool add_grad) {
  const bool grads = add_grad && trainable;
  double total;
  if (kernel_updated_) {  // the gradient went into the update already
    total = kernel_penalty.active() ? kernel_penalty_before_update_ : 0.0;
    kernel_updated_ = false;
  } else {
    total = apply_penalty(kernel_penalty, kernel.value(), kernel.grad(), kernel.size, grads);
  }
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
