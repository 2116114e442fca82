// First-order optimizers with torch.optim semantics (Keras for FTRL).
//
// Layout of the work: step() validates, computes every step-dependent scalar
// once in double (begin_step), optionally clips the gradient, then makes one
// pass over each fixed-size chunk of each span that reads p, g and the state
// once and writes p and the state once (finish_step). A layer may update a
// slice of a span in between, inside its backward (update_slice: the same
// kernels; finish_step then skips that slice). Flags (weight decay on/off, amsgrad, nesterov, ...)
// are template parameters so the element loops are branch-free and vectorize
// (AVX2/FMA under -O3 -mavx2 -mfma). The per-element math is done in float, as
// PyTorch does for float32 parameters; the scalars are rounded once from double.
//
// Conventions where libraries differ:
// - eps is added to the bias-corrected sqrt(v) (Adam family) as in PyTorch,
//   i.e. sqrt(v)/sqrt(1-b2^t) + eps, not sqrt(v/(1-b2^t) + eps).
// - NAdam is torch.optim.NAdam: momentum schedule with momentum_decay, the
//   running product of mu_t kept in double (Optimizer::nadam_mu_product), L2
//   (not decoupled) weight decay.
// - FTRL is keras.optimizers.Ftrl, which puts 2*l2 (and 2*l2_shrinkage) where
//   the paper has l2; weight decay there is Keras' decoupled kind.
// - Adadelta's rho is OptHyper::alpha. RMSprop nesterov is a nerve extension.
// - Clipping (clipvalue, clipnorm, global_clipnorm: Keras meanings) happens in
//   step() before the update and is written back into g (clipvalue element by
//   element just before each element's update). Keras allows only one
//   of them; here any combination is applied in that order.
// - Weight decay applies only to spans with decay == true.
// - bind() and reset_state() restart the step count (state is fresh).
#include "nerve/optimizer.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <type_traits>

#include <immintrin.h>

#include "nerve/parallel.hpp"

namespace nerve {

namespace {

// Chunk length in floats. Large enough that the per-chunk overhead vanishes
// (and a multiple of 16 so chunks after the first keep the span's alignment),
// small enough that a 1M-parameter span still splits over many threads.
constexpr Index kChunk = 1 << 15;

// Shortest decimal that round-trips, like Python's repr, so that error
// messages show the value the user typed.
std::string fmt(double x) {
  char buf[64];
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, x);
    if (std::strtod(buf, nullptr) == x) break;
  }
  return buf;
}

// The message is built only on failure: step() re-validates every call and
// must not allocate.
inline void check(bool ok, const char* param, double value, const char* rule) {
  if (!ok) throw ValueError(std::string("Invalid ") + param + " value: " + fmt(value) + " (" + rule + ")");
}

bool uses_eps(OptKind k) { return k != OptKind::SGD && k != OptKind::Ftrl; }
bool uses_betas(OptKind k) {
  return k == OptKind::Adam || k == OptKind::AdamW || k == OptKind::Adamax || k == OptKind::NAdam;
}

const char* kind_name(OptKind k) {
  switch (k) {
    case OptKind::SGD: return "SGD";
    case OptKind::Adagrad: return "Adagrad";
    case OptKind::RMSprop: return "RMSprop";
    case OptKind::Adadelta: return "Adadelta";
    case OptKind::Adam: return "Adam";
    case OptKind::AdamW: return "AdamW";
    case OptKind::Adamax: return "Adamax";
    case OptKind::NAdam: return "NAdam";
    case OptKind::Ftrl: return "Ftrl";
  }
  return "?";
}

// A kernel as a value, for Optimizer::with_kernel's callbacks.
template <class Op>
struct KernelOf {
  using type = Op;
};

// Runtime bool -> compile-time constant, so each flag combination gets its own
// branch-free instantiation of a kernel.
template <typename F>
inline void with_flag(bool b, F&& f) {
  if (b) f(std::true_type{});
  else f(std::false_type{});
}

// ---------------------------------------------------------------------------
// Kernels.
//
// GCC keeps the errno side effect of sqrt under the default -fmath-errno, so
// an `omp simd` loop containing sqrt is not vectorized. Each kernel is
// therefore written once as a per-element body templated on the value type:
// V8 = 8 floats (AVX2/FMA), or float in a build without AVX. (V8 is __m256
// without its may_alias attribute, which a template argument would drop
// anyway.)
//
// The file is compiled with -ffp-contract=off and every fused multiply-add
// is written out (vfma: a*b + c, vfnma: c - a*b, vfms: a*b - c, one rounding
// each where the CPU has FMA, two roundings where it has not): where GCC
// contracts on its own, its choice depends on the code around each inlined
// copy of a kernel, and the same update must give the same bits wherever it
// runs (run_vectors, run_rows). The FMAs are where GCC 12 had put them, so
// the results did not change.

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

