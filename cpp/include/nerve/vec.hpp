// A small vector abstraction: the vector maths (simd_math.hpp), Philox and
// the lane sums are written once against it and compiled at every CPU level.
//
// Types (namespace nerve::simd), each with the same free functions:
//   float / std::int32_t / double     scalar, every level (1 lane)
//   f32x8 / i32x8 / f64w8 / m32x8     AVX2 + FMA (ymm), at the avx2 and avx512 levels
//   f64x4 / m64x4                     one ymm of doubles, likewise
//   f32x16 / i32x16 / f64w16 / m32x16 AVX-512 F/BW/DQ/VL (zmm), at the avx512 level
//   f64x8 / m64x8                     one zmm of doubles, likewise
// `vf`, `vi`, `vd` name the widest of this level (float at generic) and
// kLanes its lane count. f64wN holds the N doubles of an f32xN's lanes in two
// registers, so float code can widen a step to double lane for lane. `vf64`
// (f64x4 / f64x8 / double) is the widest double register, for kernels that
// work in double throughout and read and write floats (the losses):
// load_f32 / store_f32 widen and narrow its kLanes64 lanes.
//
// The CPU level is fixed at compile time (CMakeLists.txt builds the sources
// once per level), so there is no run-time dispatch here: the loader picks
// the module. Every operation is the IEEE operation of its scalar twin
// (fma is one rounding, min_/max_ are the blends of the scalar ones below),
// so code written against these types gives the same bits at any width
// within a level.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define NERVE_VEC_AVX2 1
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__) && \
    defined(NERVE_VEC_AVX2)
#define NERVE_VEC_AVX512 1
#endif

#if defined(__GNUC__)
#define NERVE_INLINE inline __attribute__((always_inline))
#else
#define NERVE_INLINE inline
#endif

