// Branch-free float math that GCC vectorizes inside `#pragma omp simd` loops.
//
// Without -ffast-math GCC never calls glibc's vector math, so a loop around
// std::exp stays scalar. These replacements are written only with +, *, fma,
// division, compares/selects and integer bit moves, which all map to AVX2.
// Accuracy targets ~1-2 ulp over the whole float range (inputs are clamped
// where the true result has already over/underflowed).
//
// Method: Cody-Waite range reduction x = n*ln2 + r with a two-part ln2 and
// fused multiply-adds (so r is exact), then a Taylor polynomial in r, whose
// truncation error for |r| <= ln2/2 is far below float rounding.
#pragma once
#include <cstdint>
#include <cstring>

// The vector types and their scalar twins (sel, min_, max_, fma_, as_int...).
#include "nerve/vec.hpp"

namespace nerve {
namespace simd {

// Every function below is a template over the float type F: float (the
// scalar tails, and loops GCC vectorizes under `#pragma omp simd`), f32x8 or
// f32x16 (vec.hpp). The same operations in the same order at every width,
// so a vector and its scalar tail give the same bits.
template <class F>
struct type_identity {
  using type = F;
};
template <class F>
using same_t = typename type_identity<F>::type;  // not deduced: literals convert

// 1.5 * 2^23: adding it rounds a float of magnitude < 2^22 to an integer in
// the low mantissa bits (round-to-nearest-even, like rint), without a cvt.
constexpr float kRoundMagic = 12582912.0f;
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693145751953125f;         // few mantissa bits: n*kLn2Hi exact
constexpr float kLn2Lo = 1.428606765330187045e-06f;  // ln2 - kLn2Hi

// expm1(r) - r - r^2/2 over r in [-0.35, 0.35]: Taylor terms r^3/3! .. r^9/9!
// (the r^10/10! remainder is < 2e-11 relative).
template <class F>
NERVE_INLINE F expm1_poly(F r) {
  F p = F(1.0f / 362880.0f);
  p = fma_(p, r, F(1.0f / 40320.0f));
  p = fma_(p, r, F(1.0f / 5040.0f));
  p = fma_(p, r, F(1.0f / 720.0f));
  p = fma_(p, r, F(1.0f / 120.0f));
  p = fma_(p, r, F(1.0f / 24.0f));
  p = fma_(p, r, F(1.0f / 6.0f));
  F r2 = r * r;
  // r + (r^2/2 + r^3*p): the exact leading term is added last.
  return r + fma_(r2, F(0.5f), r2 * r * p);
}

// Splits an (already clamped) integer exponent n in [-252, 254] into two
// powers of two, so 2^n * m never needs an unrepresentable 2^n and results
// land in the subnormal range with a single rounding.
template <class I, class F>
NERVE_INLINE void pow2_split(I n, F& s1, F& s2) {
  I n1 = n >> 1;
  I n2 = n - n1;
  s1 = as_float(sll(n1 + I(127), 23));
  s2 = as_float(sll(n2 + I(127), 23));
}

// exp(a + b) where b is a small correction (|b| < ~4) carried separately so
// that a large `a` (e.g. -x*x/2 split into hi + lo) loses no bits.
template <class F>
NERVE_INLINE F exp_sum(F a, same_t<F> b) {
  using I = i32_of<F>;
  // Beyond these bounds the result is inf / 0 anyway; clamping keeps the
  // integer exponent in range. NaN falls through both compares unchanged.
  // An infinite `a` makes the two-sum/two-product that produced `b` NaN
  // (inf - inf); exp(+-inf) must still be inf / 0.
  b = sel(abs_(a) < F(__builtin_inff()), b, F(0.0f));
  a = max_(min_(a, F(89.0f)), F(-104.0f));
  F t = fma_(a + b, F(kLog2e), F(kRoundMagic));
  F n = t - F(kRoundMagic);
  I ni = as_int(t) - I(as_int(kRoundMagic));
  F r = fma_(-n, F(kLn2Hi), a);
  r = r + b;
  r = fma_(-n, F(kLn2Lo), r);
  F m = F(1.0f) + expm1_poly(r);
  F s1, s2;
  pow2_split(ni, s1, s2);
  return m * s1 * s2;
}

// exp(x), ~1 ulp; 0 below -103.97, +inf above 88.72.
template <class F>
NERVE_INLINE F exp(F x) { return exp_sum(x, F(0.0f)); }

// expm1(x) = e^x - 1 with full relative accuracy near 0:
// e^x - 1 = 2^n * expm1(r) + (2^n - 1), the second term exact for small n.
template <class F>
NERVE_INLINE F expm1(F x) {
  using I = i32_of<F>;
  x = max_(min_(x, F(89.0f)), F(-30.0f));  // expm1(-30) rounds to -1 in float
  F t = fma_(x, F(kLog2e), F(kRoundMagic));
  F n = t - F(kRoundMagic);
  I ni = as_int(t) - I(as_int(kRoundMagic));
  F r = fma_(-n, F(kLn2Hi), x);
  r = fma_(-n, F(kLn2Lo), r);
  F em = expm1_poly(r);
  F s1, s2;
  pow2_split(ni, s1, s2);
  F s = s1 * s2;
  return fma_(s, em, s - F(1.0f));
}

// log(x) for x > 0 (finite, normal). Reduction x = 2^k * m, m in
// [sqrt(1/2), sqrt(2)), f = m - 1; then log(1+f) = f - h + s*(h + R) with
// h = f^2/2, s = f/(2+f), R = 2s^2/3 + 2s^4/5 + ... (atanh series): the exact
// f carries the bulk so the rounding of s only touches small terms.
// `c` is a correction added to f before the log (used by log1p).
template <class F>
NERVE_INLINE F log_corr(F x, same_t<F> c) {
  using I = i32_of<F>;
  I ix = as_int(x) - I(0x3f3504f3);  // offset makes m start at sqrt(1/2)
  I k = ix >> 23;
  F m = as_float(as_int(x) - sll(k, 23));
  F f = (m - F(1.0f)) + c * as_float(sll(I(127) - k, 23));
  F s = f / (F(2.0f) + f);
  F s2 = s * s;
  F R = F(2.0f / 13.0f);
  R = fma_(R, s2, F(2.0f / 11.0f));
  R = fma_(R, s2, F(2.0f / 9.0f));
  R = fma_(R, s2, F(2.0f / 7.0f));
  R = fma_(R, s2, F(2.0f / 5.0f));
  R = fma_(R, s2, F(2.0f / 3.0f));
  R = R * s2;
  F h = F(0.5f) * f * f;
  F lm = f - (h - s * (h + R));
  F kf = cvt_f32(k);
  return fma_(kf, F(kLn2Hi), fma_(kf, F(kLn2Lo), lm));
}

template <class F>
NERVE_INLINE F log(F x) { return log_corr(x, F(0.0f)); }

// log1p(u) for u >= 0 (the only use here: log1p(exp(-|t|))). w = 1 + u is
// rounded; the lost part c = u - (w - 1) is exact and fed back into f.
template <class F>
NERVE_INLINE F log1p_pos(F u) {
  F w = F(1.0f) + u;
  F c = u - (w - F(1.0f));
  return log_corr(w, c);
}

// tanh(x) = sign(x) * em / (em + 2), em = expm1(2|x|): one formula that is
// accurate both near 0 (expm1 keeps relative precision) and in the tails.
// |x| is clamped at 10, where tanh already rounds to 1.
template <class F>
NERVE_INLINE F tanh(F x) {
  F ax = abs_(x);
  ax = min_(ax, F(10.0f));
  F em = expm1(F(2.0f) * ax);
  F t = em / (em + F(2.0f));
  return copysign_(t, x);
}

// Rounds a double to hi + lo floats (hi + lo == d to ~2^-48 relative): lets
// an argument computed in double reach exp without a float rounding, which
// matters in tails where exp's relative error grows with |argument|.
NERVE_INLINE void split(double d, float& hi, float& lo) {
  hi = static_cast<float>(d);
  lo = static_cast<float>(d - static_cast<double>(hi));
}

// sigmoid(v) and sigmoid(-v) for v = hi + lo, both to full relative accuracy:
// with e = exp(-|v|), sigma(|v|) = 1/(1+e) and sigma(-|v|) = e/(1+e), so
// 1 - sigma (which cancels for large v) is never formed. One division and
// e * (1/(1+e)) costs ~1 ulp more than e/(1+e) on the small side.
template <class F>
NERVE_INLINE void sigmoid_pair2(F hi, same_t<F> lo, F& s, F& s_neg) {
  F ahi = abs_(hi);
  F alo = sel(hi < F(0.0f), -lo, lo);
  F e = exp_sum(-ahi, -alo);
  F inv = F(1.0f) / (F(1.0f) + e);
  F big = inv, small = e * inv;
  s = sel(hi >= F(0.0f), big, small);
  s_neg = sel(hi >= F(0.0f), small, big);
}

// sigmoid(hi + lo).
template <class F>
NERVE_INLINE F sigmoid2(F hi, same_t<F> lo) {
  F ahi = abs_(hi);
  F alo = sel(hi < F(0.0f), -lo, lo);
  F e = exp_sum(-ahi, -alo);
  F num = sel(hi >= F(0.0f), F(1.0f), e);
  return num / (F(1.0f) + e);
}

// 2^ni * e^r for |r| <= ln2/2 (a little beyond when n was rounded from the
// high part alone), the tail of the non-positive exps below: Taylor to r^7
// (remainder r^8/8! < 5e-9 relative, far below float rounding), the exact
// leading terms added last. p by Estrin's scheme, not Horner's: these exps sit
// in loops bound by the latency of their longest chain (softmax's exp-and-sum
// pass, sigmoid), and the 8-lane twin in activation.cpp must give the same bits.
template <class F>
NERVE_INLINE F exp_nonpos_finish(F r, i32_of<F> ni) {
  F r2 = r * r;
  F p01 = fma_(F(1.0f / 24.0f), r, F(1.0f / 6.0f));
  F p23 = fma_(F(1.0f / 720.0f), r, F(1.0f / 120.0f));
  F p = fma_(fma_(F(1.0f / 5040.0f), r2, p23), r2, p01);
  F m = F(1.0f) + (r + fma_(r2, F(0.5f), r2 * r * p));
  F s1, s2;
  pow2_split(ni, s1, s2);
  return m * s1 * s2;
}

// exp(a + b) for a <= 0 with a small correction b carried separately (as
// exp_sum): softmax's exp(x - max) with x - max as an exact hi + lo pair.
template <class F>
NERVE_INLINE F exp_nonpos_sum(F a, same_t<F> b) {
  using I = i32_of<F>;
  b = sel(a > F(-__builtin_inff()), b, F(0.0f));  // a = -inf made b NaN (inf - inf)
  a = max_(a, F(-104.0f));
  // n from a alone (b is tiny: at worst r lands a hair past ln2/2), and b
  // joins the small part of the reduction, off the critical path.
  F t = fma_(a, F(kLog2e), F(kRoundMagic));
  F n = t - F(kRoundMagic);
  I ni = as_int(t) - I(as_int(kRoundMagic));
  F r = fma_(-n, F(kLn2Hi), a) + fma_(-n, F(kLn2Lo), b);
  return exp_nonpos_finish(r, ni);
}

// exp(a) for a <= 0 (or -inf; NaN propagates), the only case sigmoid needs:
// one clamp instead of two, and Taylor to r^7 (remainder r^8/8! < 5e-9
// relative for |r| <= ln2/2, still far below float rounding). About 25%
// cheaper than exp(); sigmoid stays within 2.3 ulp (measured on a 1e-4 grid
// over [-110, 110]).
template <class F>
NERVE_INLINE F exp_nonpos(F a) {
  using I = i32_of<F>;
  a = max_(a, F(-104.0f));
  F t = fma_(a, F(kLog2e), F(kRoundMagic));
  F n = t - F(kRoundMagic);
  I ni = as_int(t) - I(as_int(kRoundMagic));
  F r = fma_(-n, F(kLn2Hi), a);
  r = fma_(-n, F(kLn2Lo), r);
  return exp_nonpos_finish(r, ni);
}

template <class F>
NERVE_INLINE F sigmoid(F x) {
  F e = exp_nonpos(-abs_(x));
  F num = sel(x >= F(0.0f), F(1.0f), e);
  return num / (F(1.0f) + e);
}

// Phi(-|x|), the lower tail of the standard normal CDF, to full relative
// precision: Phi(-|x|) = erfc(z)/2 with z = |x|/sqrt(2), written as
//   erfc(z) = t * Q(t) * exp(-z^2),  t = 1/(1 + z/2) in (0, 1],
// where Q(t) = erfcx(z)/t is smooth on [0, 1] (Q(0) = 1/(2 sqrt(pi)), Q(1) = 1).
// Q is a degree-14 polynomial fitted for nerve (weighted least squares on
// Chebyshev nodes, relative error 1.3e-10). t and Q are evaluated in double
// (4-wide, still vectorized) so neither the rounding of t nor the polynomial
// rounding reaches the float result; z^2 = x^2/2 is split hi + lo exactly so
// the exp argument loses nothing in the far tail.
// The two factors of Phi(-|x|) = tq * e: tq = t Q(t) / 2 and e = exp(-x^2/2).
template <class F>
NERVE_INLINE void normal_tail_factors(F x, F& tq, F& e) {
  using D = f64_of<F>;
  F ax = abs_(x);
  // t = 1/den in double: a float reciprocal refined by one Newton step
  // (relative error ~1e-14) is much cheaper than a 4-wide double division.
  // (ax is capped where the tail is long since 0, keeping t finite for x = inf.)
  D den = D(1.0) + D(0.35355339059327376) * to_f64(min_(ax, F(1.0e4f)));
  D t0 = to_f64(F(1.0f) / to_f32(den));
  D t = t0 * (D(2.0) - den * t0);
  // Q = E(t^2) + t O(t^2): two Horner chains of 7-8 terms instead of one of
  // 15. One chain of dependent 4-cycle FMAs made gelu latency-bound (~60
  // cycles per 8 lanes, the FP scheduler full of waiting FMAs); a full Estrin
  // tree spilled registers. Rounding in double is ~1e-15 either way.
  const D u = t * t;
  D ev = D(0.024570381898957532);
  ev = ev * u + D(0.36115572388834377);
  ev = ev * u + D(0.018486686654449355);
  ev = ev * u - D(0.21586968416661401);
  ev = ev * u - D(0.082850247173508043);
  ev = ev * u + D(0.083228750336653529);
  ev = ev * u + D(0.24683181441749985);
  ev = ev * u + D(0.28209479174296287);
  D od = D(-0.15022442123745372);
  od = od * u - D(0.37591516787058232);
  od = od * u + D(0.30924255326009492);
  od = od * u + D(0.040570168374865379);
  od = od * u + D(0.00024081726234828627);
  od = od * u + D(0.17634302633897486);
  od = od * u + D(0.28209480638688417);
  const D q = ev + t * od;
  tq = to_f32(D(0.5) * t * q);
  F hx = F(0.5f) * ax;
  F hi = hx * ax;
  F lo = fma_(hx, ax, -hi);
  e = exp_sum(-hi, -lo);
}

template <class F>
NERVE_INLINE F normal_tail(F x) {
  F tq, e;
  normal_tail_factors(x, tq, e);
  return tq * e;
}

// normal_tail(x) and normal_pdf(x) together: both are a factor times the
// same exp(-x^2/2), which is computed once (gelu's backward needs both).
template <class F>
NERVE_INLINE void normal_tail_pdf(F x, F& tail, F& pdf) {
  F tq, e;
  normal_tail_factors(x, tq, e);
  tail = tq * e;
  pdf = F(0.39894228040143268f) * e;
}

// Standard normal density phi(x) = exp(-x^2/2)/sqrt(2 pi), x^2/2 split exactly.
template <class F>
NERVE_INLINE F normal_pdf(F x) {
  F hx = F(0.5f) * x;
  F hi = hx * x;
  F lo = fma_(hx, x, -hi);
  return F(0.39894228040143268f) * exp_sum(-hi, -lo);
}

// ---------------------------------------------------------------- double lanes
// For D = double, f64x4 or f64x8 (simd::vf64): the losses widen their float
// inputs to double and sum in double, and need exp and log1p there. mul_add
// is fused where the CPU has FMA; at the generic level it is not (a libm fma
// per term made the scalar exp ~20x slower than std::exp), and nothing here
// needs the single rounding: the high part of ln 2 has 32 bits, so n ln2hi
// is exact either way.

// exp(x) for x <= 0 (all softmax needs: x - max <= 0, and exp(-|x|)).
// Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then Taylor to r^13
// (next term < 5e-18): about 1 ulp, where std::exp one lane at a time made
// the softmax rows slow. Below -708 the result is 0 (std::exp would give a
// subnormal < 1e-307, invisible next to the max's exp(0) = 1); NaN propagates.
template <class D>
NERVE_INLINE D exp_nonpos_f64(D x) {
  const D lo(-708.0);
  const D xc = max_(x, lo);  // NaN in x stays NaN (max_ keeps its first operand)
  const D n = round_(xc * D(1.4426950408889634));
  // n (-ln2) + x rather than -n ln2 + x: the same bits, and GCC keeps a
  // negation used twice as an xor instead of folding it into vfnmadd.
  D r = mul_add(n, D(-6.93147180369123816490e-01), xc);
  r = mul_add(n, D(-1.90821492927058770002e-10), r);
  static constexpr double c[14] = {1.0,         1.0,          1.0 / 2,         1.0 / 6,           1.0 / 24,
                                   1.0 / 120,   1.0 / 720,    1.0 / 5040,      1.0 / 40320,       1.0 / 362880,
                                   1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800.0};
  D p(c[13]);
  for (int k = 12; k >= 0; --k) p = mul_add(p, r, D(c[k]));
  return zero_where(x < lo, p * pow2i(n));  // x < -708 (or -inf): 0
}

// log1p(a) for a in [0, 1] (the softplus term of BCE with logits):
// log1p(a) = 2 atanh(s) with s = a / (2 + a), or for a > sqrt(2) - 1,
// ln 2 + 2 atanh(s) with s = (a - 1) / (a + 3); either way |s| <= 0.172 and s
// comes straight from a (no 1 + a rounding), so 12 odd terms give ~1 ulp.
template <class D>
NERVE_INLINE D log1p_unit_f64(D a) {
  const auto big = a > D(0.41421356237309503);
  const D s = sel(big, a - D(1.0), a) / (a + sel(big, D(3.0), D(2.0)));
  const D s2 = s * s;
  // 2 atanh(s) = 2 s sum_k s^(2k) / (2k + 1)
  D q(2.0 / 25);
  for (int k = 11; k >= 0; --k) q = mul_add(q, s2, D(2.0 / (2 * k + 1)));
  return q * s + keep(big, D(0.69314718055994531));
}

}  // namespace simd
}  // namespace nerve
