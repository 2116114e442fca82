// Losses with PyTorch's "mean" reduction: value in double, gradient written in
// the same pass, deterministic for any thread count.
//
// Determinism: the batch is cut into chunks whose size depends only on the
// problem size (never on the thread count); each chunk's partial sum (double)
// lands in a fixed slot of a stack array and the slots are added in order.
// Threads only decide who computes which slot, so the result is bit-identical
// for 1 or N threads.
#include "nerve/loss.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <sstream>
#include <tuple>
#include <utility>

#include "nerve/parallel.hpp"
#include "nerve/rowwise.hpp"
#include "nerve/simd_math.hpp"
#include "nerve/vec.hpp"

namespace nerve {

namespace {

// ---------------------------------------------------------------------------
// Chunked, order-fixed reduction.

// Cap on stack partial sums. Beyond kMaxChunks * base items the chunks grow
// instead of multiplying, so the array never spills to the heap.
constexpr Index kMaxChunks = 128;

struct Chunking {
  Index size;
  Index count;
};

inline Chunking chunking(Index n, Index base) {
  Index size = base;
  if (n > base * kMaxChunks) {
    size = (n + kMaxChunks - 1) / kMaxChunks;
    size = (size + 7) / 8 * 8;  // keep AVX lanes aligned to the chunk start
  }
  Index count = n <= 0 ? 0 : (n + size - 1) / size;
  return {size, count};
}

// Sums f(begin, end) over fixed chunks of [0, n). f must not throw.
template <class F>
double chunked_sum(Index n, Index base, double flops_per_item, const F& f) {
  const Chunking ch = chunking(n, base);
  if (ch.count == 1) return f(Index(0), n);
  double partial[kMaxChunks];
  parallel_for(ch.count, threads_for(flops_per_item * static_cast<double>(n), ch.count),
               [&](Index k) { partial[k] = f(k * ch.size, std::min(n, (k + 1) * ch.size)); });
  double s = 0.0;
  for (Index k = 0; k < ch.count; ++k) s += partial[k];
  return s;
}

constexpr Index kElemChunk = 4096;  // elementwise losses: elements per chunk
constexpr Index kRowChunk = 256;    // row-wise losses: rows per chunk
// What a row of a row-wise loss costs beyond its elements (max, log, the
// target's terms), in flops of work when deciding to split: cross-entropy on
// 10 classes takes ~80 ns a row, not 10 x 25 flops' worth, and its 512 rows
// (~40 us) ran on one thread of two.
constexpr double kRowFlops = 2000.0;

// The losses read floats into double lanes and sum in double: D is the
// level's widest double register (simd::vf64: 8 lanes at avx512, 4 at avx2,
// a plain double at generic), one body for every level.
using simd::vf64;
constexpr Index kDLanes = simd::kLanes64;

// The first k <= kDLanes floats at x as doubles, the lanes past them -inf
// (exp of them is 0); no read past x + k.
NERVE_INLINE vf64 load_or_neg_inf(const float* x, Index k) {
  return k == kDLanes ? simd::load_f32<vf64>(x) : simd::load_f32_partial<vf64>(x, static_cast<int>(k), -INFINITY);
}
NERVE_INLINE void store_first(float* g, vf64 v, Index k) {
  if (k == kDLanes)
    simd::store_f32(g, v);
  else
    simd::store_f32_partial(g, v, static_cast<int>(k));
}

// ---------------------------------------------------------------------------
// Elementwise losses on d = pred - target (MSE, MAE, Huber, SmoothL1).
// Each op gives the per-element loss and d(loss)/d(pred) before the 1/n of
// the mean, on double lanes D (double, or a twin of vec.hpp).

// MSE (torch.nn.MSELoss): l = d^2, dl/dd = 2d.
struct MseOp {
  template <class D>
  D loss(D d) const { return d * d; }
  template <class D>
  D grad(D d) const { return d + d; }
};

// MAE / L1 (torch.nn.L1Loss): l = |d|, dl/dd = sign(d) with sign(0) = 0 (what
// autograd of abs gives; NaN gives 0 too, both compares false).
struct MaeOp {
  template <class D>
  D loss(D d) const { return simd::abs_(d); }
  template <class D>
  D grad(D d) const {
    return simd::sel(d > D(0.0), D(1.0), simd::sel(d < D(0.0), D(-1.0), D(0.0)));
  }
};

// Huber (torch.nn.HuberLoss): l = 0.5 d^2 if |d| < delta else
// delta (|d| - 0.5 delta); dl/dd = clamp(d, -delta, delta).
struct HuberOp {
  double delta;
  template <class D>
  D loss(D d) const {
    const D z = simd::abs_(d), dl(delta), half(0.5);
    return simd::sel(z < dl, half * (d * d), dl * (z - half * dl));
  }
  template <class D>
  D grad(D d) const { return simd::min_(simd::max_(d, D(-delta)), D(delta)); }
};

// SmoothL1 (torch.nn.SmoothL1Loss), beta > 0: l = 0.5 d^2 / beta if
// |d| < beta else |d| - 0.5 beta; dl/dd = clamp(d / beta, -1, 1).
// beta == 0 is routed to MaeOp, as torch.nn.functional.smooth_l1_loss does.
struct SmoothL1Op {
  double beta;
  template <class D>
  D loss(D d) const {
    const D z = simd::abs_(d), b(beta), half(0.5);
    return simd::sel(z < b, half * (d * d) / b, z - half * b);
  }
  template <class D>
  D grad(D d) const { return simd::min_(simd::max_(d / D(beta), D(-1.0)), D(1.0)); }
};

// Sum of op.loss over [b, e); grad (if any) gets scale * op.grad. Lanes are
// counted from b, so the summation order is a function of the chunk alone.
template <class Op>
double diff_chunk(const Op& op, const float* p, const float* t, float* g, double scale, Index b,
                  Index e) {
  Index i = b;
  vf64 acc(0.0);
  const vf64 sc(scale);
  for (; i + kDLanes <= e; i += kDLanes) {
    const vf64 d = simd::load_f32<vf64>(p + i) - simd::load_f32<vf64>(t + i);
    acc = acc + op.loss(d);
    if (g) simd::store_f32(g + i, op.grad(d) * sc);
  }
  double s = simd::reduce_add(acc);
  for (; i < e; ++i) {
    const double d = static_cast<double>(p[i]) - static_cast<double>(t[i]);
    s += op.loss(d);
    if (g) g[i] = static_cast<float>(op.grad(d) * scale);
  }
  return s;
}

template <class Op>
double diff_loss(const Op& op, const float* p, const float* t, Index n, float* g) {
  const double scale = 1.0 / static_cast<double>(n);
  double s = chunked_sum(n, kElemChunk, 8.0,
                         [&](Index b, Index e) { return diff_chunk(op, p, t, g, scale, b, e); });
  return s * scale;
}

// Binary cross-entropy on probabilities (torch.nn.BCELoss):
// l = -(y max(log x, -100) + (1 - y) max(log(1 - x), -100)).
// Gradient as PyTorch's backward: (x - y) / max(x (1 - x), 1e-12), which
// stays finite at x = 0 or 1 where the clamped log is flat.
// The logs are nerve's float SIMD log (<= 1 ulp; the scalar double std::log
// made this loss ~20 ns per element): log x with a subnormal x scaled by 2^24
// first, log(1 - x) as log of the rounded w = 1 - x plus the exact lost part.
constexpr float kMinNormal = std::numeric_limits<float>::min();
NERVE_INLINE float bce_log_x(float x) {
  const bool sub = x < kMinNormal;
  const float xs = simd::max_(simd::sel(sub, x * 16777216.0f, x), kMinNormal);
  return simd::max_(simd::log(xs) - simd::sel(sub, 16.6355324f, 0.0f), -100.0f);  // 24 ln 2
}
NERVE_INLINE float bce_log_1mx(float x) {
  const float w = 1.0f - x;
  const float c = -x - (w - 1.0f);
  const float l = simd::log_corr(simd::max_(w, kMinNormal), c);
  return simd::sel(w > 0.0f, simd::max_(l, -100.0f), -100.0f);
}

double bce_loss(const float* p, const float* t, Index n, float* g) {
  const double scale = 1.0 / static_cast<double>(n);
  const float fscale = static_cast<float>(scale);
  auto chunk = [&](Index b, Index e) {
    // Eight running sums, a separate gradient loop: in one loop with a single
    // double sum GCC left it scalar (~20 ns per element).
    constexpr Index kLanes = 8;
    double acc[kLanes] = {};
    Index i = b;
    for (; i + kLanes <= e; i += kLanes) {
#pragma omp simd
      for (Index l = 0; l < kLanes; ++l) {
        const float x = p[i + l], y = t[i + l];
        acc[l] -= static_cast<double>(y * bce_log_x(x) + (1.0f - y) * bce_log_1mx(x));
      }
    }
    double s = 0.0;
    for (Index l = 0; l < kLanes; ++l) s += acc[l];
    for (; i < e; ++i) s -= static_cast<double>(t[i] * bce_log_x(p[i]) + (1.0f - t[i]) * bce_log_1mx(p[i]));
    if (g) {
#pragma omp simd
      for (Index j = b; j < e; ++j) g[j] = (p[j] - t[j]) / simd::max_(p[j] * (1.0f - p[j]), 1e-12f) * fscale;
    }
    return s;
  };
  return chunked_sum(n, kElemChunk, 40.0, chunk) * scale;
}

// BCE with logits (torch.nn.BCEWithLogitsLoss, no pos_weight):
// l = max(x, 0) - x y + log1p(exp(-|x|)) never overflows; dl/dx = sigmoid(x) - y.
double bce_logits_loss(const float* p, const float* t, Index n, float* g) {
  const double scale = 1.0 / static_cast<double>(n);
  // One lane of any width (D = double or a twin): loss and the gradient's
  // sigmoid(x) - y before the mean's scale.
  auto lane = [](auto x, auto y, auto& grad) {
    using D = decltype(x);
    const D a = simd::exp_nonpos_f64(-simd::abs_(x));
    grad = simd::sel(x >= D(0.0), D(1.0), a) / (D(1.0) + a) - y;
    return simd::mul_add(-x, y, simd::max_(x, D(0.0))) + simd::log1p_unit_f64(a);
  };
  auto chunk = [&](Index b, Index e) {
    Index i = b;
    vf64 acc(0.0), gr;
    const vf64 sc(scale);
    for (; i + kDLanes <= e; i += kDLanes) {
      acc = acc + lane(simd::load_f32<vf64>(p + i), simd::load_f32<vf64>(t + i), gr);
      if (g) simd::store_f32(g + i, gr * sc);
    }
    double s = simd::reduce_add(acc), gs;
    for (; i < e; ++i) {
      s += lane(static_cast<double>(p[i]), static_cast<double>(t[i]), gs);
      if (g) g[i] = static_cast<float>(gs * scale);
    }
    return s;
  };
  return chunked_sum(n, kElemChunk, 40.0, chunk) * scale;
}

// ---------------------------------------------------------------------------
// Row-wise losses on logits. Every row: one pass for the max, one for the
// exp-sum (exp(x - max) parked in the grad row as float when a grad is wanted),
// one to turn those into the gradient. No heap, no scratch.

// z = sum_j exp(x_j - m) in double; with g, g_j = exp(x_j - m) as float.
double row_exp_sum(const float* x, Index c, double m, float* g) {
  const vf64 mv(m);
  vf64 acc(0.0);
  for (Index j = 0; j < c; j += kDLanes) {
    const Index k = std::min(c - j, kDLanes);
    const vf64 e = simd::exp_nonpos_f64(load_or_neg_inf(x + j, k) - mv);
    acc = acc + e;
    if (g) store_first(g + j, e, k);
  }
  return simd::reduce_add(acc);
}

// Cross-entropy (torch.nn.CrossEntropyLoss), logits x, log p = log_softmax(x).
// Every variant is l_i = sum_c q_ic (-log p_ic) with gradient
// (S_i p_ic - q_ic) / D, S_i = sum_c q_ic, and D the mean's denominator:
//  * labels y, smoothing e, weights w (PyTorch's label-smoothing path):
//      q_ic = (1-e) w_{y_i} [c = y_i] + (e/C) w_c,  D = sum_i w_{y_i}
//    (w = 1 without weights, so D = rows). PyTorch normalises the smoothing
//    term by the same sum of target weights as the NLL term.
//  * probability targets t (PyTorch's soft-target path):
//      q_ic = w_c ((1-e) t_ic + e/C),  D = rows  (even with weights)
// With labels and weights where every sampled weight is 0, D = 0 and the
// result is NaN, as in PyTorch.
struct CrossEntropyArgs {
  const float* x;
  const Target* target;
  Index cols;
  float* grad;
  double eps;            // label smoothing
  const float* weight;   // nullptr: none
  double wsum;           // sum_c w_c (cols when unweighted)
  double inv_denom;      // 1 / D
};

double ce_rows(const CrossEntropyArgs& a, Index b, Index e) {
  const Index C = a.cols;
  const double eps = a.eps, eC = eps / static_cast<double>(C);
  double total = 0.0;
  for (Index i = b; i < e; ++i) {
    const float* x = a.x + i * C;
    float* g = a.grad ? a.grad + i * C : nullptr;
    const double m = row_max(x, C);
    const double z = row_exp_sum(x, C, m, g);
    const double logz = std::log(z);
    // -log p_c = logz - (x_c - m): centred so logits of +-1000 lose nothing.
    double l, S;
    if (a.target->labels) {
      const Index y = static_cast<Index>(a.target->labels[i]);
      const double wy = a.weight ? a.weight[y] : 1.0;
      const double nll = logz - (static_cast<double>(x[y]) - m);
      l = (1.0 - eps) * wy * nll;
      S = (1.0 - eps) * wy;
      if (eps != 0.0) {
        double sm = 0.0;
        if (a.weight) {
          for (Index j = 0; j < C; ++j) sm += a.weight[j] * (logz - (static_cast<double>(x[j]) - m));
        } else {
          for (Index j = 0; j < C; ++j) sm += logz - (static_cast<double>(x[j]) - m);
        }
        l += eC * sm;
        S += eC * a.wsum;
      }
      if (g) {
        const double pz = S * a.inv_denom / z;
        if (eps == 0.0) {
          for (Index j = 0; j < C; ++j) g[j] = static_cast<float>(g[j] * pz);
        } else if (a.weight) {
          for (Index j = 0; j < C; ++j)
            g[j] = static_cast<float>(g[j] * pz - eC * a.weight[j] * a.inv_denom);
        } else {
          const double off = eC * a.inv_denom;
          for (Index j = 0; j < C; ++j) g[j] = static_cast<float>(g[j] * pz - off);
        }
        g[y] = static_cast<float>(static_cast<double>(g[y]) - (1.0 - eps) * wy * a.inv_denom);
      }
    } else {
      // Branch-free loops (the weight chosen outside) so they vectorize.
      const float* t = a.target->values + i * C;
      const double shift = logz + m;  // -log p_j = shift - x_j
      l = 0.0;
      S = 0.0;
      auto sums = [&](auto weight_of) {
#pragma omp simd reduction(+ : l, S)
        for (Index j = 0; j < C; ++j) {
          const double q = ((1.0 - eps) * t[j] + eC) * weight_of(j);
          S += q;
          l += q * (shift - static_cast<double>(x[j]));
        }
      };
      auto grads = [&](auto weight_of) {
        const double pz = S * a.inv_denom / z;
#pragma omp simd
        for (Index j = 0; j < C; ++j) {
          const double q = ((1.0 - eps) * t[j] + eC) * weight_of(j);
          g[j] = static_cast<float>(g[j] * pz - q * a.inv_denom);
        }
      };
      const float* w = a.weight;
      if (w) {
        auto weighted = [w](Index j) { return static_cast<double>(w[j]); };
        sums(weighted);
        if (g) grads(weighted);
      } else {
        auto unweighted = [](Index) { return 1.0; };
        sums(unweighted);
        if (g) grads(unweighted);
      }
    }
    total += l;
  }
  return total;
}

double cross_entropy_loss(const Loss& loss, const float* x, const Target& target, Index rows,
                          Index cols, float* grad) {
  CrossEntropyArgs a{x, &target, cols, grad, loss.label_smoothing, nullptr,
                     static_cast<double>(cols), 0.0};
  double denom = static_cast<double>(rows);
  if (!loss.class_weight.empty()) {
    a.weight = loss.class_weight.data();
    a.wsum = 0.0;
    for (Index j = 0; j < cols; ++j) a.wsum += a.weight[j];
    if (target.labels) {
      denom = 0.0;
      for (Index i = 0; i < rows; ++i) denom += a.weight[target.labels[i]];
    }
  }
  a.inv_denom = 1.0 / denom;
  double s = chunked_sum(rows, kRowChunk, kRowFlops + 25.0 * static_cast<double>(cols),
                         [&](Index b, Index e) { return ce_rows(a, b, e); });
  return s / denom;
}

// Focal loss (Lin et al. 2017, softmax form), integer labels:
// l_i = -a (1 - p_y)^gamma log p_y, mean over rows; a = alpha when given,
// else 1 (a single scalar scaling every row, not per-class alpha).
// gamma = 0 is cross-entropy. With u = 1 - p_y,
// dl/dx_j = a [gamma u^(gamma-1) p_y log p_y - u^gamma] ([j = y] - p_j).
// u is computed as -expm1(log p_y) so it keeps its digits when p_y -> 1.
// u^k for a small k >= 0 (u^0 = 1, as std::pow).
inline double int_pow(double u, int k) {
  double r = 1.0;
  for (int i = 0; i < k; ++i) r *= u;
  return r;
}

double focal_loss(const Loss& loss, const float* x, const std::int64_t* labels, Index rows,
                  Index cols, float* grad) {
  const double gamma = loss.gamma;
  const bool int_gamma = gamma >= 1.0 && gamma <= 8.0 && gamma == std::floor(gamma);
  const int igamma = int_gamma ? static_cast<int>(gamma) : 0;
  const double alpha = loss.has_alpha ? loss.alpha : 1.0;
  const double inv_n = 1.0 / static_cast<double>(rows);
  auto chunk = [&](Index b, Index e) {
    double total = 0.0;
    for (Index i = b; i < e; ++i) {
      const float* xi = x + i * cols;
      float* g = grad ? grad + i * cols : nullptr;
      const double m = row_max(xi, cols);
      const double z = row_exp_sum(xi, cols, m, g);
      const Index y = static_cast<Index>(labels[i]);
      const double logp = (static_cast<double>(xi[y]) - m) - std::log(z);
      const double p = std::exp(logp);
      const double u = -std::expm1(logp);
      // u^(gamma - 1) and u^gamma; the integer gammas everyone uses (1, 2, 3)
      // by multiplication: std::pow was most of this loss's time.
      const double ug1 = gamma == 0.0 ? 0.0 : (int_gamma ? int_pow(u, igamma - 1) : std::pow(u, gamma - 1.0));
      const double ug = gamma == 0.0 ? 1.0 : (int_gamma ? ug1 * u : std::pow(u, gamma));
      total += -alpha * ug * logp;
      if (g) {
        // The gamma term's limit is 0 at u = 0 for every gamma > 0.
        double dg = (gamma == 0.0 || u == 0.0) ? 0.0 : gamma * ug1 * p * logp;
        const double f = alpha * (dg - ug) * inv_n;  // times ([j = y] - p_j)
        const double pz = -f / z;
        for (Index j = 0; j < cols; ++j) g[j] = static_cast<float>(g[j] * pz);
        g[y] = static_cast<float>(static_cast<double>(g[y]) + f);
      }
    }
    return total;
  };
  return chunked_sum(rows, kRowChunk, kRowFlops + 30.0 * static_cast<double>(cols), chunk) * inv_n;
}

// Knowledge distillation (Hinton et al. 2015), student logits x, teacher
// logits t, labels y, temperature T:
// l_i = alpha T^2 KL(q_i || p_i) + (1 - alpha) CE(x_i, y_i),
// q = softmax(t / T), p = softmax(x / T), KL summed over classes and averaged
// over rows (PyTorch kl_div reduction="batchmean"; 0 log 0 = 0), CE at T = 1.
// dl_i/dx_j = alpha T (p_j - q_j) + (1 - alpha) (softmax(x)_j - [j = y]).
// Exponentials are recomputed rather than stored: no scratch for any width.
double distillation_loss(const Loss& loss, const float* x, const Target& target, Index rows,
                         Index cols, float* grad) {
  const double T = loss.temperature, invT = 1.0 / T;
  const double alpha = loss.alpha;
  const double inv_n = 1.0 / static_cast<double>(rows);
  auto chunk = [&](Index b, Index e) {
    double total = 0.0;
    for (Index i = b; i < e; ++i) {
      const float* xi = x + i * cols;
      const float* ti = target.values + i * cols;
      const double ms = row_max(xi, cols), mt = row_max(ti, cols);
      double z1 = 0.0, zs = 0.0, zt = 0.0, kl = 0.0;
      float* gi = grad ? grad + i * cols : nullptr;
      // Six exponentials per class on double lanes (every argument is <= 0,
      // so exp_nonpos_f64 applies); the scalar std::exp version was slower
      // than PyTorch's float kernels. Lanes past the row end load -inf: their
      // q is 0 and they drop out of the KL sum with the 0 log 0 = 0 terms.
      using D = vf64;
      constexpr Index L = kDLanes;
      const D vms(ms), vmt(mt), vinvT(invT);
      D a1(0.0), as(0.0), at(0.0);
      for (Index j = 0; j < cols; j += L) {
        const Index k = std::min(cols - j, L);
        const D ds = load_or_neg_inf(xi + j, k) - vms;
        const D dt = load_or_neg_inf(ti + j, k) - vmt;
        a1 = a1 + simd::exp_nonpos_f64(ds);
        as = as + simd::exp_nonpos_f64(ds * vinvT);
        at = at + simd::exp_nonpos_f64(dt * vinvT);
      }
      z1 = simd::reduce_add(a1);
      zs = simd::reduce_add(as);
      zt = simd::reduce_add(at);
      const double lz1 = std::log(z1), lzs = std::log(zs), lzt = std::log(zt);
      const D vlz1(lz1), vlzs(lzs), vlzt(lzt);
      const D ga(alpha * T * inv_n), gb((1.0 - alpha) * inv_n);
      D akl(0.0);
      for (Index j = 0; j < cols; j += L) {
        const Index k = std::min(cols - j, L);
        const D ds = load_or_neg_inf(xi + j, k) - vms;
        const D dt = load_or_neg_inf(ti + j, k) - vmt;
        const D logq = simd::mul_add(dt, vinvT, -vlzt);
        const D logp = simd::mul_add(ds, vinvT, -vlzs);
        const D q = simd::exp_nonpos_f64(logq);
        // q == 0 (a padding lane, or a teacher probability below exp(-708)):
        // 0 log 0 = 0, as torch's xlogy. A NaN q is kept.
        akl = akl + simd::zero_where(q == D(0.0), q * (logq - logp));
        if (gi) {
          const D pr = simd::exp_nonpos_f64(logp);
          const D p1 = simd::exp_nonpos_f64(ds - vlz1);
          store_first(gi + j, simd::mul_add(ga, pr - q, gb * p1), k);
        }
      }
      kl = simd::reduce_add(akl);
      const Index y = static_cast<Index>(target.labels[i]);
      const double ce = std::log(z1) - (static_cast<double>(xi[y]) - ms);
      total += alpha * T * T * kl + (1.0 - alpha) * ce;
      if (gi) gi[y] = static_cast<float>(static_cast<double>(gi[y]) - (1.0 - alpha) * inv_n);
    }
    return total;
  };
  return chunked_sum(rows, kRowChunk, kRowFlops + 80.0 * static_cast<double>(cols), chunk) * inv_n;
}

// ---------------------------------------------------------------------------
// Registry and construction.

constexpr double kNoValue = std::numeric_limits<double>::quiet_NaN();

std::string format_double(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

// ---------------------------------------------------------------------------
// The losses, one unit each: registry row (name, aliases, parameters with
// defaults, whether it takes class labels), parameter checks (configure),
// what targets it takes (kTargets), any check of the target values, and its
// value-and-gradient kernel (value). The table is the Units tuple, in the
// order of enum LossKind; make_loss, validate_target and
// loss_forward_backward dispatch through it.

enum class Targets { Values, Labels, ValuesOrLabels, ValuesAndLabels };

struct LossParams {
  const LossInfo& info;
  const std::map<std::string, double>& given;
  double get(const char* key) const {
    auto it = given.find(key);
    if (it != given.end()) return it->second;
    for (const auto& p : info.params)
      if (p.first == key) return p.second;
    return kNoValue;
  }
  [[noreturn]] void bad(const char* key, double v, const char* rule) const {
    throw ValueError("loss '" + info.name + "': " + key + " must be " + rule + ", got " + format_double(v));
  }
  // > 0 (or >= 0) and finite.
  double positive(const char* key, bool allow_zero) const {
    const double v = get(key);
    if (!(allow_zero ? v >= 0.0 : v > 0.0) || !std::isfinite(v)) bad(key, v, allow_zero ? ">= 0 and finite" : "> 0 and finite");
    return v;
  }
  double unit_interval(const char* key) const {
    const double v = get(key);
    if (!(v >= 0.0 && v <= 1.0)) bad(key, v, "in [0, 1]");
    return v;
  }
};

template <LossKind K, Targets T>
struct LossUnit {
  static constexpr LossKind kKind = K;
  static constexpr Targets kTargets = T;
  static constexpr bool kClassWeight = false;  // takes weight= (per-class weights)
  static void configure(Loss&, const LossParams&) {}
  static void check_values(const Target&, Index, Index) {}
};

LossInfo loss_row(std::string name, std::vector<std::string> aliases,
                  std::vector<std::pair<std::string, double>> params = {}) {
  return LossInfo{std::move(name), std::move(aliases), LossKind::MSE, std::move(params), false};
}

struct MseU : LossUnit<LossKind::MSE, Targets::Values> {
  static LossInfo describe() { return loss_row("mse", {}); }
  static double value(const Loss&, const float* pred, const Target& t, Index rows, Index cols, float* grad) {
    return diff_loss(MseOp{}, pred, t.values, rows * cols, grad);
  }
};
struct MaeU : LossUnit<LossKind::MAE, Targets::Values> {
  static LossInfo describe() { return loss_row("mae", {"l1"}); }
  static double value(const Loss&, const float* pred, const Target& t, Index rows, Index cols, float* grad) {
    return diff_loss(MaeOp{}, pred, t.values, rows * cols, grad);
  }
};
struct HuberU : LossUnit<LossKind::Huber, Targets::Values> {
  static LossInfo describe() { return loss_row("huber", {}, {{"delta", 1.0}}); }
  static void configure(Loss& l, const LossParams& p) { l.delta = static_cast<float>(p.positive("delta", false)); }
  static double value(const Loss& l, const float* pred, const Target& t, Index rows, Index cols, float* grad) {
    return diff_loss(HuberOp{l.delta}, pred, t.values, rows * cols, grad);
  }
};
struct SmoothL1U : LossUnit<LossKind::SmoothL1, Targets::Values> {
  static LossInfo describe() { return loss_row("smooth_l1", {}, {{"beta", 1.0}}); }
  static void configure(Loss& l, const LossParams& p) { l.beta = static_cast<float>(p.positive("beta", true)); }
  static double value(const Loss& l, const float* pred, const Target& t, Index rows, Index cols, float* grad) {
    if (l.beta == 0.0f) return diff_loss(MaeOp{}, pred, t.values, rows * cols, grad);  // beta = 0 is L1
    return diff_loss(SmoothL1Op{l.beta}, pred, t.values, rows * cols, grad);
  }
};
struct BceU : LossUnit<LossKind::BinaryCrossEntropy, Targets::Values> {
  static LossInfo describe() { return loss_row("binary_cross_entropy", {}); }
  static void check_values(const Target& target, Index rows, Index cols) {
    const Index n = rows * cols;
    for (Index k = 0; k < n; ++k) {
      const float v = target.values[k];
      if (!(v >= 0.0f && v <= 1.0f))
        throw ValueError("loss 'binary_cross_entropy': targets must be in [0, 1]; got " + format_double(v) +
                         " at row " + std::to_string(k / cols) + ", column " + std::to_string(k % cols));
    }
  }
  static double value(const Loss&, const float* pred, const Target& t, Index rows, Index cols, float* grad) {
    const Index n = rows * cols;
    // PyTorch rejects probabilities outside [0, 1]; check before writing anything.
    // The message is built only on failure: building it per element (as a
    // require() argument) made this check cost ~2 us per element. A
    // branch-free count first (it vectorizes); the culprit is found after.
    Index bad = 0;
#pragma omp simd reduction(+ : bad)
    for (Index k = 0; k < n; ++k) bad += !(pred[k] >= 0.0f && pred[k] <= 1.0f);
    for (Index k = 0; bad > 0 && k < n; ++k)
      if (!(pred[k] >= 0.0f && pred[k] <= 1.0f))
        throw ValueError("loss 'binary_cross_entropy': predictions must be probabilities in [0, 1]; got " +
                         format_double(pred[k]) + " at row " + std::to_string(k / cols) +
                         " (use binary_cross_entropy_with_logits on raw scores)");
    return bce_loss(pred, t.values, n, grad);
  }
};
struct BceLogitsU : LossUnit<LossKind::BinaryCrossEntropyWithLogits, Targets::Values> {
  static LossInfo describe() { return loss_row("binary_cross_entropy_with_logits", {}); }
  static double value(const Loss&, const float* pred, const Target& t, Index rows, Index cols, float* grad) {
    return bce_logits_loss(pred, t.values, rows * cols, grad);
  }
};
struct CrossEntropyU : LossUnit<LossKind::CrossEntropy, Targets::ValuesOrLabels> {
  static constexpr bool kClassWeight = true;
  static LossInfo describe() { return loss_row("cross_entropy", {}, {{"label_smoothing", 0.0}}); }
  static void configure(Loss& l, const LossParams& p) {
    l.label_smoothing = static_cast<float>(p.unit_interval("label_smoothing"));
  }
  static double value(const Loss& l, const float* pred, const Target& t, Index rows, Index cols, float* grad) {
    return cross_entropy_loss(l, pred, t, rows, cols, grad);
  }
};
// Focal's alpha has no default value: its registry default is NaN, meaning
// "not given" (alpha = NaN is the same as no alpha).
struct FocalU : LossUnit<LossKind::Focal, Targets::Labels> {
  static LossInfo describe() { return loss_row("focal", {}, {{"gamma", 2.0}, {"alpha", kNoValue}}); }
  static void configure(Loss& l, const LossParams& p) {
    l.gamma = static_cast<float>(p.positive("gamma", true));
    if (!std::isnan(p.get("alpha"))) {
      l.alpha = static_cast<float>(p.unit_interval("alpha"));
      l.has_alpha = true;
    }
  }
  static double value(const Loss& l, const float* pred, const Target& t, Index rows, Index cols, float* grad) {
    return focal_loss(l, pred, t.labels, rows, cols, grad);
  }
};
// Distillation's default temperature is 4, not 1: at T = 1 the teacher's
// softmax is nearly one-hot on easy examples and carries little more than the
// label; softening it is the point of Hinton et al. (2015), who found T of
// 2.5-4 best for small students (larger students are flat above ~8). With the
// T^2 factor the soft-target gradients keep their scale as T changes.
struct DistillationU : LossUnit<LossKind::Distillation, Targets::ValuesAndLabels> {
  static LossInfo describe() {
    return loss_row("distillation", {}, {{"temperature", kDistillationTemperature}, {"alpha", 0.5}});
  }
  static void configure(Loss& l, const LossParams& p) {
    const double t = p.positive("temperature", false);
    const double a = p.unit_interval("alpha");
    l.temperature = static_cast<float>(t);
    l.alpha = static_cast<float>(a);
  }
  static double value(const Loss& l, const float* pred, const Target& t, Index rows, Index cols, float* grad) {
    return distillation_loss(l, pred, t, rows, cols, grad);
  }
};

// ---------------------------------------------------------------------------
// Margin softmax losses (cosface, arcface on CosineDense's cos θ; the
// large_margin_softmax / sphereface pairs, whose margin their layer applies).
// Scalar double code of their own, so the SIMD kernels above can change freely.

// Throws (before anything is written) unless every prediction is a cosine.
// 1e-4 of slack: CosineDense's float products may land just past ±1.
void check_cosines(const char* name, const float* pred, Index rows, Index cols) {
  const Index n = rows * cols;
  Index bad = 0;
  for (Index k = 0; k < n; ++k) bad += !(pred[k] >= -1.0001f && pred[k] <= 1.0001f);
  for (Index k = 0; bad > 0 && k < n; ++k)
    if (!(pred[k] >= -1.0001f && pred[k] <= 1.0001f))
      throw ValueError(std::string("loss '") + name + "' takes cos θ in [-1, 1] (the output of a CosineDense "
                       "layer); got " + format_double(pred[k]) + " at row " + std::to_string(k / cols) +
                       ", column " + std::to_string(k % cols));
}

// Softmax cross-entropy of the row whose logits are s c_j, except the label's,
// s phi (phi = the margin function of c_y, dphi its derivative); with g,
// g_j = d l / d c_j scaled by inv_n. Returns l.
double margin_ce_row(const float* c, Index cols, Index y, double s, double phi, double dphi, float* g,
                     double inv_n) {
  double m = s * phi;
  for (Index j = 0; j < cols; ++j)
    if (j != y) m = std::max(m, s * static_cast<double>(c[j]));
  double z = 0.0;
  for (Index j = 0; j < cols; ++j) z += std::exp((j == y ? s * phi : s * static_cast<double>(c[j])) - m);
  const double logz = std::log(z);
  if (g) {
    for (Index j = 0; j < cols; ++j) {
      const double p = std::exp((j == y ? s * phi : s * static_cast<double>(c[j])) - m - logz);
      g[j] = static_cast<float>(s * (j == y ? (p - 1.0) * dphi : p) * inv_n);
    }
  }
  return logz - (s * phi - m);
}

// phi(c) of the label's cosine; the margin losses differ only in it.
template <class Phi>
double margin_ce(const Phi& phi_of, double s, const float* pred, const std::int64_t* labels, Index rows,
                 Index cols, float* grad) {
  const double inv_n = 1.0 / static_cast<double>(rows);
  auto chunk = [&](Index b, Index e) {
    double total = 0.0;
    for (Index i = b; i < e; ++i) {
      const Index y = static_cast<Index>(labels[i]);
      double phi, dphi;
      phi_of(static_cast<double>(pred[i * cols + y]), phi, dphi);
      total += margin_ce_row(pred + i * cols, cols, y, s, phi, dphi, grad ? grad + i * cols : nullptr, inv_n);
    }
    return total;
  };
  return chunked_sum(rows, kRowChunk, kRowFlops + 40.0 * static_cast<double>(cols), chunk) * inv_n;
}

// CosFace / AM-Softmax (Wang et al. 2018): phi(c) = c − m.
double cosface_loss(const Loss& l, const float* pred, const std::int64_t* labels, Index rows, Index cols,
                    float* grad) {
  const double m = l.margin;
  auto phi = [m](double c, double& v, double& d) {
    v = c - m;
    d = 1.0;
  };
  return margin_ce(phi, l.scale, pred, labels, rows, cols, grad);
}

// ArcFace (Deng et al. 2019), insightface's easy_margin=False form:
// phi(c) = cos(θ + m) = c cos m − sin θ sin m while θ + m <= π (c > th =
// cos(π − m)); beyond, where cos(θ + m) would turn back up, the linear
// continuation phi = c − mm, mm = m sin(π − m) = m sin m, keeps phi decreasing
// in θ. c is clamped to [−1 + 1e-7, 1 − 1e-7] first (as the reference
// implementations clamp before acos/sqrt), so dphi/dc = cos m + sin m c / sin θ
// stays finite at c = ±1; outside the clamp the gradient is 0, as torch.clamp's.
constexpr double kArcClamp = 1e-7;
double arcface_loss(const Loss& l, const float* pred, const std::int64_t* labels, Index rows, Index cols,
                    float* grad) {
  const double m = l.margin, cos_m = std::cos(m), sin_m = std::sin(m);
  const double th = std::cos(M_PI - m), mm = std::sin(M_PI - m) * m;
  auto phi = [=](double c, double& v, double& d) {
    const double lo = -1.0 + kArcClamp, hi = 1.0 - kArcClamp;
    const bool inside = c >= lo && c <= hi;
    const double cc = std::min(hi, std::max(lo, c));
    if (cc > th) {
      const double sine = std::sqrt(std::max(0.0, 1.0 - cc * cc));
      v = cc * cos_m - sine * sin_m;
      d = cos_m + sin_m * cc / sine;
    } else {
      v = cc - mm;
      d = 1.0;
    }
    if (!inside) d = 0.0;
  };
  return margin_ce(phi, l.scale, pred, labels, rows, cols, grad);
}

struct CosFaceU : LossUnit<LossKind::CosFace, Targets::Labels> {
  static LossInfo describe() { return loss_row("cosface", {"am_softmax"}, {{"scale", 30.0}, {"margin", 0.35}}); }
  static void configure(Loss& l, const LossParams& p) {
    l.scale = static_cast<float>(p.positive("scale", false));
    l.margin = p.positive("margin", true);
  }
  static double value(const Loss& l, const float* pred, const Target& t, Index rows, Index cols, float* grad) {
    check_cosines("cosface", pred, rows, cols);
    return cosface_loss(l, pred, t.labels, rows, cols, grad);
  }
};
struct ArcFaceU : LossUnit<LossKind::ArcFace, Targets::Labels> {
  static LossInfo describe() { return loss_row("arcface", {}, {{"scale", 64.0}, {"margin", 0.5}}); }
  static void configure(Loss& l, const LossParams& p) {
    l.scale = static_cast<float>(p.positive("scale", false));
    const double m = p.positive("margin", true);
    if (!(m < M_PI)) p.bad("margin", m, "in [0, pi)");
    l.margin = m;
  }
  static double value(const Loss& l, const float* pred, const Target& t, Index rows, Index cols, float* grad) {
    check_cosines("arcface", pred, rows, cols);
    return arcface_loss(l, pred, t.labels, rows, cols, grad);
  }
};

// L-Softmax and SphereFace: the layer (MarginDense, layers_margin.cpp) puts
// the margin into the label's logit of its training output, because it needs
// ‖x‖ and ‖W_y‖; the loss is then softmax cross-entropy on that output (and,
// at evaluation, on the plain logits). Defaults: margin 4 and the authors'
// Caffe λ schedules (L-Softmax's MNIST example: base 1000, gamma 2.5e-5,
// power 35, lambda_min 0; SphereFace's: base 1000, gamma 0.12, power 1,
// lambda_min 5).
template <LossKind K>
struct AngularMarginU : LossUnit<K, Targets::Labels> {
  static void configure(Loss& l, const LossParams& p) {
    const double m = p.get("margin");
    if (!(m >= 1.0 && m <= 16.0 && m == std::floor(m))) p.bad("margin", m, "an integer in [1, 16]");
    l.margin = m;
    l.lambda_base = p.positive("base", true);
    l.lambda_gamma = p.positive("gamma", true);
    l.lambda_power = p.positive("power", true);
    l.lambda_min = p.positive("lambda_min", true);
  }
  static double value(const Loss& l, const float* pred, const Target& t, Index rows, Index cols, float* grad) {
    return cross_entropy_loss(l, pred, t, rows, cols, grad);  // label_smoothing 0, no class weights
  }
};
struct LargeMarginSoftmaxU : AngularMarginU<LossKind::LargeMarginSoftmax> {
  static LossInfo describe() {
    return loss_row("large_margin_softmax", {"l_softmax"},
                    {{"margin", 4.0}, {"base", 1000.0}, {"gamma", 2.5e-5}, {"power", 35.0}, {"lambda_min", 0.0}});
  }
};
struct SphereFaceU : AngularMarginU<LossKind::SphereFace> {
  static LossInfo describe() {
    return loss_row("sphereface", {"a_softmax"},
                    {{"margin", 4.0}, {"base", 1000.0}, {"gamma", 0.12}, {"power", 1.0}, {"lambda_min", 5.0}});
  }
};

// The table, in the order of enum LossKind.
using LossUnits = std::tuple<MseU, MaeU, HuberU, SmoothL1U, BceU, BceLogitsU, CrossEntropyU, FocalU, DistillationU,
                             CosFaceU, ArcFaceU, LargeMarginSoftmaxU, SphereFaceU>;

template <std::size_t... I>
constexpr bool loss_units_in_enum_order(std::index_sequence<I...>) {
  return ((static_cast<std::size_t>(std::tuple_element_t<I, LossUnits>::kKind) == I) && ...);
}
constexpr auto kLossIndices = std::make_index_sequence<std::tuple_size_v<LossUnits>>{};
static_assert(loss_units_in_enum_order(kLossIndices), "LossUnits must list the losses in the order of enum LossKind");

template <class F, std::size_t... I>
void with_loss_impl(LossKind k, F&& f, std::index_sequence<I...>) {
  (void)((static_cast<std::size_t>(k) == I ? (f(std::tuple_element_t<I, LossUnits>{}), true) : false) || ...);
}
template <class F>
void with_loss(LossKind k, F&& f) {
  with_loss_impl(k, f, kLossIndices);
}

template <class U>
LossInfo loss_info_of() {
  LossInfo i = U::describe();
  i.kind = U::kKind;
  i.classification = U::kTargets != Targets::Values;  // accepts integer labels
  i.class_weight = U::kClassWeight;
  return i;
}
template <std::size_t... I>
std::vector<LossInfo> loss_registry_of(std::index_sequence<I...>) {
  return {loss_info_of<std::tuple_element_t<I, LossUnits>>()...};
}

const char* loss_name(LossKind kind) {
  const auto& r = loss_registry();
  const auto i = static_cast<std::size_t>(kind);
  return i < r.size() ? r[i].name.c_str() : "?";
}

}  // namespace

const std::vector<LossInfo>& loss_registry() {
  static const std::vector<LossInfo> registry = loss_registry_of(kLossIndices);
  return registry;
}

Loss make_loss(const std::string& name, const std::map<std::string, double>& params,
               const std::vector<float>& class_weight) {
  const LossInfo* found = nullptr;
  for (const auto& info : loss_registry()) {
    if (info.name == name) found = &info;
    for (const auto& a : info.aliases)
      if (a == name) found = &info;
    if (found) break;
  }
  if (!found) {
    std::string valid;
    for (const auto& info : loss_registry()) {
      if (!valid.empty()) valid += ", ";
      valid += info.name;
      for (const auto& a : info.aliases) valid += " (alias " + a + ")";
    }
    throw ValueError("unknown loss '" + name + "'; valid losses: " + valid);
  }
  for (const auto& kv : params) {
    bool known = false;
    for (const auto& p : found->params) known = known || p.first == kv.first;
    if (!known) {
      std::string valid;
      for (const auto& p : found->params) valid += (valid.empty() ? "" : ", ") + p.first;
      throw ValueError("unknown parameter '" + kv.first + "' for loss '" + found->name +
                       "'; valid parameters: " + (valid.empty() ? "(none)" : valid));
    }
  }

  Loss loss;
  loss.kind = found->kind;
  const LossParams p{*found, params};
  with_loss(loss.kind, [&](auto u) { decltype(u)::configure(loss, p); });

  if (!class_weight.empty()) {
    if (!found->class_weight)
      throw ValueError("class weights are only supported by cross_entropy, not '" + found->name + "'");
    bool any = false;
    for (std::size_t j = 0; j < class_weight.size(); ++j) {
      float w = class_weight[j];
      if (!std::isfinite(w) || w < 0.0f)
        throw ValueError("class weight " + std::to_string(j) + " must be finite and >= 0, got " +
                         format_double(w));
      any = any || w > 0.0f;
    }
    if (!any) throw ValueError("class weights must not all be zero");
    loss.class_weight = class_weight;
  }
  return loss;
}

void validate_target(const Loss& loss, const Target& target, Index rows, Index cols) {
  // std::string only on failure (long names would heap-allocate every step).
  const char* const name = loss_name(loss.kind);
  // Messages are built only on failure: a training step must not allocate.
  if (rows < 1)
    throw ValueError(std::string("loss '") + name + "': batch must have at least one row, got " +
                     std::to_string(rows));
  if (cols < 1)
    throw ValueError(std::string("loss '") + name + "': predictions must have at least one column, got " +
                     std::to_string(cols));
  const bool has_values = target.values != nullptr, has_labels = target.labels != nullptr;
  with_loss(loss.kind, [&](auto u) {
    using U = decltype(u);
    switch (U::kTargets) {
      case Targets::ValuesOrLabels:
        if (has_values == has_labels)
          throw ValueError(std::string("loss '") + name +
                           "' takes either integer class labels or probability targets (rows x cols), not both");
        break;
      case Targets::Labels:
        if (!(has_labels && !has_values))
          throw ValueError(std::string("loss '") + name + "' needs integer class labels (one per row)");
        break;
      case Targets::ValuesAndLabels:
        if (!(has_values && has_labels))
          throw ValueError(std::string("loss '") + name +
                           "' needs teacher logits (rows x cols) and integer class labels");
        break;
      case Targets::Values:
        if (!(has_values && !has_labels))
          throw ValueError(std::string("loss '") + name +
                           "' needs float targets of the prediction's shape (rows x " + std::to_string(cols) +
                           "), not integer labels");
        break;
    }
  });
  if (has_labels) {
    for (Index i = 0; i < rows; ++i) {
      const std::int64_t y = target.labels[i];
      if (y < 0 || y >= cols)
        throw ValueError(std::string("loss '") + name + "': label " + std::to_string(y) + " at row " +
                         std::to_string(i) + " is outside [0, " + std::to_string(cols) + ")");
    }
  }
  with_loss(loss.kind, [&](auto u) { decltype(u)::check_values(target, rows, cols); });
  if (!loss.class_weight.empty())
    if (static_cast<Index>(loss.class_weight.size()) != cols)
      throw ValueError(std::string("loss '") + name + "': class weight has " +
                       std::to_string(loss.class_weight.size()) + " entries but predictions have " +
                       std::to_string(cols) + " columns");
}

// The hot path trusts validate_target (called once per batch by the caller):
// labels are used as indices unchecked here.
double loss_forward_backward(const Loss& loss, const float* pred, const Target& target, Index rows,
                             Index cols, float* grad) {
  if (rows <= 0 || cols <= 0) return std::numeric_limits<double>::quiet_NaN();  // empty mean
  double value = std::numeric_limits<double>::quiet_NaN();
  with_loss(loss.kind, [&](auto u) { value = decltype(u)::value(loss, pred, target, rows, cols, grad); });
  return value;
}

namespace {

// First maximum, like torch.argmax (a NaN never wins a comparison, so it is
// skipped unless it sits in column 0).
inline Index argmax_row(const float* x, Index c) {
  Index best = 0;
  float m = x[0];
  for (Index j = 1; j < c; ++j)
    if (x[j] > m) {
      m = x[j];
      best = j;
    }
  return best;
}

// One column is a binary score: pred > threshold is the predicted class, the
// truth is target > 0.5 (probabilities) or label > 0 (labels).
Index count_correct_threshold(const float* pred, const Target& target, Index rows, Index cols,
                              float threshold) {
  Index correct = 0;
  if (cols == 1) {
    for (Index i = 0; i < rows; ++i) {
      const bool p = pred[i] > threshold;
      const bool t = target.values ? target.values[i] > 0.5f : target.labels[i] > 0;
      correct += p == t;
    }
    return correct;
  }
  for (Index i = 0; i < rows; ++i) {
    const Index p = argmax_row(pred + i * cols, cols);
    const Index t = target.labels ? static_cast<Index>(target.labels[i])
                                  : argmax_row(target.values + i * cols, cols);
    correct += p == t;
  }
  return correct;
}

}  // namespace

Index count_correct(const float* pred, const Target& target, Index rows, Index cols) {
  return count_correct_threshold(pred, target, rows, cols, 0.5f);
}

Index count_correct_logit_threshold(const float* pred, const Target& target, Index rows,
                                    Index cols) {
  return count_correct_threshold(pred, target, rows, cols, 0.0f);
}

}  // namespace nerve