namespace nerve {
namespace simd {

// ---------------------------------------------------------------- scalar
NERVE_INLINE std::int32_t as_int(float x) {
  std::int32_t i;
  std::memcpy(&i, &x, sizeof i);
  return i;
}
NERVE_INLINE float as_float(std::int32_t i) {
  float x;
  std::memcpy(&x, &i, sizeof x);
  return x;
}
// Without an FMA instruction (the generic level on x86-64: no __FP_FAST_FMAF)
// __builtin_fmaf is a libm call, ~15 ns, which made the generic level's exp,
// sigmoid and gelu 7-10x slower than at avx2 (20 ns an element). There the
// float fma is done in double: the product of two floats is exact in double
// (48 bits), so the error-free products simd_math relies on (lo = fma(a, b,
// -hi)) come out exact, and otherwise the one double rounding before the float
// one differs from a fused result only in rare ties (levels may differ by
// rounding; each level is deterministic).
NERVE_INLINE float fma_(float a, float b, float c) {
#if defined(__FP_FAST_FMAF)
  return __builtin_fmaf(a, b, c);
#else
  return static_cast<float>(static_cast<double>(a) * static_cast<double>(b) + static_cast<double>(c));
#endif
}
NERVE_INLINE double fma_(double a, double b, double c) { return __builtin_fma(a, b, c); }
// a * b + c, fused where the CPU has FMA (one rounding), two roundings where
// not (there __builtin_fma is a slow libm call): for polynomials and sums that
// do not need the single rounding (the losses' double exp).
NERVE_INLINE double mul_add(double a, double b, double c) {
#if defined(__FP_FAST_FMA)
  return __builtin_fma(a, b, c);
#else
  return a * b + c;
#endif
}

// c ? a : b as a bit blend. GCC (default -ftrapping-math) will not if-convert
// `c ? x : alpha * x`: it sinks the product into a branch, which it may not
// then execute speculatively, and the loop stays scalar. Here both operands
// are computed unconditionally, so the loop vectorizes to compare + blend.
NERVE_INLINE float sel(bool c, float a, float b) {
  std::int32_t m = -static_cast<std::int32_t>(c);
  return as_float((as_int(a) & m) | (as_int(b) & ~m));
}
NERVE_INLINE double sel(bool c, double a, double b) { return c ? a : b; }
NERVE_INLINE std::int32_t sel(bool c, std::int32_t a, std::int32_t b) {
  std::int32_t m = -static_cast<std::int32_t>(c);
  return (a & m) | (b & ~m);
}
NERVE_INLINE float abs_(float x) { return __builtin_fabsf(x); }
NERVE_INLINE float copysign_(float mag, float sign) { return __builtin_copysignf(mag, sign); }
NERVE_INLINE float sqrt_(float x) { return __builtin_sqrtf(x); }
// min/max as blends too: std::min/std::max are ternaries that GCC's jump
// threading turns back into branches when a constant arm meets later
// arithmetic. NaN in `a` propagates (the compare is false).
NERVE_INLINE float min_(float a, float b) { return sel(b < a, b, a); }
NERVE_INLINE float max_(float a, float b) { return sel(a < b, b, a); }
NERVE_INLINE double min_(double a, double b) { return b < a ? b : a; }
NERVE_INLINE double max_(double a, double b) { return a < b ? b : a; }
NERVE_INLINE float cvt_f32(std::int32_t i) { return static_cast<float>(i); }
NERVE_INLINE double to_f64(float x) { return static_cast<double>(x); }
NERVE_INLINE float to_f32(double x) { return static_cast<float>(x); }
NERVE_INLINE bool any(bool m) { return m; }
// The mask as bits, lane l in bit l (vmovmskps / a k register): for loops that
// patch a few lanes with scalar code.
NERVE_INLINE unsigned bits(bool m) { return m ? 1u : 0u; }
// signbit(x) ? a : b per lane (-0.0 and negative NaNs count as negative,
// unlike x < 0): vblendvps reads the sign bit itself, so at avx2 this is one
// instruction where sel(x < 0, ...) is two and treats -0.0 as positive.
NERVE_INLINE float sel_sign(float x, float a, float b) { return sel(as_int(x) < 0, a, b); }
// table[i & 3] per lane: an in-lane 4-entry lookup (vpermilps), e.g. a
// piecewise polynomial's coefficients picked by the interval of each lane.
NERVE_INLINE float lookup4(const float* table, std::int32_t i) { return table[i & 3]; }
NERVE_INLINE float reduce_add(float x) { return x; }
NERVE_INLINE float reduce_max(float x) { return x; }
// Logical shift right (the arithmetic one is >> on std::int32_t).
NERVE_INLINE std::int32_t srl(std::int32_t a, int n) {
  return static_cast<std::int32_t>(static_cast<std::uint32_t>(a) >> n);
}
// Logical shift left, wrapping like the vector instructions: << on a negative
// std::int32_t is undefined behaviour in C++17 (exponent fields built from a
// NaN's or an out-of-range input's bits reach it; UBSan flagged them).
NERVE_INLINE std::int32_t sll(std::int32_t a, int n) {
  return static_cast<std::int32_t>(static_cast<std::uint32_t>(a) << n);
}
// (hi, lo) 32-bit halves of the 64-bit product a * m (a, m unsigned): Philox's multiply.
NERVE_INLINE void mulhilo(std::int32_t a, std::uint32_t m, std::int32_t& hi, std::int32_t& lo) {
  const std::uint64_t p = static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) * m;
  hi = static_cast<std::int32_t>(static_cast<std::uint32_t>(p >> 32));
  lo = static_cast<std::int32_t>(static_cast<std::uint32_t>(p));
}

// Double lanes (the f64 twins below and plain double at every level), for the
// kernels that widen float inputs to double (the losses' sums and exps).
NERVE_INLINE double abs_(double x) { return __builtin_fabs(x); }
// Round to the nearest integer, ties to even (vroundpd / vrndscalepd imm 8).
NERVE_INLINE double round_(double x) { return __builtin_rint(x); }
// 2^n for an integer-valued n in [-1022, 1023], built in the exponent field:
// n + 1.5 * 2^52 holds n in its low mantissa bits (exactly, |n| < 2^51), and
// adding the bias then shifting by 52 keeps only those bits: no float-to-int
// conversion, so every width does the same two integer ops.
NERVE_INLINE std::uint64_t pow2i_bits(std::uint64_t t) { return (t + 1023u) << 52; }
NERVE_INLINE double pow2i(double n) {
  const double t = n + 6755399441055744.0;
  std::uint64_t b;
  std::memcpy(&b, &t, sizeof b);
  b = pow2i_bits(b);
  double r;
  std::memcpy(&r, &b, sizeof r);
  return r;
}
NERVE_INLINE double reduce_add(double x) { return x; }
// m ? v : 0 and m ? 0 : v (an and / andnot or a zero-masking move, where sel
// would be a blend that GCC, not knowing the mask is whole lanes, rebuilds).
NERVE_INLINE double keep(bool m, double v) { return m ? v : 0.0; }
NERVE_INLINE double zero_where(bool m, double v) { return m ? 0.0 : v; }
template <class D>
NERVE_INLINE D load_f32(const float* p);
template <>
NERVE_INLINE double load_f32<double>(const float* p) { return *p; }
template <class D>
NERVE_INLINE D load_f32_partial(const float* p, int n, double fill);  // lanes past n: fill
template <>
NERVE_INLINE double load_f32_partial<double>(const float* p, int n, double fill) { return n > 0 ? *p : fill; }
NERVE_INLINE void store_f32(float* p, double v) { *p = static_cast<float>(v); }
NERVE_INLINE void store_f32_partial(float* p, double v, int n) {
  if (n > 0) *p = static_cast<float>(v);
}

// Lane count and the lane types of each float vector type.
template <class F>
struct lanes_of;
template <>
struct lanes_of<float> {
  static constexpr int value = 1;
  using i32 = std::int32_t;
  using f64 = double;
  using mask = bool;
};
template <>
struct lanes_of<double> {
  static constexpr int value = 1;
  using mask = bool;
};

// load / store of a whole vector and of the first n lanes (the rest: 0 / untouched).
template <class F>
NERVE_INLINE F load(const float* p);
template <>
NERVE_INLINE float load<float>(const float* p) { return *p; }
NERVE_INLINE void store(float* p, float v) { *p = v; }
template <class F>
NERVE_INLINE F load_partial(const float* p, int n);
template <>
NERVE_INLINE float load_partial<float>(const float* p, int n) { return n > 0 ? *p : 0.0f; }
NERVE_INLINE void store_partial(float* p, float v, int n) {
  if (n > 0) *p = v;
}
template <class I>
NERVE_INLINE I load_i32(const std::int32_t* p);
template <>
NERVE_INLINE std::int32_t load_i32<std::int32_t>(const std::int32_t* p) { return *p; }
NERVE_INLINE void store_i32(std::int32_t* p, std::int32_t v) { *p = v; }
// The lanes of a double twin (f64xN: lanes 0..N-1 in order).
NERVE_INLINE void store(double* p, double v) { *p = v; }

#if defined(NERVE_VEC_AVX2)
// ---------------------------------------------------------------- AVX2, 8 lanes
struct m32x8 {
  __m256 v;
};
struct f32x8 {
  __m256 v;
  NERVE_INLINE f32x8() = default;
  NERVE_INLINE f32x8(__m256 x) : v(x) {}
  NERVE_INLINE f32x8(float x) : v(_mm256_set1_ps(x)) {}
};
struct i32x8 {
  __m256i v;
  NERVE_INLINE i32x8() = default;
  NERVE_INLINE i32x8(__m256i x) : v(x) {}
  NERVE_INLINE i32x8(std::int32_t x) : v(_mm256_set1_epi32(x)) {}
};
struct f64w8 {  // lanes 0-3 in lo, 4-7 in hi
  __m256d lo, hi;
  NERVE_INLINE f64w8() = default;
  NERVE_INLINE f64w8(__m256d l, __m256d h) : lo(l), hi(h) {}
  NERVE_INLINE f64w8(double x) : lo(_mm256_set1_pd(x)), hi(lo) {}
};
template <>
struct lanes_of<f32x8> {
  static constexpr int value = 8;
  using i32 = i32x8;
  using f64 = f64w8;
  using mask = m32x8;
};

NERVE_INLINE f32x8 operator+(f32x8 a, f32x8 b) { return _mm256_add_ps(a.v, b.v); }
NERVE_INLINE f32x8 operator-(f32x8 a, f32x8 b) { return _mm256_sub_ps(a.v, b.v); }
NERVE_INLINE f32x8 operator*(f32x8 a, f32x8 b) { return _mm256_mul_ps(a.v, b.v); }
NERVE_INLINE f32x8 operator/(f32x8 a, f32x8 b) { return _mm256_div_ps(a.v, b.v); }
// Negation as GCC's vector negate (the sign bit flipped, as the xor with -0.0
// that GCC emits for it): unlike an explicit xor intrinsic, GCC folds it into
// the FMAs (fma_(-a, b, c) is one vfnmadd).
NERVE_INLINE f32x8 operator-(f32x8 a) { return f32x8(-a.v); }
NERVE_INLINE f32x8& operator+=(f32x8& a, f32x8 b) { return a = a + b; }
NERVE_INLINE f32x8& operator*=(f32x8& a, f32x8 b) { return a = a * b; }
NERVE_INLINE f32x8 fma_(f32x8 a, f32x8 b, f32x8 c) { return _mm256_fmadd_ps(a.v, b.v, c.v); }
NERVE_INLINE m32x8 operator<(f32x8 a, f32x8 b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ)}; }
NERVE_INLINE m32x8 operator<=(f32x8 a, f32x8 b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_LE_OQ)}; }
NERVE_INLINE m32x8 operator>(f32x8 a, f32x8 b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_GT_OQ)}; }
NERVE_INLINE m32x8 operator>=(f32x8 a, f32x8 b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_GE_OQ)}; }
NERVE_INLINE m32x8 operator==(f32x8 a, f32x8 b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_EQ_OQ)}; }
NERVE_INLINE m32x8 operator!=(f32x8 a, f32x8 b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_NEQ_UQ)}; }
NERVE_INLINE m32x8 operator&(m32x8 a, m32x8 b) { return {_mm256_and_ps(a.v, b.v)}; }
NERVE_INLINE m32x8 operator|(m32x8 a, m32x8 b) { return {_mm256_or_ps(a.v, b.v)}; }
NERVE_INLINE m32x8 operator~(m32x8 a) {
  return {_mm256_xor_ps(a.v, _mm256_castsi256_ps(_mm256_set1_epi32(-1)))};
}
NERVE_INLINE bool any(m32x8 m) { return _mm256_movemask_ps(m.v) != 0; }
NERVE_INLINE unsigned bits(m32x8 m) { return static_cast<unsigned>(_mm256_movemask_ps(m.v)); }
NERVE_INLINE f32x8 sel_sign(f32x8 x, f32x8 a, f32x8 b) { return _mm256_blendv_ps(b.v, a.v, x.v); }
NERVE_INLINE f32x8 lookup4(const float* table, i32x8 i) {
  return _mm256_permutevar_ps(_mm256_broadcast_ps(reinterpret_cast<const __m128*>(table)), i.v);
}
NERVE_INLINE f32x8 sel(m32x8 c, f32x8 a, f32x8 b) { return _mm256_blendv_ps(b.v, a.v, c.v); }
NERVE_INLINE i32x8 sel(m32x8 c, i32x8 a, i32x8 b) {
  return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(b.v), _mm256_castsi256_ps(a.v), c.v));
}
// vminps(x, y) is x < y ? x : y: min_(a, b) = b < a ? b : a is vminps(b, a).
NERVE_INLINE f32x8 min_(f32x8 a, f32x8 b) { return _mm256_min_ps(b.v, a.v); }
NERVE_INLINE f32x8 max_(f32x8 a, f32x8 b) { return _mm256_max_ps(b.v, a.v); }
NERVE_INLINE f32x8 abs_(f32x8 a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v); }
NERVE_INLINE f32x8 copysign_(f32x8 mag, f32x8 sign) {
  const __m256 s = _mm256_set1_ps(-0.0f);
  return _mm256_or_ps(_mm256_andnot_ps(s, mag.v), _mm256_and_ps(s, sign.v));
}
NERVE_INLINE f32x8 sqrt_(f32x8 a) { return _mm256_sqrt_ps(a.v); }

