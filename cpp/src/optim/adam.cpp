// Adam (Kingma & Ba, ICLR 2015), AMSGrad (Reddi et al., ICLR 2018), AdamW
// (Loshchilov & Hutter, ICLR 2019); torch.optim.Adam / AdamW:
//   AdamW: p *= 1 - lr*wd;  Adam: d = g + wd*p
//   m = b1*m + (1-b1)*d;  v = b2*v + (1-b2)*d^2;  amsgrad: vmax = max(vmax, v)
//   p -= lr/(1-b1^t) * m / (sqrt(v or vmax)/sqrt(1-b2^t) + eps)
// eps is added after the bias correction of sqrt(v), as PyTorch does (the
// paper's eps-hat); 1/sqrt(1-b2^t) is a precomputed multiplier.
// Slots: exp_avg, exp_avg_sq, max_exp_avg_sq (amsgrad).
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernel.hpp"
#include "nerve/optim/adam.hpp"

#if defined(NERVE_VEC_AVX2)
#include <xmmintrin.h>
#endif

namespace nerve {
namespace {

enum Hyper : int { kLrH, kBeta1H, kBeta2H, kEpsH, kWeightDecayH, kAmsgradH };
enum Scalar : int { kWd, kDecayMult, kB1, kOmB1, kB2, kOmB2, kEps, kInvSqrtBc2, kStepSize, kTinyM };

// DL: the decaying-lanes path (below) is compiled in; chosen per CPU
// (decaying_lanes_in_use()), as it only pays where subnormal results are slow.
template <bool WD, bool DECOUPLED, bool AMS, bool DL>
struct AdamOp {
  template <class T, class Q>
  static void apply(const Q& q, Index i, const Consts<T>& c) {
    const T p = load<T>(q.p + i);
    T d = q.template grad<T>(i);
    if constexpr (WD && !DECOUPLED) d = vfma(c[kWd], p, d);
    const T m0 = load<T>(q.s0 + i);
#if defined(NERVE_VEC_AVX2)
    if constexpr (DL && !WD && std::is_same_v<T, VecT>) {
      // Decaying lanes: no gradient (d = 0: a dead ReLU unit on a small
      // batch) and a first moment so small that m = b1 m, or the step made
      // from it, is subnormal. Such weights can make most of an update's
      // vectors hold one (a deep 128-wide ReLU MLP at batch 1: 14% of m),
      // and a float multiply or divide with a subnormal result takes the
      // FPU's slow path: ~30x per instruction on Intel (bench/README.md).
      // Comparing and converting subnormals costs nothing, so those lanes
      // are made in double instead, with the same bits (decaying()). Where
      // the slow path is mild (Zen 4) the doubles cost more than they save:
      // the path is timed once per process (decaying_lanes_in_use()).
      const T zero(0.0f);
      const auto tiny = (vabs(m0) < c[kTinyM]) & (m0 != zero) & (d == zero);
      if (simd::any(tiny)) return decaying(q, i, c, p, d, m0, tiny);
    }
#endif
    const T m = vfma(c[kB1], m0, c[kOmB1] * d);
    const T v = second_moment(q, i, c, d);
    store(q.s0 + i, m);
    const T step = c[kStepSize] * m / vfma(vsqrt(v), c[kInvSqrtBc2], c[kEps]);
    if constexpr (WD && DECOUPLED) store(q.p + i, vfms(p, c[kDecayMult], step));  // p (1 - lr wd) - step
    else store(q.p + i, p - step);
  }

