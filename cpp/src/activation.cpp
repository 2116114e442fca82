// Activation registry and kernels.
//
// Every elementwise activation is a small functor (forward: x -> y; backward:
// (y or z, dy) -> dz) applied by a few generic loops. The loops are
// `#pragma omp simd` over contiguous spans and the functors use only the
// branch-free helpers of simd_math.hpp, so GCC emits AVX2 code for all of
// them. Threads split rows (or fixed-size chunks of the flattened matrix);
// the split never changes any result because every element is computed
// independently (and softmax rows are reduced by one thread each).
//
// Derivative conventions at kinks follow PyTorch autograd:
//   relu'(0) = 0;  leaky_relu'(0) = alpha;  elu'(0) = alpha;  selu'(0) = scale*alpha;
//   relu6'(0) = relu6'(6) = 0;  hard_sigmoid'(+-3) = 0;
//   hard_swish'(-3) = 0, hard_swish'(3) = 1 (current PyTorch; releases before
//   2024 used -1/2 and 3/2);  rrelu'(0) = slope;
//   crelu: both halves use relu'(0) = 0;  binary_step(0) = 1 (Heaviside with H(0) = 1).
#include "nerve/activation.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <sstream>
#include <tuple>
#include <type_traits>
#include <utility>

#include "nerve/parallel.hpp"
#include "nerve/rng.hpp"
#include "nerve/rowwise.hpp"
#include "nerve/simd_math.hpp"
#include "nerve/vec.hpp"