// Without AVX (a generic build) only the scalar instantiation exists.
#ifdef __AVX__
typedef float V8 __attribute__((vector_size(32)));
template <> inline V8 splat<V8>(float x) { return _mm256_set1_ps(x); }
template <> inline V8 load<V8>(const float* q) { return _mm256_loadu_ps(q); }
inline void store(float* q, V8 x) { _mm256_storeu_ps(q, x); }
inline V8 vsqrt(V8 x) { return _mm256_sqrt_ps(x); }
inline V8 vmax(V8 a, V8 b) { return _mm256_max_ps(a, b); }
inline V8 vmin(V8 a, V8 b) { return _mm256_min_ps(a, b); }
inline V8 vabs(V8 a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
#ifdef __FMA__
inline V8 fma_exact(V8 a, V8 b, V8 c) { return _mm256_fmadd_ps(a, b, c); }
inline V8 vfma(V8 a, V8 b, V8 c) { return _mm256_fmadd_ps(a, b, c); }
inline V8 vfnma(V8 a, V8 b, V8 c) { return _mm256_fnmadd_ps(a, b, c); }
inline V8 vfms(V8 a, V8 b, V8 c) { return _mm256_fmsub_ps(a, b, c); }
#else  // AVX without FMA
inline V8 fma_exact(V8 a, V8 b, V8 c) {
  alignas(32) float ta[8], tb[8], tc[8];
  _mm256_store_ps(ta, a);
  _mm256_store_ps(tb, b);
  _mm256_store_ps(tc, c);
  for (int l = 0; l < 8; ++l) tc[l] = std::fma(ta[l], tb[l], tc[l]);
  return _mm256_load_ps(tc);
}
inline V8 vfma(V8 a, V8 b, V8 c) { return a * b + c; }
inline V8 vfnma(V8 a, V8 b, V8 c) { return c - a * b; }
inline V8 vfms(V8 a, V8 b, V8 c) { return a * b - c; }
#endif
inline V8 vpow(V8 a, float e) {  // no vector pow without libmvec: per lane
  alignas(32) float t[8];
  _mm256_store_ps(t, a);
  for (float& x : t) x = std::pow(x, e);
  return _mm256_load_ps(t);
}
#endif

// The per-step scalars broadcast to the value type once per chunk.
template <class T>
struct Consts {
  T lr, wd, decay_mult, mom, damp_c, b1, omb1, b2, omb2, eps, inv_sqrt_bc2, inv_bc2, step_size;
  T nadam_cg, nadam_cm, clr, a, oma, inv_lr, l1, neg_l1, quad_l2, shrink2, one;
  float neg_pow;
  explicit Consts(const StepScalars& s)
      : lr(splat<T>(s.lr)), wd(splat<T>(s.wd)), decay_mult(splat<T>(s.decay_mult)), mom(splat<T>(s.mom)),
        damp_c(splat<T>(s.damp_c)), b1(splat<T>(s.b1)), omb1(splat<T>(s.omb1)), b2(splat<T>(s.b2)),
        omb2(splat<T>(s.omb2)), eps(splat<T>(s.eps)), inv_sqrt_bc2(splat<T>(s.inv_sqrt_bc2)),
        inv_bc2(splat<T>(s.inv_bc2)), step_size(splat<T>(s.step_size)), nadam_cg(splat<T>(s.nadam_cg)),
        nadam_cm(splat<T>(s.nadam_cm)), clr(splat<T>(s.clr)), a(splat<T>(s.a)), oma(splat<T>(s.oma)),
        inv_lr(splat<T>(s.inv_lr)), l1(splat<T>(s.l1)), neg_l1(splat<T>(-s.l1)), quad_l2(splat<T>(s.quad_l2)),
        shrink2(splat<T>(s.shrink2)), one(splat<T>(1.0f)), neg_pow(s.neg_pow) {}
};

}  // namespace

// The arrays one chunk touches; p, g and the slots never alias. The kernels
// read the gradient through grad(), so that RowPtrs can make it instead.
struct Ptrs {
  float* __restrict p;
  float* __restrict g;
  float* __restrict s0;
  float* __restrict s1;
  float* __restrict s2;
  template <class T>
  T grad(Index i) const { return load<T>(g + i); }
};