  // v = b2 v + (1 - b2) d^2 stored (and its running maximum with amsgrad,
  // returned then).
  template <class T, class Q>
  static T second_moment(const Q& q, Index i, const Consts<T>& c, T d) {
    T v = vfma(c[kB2], load<T>(q.s1 + i), c[kOmB2] * d * d);
    store(q.s1 + i, v);
    if constexpr (AMS) {
      v = vmax(load<T>(q.s2 + i), v);  // a NaN in the new v propagates, as torch.maximum
      store(q.s2 + i, v);
    }
    return v;
  }

#if defined(NERVE_VEC_AVX2)
  // The update of a vector with decaying lanes (plain Adam: no weight decay,
  // so d is the gradient). Those lanes' m = fma(b1, m0, (1 - b1) 0) is the
  // product b1 m0 rounded once: exact in double (24 + 24 bits), then one
  // rounding to float, subnormal or not, which is the float operation's
  // result; likewise stepsize * m. The step's quotient is rounded to double
  // then to float, which gives the correctly rounded float quotient (53 >=
  // 2 * 24 + 2: Figueroa, "When is double rounding innocuous?", 1995). v,
  // the denominator and p - step stay the float operations (their results
  // are normal here but in rare cases, which are then slow, never wrong).
  // The other lanes take the plain update with their m as is.
  template <class Q, class Mask>
  static void decaying(const Q& q, Index i, const Consts<VecT>& c, VecT p, VecT d, VecT m0, Mask tiny) {
    using simd::sel;
    using simd::to_f32;
    using simd::to_f64;
    const VecT zero(0.0f);
    // (Every float operation here reads the decaying lanes as 0: both sides
    // of a sel are computed.)
    const VecT m = sel(tiny, to_f32(to_f64(c[kB1]) * to_f64(m0)), vfma(c[kB1], sel(tiny, zero, m0), c[kOmB1] * d));
    const VecT v = second_moment(q, i, c, d);
    store(q.s0 + i, m);
    const VecT den = vfma(vsqrt(v), c[kInvSqrtBc2], c[kEps]);
    const VecT plain = c[kStepSize] * sel(tiny, zero, m) / den;
    const VecT scaled = to_f32(to_f64(c[kStepSize]) * to_f64(m));
    const VecT exact = to_f32(to_f64(scaled) / to_f64(den));
    store(q.p + i, p - sel(tiny, exact, plain));
  }
#endif
};

// Step t's scalars, computed in double and rounded once.
void adam_scalars(double lr, double b1, double b2, double eps, double wd, std::int64_t step, float* s) {
  const double t = static_cast<double>(step);
  s[kWd] = static_cast<float>(wd);
  s[kDecayMult] = static_cast<float>(1.0 - lr * wd);
  s[kB1] = static_cast<float>(b1);
  s[kOmB1] = static_cast<float>(1.0 - b1);
  s[kB2] = static_cast<float>(b2);
  s[kOmB2] = static_cast<float>(1.0 - b2);
  s[kEps] = static_cast<float>(eps);
  s[kInvSqrtBc2] = static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(b2, t)));
  const double step_size = lr / (1.0 - std::pow(b1, t));
  s[kStepSize] = static_cast<float>(step_size);
  // |m0| below this: b1 m0 or stepsize b1 m0 is under the smallest normal
  // float, 2^-126 (AdamOp's decaying lanes; b1 = 0 leaves no m to decay).
  const double smallest = std::ldexp(1.0, -126);
  s[kTinyM] = b1 > 0.0 ? static_cast<float>(std::min(smallest / (b1 * std::min(1.0, step_size)), 1e30)) : 0.0f;
}

// The decaying-lanes path gives the plain path's bits, so whether it runs is
// a matter of speed alone, settled per CPU: NERVE_ADAM_DECAYING_LANES (auto,
// on, off; read at the first Adam step) or set_adam_decaying_mode(). Auto
// times both kernels once per process and keeps the path where it took
// under 0.9 of the plain kernel's time: on the Intel Xeon VM the probe read
// ~0.1, on Zen 4 ~1.4 (bench/README.md, "Levers").
std::atomic<int> decaying_mode{kDecayingUnread};

int mode_from_env() {
  const char* v = std::getenv("NERVE_ADAM_DECAYING_LANES");
  if (v && std::strcmp(v, "on") == 0) return kDecayingOn;
  if (v && std::strcmp(v, "off") == 0) return kDecayingOff;
  return kDecayingAuto;  // unset or "auto" (nerve/__init__.py refuses any other value)
}

#if defined(NERVE_VEC_AVX2)
// Best of 9 alternating runs of each kernel (Adam, no weight decay) over
// 4096 weights that stay in cache, every vector half decaying lanes (no
// gradient, |m| near 2^-126: b1 m and its step subnormal) and half ordinary
// ones; each run from the same state, subnormals kept (the thread's mode is
// put back after). ~0.1-1 ms in all.
DecayingProbe time_decaying_lanes() {
  constexpr Index n = 4096;
  std::vector<float> m_init(n), v_init(n, 1e-6f), p_init(n, 0.1f), g(n, 0.0f);
  for (Index i = 0; i < n; ++i) {
    if (i % 2 == 0) {
      m_init[i] = std::ldexp(1.0f + static_cast<float>(i % 7) / 8.0f, -126 - static_cast<int>(i % 5));
    } else {
      m_init[i] = 1e-3f * static_cast<float>(1 + i % 11);
      if (i % 4 == 1) g[i] = 1e-3f;
    }
  }
  float s[kMaxStepScalars] = {};
  adam_scalars(1e-3, 0.9, 0.999, 1e-8, 0.0, 10, s);
  std::vector<float> p(n), m(n), v(n);
  const auto once = [&](void (*run)(const OptPtrs&, Index, const float*)) {
    std::copy(p_init.begin(), p_init.end(), p.begin());
    std::copy(m_init.begin(), m_init.end(), m.begin());
    std::copy(v_init.begin(), v_init.end(), v.begin());
    const OptPtrs q{p.data(), g.data(), m.data(), v.data(), nullptr};
    const auto t0 = std::chrono::steady_clock::now();
    run(q, n, s);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  const unsigned csr = _mm_getcsr();
  _mm_setcsr(csr & ~0x8040u);  // FTZ (bit 15) and DAZ (bit 6) off
  DecayingProbe t{1e30, 1e30};
  for (int r = 0; r < 9; ++r) {
    t.plain_s = std::min(t.plain_s, once(&run_kernel<AdamOp<false, false, false, false>>));
    t.lanes_s = std::min(t.lanes_s, once(&run_kernel<AdamOp<false, false, false, true>>));
  }
  _mm_setcsr(csr);
  return t;
}
#endif

}  // namespace