namespace nerve {

namespace {

constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kSeluScale = 1.0507009873554804934193349852946;
constexpr float kSeluScaleF = static_cast<float>(kSeluScale);
// Product taken in double, rounded once, as the coefficient of expm1.
constexpr float kSeluScaleAlphaF = static_cast<float>(kSeluScale * kSeluAlpha);
constexpr float kSqrt2OverPi = 0.79788456080286536f;
constexpr float kGeluKappa = 0.044715f;
constexpr double kSqrt2OverPiD = 0.79788456080286535588;
constexpr double kGeluKappaD = 0.044715;

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + v[i];
  return s;
}

// ---------------------------------------------------------------------------
// Elementwise forward functors: operator()(x) -> y.

struct FIdentity {
  NERVE_INLINE float operator()(float x) const { return x; }
};
struct FSigmoid {
  NERVE_INLINE float operator()(float x) const { return simd::sigmoid(x); }
};
struct FTanh {
  NERVE_INLINE float operator()(float x) const { return simd::tanh(x); }
};
// relu: max(x, 0). NaN propagates (as PyTorch's clamp_min), so a diverging
// network shows NaN rather than silently zeroing it.
struct FRelu {
  NERVE_INLINE float operator()(float x) const { return simd::max_(x, 0.0f); }
};
// leaky_relu: x > 0 ? x : alpha*x.
struct FLeaky {
  float alpha;
  NERVE_INLINE float operator()(float x) const { return simd::sel(x > 0.0f, x, alpha * x); }
};
// elu: x > 0 ? x : alpha*expm1(x)  (expm1 keeps precision for small |x|).
struct FElu {
  float alpha;
  NERVE_INLINE float operator()(float x) const {
    float n = alpha * simd::expm1(x);
    return simd::sel(x > 0.0f, x, n);
  }
};
// selu: x > 0 ? scale*x : scale*alpha*expm1(x).
struct FSelu {
  NERVE_INLINE float operator()(float x) const {
    float n = kSeluScaleAlphaF * simd::expm1(x);
    return simd::sel(x > 0.0f, kSeluScaleF * x, n);
  }
};
// swish: x * sigmoid(beta*x). beta*x is kept as hi + lo (exact by fma), so
// the tail exp(beta*x) is not spoilt by rounding the product (beta != 1).
struct FSwish {
  float beta;
  NERVE_INLINE float operator()(float x) const {
    float hi = beta * x;
    return x * simd::sigmoid2(hi, simd::fma_(beta, x, -hi));
  }
};
// swish with beta = 1 (silu, the default): x * sigmoid(x), without the
// hi/lo split that a general beta needs.
struct FSilu {
  NERVE_INLINE float operator()(float x) const { return x * simd::sigmoid(x); }
};
// binary_step: Heaviside with H(0) = 1 (x >= 0 fires, so the step is
// right-continuous; torch.heaviside(x, 1) makes the same choice). -0 counts as
// 0 and gives 1; NaN propagates.
struct FStep {
  NERVE_INLINE float operator()(float x) const {
    return simd::sel(x < 0.0f, 0.0f, simd::sel(x >= 0.0f, 1.0f, x));
  }
};
// The vector kernels below are templates over the float type F (simd::vf:
// f32x16 at avx512, f32x8 at avx2, float at generic; vec.hpp), one body for
// every width. They run where kVecKernels says (the levels with vectors); the
// generic level keeps the scalar functors' loops, whose bits these kernels do
// not reproduce everywhere (gelu), and compiles these only to keep them one code.
constexpr bool kVecKernels = simd::kLanes > 1;

// exp(hi + lo), |lo| tiny beside hi, for hi in [-86, 0] (so the result is a
// normal float): exp_nonpos_sum's reduction and polynomial (n from hi alone,
// lo in the small part of the reduction, p by Estrin: the softmax pass is
// bound by this chain's latency; 16K floats 15.5 -> 13.5 us), but the 2^n
// scaling is one integer add into the exponent field instead of pow2_split's
// two multiplies (which only matter for subnormal results).
// Same bits as the scalar function on these inputs.
template <class F>
NERVE_INLINE F exp_sum_normal(F hi, F lo) {
  using I = simd::i32_of<F>;
  const F magic(simd::kRoundMagic);
  const F t = simd::fma_(hi, F(simd::kLog2e), magic);
  const F nf = t - magic;
  const I ni = simd::as_int(t) - simd::as_int(magic);
  const F r = simd::fma_(-nf, F(simd::kLn2Hi), hi) + simd::fma_(-nf, F(simd::kLn2Lo), lo);
  const F r2 = r * r;
  const F p01 = simd::fma_(F(1.0f / 24.0f), r, F(1.0f / 6.0f));
  const F p23 = simd::fma_(F(1.0f / 720.0f), r, F(1.0f / 120.0f));
  const F p = simd::fma_(simd::fma_(F(1.0f / 5040.0f), r2, p23), r2, p01);
  const F tail = simd::fma_(r2, F(0.5f), (r2 * r) * p);
  const F mant = F(1.0f) + (r + tail);
  return simd::as_float(simd::as_int(mant) + simd::sll(ni, 23));
}

// exp_shifted on lanes whose hi = x - m >= -86: the same two-sum, then
// exp_sum_normal.
template <class F>
NERVE_INLINE F exp_shifted_normal(F x, F hi, F neg_m) {
  const F bv = hi - x;
  const F lo = (x - (hi - bv)) + (neg_m - bv);
  return exp_sum_normal(hi, lo);
}

// exp(-(sq + sqlo)/2) for sq + sqlo = a^2 exactly, a <= 13 (so the result is
// a normal float): gelu's Gaussian factor. Unlike exp_sum_normal (which must
// match the scalar softmax exp bit for bit), it is built for latency: the
// reduction's low parts are summed off the critical path, and a degree-6
// minimax polynomial (fit_gelu_tail.py) is evaluated by Estrin's scheme.
// Relative error of the polynomial 3.1e-9.
// exp(r) = 1 + r + r^2 q(r) on |r| <= ln2/2 (fit_gelu_tail.py).
constexpr float kGeluExpQ[5] = {4.999999404e-01f, 1.666652113e-01f, 4.166838899e-02f, 8.368702605e-03f, 1.381453476e-03f};
template <class F>
NERVE_INLINE F exp_neg_half_square(F sq, F sqlo) {
  using I = simd::i32_of<F>;
  const F magic(simd::kRoundMagic);
  const F t = simd::fma_(-sq, F(0.5f * simd::kLog2e), magic);
  const F nf = t - magic;
  const I ni = simd::as_int(t) - simd::as_int(magic);
  // r = -sq/2 - sqlo/2 - n ln2, with n ln2hi exact and the two small terms
  // summed beside the large one. sq * -0.5 is -(sq / 2) exactly, and as the
  // addend of vfnmadd it needs no separate negation (vxorps) on the chain.
  const F r_hi = simd::fma_(-nf, F(simd::kLn2Hi), sq * F(-0.5f));
  const F r_lo = simd::fma_(-nf, F(simd::kLn2Lo), sqlo * F(-0.5f));
  const F r = r_hi + r_lo;
  // exp(r) = 1 + r + r^2 q(r)
  const F r2 = r * r;
  const F q01 = simd::fma_(F(kGeluExpQ[1]), r, F(kGeluExpQ[0]));
  const F q23 = simd::fma_(F(kGeluExpQ[3]), r, F(kGeluExpQ[2]));
  const F q = simd::fma_(F(kGeluExpQ[4]), r2 * r2, simd::fma_(q23, r2, q01));
  const F mant = F(1.0f) + simd::fma_(r2, q, r);
  return simd::as_float(simd::as_int(mant) + simd::sll(ni, 23));
}

// gelu (exact), in float: Phi(-a) = f(a) exp(-a^2/2), a = |x|, with
// f(a) = erfcx(a/sqrt 2)/2 from piecewise degree-11 polynomials on the 4
// intervals [0, 1) [1, 3) [3, 7) [7, 15) (the octaves of a + 1, so the
// interval is the exponent of a + 1), looked up per lane with the in-lane
// vpermilps (simd::lookup4, 1 uop; the 8-entry vpermps of an 8-interval
// table is 3 uops on Zen 3 and its lookups dominated). The tables are stored
// in the order vpermilps reads them: interval i in slot (127 + i) mod 4. The
// constant term is split hi + lo. f = c0 + s E(s) with E by Estrin's scheme:
// the loop is bound by the latency of its longest chain (Horner's 11
// dependent FMAs cost 8%). gelu = x f e below 0 and x - x f e above, each
// with one rounding after x f. cpp/tools/fit_gelu_tail.py made the tables and
// emulates this arithmetic against float64:
// relative fit error 1.9e-09, exp 3.1e-09; emulated float gelu: max 3.08 ulp
// (measured on the kernel by tests/test_activations.py). The scalar functor
// (double t-polynomial, slower) serves lanes with |x| > 13 (exp would leave
// the fast normal range), NaN, and the generic level.
alignas(16) constexpr float kGeluCentre[4] = {2.000000000e+00f, 5.000000000e+00f, 1.100000000e+01f, 5.000000000e-01f};
alignas(16) constexpr float kGeluCoef[13][4] = {
    {1.681019962e-01f, 7.691930234e-02f, 3.597488999e-02f, 3.496188223e-01f},
    {5.028032657e-09f, 2.564222168e-09f, -4.388113206e-10f, 1.238396674e-08f},
    {-6.273827702e-02f, -1.434575580e-02f, -3.218494589e-03f, -2.241328657e-01f},
    {2.131272294e-02f, 2.595264930e-03f, 2.857249929e-04f, 1.187762022e-01f},
    {-6.704277359e-03f, -4.564790579e-04f, -2.517437497e-05f, -5.491492152e-02f},
    {1.976031810e-03f, 7.821357576e-05f, 2.201467851e-06f, 2.282968163e-02f},
    {-5.504392320e-04f, -1.307845559e-05f, -1.911485299e-07f, -8.700016886e-03f},
    {1.459039195e-04f, 2.140988499e-06f, 1.653781645e-08f, 3.080001567e-03f},
    {-3.696263593e-05f, -3.421690167e-07f, -1.415299211e-09f, -1.022860175e-03f},
    {8.909813914e-06f, 5.177899709e-08f, 1.132824667e-10f, 3.206370457e-04f},
    {-2.097064908e-06f, -8.010703212e-09f, -9.608078222e-12f, -9.577466699e-05f},
    {5.498441169e-07f, 1.616238587e-09f, 1.199369163e-12f, 2.882767512e-05f},
    {-1.175730091e-07f, -2.342270544e-10f, -9.902191914e-14f, -7.752387319e-06f},
};

// f(a) and e = exp(-a^2/2) for a = |x|, so Phi(-a) = f e. Branch-free;
// `slow` gets the lanes outside the fast range |x| <= 13 (and NaN), whose
// results are meaningless here.
template <class F>
NERVE_INLINE void gelu_factors(F x, F& f, F& e, unsigned& slow) {
  const F a = simd::abs_(x);
  slow = ~simd::bits(a <= F(13.0f));  // NaN: slow; the callers keep the bits of their lanes
  const auto exponent = simd::srl(simd::as_int(a + F(1.0f)), 23);
  auto table = [&](const float* row) { return simd::lookup4(row, exponent); };
  auto c = [&](int k) { return table(kGeluCoef[k + 1]); };  // c(k): s^k, k >= 1
  const F s = a - table(kGeluCentre);
  const F s2 = s * s, s4 = s2 * s2, s8 = s4 * s4;
  // E = c1 + c2 s + ... + c11 s^10
  const F p12 = simd::fma_(c(2), s, c(1)), p34 = simd::fma_(c(4), s, c(3));
  const F p56 = simd::fma_(c(6), s, c(5)), p78 = simd::fma_(c(8), s, c(7));
  const F p910 = simd::fma_(c(10), s, c(9));
  const F q0 = simd::fma_(p34, s2, p12), q1 = simd::fma_(p78, s2, p56);
  const F q2 = simd::fma_(c(11), s2, p910);
  const F e_poly = simd::fma_(q2, s8, simd::fma_(q1, s4, q0));
  f = simd::fma_(e_poly, s, table(kGeluCoef[1])) + table(kGeluCoef[0]);
  const F sq = a * a;
  e = exp_neg_half_square(sq, simd::fma_(a, a, -sq));
}

template <class F>
NERVE_INLINE F gelu_erf_fast(F x, unsigned& slow) {
  F f, e;
  gelu_factors(x, f, e, slow);
  const F xf = x * f;
  const F lower = xf * e;                 // x Phi(x) = x Phi(-a), x < 0
  const F upper = simd::fma_(-xf, e, x);  // x (1 - Phi(-a)), x >= 0
  return simd::sel_sign(x, lower, upper);  // -0.0 too: lower
}

// dy gelu'(x) = dy (Phi(x) + x phi(x)), phi(x) = e / sqrt(2 pi).
template <class F>
NERVE_INLINE F gelu_erf_grad_fast(F x, F dy, unsigned& slow) {
  F f, e;
  gelu_factors(x, f, e, slow);
  const F tail = f * e;
  const F cdf = simd::sel_sign(x, tail, F(1.0f) - tail);
  const F pdf = e * F(0.39894228040143268f);
  return dy * simd::fma_(x, pdf, cdf);
}



// gelu (exact): x * Phi(x); the negative side uses the erfc tail directly so
// gelu(-5) keeps full relative precision instead of 1 - (1 - tiny).
struct FGeluErf {
  NERVE_INLINE float operator()(float x) const {
    float tail = simd::normal_tail(x);
    float phi = simd::sel(x >= 0.0f, 1.0f - tail, tail);
    return x * phi;
  }
  // The vector kernel (see HasVec).
  static constexpr bool kHasVec = true;
  NERVE_INLINE simd::vf vec(simd::vf x, unsigned& slow) const { return gelu_erf_fast(x, slow); }
};
// gelu (tanh form): 0.5 x (1 + tanh(u)) = x * sigmoid(2u),
// u = sqrt(2/pi) (x + 0.044715 x^3). The sigmoid form avoids 1 + tanh
// cancelling for negative x. x is clamped inside u only (the sigmoid has
// saturated long before) so x^3 cannot overflow.
// 2u is formed in double and split: for x << 0 the result is exp(2u)-sized
// and a float 2u would cost ~|2u| ulp.
NERVE_INLINE void gelu_tanh_arg(float xc, float& hi, float& lo) {
  const double xd = xc;
  simd::split(2.0 * kSqrt2OverPiD * (xd + kGeluKappaD * xd * xd * xd), hi, lo);
}
struct FGeluTanh {
  NERVE_INLINE float operator()(float x) const {
    float xc = simd::max_(simd::min_(x, 50.0f), -50.0f);
    float hi, lo;
    gelu_tanh_arg(xc, hi, lo);
    return x * simd::sigmoid2(hi, lo);
  }
};
// softplus: t = beta*x; t > threshold ? x : (max(t,0) + log1p(exp(-|t|))) / beta.
// t is rounded as PyTorch rounds it for the threshold test; its rounding
// error tl (exact by fma) is carried into exp and the linear part.
struct FSoftplus {
  float beta, threshold;
  NERVE_INLINE float operator()(float x) const {
    float t = beta * x;
    float tl = simd::fma_(beta, x, -t);
    float at = simd::abs_(t);
    float atl = simd::sel(t < 0.0f, -tl, tl);
    float lin = simd::sel(t > 0.0f, t + tl, 0.0f);
    float sp = lin + simd::log1p_pos(simd::exp_sum(-at, -atl));
    return simd::sel(t > threshold, x, sp / beta);
  }
};
// mish: x * tanh(log(1 + e^x)). With e = e^x, tanh(log(1+e)) = n / (n + 2),
// n = e (e + 2): no log, no tanh, and exact relative precision for x << 0.
// Beyond x = 20 the ratio is 1 in float, so clamping x there avoids overflow.
struct FMish {
  NERVE_INLINE float operator()(float x) const {
    float e = simd::exp(simd::min_(x, 20.0f));
    float n = e * (e + 2.0f);
    return x * (n / (n + 2.0f));
  }
};
// hard_sigmoid: min(max(x + 3, 0), 6) / 6  (PyTorch's hardsigmoid).
struct FHardSigmoid {
  NERVE_INLINE float operator()(float x) const {
    return simd::min_(simd::max_(x + 3.0f, 0.0f), 6.0f) / 6.0f;
  }
};
// hard_swish: x * min(max(x + 3, 0), 6) / 6.
struct FHardSwish {
  NERVE_INLINE float operator()(float x) const {
    return x * simd::min_(simd::max_(x + 3.0f, 0.0f), 6.0f) / 6.0f;
  }
};
// relu6: min(max(x, 0), 6).
struct FRelu6 {
  NERVE_INLINE float operator()(float x) const {
    return simd::min_(simd::max_(x, 0.0f), 6.0f);
  }
};

// ---------------------------------------------------------------------------
// Backward functors. Output-based ones read y, input-based ones read z.

// Derivatives that read dy alone (kReadsSrc = false) are handed dy as their
// source, so they run where neither y nor z was kept.
struct BIdentity {
  static constexpr bool kReadsSrc = false;
  NERVE_INLINE float operator()(float, float dy) const { return dy; }
};
// sigmoid' = y (1 - y).
struct BSigmoid {
  NERVE_INLINE float operator()(float y, float dy) const { return dy * (y * (1.0f - y)); }
};
// tanh' = 1 - y^2 (fma: the square is not rounded before the subtraction).
struct BTanh {
  NERVE_INLINE float operator()(float y, float dy) const { return dy * simd::fma_(-y, y, 1.0f); }
};
// relu' = [y > 0]: y > 0 exactly when x > 0, so relu'(0) = 0 as in PyTorch.
struct BRelu {
  NERVE_INLINE float operator()(float y, float dy) const { return y > 0.0f ? dy : 0.0f; }
};
// leaky_relu' = y > 0 ? 1 : alpha. For alpha >= 0 (enforced), y > 0 iff x > 0,
// and x == 0 takes alpha, PyTorch's (x > 0 ? 1 : negval).
struct BLeaky {
  float alpha;
  NERVE_INLINE float operator()(float y, float dy) const { return simd::sel(y > 0.0f, dy, dy * alpha); }
};
// elu' = y > 0 ? 1 : y + alpha  (alpha e^x = alpha (e^x - 1) + alpha). elu'(0) = alpha.
struct BElu {
  float alpha;
  NERVE_INLINE float operator()(float y, float dy) const {
    return simd::sel(y > 0.0f, dy, dy * (y + alpha));
  }
};
// selu' = y > 0 ? scale : y + scale*alpha.
struct BSelu {
  NERVE_INLINE float operator()(float y, float dy) const {
    return simd::sel(y > 0.0f, dy * kSeluScaleF, dy * (y + kSeluScaleAlphaF));
  }
};
// relu6' = 0 < y < 6 (PyTorch's hardtanh_backward zeroes both boundaries).
struct BRelu6 {
  NERVE_INLINE float operator()(float y, float dy) const {
    return simd::sel((y > 0.0f) & (y < 6.0f), dy, 0.0f);
  }
};
struct BZero {
  static constexpr bool kReadsSrc = false;
  NERVE_INLINE float operator()(float, float) const { return 0.0f; }
};
// swish' = s + beta x s (1 - s), s = sigmoid(beta x), with 1 - s taken as
// sigmoid(-beta x) to avoid cancellation: = s (1 + beta x s(-beta x)).
struct BSwish {
  float beta;
  NERVE_INLINE float operator()(float x, float dy) const {
    float s, sn;
    float hi = beta * x;
    simd::sigmoid_pair2(hi, simd::fma_(beta, x, -hi), s, sn);
    return dy * (s * simd::fma_(hi, sn, 1.0f));
  }
};
// gelu' (exact) = Phi(x) + x phi(x).
struct BGeluErf {
  NERVE_INLINE float operator()(float x, float dy) const {
    float tail, pdf;
    simd::normal_tail_pdf(x, tail, pdf);
    float phi = simd::sel(x >= 0.0f, 1.0f - tail, tail);
    return dy * simd::fma_(x, pdf, phi);
  }
  // The vector kernel (see HasVec).
  static constexpr bool kHasVec = true;
  NERVE_INLINE simd::vf vec(simd::vf x, simd::vf dy, unsigned& slow) const {
    return gelu_erf_grad_fast(x, dy, slow);
  }
};
// gelu' (tanh form) = s + 2 x s s' u'(x), s = sigmoid(2u), s' = sigmoid(-2u),
// u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2)  (since 1 - tanh(u)^2 = 4 s s').
struct BGeluTanh {
  NERVE_INLINE float operator()(float x, float dy) const {
    float xc = simd::max_(simd::min_(x, 50.0f), -50.0f);
    float x2 = xc * xc;
    float du = kSqrt2OverPi * simd::fma_(3.0f * kGeluKappa, x2, 1.0f);
    float s, sn, hi, lo;
    gelu_tanh_arg(xc, hi, lo);
    simd::sigmoid_pair2(hi, lo, s, sn);
    return dy * simd::fma_(2.0f * x * s, sn * du, s);
  }
};
// softplus' = beta x > threshold ? 1 : sigmoid(beta x).
struct BSoftplus {
  float beta, threshold;
  NERVE_INLINE float operator()(float x, float dy) const {
    float t = beta * x;
    float s = simd::sigmoid2(t, simd::fma_(beta, x, -t));
    return simd::sel(t > threshold, dy, dy * s);
  }
};
// mish' = t + x (1 - t^2) sigmoid(x), t = n/(n+2), 1 - t = 2/(n+2) exactly
// in form, so the small factor 1 - t^2 = (1 - t)(1 + t) does not cancel.
struct BMish {
  NERVE_INLINE float operator()(float x, float dy) const {
    float e = simd::exp(simd::min_(x, 20.0f));
    float n = e * (e + 2.0f);
    float inv = 1.0f / (n + 2.0f);
    float t = n * inv;
    float one_minus_t2 = (2.0f * inv) * (1.0f + t);
    float sig = e / (1.0f + e);
    return dy * simd::fma_(x * one_minus_t2, sig, t);
  }
};
// hard_sigmoid' = 1/6 on the open interval (-3, 3), 0 elsewhere (boundaries too).
struct BHardSigmoid {
  NERVE_INLINE float operator()(float x, float dy) const {
    return simd::sel((x > -3.0f) & (x < 3.0f), dy * (1.0f / 6.0f), 0.0f);
  }
};
// hard_swish' = 0 for x <= -3; x/3 + 1/2 for -3 < x < 3; 1 for x >= 3
// (current PyTorch: the boundaries belong to the flat pieces, as for
// hard_sigmoid).
struct BHardSwish {
  NERVE_INLINE float operator()(float x, float dy) const {
    // (2x + 3)/6 == x/3 + 1/2 with one rounding less (2x + 3 is exact near the root).
    float mid = dy * ((2.0f * x + 3.0f) / 6.0f);
    float r = simd::sel(x < 3.0f, mid, dy);
    return simd::sel(x <= -3.0f, 0.0f, r);
  }
};

// ---------------------------------------------------------------------------
// Generic loops.

// Elements per parallel piece when the matrix is treated as one flat array:
// large enough to amortise scheduling, fixed so results never depend on threads.
constexpr Index kChunk = 1 << 14;

// Functors with an explicit vector kernel, `vf vec(vf x, unsigned& slow)`:
// `slow` is a bitmask of lanes outside the kernel's range, which operator()
// recomputes. Every element's result then depends on its own value only
// (never on its neighbours or its position), like the scalar loop.
// (Detected through the kHasVec flag: naming &F::vec in a template argument
// drops the vector attributes of vf's member, which GCC warns about.)
template <class F, class = void>
struct HasVec : std::false_type {};
template <class F>
struct HasVec<F, std::void_t<decltype(F::kHasVec)>> : std::bool_constant<F::kHasVec && kVecKernels> {};

// The lanes [0, len) of a vector at p, len in [1, kLanes]: a partial vector
// loads zeros beyond len and stores nothing beyond (masked, never faulting).
// Only a partial vector uses the masked forms (vmaskmovps stores are
// microcoded on Zen).
NERVE_INLINE simd::vf load_lanes(const float* p, Index len) {
  return len == simd::kLanes ? simd::load<simd::vf>(p) : simd::load_partial<simd::vf>(p, static_cast<int>(len));
}
NERVE_INLINE void store_lanes(float* p, simd::vf v, Index len) {
  if (len == simd::kLanes)
    simd::store(p, v);
  else
    simd::store_partial(p, v, static_cast<int>(len));
}

// One vector of up to kLanes elements through f.vec, patching the slow lanes.
template <class F>
NERVE_INLINE void map_vector(const F& f, const float* x, const float* bias, float* zout, float* y,
                             Index len) {
  simd::vf v = load_lanes(x, len);
  if (bias) v = v + load_lanes(bias, len);
  if (zout) store_lanes(zout, v, len);
  unsigned slow = 0;
  store_lanes(y, f.vec(v, slow), len);
  slow &= (1u << len) - 1u;  // len <= 16
  if (slow) {
    alignas(64) float lanes[simd::kLanes];
    simd::store(lanes, v);
    for (int l = 0; l < simd::kLanes; ++l)
      if (slow & (1u << l)) y[l] = f(lanes[l]);
  }
}

// y[i] = f(x[i] + bias[i]) for i < n (no bias: f(x[i])); when zout is given
// it receives x[i] + bias[i] (it may be x itself).
template <class F>
NERVE_INLINE void map_span(const F& f, const float* x, const float* bias, float* zout, float* y,
                           Index n) {
  if constexpr (HasVec<F>::value) {
    constexpr Index L = simd::kLanes;
    auto at = [](const float* p, Index i) { return p ? p + i : nullptr; };
    Index i = 0;
    // Two vectors per iteration: their long dependency chains (polynomial,
    // exp) overlap (gelu 16K and 16M at avx2: 5% faster than one at a time).
    for (; i + 2 * L <= n; i += 2 * L) {
      map_vector(f, x + i, at(bias, i), zout ? zout + i : nullptr, y + i, L);
      map_vector(f, x + i + L, at(bias, i + L), zout ? zout + i + L : nullptr, y + i + L, L);
    }
    for (; i < n; i += L)
      map_vector(f, x + i, at(bias, i), zout ? zout + i : nullptr, y + i, std::min<Index>(L, n - i));
    return;
  }
  if (!bias) {
#pragma omp simd
    for (Index j = 0; j < n; ++j) y[j] = f(x[j]);
  } else if (zout) {
#pragma omp simd
    for (Index j = 0; j < n; ++j) {
      const float v = x[j] + bias[j];
      zout[j] = v;
      y[j] = f(v);
    }
  } else {
#pragma omp simd
    for (Index j = 0; j < n; ++j) y[j] = f(x[j] + bias[j]);
  }
}

// y = f(z + bias) over the matrix; `store_z` writes z + bias back into z.
template <class F>
void forward_map(const F& f, float* z, const float* bias, float* y, Index rows, Index cols,
                 bool store_z, double flops_per_elem) {
  const double work = stream_work(static_cast<double>(rows) * static_cast<double>(cols), flops_per_elem);
  if (!bias) {
    // No per-column state: split the flat array so tall-skinny and one-row
    // matrices still use every thread.
    const Index n = rows * cols;
    const Index pieces = (n + kChunk - 1) / kChunk;
    const int t = threads_for(work, pieces);
    parallel_for(pieces, t, [&](Index p) {
      const Index b = p * kChunk, e = std::min(n, b + kChunk);
      map_span(f, z + b, nullptr, nullptr, y + b, e - b);
    });
    return;
  }
  const int t = threads_for(work, rows);
  parallel_for(rows, t, [&](Index r) {
    float* zr = z + r * cols;
    map_span(f, zr, bias, store_z ? zr : nullptr, y + r * cols, cols);
  });
}

// dz = g(src, dy) elementwise over one run of n elements, on this thread.
template <class G>
void backward_run(const G& g, const float* src, const float* dy, float* dz, Index n) {
  if constexpr (HasVec<G>::value) {
    // Whole vectors through g.vec, the slow lanes patched by g, and the
    // ragged end as a masked vector: each element's result depends on its
    // own value only, as in map_vector (so any split of the elements into
    // runs gives the same bits). The slow lanes are patched before the
    // store: dz may be dy itself (Dense's backward works in place), and the
    // patch reads dy.
    constexpr Index L = simd::kLanes;
    for (Index i = 0; i < n; i += L) {
      const Index len = std::min<Index>(L, n - i);
      unsigned slow = 0;
      simd::vf out = g.vec(load_lanes(src + i, len), load_lanes(dy + i, len), slow);
      slow &= (1u << len) - 1u;
      if (slow) {
        alignas(64) float lanes[L];
        simd::store(lanes, out);
        for (Index l = 0; l < len; ++l)
          if (slow & (1u << l)) lanes[l] = g(src[i + l], dy[i + l]);
        out = simd::load<simd::vf>(lanes);
      }
      store_lanes(dz + i, out, len);
    }
    return;
  }
#pragma omp simd
  for (Index i = 0; i < n; ++i) dz[i] = g(src[i], dy[i]);
}

// dz = g(src, dy) elementwise, src = y or z.
template <class G>
void backward_map(const G& g, const float* src, const float* dy, float* dz, Index n,
                  double flops_per_elem) {
  const Index pieces = (n + kChunk - 1) / kChunk;
  const int t = threads_for(stream_work(static_cast<double>(n), flops_per_elem), pieces);
  parallel_for(pieces, t, [&](Index p) {
    const Index b = p * kChunk, e = std::min(n, b + kChunk);
    backward_run(g, src + b, dy + b, dz + b, e - b);
  });
}

// ---------------------------------------------------------------------------
// rrelu. Slope for element i: lower + (upper - lower) * U_i in training, the
// mean slope in evaluation. Only elements with x <= 0 use it (PyTorch draws
// for `input <= 0`), so x == 0 has derivative = slope, as in leaky_relu.
//
// U_i comes from the Philox block 8 (i / 32) + i % 8, word (i % 32) / 8, under
// the key (mix_seed(seed, stream), step): one block serves four elements, and
// blocks are generated 8 at a time by the shared vector Philox (vec.hpp:
// vpmuludq for the 32x32->64 products) and the slopes are stored as whole
// vectors. Forward and backward
// recompute the same slopes from the key; nothing is stored between them.

constexpr int kPhiloxLanes = 8;                  // blocks per batch
constexpr Index kRreluGroup = 4 * kPhiloxLanes;  // elements per batch (divides kChunk)

struct RreluSlopes {
  std::uint64_t key, ctr_hi;
  float lower, width;
  // slope[j] for the 32 elements 4*first_block + j: element j takes word
  // j / 8 of block first_block + j % 8.
  NERVE_INLINE void fill(std::uint64_t first_block, float slope[kRreluGroup]) const {
    // The shared vector Philox (vec.hpp), 8 blocks at a time at every level
    // (the element-to-block map above fixes 8, so every level draws the same
    // slopes); at the generic level one block per call.
    alignas(32) std::uint32_t w[4][kPhiloxLanes];
#if defined(NERVE_VEC_AVX2)
    simd::philox_blocks<simd::i32x8, kPhiloxLanes>(key, ctr_hi, first_block, w);
#else
    for (int l = 0; l < kPhiloxLanes; ++l) {
      std::uint32_t one[4][1];
      simd::philox_blocks<std::int32_t, 1>(key, ctr_hi, first_block + static_cast<std::uint64_t>(l), one);
      for (int k = 0; k < 4; ++k) w[k][l] = one[k][0];
    }
#endif
    const std::uint32_t *c0 = w[0], *c1 = w[1], *c2 = w[2], *c3 = w[3];
    // Word w of lane l goes to element 8w + l: contiguous vector stores.
#pragma omp simd
    for (int l = 0; l < kPhiloxLanes; ++l) {
      slope[l] = simd::fma_(width, RandomKey::to_unit_float(c0[l]), lower);
      slope[kPhiloxLanes + l] = simd::fma_(width, RandomKey::to_unit_float(c1[l]), lower);
      slope[2 * kPhiloxLanes + l] = simd::fma_(width, RandomKey::to_unit_float(c2[l]), lower);
      slope[3 * kPhiloxLanes + l] = simd::fma_(width, RandomKey::to_unit_float(c3[l]), lower);
    }
  }
};

RreluSlopes rrelu_slopes(const Activation& a, const ActContext& ctx) {
  return RreluSlopes{mix_seed(ctx.seed, ctx.stream), ctx.step, a.lower, a.upper - a.lower};
}

// out = x > 0 ? v : v * slope over the flat array, v = x (forward) or dy (backward).
template <bool kBackward>
void rrelu_train_pass(const RreluSlopes& sl, const float* x, const float* dy, float* out, Index n) {
  const Index pieces = (n + kChunk - 1) / kChunk;
  const int t = threads_for(30.0 * static_cast<double>(n), pieces);
  parallel_for(pieces, t, [&](Index p) {
    const Index e = std::min(n, (p + 1) * kChunk);
    float slope[kRreluGroup];
    for (Index b = p * kChunk; b < e; b += kRreluGroup) {
      sl.fill(static_cast<std::uint64_t>(b) / 4, slope);
      const Index m = std::min<Index>(kRreluGroup, e - b);
      const float* xb = x + b;
      float* ob = out + b;
      if (kBackward) {
        const float* gb = dy + b;
#pragma omp simd
        for (Index j = 0; j < m; ++j) ob[j] = simd::sel(xb[j] > 0.0f, gb[j], gb[j] * slope[j]);
      } else {
#pragma omp simd
        for (Index j = 0; j < m; ++j) ob[j] = simd::sel(xb[j] > 0.0f, xb[j], xb[j] * slope[j]);
      }
    }
  });
}

void rrelu_forward(const Activation& a, float* z, const float* bias, float* y, Index rows,
                   Index cols, const ActContext& ctx) {
  if (!ctx.training) {
    const float slope = 0.5f * (a.lower + a.upper);
    forward_map(FLeaky{slope}, z, bias, y, rows, cols, bias != nullptr, 1.0);
    return;
  }
  if (bias) {
    // z + bias is the pre-activation backward reads (rrelu's derivative needs x).
    const int t = threads_for(static_cast<double>(rows) * static_cast<double>(cols), rows);
    parallel_for(rows, t, [&](Index r) {
      float* zr = z + r * cols;
#pragma omp simd
      for (Index c = 0; c < cols; ++c) zr[c] += bias[c];
    });
  }
  rrelu_train_pass<false>(rrelu_slopes(a, ctx), z, nullptr, y, rows * cols);
}

// In training (evaluation uses the mean slope: visit_elementwise_backward).
void rrelu_train_backward(const Activation& a, const float* z, const float* y, const float* dy,
                          float* dz, Index rows, Index cols, const ActContext& ctx) {
  if (!y) {
    rrelu_train_pass<true>(rrelu_slopes(a, ctx), z, dy, dz, rows * cols);
    return;
  }
  // With the forward output at hand the slope of a negative element is y / x
  // (within 1 ulp of the drawn slope: y = x * slope rounded once), a
  // memory-bound pass instead of regenerating Philox. Groups holding an
  // element where that does not work (x == 0, y below the normal range or
  // not finite, NaN) take the slopes from the generator as before.
  const RreluSlopes sl = rrelu_slopes(a, ctx);
  const Index n = rows * cols;
  const Index pieces = (n + kChunk - 1) / kChunk;
  const int t = threads_for(8.0 * static_cast<double>(n), pieces);
  constexpr float kMinNormal = std::numeric_limits<float>::min();
  constexpr float kMax = std::numeric_limits<float>::max();
  parallel_for(pieces, t, [&](Index p) {
    const Index e = std::min(n, (p + 1) * kChunk);
    float slope[kRreluGroup];
    for (Index b = p * kChunk; b < e; b += kRreluGroup) {
      const Index m = std::min<Index>(kRreluGroup, e - b);
      const float* xb = z + b;
      const float* yb = y + b;
      const float* gb = dy + b;
      float* ob = dz + b;
      int special = 0;
#pragma omp simd reduction(| : special)
      for (Index j = 0; j < m; ++j) {
        const float ay = simd::abs_(yb[j]);
        special |= static_cast<int>(!(xb[j] > 0.0f) & !((ay >= kMinNormal) & (ay <= kMax)));
      }
      if (special) {
        sl.fill(static_cast<std::uint64_t>(b) / 4, slope);
#pragma omp simd
        for (Index j = 0; j < m; ++j) ob[j] = simd::sel(xb[j] > 0.0f, gb[j], gb[j] * slope[j]);
      } else {
#pragma omp simd
        for (Index j = 0; j < m; ++j) ob[j] = simd::sel(xb[j] > 0.0f, gb[j], gb[j] * (yb[j] / xb[j]));
      }
    }
  });
}

// ---------------------------------------------------------------------------
// crelu: row r of y is [relu(x_r), relu(-x_r)]. Backward from y: the first
// half is positive exactly where x > 0, the second exactly where x < 0, so
// dz = dy1 [y1 > 0] - dy2 [y2 > 0]; x == 0 gets 0 from both halves.

void crelu_forward(float* z, const float* bias, float* y, Index rows, Index cols) {
  const int t = threads_for(2.0 * static_cast<double>(rows) * static_cast<double>(cols), rows);
  parallel_for(rows, t, [&](Index r) {
    const float* zr = z + r * cols;
    float* yp = y + r * 2 * cols;
    float* yn = yp + cols;
    if (bias) {
#pragma omp simd
      for (Index c = 0; c < cols; ++c) {
        const float x = zr[c] + bias[c];
        yp[c] = simd::max_(x, 0.0f);
        yn[c] = simd::max_(-x, 0.0f);
      }
    } else {
#pragma omp simd
      for (Index c = 0; c < cols; ++c) {
        const float x = zr[c];
        yp[c] = simd::max_(x, 0.0f);
        yn[c] = simd::max_(-x, 0.0f);
      }
    }
  });
}

void crelu_backward(const float* y, const float* dy, float* dz, Index rows, Index cols) {
  const int t = threads_for(3.0 * static_cast<double>(rows) * static_cast<double>(cols), rows);
  parallel_for(rows, t, [&](Index r) {
    const float* yp = y + r * 2 * cols;
    const float* yn = yp + cols;
    const float* gp = dy + r * 2 * cols;
    const float* gn = gp + cols;
    float* d = dz + r * cols;
#pragma omp simd
    for (Index c = 0; c < cols; ++c)
      d[c] = simd::sel(yp[c] > 0.0f, gp[c], 0.0f) - simd::sel(yn[c] > 0.0f, gn[c], 0.0f);
  });
}

// ---------------------------------------------------------------------------
// Row-wise softmax / log_softmax, in place per row (y may be z): pass 1 adds
// the bias and finds the max, pass 2 exponentiates and sums (in double, so
// the normaliser is correctly rounded for any width), pass 3 normalises.

// exp(x - m) with x - m carried as hi + lo (Knuth's two-sum, exact), so the
// rounding of the difference never reaches exp (it would cost up to |x - m| ulp).
NERVE_INLINE float exp_shifted(float x, float m) {
  const float hi = x - m;
  const float bv = hi - x;
  const float lo = (x - (hi - bv)) + (-m - bv);
  return simd::exp_nonpos_sum(hi, lo);  // hi = x - m <= 0
}

// Returns sum_c exp(src[c] - m) in double and, when dst is not null, stores
// each term (float) in dst[c]; m finite. A vector with a lane below -86 (a
// subnormal or zero term, -inf, NaN) goes through the scalar functor. The sum
// is kept in doubles, lane for lane (simd::vd): lane l adds the terms
// c = l mod kLanes, an order that depends only on n (and the level).
double exp_shifted_sum(const float* src, float m, float* dst, Index n) {
  Index c = 0;
  double sum = 0.0;
  // At every level, the generic one included (one lane: the sum in element
  // order, as the scalar loop's).
  using simd::vf;
  constexpr Index L = simd::kLanes;
  constexpr unsigned kAll = (1u << L) - 1u;
  const vf vm(m), neg_m(-m), fast_floor(-86.0f);
  simd::vd acc(0.0);
  for (; c + L <= n; c += L) {
    const vf x = simd::load<vf>(src + c);
    const vf hi = x - vm;
    vf e;
    if (simd::bits(hi >= fast_floor) == kAll) {
      e = exp_shifted_normal(x, hi, neg_m);
    } else {
      alignas(64) float terms[L];
      for (Index l = 0; l < L; ++l) terms[l] = exp_shifted(src[c + l], m);
      e = simd::load<vf>(terms);
    }
    if (dst) simd::store(dst + c, e);
    acc = acc + simd::to_f64(e);
  }
  alignas(64) double lanes[L];
  simd::store(lanes, acc);
  for (double v : lanes) sum += v;
  for (; c < n; ++c) {
    const float e = exp_shifted(src[c], m);
    if (dst) dst[c] = e;
    sum += static_cast<double>(e);
  }
  return sum;
}

// log(sum_c exp(src[c] - m)) for log_softmax. Where one logit dominates, the
// sum is 1 + rest with a tiny rest, and y at the maximum is -log1p(rest) ~
// -rest; log of the double sum would round it to 0 once rest < 1e-16 (and
// lose digits well before). Such rows (sum < 1 + 2^-20) are summed again
// with the exact 1s (the maximum and its ties) counted apart: scalar, and
// rare outside confident classifiers.
double log_exp_shifted_sum(const float* src, float m, Index n) {
  const double sum = exp_shifted_sum(src, m, nullptr, n);
  if (!(sum < 1.0 + 0x1p-20)) return std::log(sum);
  double ones = 0.0, rest = 0.0;
  for (Index c = 0; c < n; ++c) {
    const float e = exp_shifted(src[c], m);
    if (e == 1.0f)
      ones += 1.0;
    else
      rest += static_cast<double>(e);
  }
  return std::log1p((ones - 1.0) + rest);
}

// sum_i term(i) for i < n in double over 16 running sums (four AVX2 registers
// of doubles), for the reason row_max keeps four: a single vector accumulator
// made this latency-bound (one dependent add per 4 elements). Lane l sums
// terms l, l + 16, ...; the order depends only on n.
template <class Term>
double lanes_sum_in_double(Index n, const Term& term) {
  constexpr Index kLanes = 16;
  double acc[kLanes] = {};
  Index c = 0;
  for (; c + kLanes <= n; c += kLanes) {
#pragma omp simd
    for (Index l = 0; l < kLanes; ++l) acc[l] += term(c + l);
  }
  for (; c < n; ++c) acc[0] += term(c);
  double sum = 0.0;
  for (Index l = 0; l < kLanes; ++l) sum += acc[l];
  return sum;
}

template <bool kLog>
void softmax_forward(float* z, const float* bias, float* y, Index rows, Index cols) {
  const int t = threads_for(25.0 * static_cast<double>(rows) * static_cast<double>(cols), rows);
  parallel_for(rows, t, [&](Index r) {
    const float* zr = z + r * cols;
    float* yr = y + r * cols;
    if (bias) {
#pragma omp simd
      for (Index c = 0; c < cols; ++c) yr[c] = zr[c] + bias[c];
    }
    const float* xr = bias ? yr : zr;
    float m = row_max(xr, cols);
    // A row of all -inf (or +inf) has no meaningful max shift; using 0 then
    // yields the IEEE result (NaN) rather than hiding it.
    if (!std::isfinite(m)) m = 0.0f;
    if (kLog) {
      // y = x - shift with shift = m + log(sum) carried as two floats: y is
      // within ~1 ulp, and the pass stays 8-wide (subtracting in double took
      // a 4-wide pass with conversions, ~15% of the kernel). The low part is
      // formed without m + log(sum), which would drop a log(sum) far below
      // m's ulp (a dominated row's y at the max is then -log(sum) exactly).
      const double log_sum = log_exp_shifted_sum(xr, m, cols);
      const float shift_hi = static_cast<float>(static_cast<double>(m) + log_sum);
      const float shift_lo =
          static_cast<float>((static_cast<double>(m) - static_cast<double>(shift_hi)) + log_sum);
#pragma omp simd
      for (Index c = 0; c < cols; ++c) yr[c] = (xr[c] - shift_hi) - shift_lo;
    } else {
      // The terms go to y, then are normalised in place.
      const float inv = static_cast<float>(1.0 / exp_shifted_sum(xr, m, yr, cols));
#pragma omp simd
      for (Index c = 0; c < cols; ++c) yr[c] *= inv;
    }
  });
}

// softmax:     dz = y * (dy - sum(dy * y))
// log_softmax: dz = dy - exp(y) * sum(dy)
template <bool kLog>
void softmax_backward(const float* y, const float* dy, float* dz, Index rows, Index cols) {
  const int t = threads_for(25.0 * static_cast<double>(rows) * static_cast<double>(cols), rows);
  parallel_for(rows, t, [&](Index r) {
    const float* yr = y + r * cols;
    const float* gr = dy + r * cols;
    float* dr = dz + r * cols;
    if (kLog) {
      const float sf =
          static_cast<float>(lanes_sum_in_double(cols, [&](Index c) { return static_cast<double>(gr[c]); }));
#pragma omp simd
      for (Index c = 0; c < cols; ++c) dr[c] = simd::fma_(-simd::exp(yr[c]), sf, gr[c]);
    } else {
      const float sf = static_cast<float>(lanes_sum_in_double(
          cols, [&](Index c) { return static_cast<double>(gr[c]) * static_cast<double>(yr[c]); }));
#pragma omp simd
      for (Index c = 0; c < cols; ++c) dr[c] = yr[c] * (gr[c] - sf);
    }
  });
}

}  // namespace

