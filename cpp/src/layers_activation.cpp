// Learnable activations: PReLU, Swish with a learnable beta, Maxout.
//
// Every parameter gradient here is a reduction over the batch. To keep
// training bit-reproducible for any thread count, reductions run over pieces
// whose boundaries depend only on the shape (column blocks, fixed element
// chunks), each piece summed in a fixed order, and the pieces added in order.
#include <algorithm>
#include <cmath>

#include "nerve/layer.hpp"
#include "nerve/parallel.hpp"
#include "nerve/simd_math.hpp"

namespace nerve {

namespace {
// Elements per piece of a flat elementwise pass (same as activation.cpp).
constexpr Index kChunk = 1 << 14;
// Columns per block of a per-column reduction (as column_sums in gemm.cpp).
constexpr Index kColBlock = 256;

inline Index chunks_of(Index n) { return (n + kChunk - 1) / kChunk; }
}  // namespace

// ---------------------------------------------------------------------------
// PReLU

PReLU::PReLU(Index in, bool shared_) : shared(shared_) {
  require(in > 0, "PReLU: input features must be positive, got " + std::to_string(in));
  in_features = out_features = in;
  // Allocated once here, not per step: the shared slope's gradient is the sum
  // of these per-column sums.
  if (shared) col_grad_.resize(in);
}

void PReLU::forward(const float* x, float* y, Index batch, const StepContext& /*ctx*/) {
  const Index cols = in_features;
  const float* a = alpha.value();
  const int t = threads_for(2.0 * static_cast<double>(batch) * cols, batch);
  parallel_for(batch, t, [&](Index r) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    if (shared) {
      const float s = a[0];
#pragma omp simd
      for (Index c = 0; c < cols; ++c) yr[c] = simd::sel(xr[c] > 0.0f, xr[c], s * xr[c]);
    } else {
#pragma omp simd
      for (Index c = 0; c < cols; ++c) yr[c] = simd::sel(xr[c] > 0.0f, xr[c], a[c] * xr[c]);
    }
  });
}

void PReLU::backward(const float* x, const float* /*y*/, float* dy, float* dx, Index batch,
                     const StepContext& /*ctx*/, bool accumulate) {
  const Index cols = in_features;
  const float* a = alpha.value();
  const bool want_grad = trainable && alpha.bound();
  if (!want_grad) {
    if (!dx) return;
    const int t = threads_for(2.0 * static_cast<double>(batch) * cols, batch);
    parallel_for(batch, t, [&](Index r) {
      const float* xr = x + r * cols;
      const float* gr = dy + r * cols;
      float* dr = dx + r * cols;
#pragma omp simd
      for (Index c = 0; c < cols; ++c) {
        const float s = shared ? a[0] : a[c];
        dr[c] = simd::sel(xr[c] > 0.0f, gr[c], s * gr[c]);
      }
    });
    return;
  }
  // One pass: dx and the per-column sums of x*dy over x <= 0 (PyTorch's
  // weight gradient), rows in order within each column block.
  float* out = shared ? col_grad_.data() : alpha.grad();
  const bool acc_out = shared ? false : accumulate;
  const Index blocks = (cols + kColBlock - 1) / kColBlock;
  const int t = threads_for(4.0 * static_cast<double>(batch) * cols, blocks);
  parallel_for(blocks, t, [&](Index blk) {
    const Index c0 = blk * kColBlock, c1 = std::min(cols, c0 + kColBlock);
    float acc[kColBlock];
    for (Index c = c0; c < c1; ++c) acc[c - c0] = 0.0f;
    for (Index r = 0; r < batch; ++r) {
      const float* xr = x + r * cols;
      const float* gr = dy + r * cols;
      float* dr = dx ? dx + r * cols : nullptr;
      if (dr) {
#pragma omp simd
        for (Index c = c0; c < c1; ++c) {
          const float s = shared ? a[0] : a[c];
          dr[c] = simd::sel(xr[c] > 0.0f, gr[c], s * gr[c]);
        }
      }
#pragma omp simd
      for (Index c = c0; c < c1; ++c) acc[c - c0] += simd::sel(xr[c] > 0.0f, 0.0f, xr[c] * gr[c]);
    }
    for (Index c = c0; c < c1; ++c) out[c] = acc_out ? out[c] + acc[c - c0] : acc[c - c0];
  });
  if (shared) {
    double s = 0.0;
    for (Index c = 0; c < cols; ++c) s += col_grad_.data()[c];
    float* g = alpha.grad();
    g[0] = accumulate ? g[0] + static_cast<float>(s) : static_cast<float>(s);
  }
}