namespace {

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

#ifdef __AVX__
// Op over elements [0, n) of q, n a multiple of 8. One out-of-line copy per
// Op (noinline, noclone) serves the bulk and the padded tail alike. (Before
// the multiply-adds were written out, GCC contracted each inlined copy in
// its own way, so an element's result depended on where its slice ended.)
// q is taken by value: a local copy whose pointers stay in registers (the
// may_alias vector stores could otherwise alias the caller's Ptrs).
template <class Op>
__attribute__((noinline, noclone)) void run_vectors(const Ptrs q, Index n, const StepScalars& s) {
  const Consts<V8> c(s);
  for (Index i = 0; i < n; i += 8) Op::template apply<V8>(q, i, c);
}
#endif

// Op over rows [0, og.rows) of an outer-product gradient (RowPtrs), row by
// row; og.cols is a multiple of the vector width.
template <class Op, int B>
__attribute__((noinline, noclone)) void run_rows(RowPtrs<B> q, const OuterGrad& og, const StepScalars& s) {
#ifdef __AVX__
  using T = V8;
  constexpr Index kWidth = 8;
#else
  using T = float;
  constexpr Index kWidth = 1;
#endif
  const Consts<T> c(s);
  for (Index r = 0; r < og.rows; ++r) {
    for (int b = 0; b < og.batch; ++b) q.xb[b] = og.x[b * og.x_stride + r];
    q.row_start = r * og.cols;
    const Index end = q.row_start + og.cols;
    for (Index i = q.row_start; i < end; i += kWidth) Op::template apply<T>(q, i, c);
  }
}

// Runs Op over n elements, 8 at a time; the last 1-7 go through the same
// vector code on a zero-padded copy.
template <class Op>
void run_kernel(const Ptrs& q, Index n, const StepScalars& s) {
#ifdef __AVX__
  const Index bulk = n / 8 * 8;
  run_vectors<Op>(q, bulk, s);
  if (bulk == n) return;
  alignas(32) float pad[5][8] = {};
  float* const arrays[5] = {q.p, q.g, q.s0, q.s1, q.s2};
  for (int a = 0; a < 5; ++a)
    if (arrays[a]) std::copy(arrays[a] + bulk, arrays[a] + n, pad[a]);
  run_vectors<Op>(Ptrs{pad[0], pad[1], q.s0 ? pad[2] : nullptr, q.s1 ? pad[3] : nullptr, q.s2 ? pad[4] : nullptr},
                  8, s);
  for (int a = 0; a < 5; ++a)
    if (arrays[a] && a != 1) std::copy(pad[a], pad[a] + (n - bulk), arrays[a] + bulk);  // g is only read
#else
  const Consts<float> c(s);
  for (Index i = 0; i < n; ++i) Op::template apply<float>(q, i, c);
#endif
}

// In every kernel `WD` is true when weight decay applies to this span (its
// decay flag is set and weight_decay != 0); L2 decay enters as d = g + wd*p.

// SGD with momentum (Sutskever et al., ICML 2013; torch.optim.SGD):
//   d = g + wd*p;  b = first step ? d : mu*b + (1-dampening)*d
//   d = nesterov ? d + mu*b : b;  p -= lr*d
// Slots: s0 = momentum_buffer.
template <bool WD, bool MOM, bool NEST, bool FIRST>
struct SgdOp {
  template <class T, class Q>
  static void apply(const Q& q, Index i, const Consts<T>& c) {
    T p = load<T>(q.p + i), d = q.template grad<T>(i);
    if constexpr (WD) d = vfma(c.wd, p, d);
    if constexpr (MOM) {
      T b;
      if constexpr (FIRST) b = d;
      else b = vfma(c.mom, load<T>(q.s0 + i), c.damp_c * d);
      store(q.s0 + i, b);
      if constexpr (NEST) d = vfma(c.mom, b, d);
      else d = b;
    }
    store(q.p + i, vfnma(c.lr, d, p));
  }
};

// Adagrad (Duchi et al., JMLR 2011; torch.optim.Adagrad):
//   d = g + wd*p;  s += d^2;  p -= clr * d / (sqrt(s) + eps)
//   clr = lr / (1 + (t-1)*lr_decay)
// Slots: s0 = sum.
template <bool WD>
struct AdagradOp {
  template <class T, class Q>
  static void apply(const Q& q, Index i, const Consts<T>& c) {
    T p = load<T>(q.p + i), d = q.template grad<T>(i);
    if constexpr (WD) d = vfma(c.wd, p, d);
    const T acc = vfma(d, d, load<T>(q.s0 + i));
    store(q.s0 + i, acc);
    store(q.p + i, p - c.clr * d / (vsqrt(acc) + c.eps));
  }
};

// RMSprop (Hinton, Coursera lecture 6e; Graves 2013 for `centered`;
// torch.optim.RMSprop):
//   d = g + wd*p;  v = a*v + (1-a)*d^2
//   centered: ga = a*ga + (1-a)*d;  den = sqrt(v - ga^2) + eps;  else sqrt(v) + eps
//   MODE 0: p -= lr*d/den
//   MODE 1 (momentum): b = mu*b + d/den;  p -= lr*b
//   MODE 2 (nesterov, a nerve extension, torch has none): u = d/den;
//          b = mu*b + u;  p -= lr*(u + mu*b)
// Slots: s0 = square_avg, s1 = momentum_buffer, s2 = grad_avg (rebased by the
// caller when a slot is absent).
template <bool WD, bool CENTERED, int MODE>
struct RmspropOp {
  template <class T, class Q>
  static void apply(const Q& q, Index i, const Consts<T>& c) {
    T p = load<T>(q.p + i), d = q.template grad<T>(i);
    if constexpr (WD) d = vfma(c.wd, p, d);
    const T v = vfma(c.a, load<T>(q.s0 + i), c.oma * d * d);
    store(q.s0 + i, v);
    T den;
    if constexpr (CENTERED) {
      const T ga = vfma(c.a, load<T>(q.s2 + i), c.oma * d);
      store(q.s2 + i, ga);
      den = vsqrt(vfnma(ga, ga, v)) + c.eps;
    } else {
      den = vsqrt(v) + c.eps;
    }
    const T u = d / den;
    if constexpr (MODE == 0) {
      store(q.p + i, vfnma(c.lr, u, p));
    } else {
      const T b = vfma(c.mom, load<T>(q.s1 + i), u);
      store(q.s1 + i, b);
      if constexpr (MODE == 1) store(q.p + i, vfnma(c.lr, b, p));
      else store(q.p + i, vfnma(c.lr, vfma(c.mom, b, u), p));
    }
  }
};

// Adadelta (Zeiler 2012, arXiv:1212.5701; torch.optim.Adadelta; rho is
// OptHyper::alpha):
//   d = g + wd*p;  v = rho*v + (1-rho)*d^2
//   delta = sqrt(u + eps) / sqrt(v + eps) * d;  u = rho*u + (1-rho)*delta^2
//   p -= lr*delta
// Slots: s0 = square_avg, s1 = acc_delta.
template <bool WD>
struct AdadeltaOp {
  template <class T, class Q>
  static void apply(const Q& q, Index i, const Consts<T>& c) {
    T p = load<T>(q.p + i), d = q.template grad<T>(i);
    if constexpr (WD) d = vfma(c.wd, p, d);
    const T v = vfma(c.a, load<T>(q.s0 + i), c.oma * d * d);
    store(q.s0 + i, v);
    const T u = load<T>(q.s1 + i);
    const T delta = vsqrt(u + c.eps) / vsqrt(v + c.eps) * d;
    store(q.s1 + i, vfma(c.a, u, c.oma * delta * delta));
    store(q.p + i, vfnma(c.lr, delta, p));
  }
};

// Adam (Kingma & Ba, ICLR 2015), AMSGrad (Reddi et al., ICLR 2018), AdamW
// (Loshchilov & Hutter, ICLR 2019); torch.optim.Adam / AdamW:
//   AdamW: p *= 1 - lr*wd;  Adam: d = g + wd*p
//   m = b1*m + (1-b1)*d;  v = b2*v + (1-b2)*d^2;  amsgrad: vmax = max(vmax, v)
//   p -= lr/(1-b1^t) * m / (sqrt(v or vmax)/sqrt(1-b2^t) + eps)
// eps is added after the bias correction of sqrt(v), as PyTorch does (the
// paper's eps-hat); 1/sqrt(1-b2^t) is a precomputed multiplier.
// Slots: s0 = exp_avg, s1 = exp_avg_sq, s2 = max_exp_avg_sq.
template <bool WD, bool DECOUPLED, bool AMS>
struct AdamOp {
  template <class T, class Q>
  static void apply(const Q& q, Index i, const Consts<T>& c) {
    const T p = load<T>(q.p + i);
    T d = q.template grad<T>(i);
    if constexpr (WD && !DECOUPLED) d = vfma(c.wd, p, d);
    const T m = vfma(c.b1, load<T>(q.s0 + i), c.omb1 * d);
    T v = vfma(c.b2, load<T>(q.s1 + i), c.omb2 * d * d);
    store(q.s0 + i, m);
    store(q.s1 + i, v);
    if constexpr (AMS) {
      v = vmax(load<T>(q.s2 + i), v);  // a NaN in the new v propagates, as torch.maximum
      store(q.s2 + i, v);
    }
    const T step = c.step_size * m / vfma(vsqrt(v), c.inv_sqrt_bc2, c.eps);
    if constexpr (WD && DECOUPLED) store(q.p + i, vfms(p, c.decay_mult, step));  // p (1 - lr wd) - step
    else store(q.p + i, p - step);
  }
};

// Adamax (Kingma & Ba 2015, section 7.1; torch.optim.Adamax):
//   d = g + wd*p;  m = b1*m + (1-b1)*d;  u = max(b2*u, |d| + eps)
//   p -= lr/(1-b1^t) * m / u
// Slots: s0 = exp_avg, s1 = exp_inf.
template <bool WD>
struct AdamaxOp {
  template <class T, class Q>
  static void apply(const Q& q, Index i, const Consts<T>& c) {
    T p = load<T>(q.p + i), d = q.template grad<T>(i);
    if constexpr (WD) d = vfma(c.wd, p, d);
    const T m = vfma(c.b1, load<T>(q.s0 + i), c.omb1 * d);
    const T u = vmax(c.b2 * load<T>(q.s1 + i), vabs(d) + c.eps);  // NaN in d propagates
    store(q.s0 + i, m);
    store(q.s1 + i, u);
    store(q.p + i, p - c.step_size * m / u);
  }
};

// NAdam (Dozat, ICLR 2016 workshop; torch.optim.NAdam, with its momentum
// schedule mu_t = b1*(1 - 0.5*0.96^(t*psi)), psi = momentum_decay):
//   d = g + wd*p;  m = b1*m + (1-b1)*d;  v = b2*v + (1-b2)*d^2
//   den = sqrt(v/(1-b2^t)) + eps
//   p -= lr*(1-mu_t)/(1-prod_{i<=t} mu_i) * d/den
//      + lr*mu_{t+1}/(1-prod_{i<=t+1} mu_i) * m/den
// Both coefficients are per-step scalars; one divide per element.
// Slots: s0 = exp_avg, s1 = exp_avg_sq.
template <bool WD>
struct NadamOp {
  template <class T, class Q>
  static void apply(const Q& q, Index i, const Consts<T>& c) {
    T p = load<T>(q.p + i), d = q.template grad<T>(i);
    if constexpr (WD) d = vfma(c.wd, p, d);
    const T m = vfma(c.b1, load<T>(q.s0 + i), c.omb1 * d);
    const T v = vfma(c.b2, load<T>(q.s1 + i), c.omb2 * d * d);
    store(q.s0 + i, m);
    store(q.s1 + i, v);
    store(q.p + i, p - vfma(c.nadam_cg, d, c.nadam_cm * m) / (vsqrt(v * c.inv_bc2) + c.eps));
  }
};

// FTRL-Proximal (McMahan et al., KDD 2013, Algorithm 1), exactly as
// keras.optimizers.Ftrl (keras/src/optimizers/ftrl.py):
//   (weight decay as Keras' base optimizer, decoupled: p *= 1 - lr*wd)
//   gs = g + 2*l2_shrinkage*p;  n' = n + g^2
//   z += gs - (n'^-pow - n^-pow)/lr * p
//   p = (clip(z, -l1, l1) - z) / (n'^-pow/lr + 2*(l2 + beta/(2*lr)));  n = n'
// Keras doubles l2 in the quadratic term (the paper has lambda_2 there); we
// follow Keras. When |z| <= l1 the numerator is z - z == +0 exactly, so
// strong l1 gives exact zeros.
// POW: 0 -> learning_rate_power == -0.5 (sqrt), 1 -> == 0 (power is 1),
// 2 -> general pow (per lane).
// Slots: s0 = accumulator, s1 = linear.
template <bool WD, int POW>
struct FtrlOp {
  template <class T, class Q>
  static void apply(const Q& q, Index i, const Consts<T>& c) {
    T p = load<T>(q.p + i);
    if constexpr (WD) p = p * c.decay_mult;
    const T g = q.template grad<T>(i);
    const T a0 = load<T>(q.s0 + i);
    const T a1 = vfma(g, g, a0);
    T pw0, pw1;
    if constexpr (POW == 0) {
      pw0 = vsqrt(a0);
      pw1 = vsqrt(a1);
    } else if constexpr (POW == 1) {
      pw0 = c.one;
      pw1 = c.one;
    } else {
      pw0 = vpow(a0, c.neg_pow);
      pw1 = vpow(a1, c.neg_pow);
    }
    const T z = vfnma((pw1 - pw0) * c.inv_lr, p, load<T>(q.s1 + i) + vfma(c.shrink2, p, g));
    store(q.s1 + i, z);
    store(q.s0 + i, a1);
    const T zc = vmin(vmax(z, c.neg_l1), c.l1);
    store(q.p + i, (zc - z) / vfma(pw1, c.inv_lr, c.quad_l2));
  }
};

// Sum of squares in double. The order of additions is fixed by the compiler's
// vectorization of this loop, never by the thread count.
double sum_sq(const float* __restrict g, Index n) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (Index i = 0; i < n; ++i) {
    const double x = g[i];
    acc += x * x;
  }
  return acc;
}