// ---------------------------------------------------------------------------
// The activations, one unit each: registry facts (name, aliases, parameters
// with defaults, formula, row-wise or not, output width), what the derivative
// reads besides dy (kFrom: the one place this is said; ActInfo::grad_from,
// what Dense keeps for backward and what backward reads all follow from it),
// parameter validation (configure), and the kernels: forward/backward hand an
// elementwise functor and its cost to f and return true, or return false for
// a unit whose forward_rows/backward_rows run a kernel of their own.
// The table is the Units tuple below, in the order of enum Act.

namespace {

// The parameters a unit's configure() reads, already merged with defaults.
struct ActParams {
  const ActInfo& info;
  std::map<std::string, double> v;
  double num(const char* key) const { return v.at(key); }
  [[noreturn]] void fail(const std::string& what) const {
    throw ValueError("activation '" + info.name + "': " + what);
  }
  bool flag(const char* key) const {
    const double x = num(key);
    if (x != 0.0 && x != 1.0) {
      std::ostringstream os;
      os << "parameter '" << key << "' must be 0 or 1 (false/true), got " << x;
      fail(os.str());
    }
    return x == 1.0;
  }
  static std::string str(double x) {
    std::ostringstream os;
    os << x;
    return os.str();
  }
};

template <Act K, GradFrom From>
struct UnitBase {
  static constexpr Act kKind = K;
  static constexpr GradFrom kFrom = From;
  static void configure(Activation&, const ActParams&) {}
  static void forward_rows(const Activation&, float*, const float*, float*, Index, Index, const ActContext&) {}
  static void backward_rows(const Activation&, const float*, const float*, const float*, float*, Index, Index,
                            const ActContext&) {}
};
using Out = std::integral_constant<GradFrom, GradFrom::Output>;

// describe() gives the row without kind and grad_from, which come from the unit.
template <class U>
ActInfo info_of() {
  ActInfo i = U::describe();
  i.kind = U::kKind;
  i.grad_from = U::kFrom;
  return i;
}
ActInfo row(std::string name, std::vector<std::string> aliases, std::vector<ActParamInfo> params,
            std::string formula, bool rowwise = false, int width_factor = 1) {
  return ActInfo{std::move(name), std::move(aliases), Act::Identity, std::move(params), rowwise, width_factor,
                 GradFrom::Output, std::move(formula)};
}

struct IdentityU : UnitBase<Act::Identity, GradFrom::Output> {
  static ActInfo describe() { return row("identity", {"linear"}, {}, "y = x"); }
  template <class F> static bool forward(const Activation&, F&& f) { return f(FIdentity{}, 1), true; }
  template <class F> static bool backward(const Activation&, bool, F&& f) { return f(BIdentity{}, 1), true; }
};
struct SigmoidU : UnitBase<Act::Sigmoid, GradFrom::Output> {
  static ActInfo describe() { return row("sigmoid", {"logistic"}, {}, "y = 1 / (1 + exp(-x))"); }
  template <class F> static bool forward(const Activation&, F&& f) { return f(FSigmoid{}, 20), true; }
  template <class F> static bool backward(const Activation&, bool, F&& f) { return f(BSigmoid{}, 3), true; }
};
struct TanhU : UnitBase<Act::Tanh, GradFrom::Output> {
  static ActInfo describe() { return row("tanh", {}, {}, "y = tanh(x)"); }
  template <class F> static bool forward(const Activation&, F&& f) { return f(FTanh{}, 25), true; }
  template <class F> static bool backward(const Activation&, bool, F&& f) { return f(BTanh{}, 3), true; }
};
struct ReluU : UnitBase<Act::Relu, GradFrom::Output> {
  static ActInfo describe() { return row("relu", {}, {}, "y = max(x, 0)"); }
  template <class F> static bool forward(const Activation&, F&& f) { return f(FRelu{}, 1), true; }
  template <class F> static bool backward(const Activation&, bool, F&& f) { return f(BRelu{}, 1), true; }
};
// leaky_relu and elu take the derivative from y, which needs sign(y) == sign(x): alpha >= 0.
inline void configure_alpha(Activation& a, const ActParams& p) {
  if (p.num("alpha") < 0.0) p.fail("alpha must be >= 0, got " + ActParams::str(p.num("alpha")));
  a.alpha = static_cast<float>(p.num("alpha"));
}
struct LeakyReluU : UnitBase<Act::LeakyRelu, GradFrom::Output> {
  static ActInfo describe() {
    return row("leaky_relu", {}, {{"alpha", 0.01}}, "y = x if x > 0 else alpha * x   (alpha >= 0)");
  }
  static void configure(Activation& a, const ActParams& p) { configure_alpha(a, p); }
  template <class F> static bool forward(const Activation& a, F&& f) { return f(FLeaky{a.alpha}, 1), true; }
  template <class F> static bool backward(const Activation& a, bool, F&& f) { return f(BLeaky{a.alpha}, 2), true; }
};
struct EluU : UnitBase<Act::Elu, GradFrom::Output> {
  static ActInfo describe() {
    return row("elu", {}, {{"alpha", 1.0}}, "y = x if x > 0 else alpha * (exp(x) - 1)   (alpha >= 0)");
  }
  static void configure(Activation& a, const ActParams& p) { configure_alpha(a, p); }
  template <class F> static bool forward(const Activation& a, F&& f) { return f(FElu{a.alpha}, 20), true; }
  template <class F> static bool backward(const Activation& a, bool, F&& f) { return f(BElu{a.alpha}, 3), true; }
};
struct SeluU : UnitBase<Act::Selu, GradFrom::Output> {
  static ActInfo describe() {
    return row("selu", {}, {}, "y = scale * (x if x > 0 else alpha * (exp(x) - 1)), alpha = 1.6732632, scale = 1.0507010");
  }
  template <class F> static bool forward(const Activation&, F&& f) { return f(FSelu{}, 20), true; }
  template <class F> static bool backward(const Activation&, bool, F&& f) { return f(BSelu{}, 3), true; }
};
struct CreluU : UnitBase<Act::Crelu, GradFrom::Output> {
  static ActInfo describe() {
    return row("crelu", {}, {}, "y = [max(x, 0), max(-x, 0)] concatenated along columns (output width 2 * input width)",
               false, 2);
  }
  template <class F> static bool forward(const Activation&, F&&) { return false; }
  template <class F> static bool backward(const Activation&, bool, F&&) { return false; }
  static void forward_rows(const Activation&, float* z, const float* bias, float* y, Index rows, Index cols,
                           const ActContext&) {
    crelu_forward(z, bias, y, rows, cols);
  }
  static void backward_rows(const Activation&, const float*, const float* y, const float* dy, float* dz, Index rows,
                            Index cols, const ActContext&) {
    crelu_backward(y, dy, dz, rows, cols);
  }
};
struct SwishU : UnitBase<Act::Swish, GradFrom::Input> {
  static ActInfo describe() { return row("swish", {"silu"}, {{"beta", 1.0}}, "y = x * sigmoid(beta * x)"); }
  static void configure(Activation& a, const ActParams& p) { a.beta = static_cast<float>(p.num("beta")); }
  template <class F> static bool forward(const Activation& a, F&& f) {
    if (a.beta == 1.0f) f(FSilu{}, 20);
    else f(FSwish{a.beta}, 20);
    return true;
  }
  template <class F> static bool backward(const Activation& a, bool, F&& f) { return f(BSwish{a.beta}, 25), true; }
};
struct BinaryStepU : UnitBase<Act::BinaryStep, GradFrom::Output> {
  static ActInfo describe() {
    return row("binary_step", {}, {{"straight_through", 0.0}},
               "y = 1 if x >= 0 else 0; gradient 0, or dy passed through if straight_through = 1");
  }
  static void configure(Activation& a, const ActParams& p) { a.straight_through = p.flag("straight_through"); }
  template <class F> static bool forward(const Activation&, F&& f) { return f(FStep{}, 1), true; }
  template <class F> static bool backward(const Activation& a, bool, F&& f) {
    if (a.straight_through) f(BIdentity{}, 1);
    else f(BZero{}, 1);
    return true;
  }
};
template <Act K, bool kLog>
struct SoftmaxBase : UnitBase<K, GradFrom::Output> {
  template <class F> static bool forward(const Activation&, F&&) { return false; }
  template <class F> static bool backward(const Activation&, bool, F&&) { return false; }
  static void forward_rows(const Activation&, float* z, const float* bias, float* y, Index rows, Index cols,
                           const ActContext&) {
    softmax_forward<kLog>(z, bias, y, rows, cols);
  }
  static void backward_rows(const Activation&, const float*, const float* y, const float* dy, float* dz, Index rows,
                            Index cols, const ActContext&) {
    softmax_backward<kLog>(y, dy, dz, rows, cols);
  }
};
struct SoftmaxU : SoftmaxBase<Act::Softmax, false> {
  static ActInfo describe() {
    return row("softmax", {}, {}, "y_i = exp(x_i - max(x)) / sum_j exp(x_j - max(x))   (per row)", true);
  }
};
struct LogSoftmaxU : SoftmaxBase<Act::LogSoftmax, true> {
  static ActInfo describe() {
    return row("log_softmax", {}, {}, "y_i = x_i - max(x) - log(sum_j exp(x_j - max(x)))   (per row)", true);
  }
};
struct GeluU : UnitBase<Act::Gelu, GradFrom::Input> {
  static ActInfo describe() {
    return row("gelu", {}, {{"approximate", 0.0}},
               "y = x * Phi(x); approximate = 1: y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))");
  }
  static void configure(Activation& a, const ActParams& p) {
    const double ap = p.num("approximate");
    if (ap != 0.0 && ap != 1.0)
      p.fail("parameter 'approximate' must be 0 (exact erf form) or 1 (tanh form), got " + ActParams::str(ap));
    a.approximate_tanh = ap == 1.0;
  }
  template <class F> static bool forward(const Activation& a, F&& f) {
    if (a.approximate_tanh) f(FGeluTanh{}, 25);
    else f(FGeluErf{}, 35);
    return true;
  }
  template <class F> static bool backward(const Activation& a, bool, F&& f) {
    if (a.approximate_tanh) f(BGeluTanh{}, 30);
    else f(BGeluErf{}, 50);
    return true;
  }
};
struct SoftplusU : UnitBase<Act::Softplus, GradFrom::Input> {
  static ActInfo describe() {
    return row("softplus", {}, {{"beta", 1.0}, {"threshold", 20.0}},
               "y = log(1 + exp(beta * x)) / beta, or x where beta * x > threshold");
  }
  static void configure(Activation& a, const ActParams& p) {
    if (!(p.num("beta") > 0.0)) p.fail("beta must be > 0, got " + ActParams::str(p.num("beta")));
    a.beta = static_cast<float>(p.num("beta"));
    a.threshold = static_cast<float>(p.num("threshold"));
  }
  template <class F> static bool forward(const Activation& a, F&& f) {
    return f(FSoftplus{a.beta, a.threshold}, 40), true;
  }
  template <class F> static bool backward(const Activation& a, bool, F&& f) {
    return f(BSoftplus{a.beta, a.threshold}, 20), true;
  }
};
struct MishU : UnitBase<Act::Mish, GradFrom::Input> {
  static ActInfo describe() { return row("mish", {}, {}, "y = x * tanh(softplus(x))"); }
  template <class F> static bool forward(const Activation&, F&& f) { return f(FMish{}, 25), true; }
  template <class F> static bool backward(const Activation&, bool, F&& f) { return f(BMish{}, 30), true; }
};
struct HardSigmoidU : UnitBase<Act::HardSigmoid, GradFrom::Input> {
  static ActInfo describe() { return row("hard_sigmoid", {}, {}, "y = min(max(x + 3, 0), 6) / 6"); }
  template <class F> static bool forward(const Activation&, F&& f) { return f(FHardSigmoid{}, 4), true; }
  template <class F> static bool backward(const Activation&, bool, F&& f) { return f(BHardSigmoid{}, 3), true; }
};
struct HardSwishU : UnitBase<Act::HardSwish, GradFrom::Input> {
  static ActInfo describe() { return row("hard_swish", {}, {}, "y = x * min(max(x + 3, 0), 6) / 6"); }
  template <class F> static bool forward(const Activation&, F&& f) { return f(FHardSwish{}, 5), true; }
  template <class F> static bool backward(const Activation&, bool, F&& f) { return f(BHardSwish{}, 4), true; }
};
struct Relu6U : UnitBase<Act::Relu6, GradFrom::Output> {
  static ActInfo describe() { return row("relu6", {}, {}, "y = min(max(x, 0), 6)"); }
  template <class F> static bool forward(const Activation&, F&& f) { return f(FRelu6{}, 2), true; }
  template <class F> static bool backward(const Activation&, bool, F&& f) { return f(BRelu6{}, 2), true; }
};
// rrelu: elementwise with the mean slope in evaluation; in training the
// slopes come from the generator (rrelu_forward / rrelu_train_backward).
struct RreluSlope {
  float slope;
  NERVE_INLINE float operator()(float x, float g) const { return simd::sel(x > 0.0f, g, g * slope); }
};
struct RreluU : UnitBase<Act::Rrelu, GradFrom::Input> {
  static ActInfo describe() {
    return row("rrelu", {}, {{"lower", 1.0 / 8.0}, {"upper", 1.0 / 3.0}},
               "y = x if x > 0 else a * x; a ~ U(lower, upper) per element in training, "
               "(lower + upper) / 2 in evaluation");
  }
  static void configure(Activation& a, const ActParams& p) {
    if (!(p.num("lower") >= 0.0 && p.num("lower") <= p.num("upper")))
      p.fail("need 0 <= lower <= upper, got lower=" + ActParams::str(p.num("lower")) +
             ", upper=" + ActParams::str(p.num("upper")));
    a.lower = static_cast<float>(p.num("lower"));
    a.upper = static_cast<float>(p.num("upper"));
  }
  template <class F> static bool forward(const Activation&, F&&) { return false; }
  template <class F> static bool backward(const Activation& a, bool training, F&& f) {
    if (training) return false;
    return f(RreluSlope{0.5f * (a.lower + a.upper)}, 1), true;
  }
  static void forward_rows(const Activation& a, float* z, const float* bias, float* y, Index rows, Index cols,
                           const ActContext& ctx) {
    rrelu_forward(a, z, bias, y, rows, cols, ctx);
  }
  static void backward_rows(const Activation& a, const float* z, const float* y, const float* dy, float* dz,
                            Index rows, Index cols, const ActContext& ctx) {
    rrelu_train_backward(a, z, y, dy, dz, rows, cols, ctx);
  }
};

// The table, in the order of enum Act.
using Units = std::tuple<IdentityU, SigmoidU, TanhU, ReluU, LeakyReluU, EluU, SeluU, CreluU, SwishU, BinaryStepU,
                         SoftmaxU, LogSoftmaxU, GeluU, SoftplusU, MishU, HardSigmoidU, HardSwishU, Relu6U, RreluU>;

template <std::size_t... I>
constexpr bool units_in_enum_order(std::index_sequence<I...>) {
  return ((static_cast<std::size_t>(std::tuple_element_t<I, Units>::kKind) == I) && ...);
}
static_assert(units_in_enum_order(std::make_index_sequence<std::tuple_size_v<Units>>{}),
              "Units must list the activations in the order of enum Act");

// f(unit) for the unit of kind k.
template <class F, std::size_t... I>
void with_unit_impl(Act k, F&& f, std::index_sequence<I...>) {
  (void)((static_cast<std::size_t>(k) == I ? (f(std::tuple_element_t<I, Units>{}), true) : false) || ...);
}
template <class F>
void with_unit(Act k, F&& f) {
  with_unit_impl(k, f, std::make_index_sequence<std::tuple_size_v<Units>>{});
}

template <std::size_t... I>
std::vector<ActInfo> registry_of(std::index_sequence<I...>) {
  return {info_of<std::tuple_element_t<I, Units>>()...};
}

template <class G, class = void>
struct ReadsSrc : std::true_type {};
template <class G>
struct ReadsSrc<G, std::void_t<decltype(G::kReadsSrc)>> : std::bool_constant<G::kReadsSrc> {};

// What derivative g of unit U reads: y or z by the unit's kFrom, dy for a
// derivative that reads nothing else.
template <class U, class G>
const float* source(const float* z, const float* y, const float* dy) {
  if constexpr (!ReadsSrc<G>::value) return dy;
  else return U::kFrom == GradFrom::Output ? y : z;
}

template <class G>
constexpr bool kIsIdentity = std::is_same_v<G, BIdentity>;

}  // namespace