// ---------------------------------------------------------------------------
// Swish

SwishLayer::SwishLayer(Index in, float beta_, bool learnable_)
    : fixed_beta(beta_), learnable(learnable_) {
  require(in > 0, "Swish: input features must be positive, got " + std::to_string(in));
  require(std::isfinite(beta_), "Swish: beta must be finite");
  in_features = out_features = in;
}

void SwishLayer::plan(Index capacity) {
  partial_.reserve(checked_mul(2, chunks_of(checked_mul(capacity, in_features, "Swish buffer")), "Swish buffer"));
}

void SwishLayer::forward(const float* x, float* y, Index batch, const StepContext& /*ctx*/) {
  const float b = beta();
  const Index n = batch * in_features;
  const Index pieces = chunks_of(n);
  const int t = threads_for(20.0 * static_cast<double>(n), pieces);
  parallel_for(pieces, t, [&](Index p) {
    const Index lo = p * kChunk, hi = std::min(n, lo + kChunk);
    const float* xp = x + lo;
    float* yp = y + lo;
#pragma omp simd
    for (Index i = 0; i < hi - lo; ++i) {
      // beta x as an exact hi + lo pair, so exp(-|beta x|) in the tail is not
      // spoilt by rounding the product.
      const float h = b * xp[i];
      yp[i] = xp[i] * simd::sigmoid2(h, simd::fma_(b, xp[i], -h));
    }
  });
}

void SwishLayer::backward(const float* x, const float* /*y*/, float* dy, float* dx, Index batch,
                          const StepContext& /*ctx*/, bool accumulate) {
  const float b = beta();
  const Index n = batch * in_features;
  const Index pieces = chunks_of(n);
  const bool want_grad = learnable && trainable && beta_param.bound();
  if (!want_grad && !dx) return;
  if (want_grad) partial_.reserve(2 * pieces);  // allocates only when plan() was skipped
  double* part = reinterpret_cast<double*>(partial_.data());
  const int t = threads_for(30.0 * static_cast<double>(n), pieces);
  parallel_for(pieces, t, [&](Index p) {
    const Index lo = p * kChunk, len = std::min(n, lo + kChunk) - lo;
    const float* xp = x + lo;
    const float* gp = dy + lo;
    float* dp = dx ? dx + lo : nullptr;
    double acc = 0.0;
    if (dp && want_grad) {
#pragma omp simd reduction(+ : acc)
      for (Index i = 0; i < len; ++i) {
        // s = sigmoid(bx), sn = sigmoid(-bx) = 1 - s without cancellation.
        const float h = b * xp[i];
        float s, sn;
        simd::sigmoid_pair2(h, simd::fma_(b, xp[i], -h), s, sn);
        const float ssn = s * sn;
        dp[i] = gp[i] * (s * simd::fma_(h, sn, 1.0f));  // s + b x s (1 - s)
        acc += static_cast<double>(gp[i] * ((xp[i] * ssn) * xp[i]));  // x^2 s (1 - s)
      }
    } else if (dp) {
#pragma omp simd
      for (Index i = 0; i < len; ++i) {
        const float h = b * xp[i];
        float s, sn;
        simd::sigmoid_pair2(h, simd::fma_(b, xp[i], -h), s, sn);
        dp[i] = gp[i] * (s * simd::fma_(h, sn, 1.0f));
      }
    } else {
#pragma omp simd reduction(+ : acc)
      for (Index i = 0; i < len; ++i) {
        const float h = b * xp[i];
        float s, sn;
        simd::sigmoid_pair2(h, simd::fma_(b, xp[i], -h), s, sn);
        acc += static_cast<double>(gp[i] * ((xp[i] * (s * sn)) * xp[i]));
      }
    }
    if (want_grad) part[p] = acc;
  });
  if (want_grad) {
    double s = 0.0;
    for (Index p = 0; p < pieces; ++p) s += part[p];
    float* g = beta_param.grad();
    g[0] = accumulate ? g[0] + static_cast<float>(s) : static_cast<float>(s);
  }
}