NERVE_INLINE i32x8 as_int(f32x8 a) { return _mm256_castps_si256(a.v); }
NERVE_INLINE f32x8 as_float(i32x8 a) { return _mm256_castsi256_ps(a.v); }
NERVE_INLINE f32x8 cvt_f32(i32x8 a) { return _mm256_cvtepi32_ps(a.v); }
NERVE_INLINE i32x8 operator+(i32x8 a, i32x8 b) { return _mm256_add_epi32(a.v, b.v); }
NERVE_INLINE i32x8 operator-(i32x8 a, i32x8 b) { return _mm256_sub_epi32(a.v, b.v); }
NERVE_INLINE i32x8 operator&(i32x8 a, i32x8 b) { return _mm256_and_si256(a.v, b.v); }
NERVE_INLINE i32x8 operator|(i32x8 a, i32x8 b) { return _mm256_or_si256(a.v, b.v); }
NERVE_INLINE i32x8 operator^(i32x8 a, i32x8 b) { return _mm256_xor_si256(a.v, b.v); }
NERVE_INLINE i32x8 operator<<(i32x8 a, int n) { return _mm256_sll_epi32(a.v, _mm_cvtsi32_si128(n)); }
NERVE_INLINE i32x8 operator>>(i32x8 a, int n) { return _mm256_sra_epi32(a.v, _mm_cvtsi32_si128(n)); }
NERVE_INLINE i32x8 srl(i32x8 a, int n) { return _mm256_srl_epi32(a.v, _mm_cvtsi32_si128(n)); }
NERVE_INLINE i32x8 sll(i32x8 a, int n) { return a << n; }
NERVE_INLINE void mulhilo(i32x8 a, std::uint32_t m, i32x8& hi, i32x8& lo) {
  const __m256i mm = _mm256_set1_epi32(static_cast<int>(m));
  const __m256i even = _mm256_mul_epu32(a.v, mm);                         // lanes 0,2,4,6
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a.v, 32), mm);  // lanes 1,3,5,7
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