// ---------------------------------------------------------------------------

const std::vector<ActInfo>& activation_registry() {
  static const std::vector<ActInfo> registry = registry_of(std::make_index_sequence<std::tuple_size_v<Units>>{});
  return registry;
}

const ActInfo& activation_info(Act kind) {
  const auto& r = activation_registry();
  const auto i = static_cast<std::size_t>(kind);
  if (i >= r.size())
    throw ValueError("activation_info: unknown activation kind " + std::to_string(static_cast<int>(kind)));
  return r[i];
}

Activation make_activation(const std::string& name, const std::map<std::string, double>& params) {
  const ActInfo* info = nullptr;
  for (const ActInfo& i : activation_registry()) {
    if (i.name == name || std::find(i.aliases.begin(), i.aliases.end(), name) != i.aliases.end()) {
      info = &i;
      break;
    }
  }
  if (!info) {
    std::vector<std::string> names;
    for (const ActInfo& i : activation_registry()) {
      names.push_back(i.name);
      for (const std::string& al : i.aliases) names.push_back(al);
    }
    throw ValueError("unknown activation '" + name + "'; valid names: " + join(names));
  }

  ActParams p{*info, {}};
  std::vector<std::string> valid;
  for (const ActParamInfo& pi : info->params) {
    p.v[pi.name] = pi.default_value;
    valid.push_back(pi.name);
  }
  for (const auto& kv : params) {
    if (!p.v.count(kv.first)) {
      throw ValueError("activation '" + info->name + "' has no parameter '" + kv.first + "'; " +
                       (valid.empty() ? std::string("it takes no parameters")
                                      : "valid parameters: " + join(valid)));
    }
    if (!std::isfinite(kv.second)) {
      std::ostringstream os;
      os << "activation '" << info->name << "': parameter '" << kv.first << "' must be finite, got " << kv.second;
      throw ValueError(os.str());
    }
    p.v[kv.first] = kv.second;
  }
  Activation a;
  a.kind = info->kind;
  with_unit(a.kind, [&](auto u) { decltype(u)::configure(a, p); });
  return a;
}