// ---------------------------------------------------------------------------
// Maxout

Maxout::Maxout(Index in, Index units_, Index pieces_, bool use_bias)
    : units(units_), pieces(pieces_) {
  require(in > 0, "Maxout: input features must be positive, got " + std::to_string(in));
  require(units_ > 0, "Maxout: units must be positive, got " + std::to_string(units_));
  require(pieces_ > 0, "Maxout: pieces must be positive, got " + std::to_string(pieces_));
  inner = std::make_shared<Dense>(in, checked_mul(units_, pieces_, "Maxout units * pieces"), Activation{}, use_bias);
  in_features = in;
  out_features = units_;
}

void Maxout::plan(Index capacity) {
  inner->plan(capacity);
  const Index n = checked_mul(capacity, units * pieces, "Maxout buffer");  // units * pieces checked at construction
  z_.reserve(n);
  dz_.reserve(n);
}

void Maxout::forward(const float* x, float* y, Index batch, const StepContext& ctx) {
  inner->forward(x, z_.data(), batch, ctx);
  const Index width = units * pieces;
  const float* z = z_.data();
  const int t = threads_for(static_cast<double>(batch) * width, batch);
  parallel_for(batch, t, [&](Index r) {
    const float* zr = z + r * width;
    float* yr = y + r * units;
    for (Index j = 0; j < units; ++j) {
      const float* g = zr + j * pieces;
      float m = g[0];
      // A NaN piece wins (and stays), as torch.max propagates NaN.
      for (Index k = 1; k < pieces; ++k)
        if (g[k] > m || g[k] != g[k]) m = (m != m) ? m : g[k];
      yr[j] = m;
    }
  });
}

void Maxout::backward(const float* x, const float* /*y*/, float* dy, float* dx, Index batch,
                      const StepContext& ctx, bool accumulate) {
  const Index width = units * pieces;
  const float* z = z_.data();
  float* dz = dz_.data();
  const int t = threads_for(2.0 * static_cast<double>(batch) * width, batch);
  parallel_for(batch, t, [&](Index r) {
    const float* zr = z + r * width;
    const float* gr = dy + r * units;
    float* dr = dz + r * width;
    for (Index j = 0; j < units; ++j) {
      const float* g = zr + j * pieces;
      // Arg-max with the forward's rule: the first maximum (or first NaN).
      Index best = 0;
      float m = g[0];
      for (Index k = 1; k < pieces; ++k)
        if (m == m && (g[k] > m || g[k] != g[k])) {
          m = g[k];
          best = k;
        }
      float* d = dr + j * pieces;
      for (Index k = 0; k < pieces; ++k) d[k] = 0.0f;
      d[best] = gr[j];
    }
  });
  inner->trainable = trainable;
  inner->backward(x, z, dz, dx, batch, ctx, accumulate);
}

double Maxout::regularize(bool add_grad) {
  inner->trainable = trainable;
  return inner->regularize(add_grad);
}

void Maxout::apply_constraints() {
  inner->trainable = trainable;
  inner->apply_constraints();
}

}  // namespace nerve