NERVE_INLINE f64w8 operator+(f64w8 a, f64w8 b) { return {_mm256_add_pd(a.lo, b.lo), _mm256_add_pd(a.hi, b.hi)}; }
NERVE_INLINE f64w8 operator-(f64w8 a, f64w8 b) { return {_mm256_sub_pd(a.lo, b.lo), _mm256_sub_pd(a.hi, b.hi)}; }
NERVE_INLINE f64w8 operator*(f64w8 a, f64w8 b) { return {_mm256_mul_pd(a.lo, b.lo), _mm256_mul_pd(a.hi, b.hi)}; }
NERVE_INLINE f64w8 operator/(f64w8 a, f64w8 b) { return {_mm256_div_pd(a.lo, b.lo), _mm256_div_pd(a.hi, b.hi)}; }
NERVE_INLINE f64w8 fma_(f64w8 a, f64w8 b, f64w8 c) {
  return {_mm256_fmadd_pd(a.lo, b.lo, c.lo), _mm256_fmadd_pd(a.hi, b.hi, c.hi)};
}
NERVE_INLINE f64w8 min_(f64w8 a, f64w8 b) { return {_mm256_min_pd(b.lo, a.lo), _mm256_min_pd(b.hi, a.hi)}; }
NERVE_INLINE f64w8 max_(f64w8 a, f64w8 b) { return {_mm256_max_pd(b.lo, a.lo), _mm256_max_pd(b.hi, a.hi)}; }
NERVE_INLINE f64w8 to_f64(f32x8 a) {
  return {_mm256_cvtps_pd(_mm256_castps256_ps128(a.v)), _mm256_cvtps_pd(_mm256_extractf128_ps(a.v, 1))};
}
NERVE_INLINE f32x8 to_f32(f64w8 a) { return _mm256_set_m128(_mm256_cvtpd_ps(a.hi), _mm256_cvtpd_ps(a.lo)); }

// One ymm of doubles.
struct m64x4 {
  __m256d v;
};
struct f64x4 {
  __m256d v;
  NERVE_INLINE f64x4() = default;
  NERVE_INLINE f64x4(__m256d x) : v(x) {}
  NERVE_INLINE f64x4(double x) : v(_mm256_set1_pd(x)) {}
};
template <>
struct lanes_of<f64x4> {
  static constexpr int value = 4;
  using mask = m64x4;
};
NERVE_INLINE f64x4 operator+(f64x4 a, f64x4 b) { return _mm256_add_pd(a.v, b.v); }
NERVE_INLINE f64x4 operator-(f64x4 a, f64x4 b) { return _mm256_sub_pd(a.v, b.v); }
NERVE_INLINE f64x4 operator*(f64x4 a, f64x4 b) { return _mm256_mul_pd(a.v, b.v); }
NERVE_INLINE f64x4 operator/(f64x4 a, f64x4 b) { return _mm256_div_pd(a.v, b.v); }
NERVE_INLINE f64x4 operator-(f64x4 a) { return f64x4(-a.v); }  // folds into the FMAs, as f32x8's
NERVE_INLINE f64x4 fma_(f64x4 a, f64x4 b, f64x4 c) { return _mm256_fmadd_pd(a.v, b.v, c.v); }
NERVE_INLINE f64x4 mul_add(f64x4 a, f64x4 b, f64x4 c) { return fma_(a, b, c); }
NERVE_INLINE f64x4 min_(f64x4 a, f64x4 b) { return _mm256_min_pd(b.v, a.v); }
NERVE_INLINE f64x4 max_(f64x4 a, f64x4 b) { return _mm256_max_pd(b.v, a.v); }
NERVE_INLINE m64x4 operator<(f64x4 a, f64x4 b) { return {_mm256_cmp_pd(a.v, b.v, _CMP_LT_OQ)}; }
NERVE_INLINE m64x4 operator>(f64x4 a, f64x4 b) { return {_mm256_cmp_pd(a.v, b.v, _CMP_GT_OQ)}; }
NERVE_INLINE m64x4 operator>=(f64x4 a, f64x4 b) { return {_mm256_cmp_pd(a.v, b.v, _CMP_GE_OQ)}; }
NERVE_INLINE m64x4 operator==(f64x4 a, f64x4 b) { return {_mm256_cmp_pd(a.v, b.v, _CMP_EQ_OQ)}; }
NERVE_INLINE f64x4 keep(m64x4 m, f64x4 v) { return _mm256_and_pd(m.v, v.v); }
NERVE_INLINE f64x4 zero_where(m64x4 m, f64x4 v) { return _mm256_andnot_pd(m.v, v.v); }
NERVE_INLINE f64x4 sel(m64x4 c, f64x4 a, f64x4 b) { return _mm256_blendv_pd(b.v, a.v, c.v); }
NERVE_INLINE f64x4 abs_(f64x4 a) { return _mm256_andnot_pd(_mm256_set1_pd(-0.0), a.v); }
NERVE_INLINE f64x4 round_(f64x4 a) { return _mm256_round_pd(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
NERVE_INLINE f64x4 pow2i(f64x4 n) {  // as pow2i(double)
  const __m256i t = _mm256_castpd_si256(_mm256_add_pd(n.v, _mm256_set1_pd(6755399441055744.0)));
  return _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_add_epi64(t, _mm256_set1_epi64x(1023)), 52));
}
// Fixed order: (l0 + l1) + (l2 + l3).
NERVE_INLINE double reduce_add(f64x4 a) {
  alignas(32) double l[4];
  _mm256_store_pd(l, a.v);
  return (l[0] + l[1]) + (l[2] + l[3]);
}
NERVE_INLINE __m128i first_lanes4(int n) { return _mm_cmpgt_epi32(_mm_set1_epi32(n), _mm_setr_epi32(0, 1, 2, 3)); }
template <>
NERVE_INLINE f64x4 load_f32<f64x4>(const float* p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }
template <>
NERVE_INLINE f64x4 load_f32_partial<f64x4>(const float* p, int n, double fill) {  // masked: no read past lane n
  const __m128i m = first_lanes4(n);
  return _mm256_blendv_pd(_mm256_set1_pd(fill), _mm256_cvtps_pd(_mm_maskload_ps(p, m)),
                          _mm256_castsi256_pd(_mm256_cvtepi32_epi64(m)));
}
NERVE_INLINE void store_f32(float* p, f64x4 v) { _mm_storeu_ps(p, _mm256_cvtpd_ps(v.v)); }
NERVE_INLINE void store_f32_partial(float* p, f64x4 v, int n) {
  _mm_maskstore_ps(p, first_lanes4(n), _mm256_cvtpd_ps(v.v));
}

