// What every optimizer policy's kernel is built from (internal to cpp/src):
// the value type (8 floats, or float without AVX), the arithmetic helpers,
// the loops that run a per-element body over a span or over the rows of an
// outer-product gradient, and make_kernel<Op>() / pick<Op>(flags...), which
// turn a body into the OptKernel function pointers a StepPlan carries.
//
// A policy writes its update once as
//   template <bool...Flags> struct MyOp {
//     template <class T, class Q> static void apply(const Q& q, Index i, const Consts<T>& c);
//   };
// reading p, the slots and the gradient through q (q.template grad<T>(i)) and
// its per-step scalars as c[k].
//
// GCC keeps the errno side effect of sqrt under the default -fmath-errno, so
// an `omp simd` loop containing sqrt is not vectorized; hence the explicit
// value type. Everything here is compiled with -ffp-contract=off and every
// fused multiply-add is written out (vfma: a*b + c, vfnma: c - a*b, vfms:
// a*b - c, one rounding each where the CPU has FMA, two where it has not):
// where GCC contracts on its own, its choice depends on the code around each
// inlined copy of a kernel, and the same update must give the same bits
// wherever it runs (run_vectors, run_rows).
//
// Everything is in an unnamed namespace: each policy's translation unit has
// its own copy, and no inline symbol is shared between units (or builds).
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "nerve/optim/policy.hpp"
#include "nerve/vec.hpp"