void activation_forward(const Activation& a, float* z, const float* bias, float* y, Index rows,
                        Index cols, const ActContext& ctx) {
  if (rows <= 0 || cols <= 0) return;
  if (a.kind == Act::Identity && !bias && y == z) return;
  with_unit(a.kind, [&](auto u) {
    using U = decltype(u);
    // Backward reads z + bias only where the derivative is taken from the input.
    const bool keep = bias != nullptr && U::kFrom == GradFrom::Input;
    const bool elementwise = U::forward(a, [&](const auto& f, double flops) {
      forward_map(f, z, bias, y, rows, cols, keep, flops);
    });
    if (!elementwise) U::forward_rows(a, z, bias, y, rows, cols, ctx);
  });
}

void activation_backward(const Activation& a, const float* z, const float* y, const float* dy,
                         float* dz, Index rows, Index cols, const ActContext& ctx) {
  if (rows <= 0 || cols <= 0) return;
  const Index n = rows * cols;
  with_unit(a.kind, [&](auto u) {
    using U = decltype(u);
    const bool elementwise = U::backward(a, ctx.training, [&](const auto& g, double flops) {
      using G = std::decay_t<decltype(g)>;
      if constexpr (kIsIdentity<G>)
        if (dz == dy) return;
      backward_map(g, source<U, G>(z, y, dy), dy, dz, n, flops);
    });
    if (!elementwise) U::backward_rows(a, z, y, dy, dz, rows, cols, ctx);
  });
}

bool activation_backward_is_elementwise(const Activation& a, const ActContext& ctx) {
  bool elementwise = false;
  with_unit(a.kind, [&](auto u) { elementwise = decltype(u)::backward(a, ctx.training, [](const auto&, double) {}); });
  return elementwise;
}

bool activation_backward_is_identity(const Activation& a) {
  // Whichever kinds hand BIdentity (the same in training and evaluation).
  bool identity = false;
  with_unit(a.kind, [&](auto u) {
    decltype(u)::backward(a, false, [&](const auto& g, double) { identity = kIsIdentity<std::decay_t<decltype(g)>>; });
  });
  return identity;
}

void activation_backward_run(const Activation& a, const float* z, const float* y, const float* dy,
                             float* dz, Index n, const ActContext& ctx) {
  with_unit(a.kind, [&](auto u) {
    using U = decltype(u);
    U::backward(a, ctx.training, [&](const auto& g, double) {
      using G = std::decay_t<decltype(g)>;
      if constexpr (kIsIdentity<G>)
        if (dz == dy) return;
      backward_run(g, source<U, G>(z, y, dy), dy, dz, n);
    });
  });
}

}  // namespace nerve