template <>
NERVE_INLINE f32x8 load<f32x8>(const float* p) { return _mm256_loadu_ps(p); }
NERVE_INLINE void store(float* p, f32x8 v) { _mm256_storeu_ps(p, v.v); }
NERVE_INLINE __m256i first_lanes8(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
// Masked: neither reads nor faults past lane n.
template <>
NERVE_INLINE f32x8 load_partial<f32x8>(const float* p, int n) { return _mm256_maskload_ps(p, first_lanes8(n)); }
NERVE_INLINE void store_partial(float* p, f32x8 v, int n) { _mm256_maskstore_ps(p, first_lanes8(n), v.v); }
template <>
NERVE_INLINE i32x8 load_i32<i32x8>(const std::int32_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
NERVE_INLINE void store_i32(std::int32_t* p, i32x8 v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v.v); }
NERVE_INLINE void store(double* p, f64w8 v) {
  _mm256_storeu_pd(p, v.lo);
  _mm256_storeu_pd(p + 4, v.hi);
}

// Horizontal sum in a fixed order: (l0 + l4) + (l2 + l6), (l1 + l5) + (l3 + l7), then the two.
NERVE_INLINE float reduce_add(f32x8 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
// The largest lane; NaN lanes are skipped when another lane is a number (vmaxps
// returns its second operand for an unordered pair).
NERVE_INLINE float reduce_max(f32x8 a) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
#endif  // NERVE_VEC_AVX2

#if defined(NERVE_VEC_AVX512)
// ---------------------------------------------------------------- AVX-512, 16 lanes
struct m32x16 {
  __mmask16 k;
};
struct f32x16 {
  __m512 v;
  NERVE_INLINE f32x16() = default;
  NERVE_INLINE f32x16(__m512 x) : v(x) {}
  NERVE_INLINE f32x16(float x) : v(_mm512_set1_ps(x)) {}
};
struct i32x16 {
  __m512i v;
  NERVE_INLINE i32x16() = default;
  NERVE_INLINE i32x16(__m512i x) : v(x) {}
  NERVE_INLINE i32x16(std::int32_t x) : v(_mm512_set1_epi32(x)) {}
};
struct f64w16 {  // lanes 0-7 in lo, 8-15 in hi
  __m512d lo, hi;
  NERVE_INLINE f64w16() = default;
  NERVE_INLINE f64w16(__m512d l, __m512d h) : lo(l), hi(h) {}
  NERVE_INLINE f64w16(double x) : lo(_mm512_set1_pd(x)), hi(lo) {}
};
template <>
struct lanes_of<f32x16> {
  static constexpr int value = 16;
  using i32 = i32x16;
  using f64 = f64w16;
  using mask = m32x16;
};

NERVE_INLINE f32x16 operator+(f32x16 a, f32x16 b) { return _mm512_add_ps(a.v, b.v); }
NERVE_INLINE f32x16 operator-(f32x16 a, f32x16 b) { return _mm512_sub_ps(a.v, b.v); }
NERVE_INLINE f32x16 operator*(f32x16 a, f32x16 b) { return _mm512_mul_ps(a.v, b.v); }
NERVE_INLINE f32x16 operator/(f32x16 a, f32x16 b) { return _mm512_div_ps(a.v, b.v); }
NERVE_INLINE f32x16 operator-(f32x16 a) { return f32x16(-a.v); }  // folds into the FMAs, as f32x8's
NERVE_INLINE f32x16& operator+=(f32x16& a, f32x16 b) { return a = a + b; }
NERVE_INLINE f32x16& operator*=(f32x16& a, f32x16 b) { return a = a * b; }
NERVE_INLINE f32x16 fma_(f32x16 a, f32x16 b, f32x16 c) { return _mm512_fmadd_ps(a.v, b.v, c.v); }
NERVE_INLINE m32x16 operator<(f32x16 a, f32x16 b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ)}; }
NERVE_INLINE m32x16 operator<=(f32x16 a, f32x16 b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_LE_OQ)}; }
NERVE_INLINE m32x16 operator>(f32x16 a, f32x16 b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_GT_OQ)}; }
NERVE_INLINE m32x16 operator>=(f32x16 a, f32x16 b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_GE_OQ)}; }
NERVE_INLINE m32x16 operator==(f32x16 a, f32x16 b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_EQ_OQ)}; }
NERVE_INLINE m32x16 operator!=(f32x16 a, f32x16 b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_NEQ_UQ)}; }
NERVE_INLINE m32x16 operator&(m32x16 a, m32x16 b) { return {static_cast<__mmask16>(a.k & b.k)}; }
NERVE_INLINE m32x16 operator|(m32x16 a, m32x16 b) { return {static_cast<__mmask16>(a.k | b.k)}; }
NERVE_INLINE m32x16 operator~(m32x16 a) { return {static_cast<__mmask16>(~a.k)}; }
NERVE_INLINE bool any(m32x16 m) { return m.k != 0; }
NERVE_INLINE unsigned bits(m32x16 m) { return static_cast<unsigned>(m.k); }
NERVE_INLINE f32x16 sel_sign(f32x16 x, f32x16 a, f32x16 b) {
  return _mm512_mask_blend_ps(_mm512_movepi32_mask(_mm512_castps_si512(x.v)), b.v, a.v);
}
NERVE_INLINE f32x16 lookup4(const float* table, i32x16 i) {
  return _mm512_permutevar_ps(_mm512_broadcast_f32x4(_mm_loadu_ps(table)), i.v);
}
NERVE_INLINE f32x16 sel(m32x16 c, f32x16 a, f32x16 b) { return _mm512_mask_blend_ps(c.k, b.v, a.v); }
NERVE_INLINE i32x16 sel(m32x16 c, i32x16 a, i32x16 b) { return _mm512_mask_blend_epi32(c.k, b.v, a.v); }
NERVE_INLINE f32x16 min_(f32x16 a, f32x16 b) { return _mm512_min_ps(b.v, a.v); }
NERVE_INLINE f32x16 max_(f32x16 a, f32x16 b) { return _mm512_max_ps(b.v, a.v); }
NERVE_INLINE f32x16 abs_(f32x16 a) {
  return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a.v), _mm512_set1_epi32(0x7fffffff)));
}
NERVE_INLINE f32x16 copysign_(f32x16 mag, f32x16 sign) {
  // (mag & 0x7fffffff) | (sign & 0x80000000) in one ternary-logic op: bit = C ? B : A
  // (truth table over (A, B, C) = (mag, sign, sign-bit mask): 0xD8).
  return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_castps_si512(mag.v), _mm512_castps_si512(sign.v),
                                                       _mm512_set1_epi32(INT32_MIN), 0xD8));
}
NERVE_INLINE f32x16 sqrt_(f32x16 a) { return _mm512_sqrt_ps(a.v); }

