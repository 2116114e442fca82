// Batch normalization (PyTorch BatchNorm1d semantics; see layer.hpp).
//
// Statistics are summed in double, two passes (mean, then squared deviations
// from it: no catastrophic cancellation when |mean| >> std), over fixed
// chunks of rows whose partial sums are combined in chunk order. The chunk
// boundaries depend only on the batch size, so the result is the same for
// any number of threads.
#include <algorithm>
#include <cmath>

#include "nerve/layer.hpp"
#include "nerve/parallel.hpp"

namespace nerve {

namespace {

constexpr Index kRowChunk = 256;

Index chunks_of(Index batch) { return (batch + kRowChunk - 1) / kRowChunk; }

// partial[c * F + f] = sum over the rows r of chunk c of term(r, f); then
// out[f] = sum_c partial[c * F + f] in chunk order.
template <class Term>
void column_reduce(Index batch, Index F, double* partial, double* out, Term&& term) {
  const Index chunks = chunks_of(batch);
  const int threads = threads_for(4.0 * batch * F, chunks);
  parallel_for(chunks, threads, [&](Index c) {
    double* acc = partial + c * F;
    std::fill(acc, acc + F, 0.0);
    const Index end = std::min(batch, (c + 1) * kRowChunk);
    for (Index r = c * kRowChunk; r < end; ++r) term(r, acc);
  });
  for (Index f = 0; f < F; ++f) {
    double s = 0.0;
    for (Index c = 0; c < chunks; ++c) s += partial[c * F + f];
    out[f] = s;
  }
}

// body(r) for every row r, split over row chunks.
template <class Body>
void for_rows(Index batch, Index F, Body&& body) {
  const Index chunks = chunks_of(batch);
  const int threads = threads_for(3.0 * batch * F, chunks);
  parallel_for(chunks, threads, [&](Index c) {
    const Index end = std::min(batch, (c + 1) * kRowChunk);
    for (Index r = c * kRowChunk; r < end; ++r) body(r);
  });
}

}  // namespace

BatchNorm::BatchNorm(Index features, double momentum_, double eps_)
    : momentum(momentum_), eps(eps_) {
  require(features > 0, "BatchNorm: features must be positive, got " + std::to_string(features));
  require(momentum_ == -1.0 || (momentum_ >= 0.0 && momentum_ <= 1.0),
          "BatchNorm: momentum must be in [0, 1] (or -1: cumulative average), got " + std::to_string(momentum_));
  require(eps_ > 0.0, "BatchNorm: eps must be > 0, got " + std::to_string(eps_));
  in_features = out_features = features;
  const Index work = checked_mul(4, features, "BatchNorm features");
  running_mean.resize(features, 0.0f);
  running_var.resize(features, 1.0f);
  num_batches_tracked.resize(1, 0.0f);
  mean_.assign(features, 0.0);
  invstd_.assign(features, 1.0);
  work_.assign(static_cast<std::size_t>(work), 0.0);
  coef_.assign(static_cast<std::size_t>(work), 0.0f);
}

void BatchNorm::check_batch(Index batch, bool training) const {
  // PyTorch raises too: the variance of one row is 0 and its unbiased
  // estimate undefined, so the layer would output β and learn nothing.
  if (training && batch < 2)
    throw ValueError("BatchNorm: expected more than 1 row per batch when training, got a batch of " +
                     std::to_string(batch) + " (use batches of at least 2 rows, or evaluation mode)");
}

void BatchNorm::plan(Index capacity) {
  const std::size_t need = static_cast<std::size_t>(checked_mul(chunks_of(capacity), in_features, "BatchNorm buffer"));
  if (partial_a_.size() < need) {
    partial_a_.resize(need);
    partial_b_.resize(need);
  }
}

void BatchNorm::forward(const float* x, float* y, Index batch, const StepContext& ctx) {
  check_batch(batch, ctx.training);
  plan(batch);
  const Index F = in_features;
  const float* g = gamma.value();
  const float* b = beta.value();
  if (!ctx.training) {
    const float* rm = running_mean.data();
    const float* rv = running_var.data();
    float* scale = coef_.data();
    for (Index f = 0; f < F; ++f)
      scale[f] = static_cast<float>(g[f] / std::sqrt(static_cast<double>(rv[f]) + eps));
    for_rows(batch, F, [&](Index r) {
      const float* xr = x + r * F;
      float* yr = y + r * F;
#pragma omp simd
      for (Index f = 0; f < F; ++f) yr[f] = (xr[f] - rm[f]) * scale[f] + b[f];
    });
    return;
  }
  double* mean = mean_.data();
  double* invstd = invstd_.data();
  column_reduce(batch, F, partial_a_.data(), mean, [&](Index r, double* acc) {
    const float* xr = x + r * F;
#pragma omp simd
    for (Index f = 0; f < F; ++f) acc[f] += xr[f];
  });
  for (Index f = 0; f < F; ++f) mean[f] /= static_cast<double>(batch);
  column_reduce(batch, F, partial_b_.data(), invstd, [&](Index r, double* acc) {
    const float* xr = x + r * F;
#pragma omp simd
    for (Index f = 0; f < F; ++f) {
      const double d = xr[f] - mean[f];
      acc[f] += d * d;
    }
  });
  const double unbias = static_cast<double>(batch) / static_cast<double>(batch - 1);
  float* rm = running_mean.data();
  float* rv = running_var.data();
  num_batches_tracked.data()[0] += 1.0f;
  const double factor = momentum < 0.0 ? 1.0 / num_batches_tracked.data()[0] : momentum;
  for (Index f = 0; f < F; ++f) {
    const double var = invstd[f] / static_cast<double>(batch);  // biased, for normalizing
    invstd[f] = 1.0 / std::sqrt(var + eps);
    rm[f] = static_cast<float>((1.0 - factor) * rm[f] + factor * mean[f]);
    rv[f] = static_cast<float>((1.0 - factor) * rv[f] + factor * var * unbias);
  }
  for_rows(batch, F, [&](Index r) {
    const float* xr = x + r * F;
    float* yr = y + r * F;
    for (Index f = 0; f < F; ++f)
      yr[f] = static_cast<float>((xr[f] - mean[f]) * invstd[f]) * g[f] + b[f];
  });
}

void BatchNorm::backward(const float* x, const float* /*y*/, float* dy, float* dx, Index batch,
                         const StepContext& ctx, bool accumulate) {
  plan(batch);
  const Index F = in_features;
  const float* g = gamma.value();
  const bool grads = trainable;
  // Per-feature mean and 1/σ of the normalization the forward used.
  const double* mean = mean_.data();
  const double* invstd = invstd_.data();
  double* sdy = work_.data();           // Σ_r dy
  double* sdx = work_.data() + F;       // Σ_r dy (x − μ); the Σ dy x̂ is sdx / σ
  if (!ctx.training) {
    double* em = work_.data() + 2 * F;
    double* ei = work_.data() + 3 * F;
    const float* rm = running_mean.data();
    const float* rv = running_var.data();
    for (Index f = 0; f < F; ++f) {
      em[f] = rm[f];
      ei[f] = 1.0 / std::sqrt(static_cast<double>(rv[f]) + eps);
    }
    mean = em;
    invstd = ei;
  }
  column_reduce(batch, F, partial_a_.data(), sdy, [&](Index r, double* acc) {
    const float* d = dy + r * F;
#pragma omp simd
    for (Index f = 0; f < F; ++f) acc[f] += d[f];
  });
  column_reduce(batch, F, partial_b_.data(), sdx, [&](Index r, double* acc) {
    const float* d = dy + r * F;
    const float* xr = x + r * F;
#pragma omp simd
    for (Index f = 0; f < F; ++f) acc[f] += d[f] * (xr[f] - mean[f]);
  });
  if (grads) {
    float* gg = gamma.grad();
    float* gb = beta.grad();
    for (Index f = 0; f < F; ++f) {
      const float dgamma = static_cast<float>(sdx[f] * invstd[f]);
      const float dbeta = static_cast<float>(sdy[f]);
      gg[f] = accumulate ? gg[f] + dgamma : dgamma;
      gb[f] = accumulate ? gb[f] + dbeta : dbeta;
    }
  }
  if (!dx) return;
  if (!ctx.training) {
    // Running statistics are constants: dx = γ/σ · dy.
    for_rows(batch, F, [&](Index r) {
      const float* d = dy + r * F;
      float* o = dx + r * F;
      for (Index f = 0; f < F; ++f) o[f] = d[f] * static_cast<float>(g[f] * invstd[f]);
    });
    return;
  }
  // dx = γ/σ · (dy − mean(dy) − x̂ · mean(dy · x̂)), with x̂ = (x − μ)/σ.
  const double inv_b = 1.0 / static_cast<double>(batch);
  float* cs = coef_.data();
  float* cm = cs + F;
  float* cx = cs + 2 * F;
  float* mu = cs + 3 * F;
  for (Index f = 0; f < F; ++f) {
    cs[f] = static_cast<float>(g[f] * invstd[f]);
    cm[f] = static_cast<float>(sdy[f] * inv_b);
    cx[f] = static_cast<float>(sdx[f] * inv_b * invstd[f] * invstd[f]);
    mu[f] = static_cast<float>(mean[f]);
  }
  for_rows(batch, F, [&](Index r) {
    const float* d = dy + r * F;
    const float* xr = x + r * F;
    float* o = dx + r * F;
#pragma omp simd
    for (Index f = 0; f < F; ++f) o[f] = cs[f] * (d[f] - cm[f] - (xr[f] - mu[f]) * cx[f]);
  });
}

}  // namespace nerve