// Clamps to [-c, c] in place and returns the sum of squares of the result.
double clamp_sum_sq(float* __restrict g, Index n, float c) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (Index i = 0; i < n; ++i) {
    const float x = std::min(std::max(g[i], -c), c);
    g[i] = x;
    const double xd = x;
    acc += xd * xd;
  }
  return acc;
}

void clamp_only(float* __restrict g, Index n, float c) {
#pragma omp simd
  for (Index i = 0; i < n; ++i) g[i] = std::min(std::max(g[i], -c), c);
}

void scale_in_place(float* __restrict g, Index n, float f) {
#pragma omp simd
  for (Index i = 0; i < n; ++i) g[i] *= f;
}

// Runs body(c) for c in [0, count): on one thread below the parallel
// threshold, else over OpenMP threads. Each chunk's result depends only on the
// chunk, so the thread count never changes the result.
template <typename F>
void for_chunks(Index count, double flops, F&& body) {
  parallel_for(count, threads_for(flops, count), body);
}

// Pieces of a list of spans for the free clipping helpers.
struct Piece {
  float* g;
  Index n;
  std::size_t span;
};

std::vector<Piece> split(const std::vector<ParamSpan>& spans) {
  std::vector<Piece> out;
  for (std::size_t s = 0; s < spans.size(); ++s)
    for (Index b = 0; b < spans[s].n; b += kChunk)
      out.push_back({spans[s].g + b, std::min(kChunk, spans[s].n - b), s});
  return out;
}