NERVE_INLINE i32x16 as_int(f32x16 a) { return _mm512_castps_si512(a.v); }
NERVE_INLINE f32x16 as_float(i32x16 a) { return _mm512_castsi512_ps(a.v); }
NERVE_INLINE f32x16 cvt_f32(i32x16 a) { return _mm512_cvtepi32_ps(a.v); }
NERVE_INLINE i32x16 operator+(i32x16 a, i32x16 b) { return _mm512_add_epi32(a.v, b.v); }
NERVE_INLINE i32x16 operator-(i32x16 a, i32x16 b) { return _mm512_sub_epi32(a.v, b.v); }
NERVE_INLINE i32x16 operator&(i32x16 a, i32x16 b) { return _mm512_and_si512(a.v, b.v); }
NERVE_INLINE i32x16 operator|(i32x16 a, i32x16 b) { return _mm512_or_si512(a.v, b.v); }
NERVE_INLINE i32x16 operator^(i32x16 a, i32x16 b) { return _mm512_xor_si512(a.v, b.v); }
NERVE_INLINE i32x16 operator<<(i32x16 a, int n) { return _mm512_sll_epi32(a.v, _mm_cvtsi32_si128(n)); }
NERVE_INLINE i32x16 operator>>(i32x16 a, int n) { return _mm512_sra_epi32(a.v, _mm_cvtsi32_si128(n)); }
NERVE_INLINE i32x16 srl(i32x16 a, int n) { return _mm512_srl_epi32(a.v, _mm_cvtsi32_si128(n)); }
NERVE_INLINE i32x16 sll(i32x16 a, int n) { return a << n; }
NERVE_INLINE void mulhilo(i32x16 a, std::uint32_t m, i32x16& hi, i32x16& lo) {
  const __m512i mm = _mm512_set1_epi32(static_cast<int>(m));
  const __m512i even = _mm512_mul_epu32(a.v, mm);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a.v, 32), mm);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

NERVE_INLINE f64w16 operator+(f64w16 a, f64w16 b) { return {_mm512_add_pd(a.lo, b.lo), _mm512_add_pd(a.hi, b.hi)}; }
NERVE_INLINE f64w16 operator-(f64w16 a, f64w16 b) { return {_mm512_sub_pd(a.lo, b.lo), _mm512_sub_pd(a.hi, b.hi)}; }
NERVE_INLINE f64w16 operator*(f64w16 a, f64w16 b) { return {_mm512_mul_pd(a.lo, b.lo), _mm512_mul_pd(a.hi, b.hi)}; }
NERVE_INLINE f64w16 operator/(f64w16 a, f64w16 b) { return {_mm512_div_pd(a.lo, b.lo), _mm512_div_pd(a.hi, b.hi)}; }
NERVE_INLINE f64w16 fma_(f64w16 a, f64w16 b, f64w16 c) {
  return {_mm512_fmadd_pd(a.lo, b.lo, c.lo), _mm512_fmadd_pd(a.hi, b.hi, c.hi)};
}
NERVE_INLINE f64w16 min_(f64w16 a, f64w16 b) { return {_mm512_min_pd(b.lo, a.lo), _mm512_min_pd(b.hi, a.hi)}; }
NERVE_INLINE f64w16 max_(f64w16 a, f64w16 b) { return {_mm512_max_pd(b.lo, a.lo), _mm512_max_pd(b.hi, a.hi)}; }
NERVE_INLINE f64w16 to_f64(f32x16 a) {
  return {_mm512_cvtps_pd(_mm512_castps512_ps256(a.v)), _mm512_cvtps_pd(_mm512_extractf32x8_ps(a.v, 1))};
}
NERVE_INLINE f32x16 to_f32(f64w16 a) {
  return _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(a.lo)), _mm512_cvtpd_ps(a.hi), 1);
}