DecayingProbe adam_decaying_probe() {
#if defined(NERVE_VEC_AVX2)
  static const DecayingProbe t = time_decaying_lanes();  // once, thread-safe
  return t;
#else
  return {0.0, 0.0};
#endif
}

int adam_decaying_mode() {
  int m = decaying_mode.load(std::memory_order_relaxed);
  if (m == kDecayingUnread) {
    int unread = kDecayingUnread;
    decaying_mode.compare_exchange_strong(unread, mode_from_env());
    m = decaying_mode.load(std::memory_order_relaxed);
  }
  return m;
}

void set_adam_decaying_mode(int mode) {
  require(mode == kDecayingAuto || mode == kDecayingOff || mode == kDecayingOn,
          "decaying-lanes mode must be auto (-1), off (0) or on (1), got " + std::to_string(mode));
  decaying_mode.store(mode);
}

bool decaying_lanes_in_use() {
#if defined(NERVE_VEC_AVX2)
  const int m = adam_decaying_mode();
  if (m != kDecayingAuto) return m == kDecayingOn;
  const DecayingProbe t = adam_decaying_probe();
  return t.lanes_s < 0.9 * t.plain_s;
#else
  return false;  // the scalar kernels have no such path
#endif
}

namespace {

class Adam final : public Policy {
 public:
  explicit Adam(bool decoupled) : decoupled_(decoupled) {}
  const char* name() const override { return decoupled_ ? "AdamW" : "Adam"; }
  const char* doc() const override {
    if (decoupled_)
      return "AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay,\n"
             "θ ← θ(1 − ηλ) before the Adam update (torch.optim.AdamW).";
    return "Adam (Kingma & Ba, 2015), torch.optim.Adam semantics.\n\n"
           "m ← β1m + (1−β1)g; v ← β2v + (1−β2)g²; θ ← θ − η·(m/(1−β1ᵗ)) / (√(v/(1−β2ᵗ)) + ε).\n"
           "amsgrad (Reddi et al., 2018) uses the running maximum of v. weight_decay\n"
           "adds λθ to g (L2); see AdamW for decoupled decay.";
  }
  const std::vector<HyperSpec>& hyper() const override { return decoupled_ ? hyper_w_ : hyper_; }
  std::vector<SlotSpec> slots(const HyperValues& h) const override {
    if (h.flag(kAmsgradH)) return {{"exp_avg", 0.0, 0}, {"exp_avg_sq", 0.0, 1}, {"max_exp_avg_sq", 0.0, 2}};
    return {{"exp_avg", 0.0, 0}, {"exp_avg_sq", 0.0, 1}};
  }
  void plan(const HyperValues& h, std::int64_t step, double*, StepPlan& out) const override {
    adam_scalars(h[kLrH], h[kBeta1H], h[kBeta2H], h[kEpsH], h[kWeightDecayH], step, out.scalars);
    pick_both<AdamOp>(out, decoupled_, h.flag(kAmsgradH), decaying_lanes_in_use());
  }

 private:
  static std::vector<HyperSpec> specs(double wd) {
    return {lr_spec(1e-3), beta_spec("beta1", 0.9), beta_spec("beta2", 0.999), eps_spec(1e-8), wd_spec(wd),
            flag_spec("amsgrad", false, true)};
  }
  bool decoupled_;
  std::vector<HyperSpec> hyper_ = specs(0.0), hyper_w_ = specs(1e-2);
};

}  // namespace

const Policy& adam_policy() {
  static const Adam p(false);
  return p;
}
const Policy& adamw_policy() {
  static const Adam p(true);
  return p;
}

}  // namespace nerve
