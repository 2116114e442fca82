// Dropout, alpha dropout and Gaussian noise: training-time randomness keyed
// by (network seed, layer stream, step, element), so a seed gives the same
// masks for any thread count and backward recomputes the mask it needs
// instead of storing it (one Philox block serves four elements: a mask costs
// less to recompute than a stored byte mask costs to write and read back at
// the batch sizes nerve targets; see bench in the README).
#include <algorithm>
#include <cmath>

#include "nerve/layer.hpp"
#include "nerve/parallel.hpp"
#include "nerve/rng.hpp"

namespace nerve {

namespace {

// Elements per parallel piece: a multiple of 4 so Philox blocks never straddle pieces.
constexpr Index kPiece = 1 << 14;

RandomKey key_for(const StepContext& ctx, std::uint64_t stream) {
  return RandomKey{mix_seed(ctx.seed, stream), ctx.step};
}

// out[i] = keep_i ? kept(in[i]) : dropped, with keep_i = (U_i >= rate) and U_i
// word i % 4 of Philox block i / 4.
template <class Kept>
void masked_map(const RandomKey& key, float rate, const float* in, float* out, Index n, Kept&& kept,
                float dropped) {
  const Index pieces = (n + kPiece - 1) / kPiece;
  const int threads = threads_for(40.0 * n, pieces);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (Index p = 0; p < pieces; ++p) {
    const Index begin = p * kPiece, end = std::min(n, begin + kPiece);
    std::uint32_t w[4];
    for (Index i = begin; i < end; i += 4) {
      key.block(static_cast<std::uint64_t>(i / 4), w);
      const Index m = std::min<Index>(4, end - i);
      for (Index k = 0; k < m; ++k)
        out[i + k] = RandomKey::to_unit_float(w[k]) >= rate ? kept(in[i + k]) : dropped;
    }
  }
}

void check_rate(const char* name, double rate) {
  require(rate >= 0.0 && rate < 1.0,
          std::string(name) + ": rate must be in [0, 1), got " + std::to_string(rate));
}

// AlphaDropout's constants (PyTorch ATen Dropout.cpp): α' = −λα of SELU.
constexpr double kSeluNegSat = 1.7580993408473766;  // λα
struct AlphaAffine {
  float a, kept_shift, dropped;
};
AlphaAffine alpha_affine(double p) {
  const double a = 1.0 / std::sqrt((kSeluNegSat * kSeluNegSat * p + 1.0) * (1.0 - p));
  return {static_cast<float>(a), static_cast<float>(kSeluNegSat * a * p),
          static_cast<float>(-kSeluNegSat * a * (1.0 - p))};
}

}  // namespace

Dropout::Dropout(Index features, double rate_) : rate(rate_) {
  require(features > 0, "Dropout: features must be positive, got " + std::to_string(features));
  check_rate("Dropout", rate_);
  in_features = out_features = features;
}

void Dropout::forward(const float* x, float* y, Index batch, const StepContext& ctx) {
  const Index n = batch * in_features;
  if (!ctx.training || rate == 0.0) {
    std::copy(x, x + n, y);
    return;
  }
  const float scale = static_cast<float>(1.0 / (1.0 - rate));
  masked_map(key_for(ctx, stream), static_cast<float>(rate), x, y, n,
             [scale](float v) { return v * scale; }, 0.0f);
}

void Dropout::backward(const float* /*x*/, const float* /*y*/, float* dy, float* dx, Index batch,
                       const StepContext& ctx, bool /*accumulate*/) {
  if (!dx) return;
  // The same mask and scale as forward: dx = dy · mask / (1 − rate).
  forward(dy, dx, batch, ctx);
}

AlphaDropout::AlphaDropout(Index features, double rate_) : rate(rate_) {
  require(features > 0, "AlphaDropout: features must be positive, got " + std::to_string(features));
  check_rate("AlphaDropout", rate_);
  in_features = out_features = features;
}

void AlphaDropout::forward(const float* x, float* y, Index batch, const StepContext& ctx) {
  const Index n = batch * in_features;
  if (!ctx.training || rate == 0.0) {
    std::copy(x, x + n, y);
    return;
  }
  const AlphaAffine c = alpha_affine(rate);
  masked_map(key_for(ctx, stream), static_cast<float>(rate), x, y, n,
             [c](float v) { return c.a * v + c.kept_shift; }, c.dropped);
}

void AlphaDropout::backward(const float* /*x*/, const float* /*y*/, float* dy, float* dx, Index batch,
                            const StepContext& ctx, bool /*accumulate*/) {
  if (!dx) return;
  const Index n = batch * in_features;
  if (!ctx.training || rate == 0.0) {
    std::copy(dy, dy + n, dx);
    return;
  }
  const float a = alpha_affine(rate).a;
  masked_map(key_for(ctx, stream), static_cast<float>(rate), dy, dx, n,
             [a](float v) { return a * v; }, 0.0f);
}

GaussianNoise::GaussianNoise(Index features, double stddev_) : stddev(stddev_) {
  require(features > 0, "GaussianNoise: features must be positive, got " + std::to_string(features));
  require(std::isfinite(stddev_) && stddev_ >= 0.0,
          "GaussianNoise: stddev must be a finite number >= 0, got " + std::to_string(stddev_));
  in_features = out_features = features;
}

void GaussianNoise::forward(const float* x, float* y, Index batch, const StepContext& ctx) {
  const Index n = batch * in_features;
  if (!ctx.training || stddev == 0.0) {
    std::copy(x, x + n, y);
    return;
  }
  const RandomKey key = key_for(ctx, stream);
  const Index pieces = (n + kPiece - 1) / kPiece;
  const int threads = threads_for(80.0 * n, pieces);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (Index p = 0; p < pieces; ++p) {
    const Index begin = p * kPiece, end = std::min(n, begin + kPiece);
    std::uint32_t w[4];
    // Box-Muller: one block gives the pair of normals of elements 2k, 2k+1.
    for (Index i = begin; i < end; i += 2) {
      key.block(static_cast<std::uint64_t>(i / 2), w);
      const double r = stddev * std::sqrt(-2.0 * std::log(RandomKey::to_open_unit_double(w[0], w[1])));
      const double t = 6.283185307179586 * RandomKey::to_open_unit_double(w[2], w[3]);
      y[i] = x[i] + static_cast<float>(r * std::cos(t));
      if (i + 1 < end) y[i + 1] = x[i + 1] + static_cast<float>(r * std::sin(t));
    }
  }
}

void GaussianNoise::backward(const float* /*x*/, const float* /*y*/, float* dy, float* dx, Index batch,
                             const StepContext& /*ctx*/, bool /*accumulate*/) {
  if (dx) std::copy(dy, dy + batch * in_features, dx);
}

}  // namespace nerve