// One zmm of doubles.
struct m64x8 {
  __mmask8 k;
};
struct f64x8 {
  __m512d v;
  NERVE_INLINE f64x8() = default;
  NERVE_INLINE f64x8(__m512d x) : v(x) {}
  NERVE_INLINE f64x8(double x) : v(_mm512_set1_pd(x)) {}
};
template <>
struct lanes_of<f64x8> {
  static constexpr int value = 8;
  using mask = m64x8;
};
NERVE_INLINE f64x8 operator+(f64x8 a, f64x8 b) { return _mm512_add_pd(a.v, b.v); }
NERVE_INLINE f64x8 operator-(f64x8 a, f64x8 b) { return _mm512_sub_pd(a.v, b.v); }
NERVE_INLINE f64x8 operator*(f64x8 a, f64x8 b) { return _mm512_mul_pd(a.v, b.v); }
NERVE_INLINE f64x8 operator/(f64x8 a, f64x8 b) { return _mm512_div_pd(a.v, b.v); }
NERVE_INLINE f64x8 operator-(f64x8 a) { return f64x8(-a.v); }
NERVE_INLINE f64x8 fma_(f64x8 a, f64x8 b, f64x8 c) { return _mm512_fmadd_pd(a.v, b.v, c.v); }
NERVE_INLINE f64x8 mul_add(f64x8 a, f64x8 b, f64x8 c) { return fma_(a, b, c); }
NERVE_INLINE f64x8 min_(f64x8 a, f64x8 b) { return _mm512_min_pd(b.v, a.v); }
NERVE_INLINE f64x8 max_(f64x8 a, f64x8 b) { return _mm512_max_pd(b.v, a.v); }
NERVE_INLINE m64x8 operator<(f64x8 a, f64x8 b) { return {_mm512_cmp_pd_mask(a.v, b.v, _CMP_LT_OQ)}; }
NERVE_INLINE m64x8 operator>(f64x8 a, f64x8 b) { return {_mm512_cmp_pd_mask(a.v, b.v, _CMP_GT_OQ)}; }
NERVE_INLINE m64x8 operator>=(f64x8 a, f64x8 b) { return {_mm512_cmp_pd_mask(a.v, b.v, _CMP_GE_OQ)}; }
NERVE_INLINE m64x8 operator==(f64x8 a, f64x8 b) { return {_mm512_cmp_pd_mask(a.v, b.v, _CMP_EQ_OQ)}; }
NERVE_INLINE f64x8 keep(m64x8 m, f64x8 v) { return _mm512_maskz_mov_pd(m.k, v.v); }
NERVE_INLINE f64x8 zero_where(m64x8 m, f64x8 v) { return _mm512_maskz_mov_pd(static_cast<__mmask8>(~m.k), v.v); }
NERVE_INLINE f64x8 sel(m64x8 c, f64x8 a, f64x8 b) { return _mm512_mask_blend_pd(c.k, b.v, a.v); }
NERVE_INLINE f64x8 abs_(f64x8 a) { return _mm512_abs_pd(a.v); }
NERVE_INLINE f64x8 round_(f64x8 a) {
  return _mm512_roundscale_pd(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
NERVE_INLINE f64x8 pow2i(f64x8 n) {  // as pow2i(double)
  const __m512i t = _mm512_castpd_si512(_mm512_add_pd(n.v, _mm512_set1_pd(6755399441055744.0)));
  return _mm512_castsi512_pd(_mm512_slli_epi64(_mm512_add_epi64(t, _mm512_set1_epi64(1023)), 52));
}
// Fixed order: the halves added, then as f64x4.
NERVE_INLINE double reduce_add(f64x8 a) {
  return reduce_add(f64x4(_mm256_add_pd(_mm512_castpd512_pd256(a.v), _mm512_extractf64x4_pd(a.v, 1))));
}
NERVE_INLINE __mmask8 first_lanes8k(int n) {
  return n >= 8 ? static_cast<__mmask8>(0xFF) : static_cast<__mmask8>((1u << (n < 0 ? 0 : n)) - 1u);
}
template <>
NERVE_INLINE f64x8 load_f32<f64x8>(const float* p) { return _mm512_cvtps_pd(_mm256_loadu_ps(p)); }
template <>
NERVE_INLINE f64x8 load_f32_partial<f64x8>(const float* p, int n, double fill) {
  const __mmask8 k = first_lanes8k(n);
  return _mm512_mask_cvtps_pd(_mm512_set1_pd(fill), k, _mm256_maskz_loadu_ps(k, p));
}
NERVE_INLINE void store_f32(float* p, f64x8 v) { _mm256_storeu_ps(p, _mm512_cvtpd_ps(v.v)); }
NERVE_INLINE void store_f32_partial(float* p, f64x8 v, int n) {
  _mm256_mask_storeu_ps(p, first_lanes8k(n), _mm512_cvtpd_ps(v.v));
}

template <>
NERVE_INLINE f32x16 load<f32x16>(const float* p) { return _mm512_loadu_ps(p); }
NERVE_INLINE void store(float* p, f32x16 v) { _mm512_storeu_ps(p, v.v); }
NERVE_INLINE __mmask16 first_lanes16(int n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n < 0 ? 0 : n)) - 1u);
}
template <>
NERVE_INLINE f32x16 load_partial<f32x16>(const float* p, int n) { return _mm512_maskz_loadu_ps(first_lanes16(n), p); }
NERVE_INLINE void store_partial(float* p, f32x16 v, int n) { _mm512_mask_storeu_ps(p, first_lanes16(n), v.v); }
template <>
NERVE_INLINE i32x16 load_i32<i32x16>(const std::int32_t* p) { return _mm512_loadu_si512(p); }
NERVE_INLINE void store_i32(std::int32_t* p, i32x16 v) { _mm512_storeu_si512(p, v.v); }
NERVE_INLINE void store(double* p, f64w16 v) {
  _mm512_storeu_pd(p, v.lo);
  _mm512_storeu_pd(p + 8, v.hi);
}