void check_spans(const std::vector<ParamSpan>& spans, bool need_p) {
  for (std::size_t s = 0; s < spans.size(); ++s) {
    const ParamSpan& sp = spans[s];
    require(sp.n >= 0, "span " + std::to_string(s) + " has negative size " + std::to_string(sp.n));
    require(sp.n == 0 || (sp.g && (sp.p || !need_p)),
            "span " + std::to_string(s) + " has a null parameter or gradient pointer");
  }
}

}  // namespace

// ---------------------------------------------------------------------------

void validate_hyper(OptKind kind, const OptHyper& h) {
  const bool ftrl = kind == OptKind::Ftrl;
  if (ftrl) check(h.lr > 0.0, "lr", h.lr, "FTRL divides by the learning rate, must be > 0");
  else check(h.lr >= 0.0, "lr", h.lr, "must be >= 0");
  check(h.weight_decay >= 0.0, "weight_decay", h.weight_decay, "must be >= 0");
  if (uses_eps(kind)) check(h.eps >= 0.0, "eps", h.eps, "must be >= 0");
  if (uses_betas(kind)) {
    check(h.beta1 >= 0.0 && h.beta1 < 1.0, "beta1", h.beta1, "must be in [0, 1)");
    check(h.beta2 >= 0.0 && h.beta2 < 1.0, "beta2", h.beta2, "must be in [0, 1)");
  }
  switch (kind) {
    case OptKind::SGD:
      check(h.momentum >= 0.0, "momentum", h.momentum, "must be >= 0");
      if (h.nesterov) {
        check(h.momentum > 0.0, "momentum", h.momentum, "nesterov=True requires momentum > 0");
        check(h.dampening == 0.0, "dampening", h.dampening, "nesterov=True requires dampening == 0");
      }
      break;
    case OptKind::RMSprop:
      check(h.momentum >= 0.0, "momentum", h.momentum, "must be >= 0");
      check(h.alpha >= 0.0 && h.alpha <= 1.0, "alpha", h.alpha, "must be in [0, 1]");
      if (h.nesterov) check(h.momentum > 0.0, "momentum", h.momentum, "nesterov=True requires momentum > 0");
      break;
    case OptKind::Adadelta:
      check(h.alpha >= 0.0 && h.alpha <= 1.0, "rho (alpha)", h.alpha, "must be in [0, 1]");
      break;
    case OptKind::Adagrad:
      check(h.lr_decay >= 0.0, "lr_decay", h.lr_decay, "must be >= 0");
      check(h.initial_accumulator_value >= 0.0, "initial_accumulator_value", h.initial_accumulator_value,
            "must be >= 0");
      break;
    case OptKind::NAdam:
      check(h.momentum_decay >= 0.0, "momentum_decay", h.momentum_decay, "must be >= 0");
      break;
    case OptKind::Ftrl:
      check(h.learning_rate_power <= 0.0, "learning_rate_power", h.learning_rate_power, "must be <= 0");
      check(h.ftrl_initial_accumulator >= 0.0, "initial_accumulator_value", h.ftrl_initial_accumulator,
            "must be >= 0");
      check(h.l1 >= 0.0, "l1_regularization_strength", h.l1, "must be >= 0");
      check(h.l2 >= 0.0, "l2_regularization_strength", h.l2, "must be >= 0");
      check(h.l2_shrinkage >= 0.0, "l2_shrinkage_regularization_strength", h.l2_shrinkage, "must be >= 0");
      check(h.ftrl_beta >= 0.0, "beta", h.ftrl_beta, "must be >= 0");
      break;
    default:
      break;
  }
  // NaN fails every comparison above, so it is rejected too.
  check(h.clipvalue >= 0.0, "clipvalue", h.clipvalue, "must be >= 0 (0 disables)");
  check(h.clipnorm >= 0.0, "clipnorm", h.clipnorm, "must be >= 0 (0 disables)");
  check(h.global_clipnorm >= 0.0, "global_clipnorm", h.global_clipnorm, "must be >= 0 (0 disables)");
}