namespace nerve {
namespace {

template <class T> inline T splat(float x);
template <> inline float splat<float>(float x) { return x; }
template <class T> inline T load(const float* q);
template <> inline float load<float>(const float* q) { return *q; }
inline void store(float* q, float x) { *q = x; }
inline float vsqrt(float x) { return std::sqrt(x); }
// Same operand order as _mm256_max_ps/_mm256_min_ps (a NaN in `a` yields b),
// so the tail behaves as the vector body.
inline float vmax(float a, float b) { return a > b ? a : b; }
inline float vmin(float a, float b) { return a < b ? a : b; }
inline float vabs(float a) { return std::fabs(a); }
inline float vpow(float a, float e) { return std::pow(a, e); }
// sign(a) in {-1, 0, +1}, NaN for NaN (torch.sign).
inline float vsign(float a) { return a > 0.0f ? 1.0f : (a < 0.0f ? -1.0f : a); }
// a*b + c in one rounding on any build, as Dense's gradient_rows makes the
// terms of a gradient (a library call where the CPU lacks FMA).
inline float fma_exact(float a, float b, float c) { return std::fma(a, b, c); }
#ifdef __FMA__
inline float vfma(float a, float b, float c) { return std::fma(a, b, c); }
inline float vfnma(float a, float b, float c) { return std::fma(-a, b, c); }
inline float vfms(float a, float b, float c) { return std::fma(a, b, -c); }
#else
inline float vfma(float a, float b, float c) { return a * b + c; }
inline float vfnma(float a, float b, float c) { return c - a * b; }
inline float vfms(float a, float b, float c) { return a * b - c; }
#endif

// The vector type of this CPU level (vec.hpp: f32x16 at avx512, f32x8 at
// avx2); at the generic level only the scalar instantiation exists. Every
// operation below is the IEEE operation of its scalar twin, so an element's
// result does not depend on the vector width: the levels give the same bits.
#if defined(NERVE_VEC_AVX2)
using VecT = simd::vf;
template <> inline VecT splat<VecT>(float x) { return VecT(x); }
template <> inline VecT load<VecT>(const float* q) { return simd::load<VecT>(q); }
// store(float*, VecT) is simd::store, found by argument-dependent lookup.
inline VecT vsqrt(VecT x) { return simd::sqrt_(x); }
// simd::max_(b, a) is maxps(a, b): a NaN in `a` yields b, as the scalar vmax.
inline VecT vmax(VecT a, VecT b) { return simd::max_(b, a); }
inline VecT vmin(VecT a, VecT b) { return simd::min_(b, a); }
inline VecT vabs(VecT a) { return simd::abs_(a); }
// (a > 0) - (a < 0) as floats, NaN passed through (torch.sign).
inline VecT vsign(VecT a) {
  const VecT zero(0.0f), one(1.0f);
  const VecT s = simd::sel(a > zero, one, zero) - simd::sel(a < zero, one, zero);
  return simd::sel(a != a, a, s);
}
// The levels with vectors have FMA: one rounding each.
inline VecT fma_exact(VecT a, VecT b, VecT c) { return simd::fma_(a, b, c); }
inline VecT vfma(VecT a, VecT b, VecT c) { return simd::fma_(a, b, c); }
inline VecT vfnma(VecT a, VecT b, VecT c) { return simd::fma_(-a, b, c); }  // c - a*b, one rounding
inline VecT vfms(VecT a, VecT b, VecT c) { return simd::fma_(a, b, -c); }
inline VecT vpow(VecT a, float e) {  // no vector pow without libmvec: per lane
  alignas(64) float t[simd::kLanes];
  simd::store(t, a);
  for (float& x : t) x = std::pow(x, e);
  return simd::load<VecT>(t);
}
#else
using VecT = float;
#endif
constexpr Index kOptWidth = simd::kLanes;

// A step's scalars broadcast to the value type once per call; a policy reads
// its own by index (c[kStepSize]). Unused ones cost nothing: the compiler
// drops the broadcasts no kernel reads.
template <class T>
struct Consts {
  T v[kMaxStepScalars];
  const float* raw;
  explicit Consts(const float* s) : raw(s) {
    for (int k = 0; k < kMaxStepScalars; ++k) v[k] = splat<T>(s[k]);
  }
  const T& operator[](int k) const { return v[k]; }
  float scalar(int k) const { return raw[k]; }  // unbroadcast (vpow's exponent)
};

// The kernels read the gradient through grad(), so that RowPtrs can make it.
struct Ptrs : OptPtrs {
  template <class T>
  T grad(Index i) const { return load<T>(g + i); }
};

// Rows of a dense layer's weight gradient made from its factors while the
// update runs (Optimizer::update_outer): element i of the current row is
// g = x_0 dz_0[j] + ... + x_{B-1} dz_{B-1}[j], j = i - row_start, FMAs in
// that order from 0 as in Dense's gradient_rows, so the bits are the same.
// It is stored (p.grad must hold it after the step) and used at once: the
// stores ride along the divider- or load-bound update instead of taking a
// pass of their own, and the update never loads g. B: the batch, or 0 to
// read it from `batch` (a fixed B = 1 keeps light kernels such as plain SGD
// as fast as the separate passes were; a loop bound read at run time costs
// them ~10%).
template <int B>
struct RowPtrs : Ptrs {
  const float* __restrict dz;
  Index cols, row_start;
  int batch;
  float xb[4];
  template <class T>
  T grad(Index i) const {
    T acc = splat<T>(0.0f);
    const float* d = dz + (i - row_start);
    const int terms = B > 0 ? B : batch;
    for (int b = 0; b < terms; ++b) acc = fma_exact(splat<T>(xb[b]), load<T>(d + b * cols), acc);
    store(g + i, acc);
    return acc;
  }
};

#if defined(NERVE_VEC_AVX2)
// Op over elements [0, n) of q, n a multiple of the vector width. One
// out-of-line copy per Op (noinline, noclone) serves the bulk and the padded
// tail alike. (Before the multiply-adds were written out, GCC contracted
// each inlined copy in its own way, so an element's result depended on where
// its slice ended.) q is taken by value: a local copy whose pointers stay in
// registers (the may_alias vector stores could otherwise alias the caller's Ptrs).
template <class Op>
__attribute__((noinline, noclone)) void run_vectors(const Ptrs q, Index n, const float* s) {
  const Consts<VecT> c(s);
  for (Index i = 0; i < n; i += kOptWidth) Op::template apply<VecT>(q, i, c);
}
#endif

// Op over rows [0, og.rows) of an outer-product gradient (RowPtrs), row by
// row; og.cols is a multiple of the vector width.
template <class Op, int B>
__attribute__((noinline, noclone)) void run_rows(RowPtrs<B> q, const OuterGrad& og, const float* s) {
  const Consts<VecT> c(s);
  for (Index r = 0; r < og.rows; ++r) {
    for (int b = 0; b < og.batch; ++b) q.xb[b] = og.x[b * og.x_stride + r];
    q.row_start = r * og.cols;
    const Index end = q.row_start + og.cols;
    for (Index i = q.row_start; i < end; i += kOptWidth) Op::template apply<VecT>(q, i, c);
  }
}

// Runs Op over n elements, a vector at a time; the last few go through the
// same vector code on a zero-padded copy.
template <class Op>
void run_kernel(const OptPtrs& q0, Index n, const float* s) {
  const Ptrs q{q0};
#if defined(NERVE_VEC_AVX2)
  constexpr Index W = kOptWidth;
  const Index bulk = n / W * W;
  run_vectors<Op>(q, bulk, s);
  if (bulk == n) return;
  alignas(64) float pad[5][W] = {};
  float* const arrays[5] = {q.p, q.g, q.s0, q.s1, q.s2};
  for (int a = 0; a < 5; ++a)
    if (arrays[a]) std::copy(arrays[a] + bulk, arrays[a] + n, pad[a]);
  run_vectors<Op>(Ptrs{{pad[0], pad[1], q.s0 ? pad[2] : nullptr, q.s1 ? pad[3] : nullptr, q.s2 ? pad[4] : nullptr}},
                  W, s);
  for (int a = 0; a < 5; ++a)
    if (arrays[a] && a != 1) std::copy(pad[a], pad[a] + (n - bulk), arrays[a] + bulk);  // g is only read
#else
  const Consts<float> c(s);
  for (Index i = 0; i < n; ++i) Op::template apply<float>(q, i, c);
#endif
}

template <class Op, int B>
void run_outer(const OptPtrs& q, const OuterGrad& og, const float* s) {
  RowPtrs<B> rows{};
  static_cast<OptPtrs&>(rows) = q;
  rows.dz = og.dz;
  rows.cols = og.cols;
  rows.batch = og.batch;
  run_rows<Op, B>(rows, og, s);
}

template <class Op>
OptKernel make_kernel() {
  return OptKernel{&run_kernel<Op>, &run_outer<Op, 1>, &run_outer<Op, 0>};
}

// pick<Op>(f1, f2, ...): the kernel of Op<f1, f2, ...> for run-time bools,
// each combination its own branch-free instantiation.
template <template <bool...> class Op, bool... Fixed>
struct Picker {
  static OptKernel get() { return make_kernel<Op<Fixed...>>(); }
  template <class... Rest>
  static OptKernel get(bool b, Rest... rest) {
    return b ? Picker<Op, Fixed..., true>::get(rest...) : Picker<Op, Fixed..., false>::get(rest...);
  }
};
template <template <bool...> class Op, class... Flags>
OptKernel pick(Flags... flags) {
  return Picker<Op>::get(static_cast<bool>(flags)...);
}

// The two kernels of a plan: without and with weight decay, the decay flag
// being an Op's first parameter.
template <template <bool...> class Op, class... Flags>
void pick_both(StepPlan& out, Flags... flags) {
  out.plain = pick<Op>(false, flags...);
  out.decayed = pick<Op>(true, flags...);
}

// ---------------------------------------------------------------------------
// The hyper-parameters most optimizers share, spelt once.

constexpr double kInf = std::numeric_limits<double>::infinity();

inline HyperSpec real_spec(const char* name, double def, double lo = 0.0, double hi = kInf,
                           Bound lo_bound = Bound::Closed, Bound hi_bound = Bound::Closed) {
  HyperSpec h{name, def};
  h.lo = lo;
  h.hi = hi;
  h.lo_bound = lo_bound;
  h.hi_bound = hi_bound;
  return h;
}
inline HyperSpec flag_spec(const char* name, bool def, bool layout = false) {
  HyperSpec h{name, def ? 1.0 : 0.0};
  h.flag = true;
  h.lo = 0.0;
  h.hi = 1.0;
  h.layout = layout;
  return h;
}
inline HyperSpec lr_spec(double def) { return real_spec("lr", def); }
inline HyperSpec wd_spec(double def = 0.0) { return real_spec("weight_decay", def); }
inline HyperSpec eps_spec(double def) { return real_spec("eps", def); }
// beta1, beta2 in [0, 1), passed from Python as betas=(beta1, beta2).
inline HyperSpec beta_spec(const char* name, double def) {
  HyperSpec h = real_spec(name, def, 0.0, 1.0, Bound::Closed, Bound::Open);
  h.group = "betas";
  return h;
}

}  // namespace
}  // namespace nerve