// Horizontal sum in a fixed order: the halves added, then as f32x8's.
NERVE_INLINE float reduce_add(f32x16 a) {
  return reduce_add(f32x8(_mm256_add_ps(_mm512_castps512_ps256(a.v), _mm512_extractf32x8_ps(a.v, 1))));
}
NERVE_INLINE float reduce_max(f32x16 a) {
  return reduce_max(f32x8(_mm256_max_ps(_mm512_castps512_ps256(a.v), _mm512_extractf32x8_ps(a.v, 1))));
}
#endif  // NERVE_VEC_AVX512

// ---------------------------------------------------------------- this level's widest
#if defined(NERVE_VEC_AVX512)
using vf = f32x16;
#elif defined(NERVE_VEC_AVX2)
using vf = f32x8;
#else
using vf = float;
#endif
using vi = typename lanes_of<vf>::i32;
using vd = typename lanes_of<vf>::f64;
using vmask = typename lanes_of<vf>::mask;
constexpr int kLanes = lanes_of<vf>::value;
#if defined(NERVE_VEC_AVX512)
using vf64 = f64x8;
#elif defined(NERVE_VEC_AVX2)
using vf64 = f64x4;
#else
using vf64 = double;
#endif
constexpr int kLanes64 = lanes_of<vf64>::value;

template <class F>
using i32_of = typename lanes_of<F>::i32;
template <class F>
using f64_of = typename lanes_of<F>::f64;

// ---------------------------------------------------------------- Philox4x32-10
// Philox4x32-10 (Salmon et al., SC'11) on N counters at once, one per lane:
// (c0, c1, c2, c3) are the counter words, (k0, k1) the key; on return the
// four output words. One body for every width (I = std::int32_t, i32x8,
// i32x16); vpmuludq gives the 32x32->64 products, so every lane gets the bits
// of the scalar Philox4x32::generate (rng.hpp), which is this at I = int32.
template <class I>
NERVE_INLINE void philox4x32_10(I& c0, I& c1, I& c2, I& c3, std::uint32_t k0, std::uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    I hi0, lo0, hi1, lo1;
    mulhilo(c0, 0xD2511F53u, hi0, lo0);
    mulhilo(c2, 0xCD9E8D57u, hi1, lo1);
    c0 = hi1 ^ c1 ^ I(static_cast<std::int32_t>(k0));
    c1 = lo1;
    c2 = hi0 ^ c3 ^ I(static_cast<std::int32_t>(k1));
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

// The Philox blocks of the N 64-bit counters (hi, first + l), l < N, under
// the 64-bit key: out[w][l] = word w of block first + l (rng.hpp's
// RandomKey::block(first + l) when key = seed and hi = stream).
template <class I, int N = lanes_of<decltype(as_float(I{}))>::value>
NERVE_INLINE void philox_blocks(std::uint64_t key, std::uint64_t hi, std::uint64_t first,
                                std::uint32_t out[4][N]) {
  alignas(64) std::int32_t lo_w[N], hi_w[N];
  for (int l = 0; l < N; ++l) {
    const std::uint64_t c = first + static_cast<std::uint64_t>(l);
    lo_w[l] = static_cast<std::int32_t>(static_cast<std::uint32_t>(c));
    hi_w[l] = static_cast<std::int32_t>(static_cast<std::uint32_t>(c >> 32));
  }
  I c0 = load_i32<I>(lo_w), c1 = load_i32<I>(hi_w);
  I c2 = I(static_cast<std::int32_t>(static_cast<std::uint32_t>(hi)));
  I c3 = I(static_cast<std::int32_t>(static_cast<std::uint32_t>(hi >> 32)));
  philox4x32_10(c0, c1, c2, c3, static_cast<std::uint32_t>(key), static_cast<std::uint32_t>(key >> 32));
  store_i32(reinterpret_cast<std::int32_t*>(out[0]), c0);
  store_i32(reinterpret_cast<std::int32_t*>(out[1]), c1);
  store_i32(reinterpret_cast<std::int32_t*>(out[2]), c2);
  store_i32(reinterpret_cast<std::int32_t*>(out[3]), c3);
}

// Eight floats as a GCC/Clang vector at every level (one ymm op under AVX2,
// two xmm ops in a generic build): for kernels whose blocking is fixed at 8
// columns (the few-row and sparse inference products) rather than the level's
// own width.
typedef float v8 __attribute__((vector_size(32)));
NERVE_INLINE v8 load8(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
NERVE_INLINE void store8(float* p, v8 v) { std::memcpy(p, &v, sizeof v); }
NERVE_INLINE v8 splat8(float a) { return v8{a, a, a, a, a, a, a, a}; }

}  // namespace simd
}  // namespace nerve