std::vector<std::string> state_slot_names(OptKind kind, const OptHyper& h) {
  switch (kind) {
    case OptKind::SGD:
      if (h.momentum > 0.0) return {"momentum_buffer"};
      return {};
    case OptKind::Adagrad: return {"sum"};
    case OptKind::RMSprop: {
      std::vector<std::string> v{"square_avg"};
      if (h.momentum > 0.0) v.push_back("momentum_buffer");
      if (h.centered) v.push_back("grad_avg");
      return v;
    }
    case OptKind::Adadelta: return {"square_avg", "acc_delta"};
    case OptKind::Adam:
    case OptKind::AdamW:
      if (h.amsgrad) return {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
      return {"exp_avg", "exp_avg_sq"};
    case OptKind::Adamax: return {"exp_avg", "exp_inf"};
    case OptKind::NAdam: return {"exp_avg", "exp_avg_sq"};
    case OptKind::Ftrl: return {"accumulator", "linear"};
  }
  return {};
}

Optimizer::Optimizer(OptKind kind, const OptHyper& hyper) : kind_(kind), hyper_(hyper) {
  validate_hyper(kind, hyper);
}

void Optimizer::bind(const std::vector<ParamSpan>& spans) {
  validate_hyper(kind_, hyper_);
  check_spans(spans, true);
  spans_ = spans;
  total_ = 0;
  chunks_.clear();
  span_first_chunk_.clear();
  span_offset_.clear();
  for (std::size_t s = 0; s < spans_.size(); ++s) {
    span_first_chunk_.push_back(static_cast<Index>(chunks_.size()));
    span_offset_.push_back(total_);
    for (Index b = 0; b < spans_[s].n; b += kChunk)
      chunks_.push_back({static_cast<int>(s), b, std::min(kChunk, spans_[s].n - b)});
    total_ += spans_[s].n;
  }
  span_first_chunk_.push_back(static_cast<Index>(chunks_.size()));
  chunk_sq_.assign(chunks_.size(), 0.0);
  span_scale_.assign(spans_.size(), 1.0);

  slot_names = state_slot_names(kind_, hyper_);
  slots.resize(slot_names.size());
  bound_amsgrad_ = hyper_.amsgrad;
  bound_momentum_ = hyper_.momentum > 0.0;
  bound_centered_ = hyper_.centered;
  bound_ = true;
  in_step_ = false;
  updated_.clear();
  for (auto& buf : slots) buf.resize(total_, 0.0f);
  reset_state();
}

void Optimizer::reset_state() {
  iterations = 0;
  nadam_mu_product = 1.0;
  // Accumulators that start non-zero: Adagrad's "sum" (torch's
  // initial_accumulator_value) and FTRL's "accumulator" (Keras' default 0.1).
  for (std::size_t k = 0; k < slots.size(); ++k) {
    float fill = 0.0f;
    if (kind_ == OptKind::Adagrad && slot_names[k] == "sum")
      fill = static_cast<float>(hyper_.initial_accumulator_value);
    if (kind_ == OptKind::Ftrl && slot_names[k] == "accumulator")
      fill = static_cast<float>(hyper_.ftrl_initial_accumulator);
    slots[k].fill_with(fill);
  }
}

void Optimizer::set_lr(double lr) {
  OptHyper h = hyper_;
  h.lr = lr;
  validate_hyper(kind_, h);
  hyper_.lr = lr;
}

void Optimizer::step() {
  begin_step();
  finish_step();
}

void Optimizer::begin_step() {
  const OptHyper& h = hyper_;
  // Everything that can throw happens before any state is touched.
  if (!bound_) throw ValueError(std::string(kind_name(kind_)) + ".step() called before bind()");
  validate_hyper(kind_, h);
  bool layout_ok = true;  // the flags that decide which slots exist
  if (kind_ == OptKind::SGD) layout_ok = bound_momentum_ == (h.momentum > 0.0);
  if (kind_ == OptKind::RMSprop) layout_ok = bound_momentum_ == (h.momentum > 0.0) && bound_centered_ == h.centered;
  if (kind_ == OptKind::Adam || kind_ == OptKind::AdamW) layout_ok = bound_amsgrad_ == h.amsgrad;
  if (!layout_ok)
    throw ValueError(std::string(kind_name(kind_)) +
                     ": momentum/centered/amsgrad changed after bind(); the state slots no longer match, "
                     "call bind() again");

  const std::int64_t prev = iterations;
  iterations += 1;
  const double t = static_cast<double>(iterations);

  // --- Per-step scalars, once, in double.
  StepScalars s{};
  s.lr = static_cast<float>(h.lr);
  s.wd = static_cast<float>(h.weight_decay);
  s.decay_mult = static_cast<float>(1.0 - h.lr * h.weight_decay);
  s.mom = static_cast<float>(h.momentum);
  s.damp_c = static_cast<float>(1.0 - h.dampening);
  s.b1 = static_cast<float>(h.beta1);
  s.omb1 = static_cast<float>(1.0 - h.beta1);
  s.b2 = static_cast<float>(h.beta2);
  s.omb2 = static_cast<float>(1.0 - h.beta2);
  s.eps = static_cast<float>(h.eps);
  s.a = static_cast<float>(h.alpha);
  s.oma = static_cast<float>(1.0 - h.alpha);
  const double bc1 = 1.0 - std::pow(h.beta1, t);
  const double bc2 = 1.0 - std::pow(h.beta2, t);
  s.inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  s.inv_bc2 = static_cast<float>(1.0 / bc2);
  s.step_size = static_cast<float>(h.lr / bc1);
  s.clr = static_cast<float>(h.lr / (1.0 + (t - 1.0) * h.lr_decay));
  if (kind_ == OptKind::NAdam) {
    const double mu = h.beta1 * (1.0 - 0.5 * std::pow(0.96, t * h.momentum_decay));
    const double mu_next = h.beta1 * (1.0 - 0.5 * std::pow(0.96, (t + 1.0) * h.momentum_decay));
    nadam_mu_product *= mu;
    const double prod_next = nadam_mu_product * mu_next;
    s.nadam_cg = static_cast<float>(h.lr * (1.0 - mu) / (1.0 - nadam_mu_product));
    s.nadam_cm = static_cast<float>(h.lr * mu_next / (1.0 - prod_next));
  }
  if (kind_ == OptKind::Ftrl) {
    s.inv_lr = static_cast<float>(1.0 / h.lr);
    s.l1 = static_cast<float>(h.l1);
    s.quad_l2 = static_cast<float>(2.0 * (h.l2 + h.ftrl_beta / (2.0 * h.lr)));
    s.shrink2 = static_cast<float>(2.0 * h.l2_shrinkage);
    s.neg_pow = static_cast<float>(-h.learning_rate_power);
  }
  s.clipvalue = static_cast<float>(h.clipvalue);
  scalars_ = s;
  sgd_first_ = prev == 0;
  rms_mode_ = h.momentum > 0.0 ? (h.nesterov ? 2 : 1) : 0;
  ftrl_pow_ = h.learning_rate_power == -0.5 ? 0 : (h.learning_rate_power == 0.0 ? 1 : 2);

  // Slot base pointers in the order the kernels expect (see each kernel).
  float** base = slot_base_;
  base[0] = base[1] = base[2] = nullptr;
  for (std::size_t k = 0; k < slots.size() && k < 3; ++k) base[k] = slots[k].data();
  if (kind_ == OptKind::RMSprop) {
    // Optional slots are absent from the list, so map by name position:
    // {"square_avg", ["momentum_buffer"], ["grad_avg"]}.
    float* sq = base[0];
    float* buf = rms_mode_ != 0 ? base[1] : nullptr;
    float* ga = h.centered ? (rms_mode_ != 0 ? base[2] : base[1]) : nullptr;
    base[0] = sq;
    base[1] = buf;
    base[2] = ga;
  }
  updated_.clear();
  in_step_ = true;
}

bool Optimizer::slices_allowed() const { return hyper_.clipnorm <= 0.0 && hyper_.global_clipnorm <= 0.0; }

SpanSlice Optimizer::find(const float* p, Index n) const {
  if (!in_step_ || !slices_allowed() || p == nullptr || n <= 0) return {};
  for (std::size_t s = 0; s < spans_.size(); ++s) {
    const ParamSpan& sp = spans_[s];
    // Compared as addresses: p may lie in another arena altogether.
    const auto lo = reinterpret_cast<std::uintptr_t>(sp.p), at = reinterpret_cast<std::uintptr_t>(p);
    if (at >= lo && at + n * sizeof(float) <= lo + sp.n * sizeof(float))
      return {static_cast<int>(s), static_cast<Index>(p - sp.p), n};
  }
  return {};
}

void Optimizer::update_slice(const SpanSlice& s) { update_elements(s.span, s.begin, s.n, scalars_.clipvalue > 0.0f); }

void Optimizer::mark_updated(const SpanSlice& s) {
  // Kept sorted so that finish_step() walks each chunk's gaps in one pass.
  auto at = std::upper_bound(updated_.begin(), updated_.end(), s, [](const SpanSlice& a, const SpanSlice& b) {
    return a.span != b.span ? a.span < b.span : a.begin < b.begin;
  });
  updated_.insert(at, s);
}

void Optimizer::finish_step() {
  const OptHyper& h = hyper_;
  const Index nchunks = static_cast<Index>(chunks_.size());
  in_step_ = false;

  // --- Norm clipping. Keras order of meanings; several may be set at once
  // and are then applied as clipvalue, per-span clipnorm, global_clipnorm.
  // The clipped gradient is written back into g (Keras clips a copy; writing
  // back saves a buffer and lets the caller see what the optimizer used).
  // Without a norm, clipvalue is applied piece by piece with the update.
  const bool cv = h.clipvalue > 0.0, cn = h.clipnorm > 0.0, gn = h.global_clipnorm > 0.0;
  if (cn || gn) {
    const float c = static_cast<float>(h.clipvalue);
    for_chunks(nchunks, 3.0 * static_cast<double>(total_), [&](Index k) {
      const Chunk& ch = chunks_[k];
      float* g = spans_[ch.span].g + ch.begin;
      chunk_sq_[k] = cv ? clamp_sum_sq(g, ch.len, c) : sum_sq(g, ch.len);
    });
    double global_sq = 0.0;
    for (std::size_t s = 0; s < spans_.size(); ++s) {
      double sq = 0.0;
      for (Index k = span_first_chunk_[s]; k < span_first_chunk_[s + 1]; ++k) sq += chunk_sq_[k];
      double norm = std::sqrt(sq), scale = 1.0;
      if (cn && norm > h.clipnorm) {
        scale = h.clipnorm / norm;
        norm = h.clipnorm;
      }
      span_scale_[s] = scale;
      global_sq += norm * norm;
    }
    const double gnorm = std::sqrt(global_sq);
    if (gn && gnorm > h.global_clipnorm)
      for (auto& sc : span_scale_) sc *= h.global_clipnorm / gnorm;
    for_chunks(nchunks, static_cast<double>(total_), [&](Index k) {
      const Chunk& ch = chunks_[k];
      const double sc = span_scale_[ch.span];
      if (sc != 1.0) scale_in_place(spans_[ch.span].g + ch.begin, ch.len, static_cast<float>(sc));
    });
  }
  const bool clamp = cv && !(cn || gn);

  // --- The update of every element no slice has covered: each chunk minus
  // the marked slices of its span (sorted, usually none or one).
  const SpanSlice* marks = updated_.data();
  const Index nmarks = static_cast<Index>(updated_.size());
  for_chunks(nchunks, 12.0 * static_cast<double>(total_), [&](Index k) {
    const Chunk& ch = chunks_[k];
    const Index end = ch.begin + ch.len;
    Index from = ch.begin;
    for (Index m = 0; m < nmarks && from < end; ++m) {
      const SpanSlice& done = marks[m];
      if (done.span != ch.span || done.begin + done.n <= from) continue;
      if (done.begin >= end) break;
      if (done.begin > from) update_elements(ch.span, from, done.begin - from, clamp);
      from = done.begin + done.n;
    }
    if (from < end) update_elements(ch.span, from, end - from, clamp);
  });
}

// Calls f(KernelOf<Op>{}) with the kernel this optimizer's kind and flags
// select (wd: weight decay applies to the span at hand).
template <class F>
void Optimizer::with_kernel(bool wd, F&& f) const {
  const OptHyper& h = hyper_;
  const bool sgd_first = sgd_first_;
  const int rms_mode = rms_mode_, ftrl_pow = ftrl_pow_;
  with_flag(wd, [&](auto WD) {
    constexpr bool kWD = decltype(WD)::value;
    switch (kind_) {
      case OptKind::SGD:
        with_flag(h.momentum > 0.0, [&](auto MOM) {
          with_flag(h.nesterov, [&](auto NEST) {
            with_flag(sgd_first, [&](auto FIRST) {
              constexpr bool kM = decltype(MOM)::value;
              f(KernelOf<SgdOp<kWD, kM, kM && decltype(NEST)::value, decltype(FIRST)::value>>{});
            });
          });
        });
        break;
      case OptKind::Adagrad:
        f(KernelOf<AdagradOp<kWD>>{});
        break;
      case OptKind::RMSprop:
        with_flag(h.centered, [&](auto C) {
          constexpr bool kC = decltype(C)::value;
          if (rms_mode == 0) f(KernelOf<RmspropOp<kWD, kC, 0>>{});
          else if (rms_mode == 1) f(KernelOf<RmspropOp<kWD, kC, 1>>{});
          else f(KernelOf<RmspropOp<kWD, kC, 2>>{});
        });
        break;
      case OptKind::Adadelta:
        f(KernelOf<AdadeltaOp<kWD>>{});
        break;
      case OptKind::Adam:
      case OptKind::AdamW:
        with_flag(h.amsgrad, [&](auto AMS) {
          constexpr bool kA = decltype(AMS)::value;
          if (kind_ == OptKind::AdamW) f(KernelOf<AdamOp<kWD, true, kA>>{});
          else f(KernelOf<AdamOp<kWD, false, kA>>{});
        });
        break;
      case OptKind::Adamax:
        f(KernelOf<AdamaxOp<kWD>>{});
        break;
      case OptKind::NAdam:
        f(KernelOf<NadamOp<kWD>>{});
        break;
      case OptKind::Ftrl:
        if (ftrl_pow == 0) f(KernelOf<FtrlOp<kWD, 0>>{});
        else if (ftrl_pow == 1) f(KernelOf<FtrlOp<kWD, 1>>{});
        else f(KernelOf<FtrlOp<kWD, 2>>{});
        break;
    }
  });
}

Ptrs Optimizer::pointers(int span, Index begin) const {
  const ParamSpan& sp = spans_[span];
  const Index o = span_offset_[span] + begin;
  float* const* base = slot_base_;
  return Ptrs{sp.p + begin, sp.g + begin, base[0] ? base[0] + o : nullptr, base[1] ? base[1] + o : nullptr,
              base[2] ? base[2] + o : nullptr};
}

bool Optimizer::decays(int span) const { return spans_[span].decay && hyper_.weight_decay != 0.0; }

void Optimizer::update_elements(int span, Index begin, Index n, bool clamp) {
  const StepScalars& s = scalars_;
  if (clamp) clamp_only(spans_[span].g + begin, n, s.clipvalue);
  const Ptrs q = pointers(span, begin);
  with_kernel(decays(span), [&](auto k) { run_kernel<typename decltype(k)::type>(q, n, s); });
}

bool Optimizer::update_outer(const SpanSlice& sl, const OuterGrad& og) {
#ifdef __AVX__
  constexpr Index kWidth = 8;
#else
  constexpr Index kWidth = 1;
#endif
  // clipvalue clamps g before the update reads it; a row whose width is not
  // a whole number of vectors would need run_kernel's padded tail per row.
  if (scalars_.clipvalue > 0.0f || og.cols % kWidth != 0 || og.batch < 1 || og.batch > 4) return false;
  const StepScalars& s = scalars_;
  const auto run = [&](auto rows) {
    static_cast<Ptrs&>(rows) = pointers(sl.span, sl.begin);
    rows.dz = og.dz;
    rows.cols = og.cols;
    rows.batch = og.batch;
    with_kernel(decays(sl.span), [&](auto k) { run_rows<typename decltype(k)::type>(rows, og, s); });
  };
  if (og.batch == 1) run(RowPtrs<1>{});
  else run(RowPtrs<0>{});
  return true;
}

// ---------------------------------------------------------------------------

void clip_grad_value(const std::vector<ParamSpan>& spans, double clip_value) {
  check(clip_value >= 0.0, "clip_value", clip_value, "must be >= 0");
  check_spans(spans, false);
  const std::vector<Piece> pieces = split(spans);
  const float c = static_cast<float>(clip_value);
  double total = 0.0;
  for (const auto& pc : pieces) total += static_cast<double>(pc.n);
  for_chunks(static_cast<Index>(pieces.size()), total, [&](Index k) { clamp_only(pieces[k].g, pieces[k].n, c); });
}

// torch.nn.utils.clip_grad_norm_ (norm_type=2): total = ||concat(g)||_2,
// coef = max_norm / (total + 1e-6), every g *= coef when coef < 1.
double clip_grad_norm(const std::vector<ParamSpan>& spans, double max_norm) {
  check(max_norm >= 0.0, "max_norm", max_norm, "must be >= 0");
  check_spans(spans, false);
  const std::vector<Piece> pieces = split(spans);
  std::vector<double> sq(pieces.size(), 0.0);
  double work = 0.0;
  for (const auto& pc : pieces) work += 2.0 * static_cast<double>(pc.n);
  const Index np = static_cast<Index>(pieces.size());
  for_chunks(np, work, [&](Index k) { sq[k] = sum_sq(pieces[k].g, pieces[k].n); });
  double acc = 0.0;
  for (double x : sq) acc += x;
  const double total = std::sqrt(acc);
  const double coef = max_norm / (total + 1e-6);
  if (coef < 1.0) {
    const float f = static_cast<float>(coef);
    for_chunks(np, work / 2.0, [&](Index k) { scale_in_place(pieces[k].g, pieces[k].n, f); });
  }
  return total;
}

}  // namespace nerve
