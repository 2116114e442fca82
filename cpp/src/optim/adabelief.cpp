// AdaBelief (Zhuang et al., NeurIPS 2020, arXiv:2010.07468), as the authors'
// adabelief-pytorch 0.2.1 (AdaBelief.py) computes it, with its defaults
// lr=1e-3, betas=(0.9, 0.999), eps=1e-16, weight_decay=0, amsgrad=False,
// weight_decouple=True, fixed_decay=False, rectify=True, degenerated_to_sgd=True:
//   decay: weight_decouple: p *= 1 - lr*wd (fixed_decay: 1 - wd); else d = g + wd*p
//   m = b1*m + (1-b1)*d;  s = b2*s + (1-b2)*(d - m)^2 + eps   (eps is stored in s)
//   amsgrad: smax = max(smax, s)
//   rectify = False:  p -= lr/(1-b1^t) * m / (sqrt(s or smax)/sqrt(1-b2^t) + eps)
//   rectify = True (RAdam's rule): N_max = 2/(1-b2) - 1,
//       N_t = N_max - 2 t b2^t/(1-b2^t);
//     N_t >= 5: p -= lr*r_t * m / (sqrt(s) + eps),
//       r_t = sqrt((1-b2^t)(N_t-4)/(N_max-4)(N_t-2)/N_t N_max/(N_max-2)) / (1-b1^t)
//       (s, not smax, even with amsgrad: as the package does)
//     else degenerated_to_sgd: p -= lr/(1-b1^t) * m;  else p is left as it is.
// With b2 = 0.999, N_t ~ t: the first five steps are SGD-with-momentum steps.
// Unlike the package, the L2 term is not written back into p.grad.
// Slots: exp_avg, exp_avg_var, max_exp_avg_var (amsgrad).
#include "kernel.hpp"

namespace nerve {
namespace {

enum Hyper : int {
  kLrH, kBeta1H, kBeta2H, kEpsH, kWeightDecayH, kAmsgradH, kDecoupleH, kFixedDecayH, kRectifyH, kSgdH
};
enum Scalar : int { kWd, kDecayMult, kB1, kOmB1, kB2, kOmB2, kEps, kInvSqrtBc2, kStepSize };

// ADAPT: the step divides by the denominator (else an SGD-like step m*step
// or, without UPDATE, none); BC: the denominator is bias-corrected (rectify off).
template <bool WD, bool DECOUPLED, bool AMS, bool ADAPT, bool BC, bool UPDATE>
struct AdaBeliefOp {
  template <class T, class Q>
  static void apply(const Q& q, Index i, const Consts<T>& c) {
    T p = load<T>(q.p + i), d = q.template grad<T>(i);
    if constexpr (WD && DECOUPLED) p = p * c[kDecayMult];
    if constexpr (WD && !DECOUPLED) d = vfma(c[kWd], p, d);
    const T m = vfma(c[kB1], load<T>(q.s0 + i), c[kOmB1] * d);
    const T r = d - m;
    const T s = vfma(c[kB2], load<T>(q.s1 + i), c[kOmB2] * r * r) + c[kEps];
    store(q.s0 + i, m);
    store(q.s1 + i, s);
    T v = s;
    if constexpr (AMS) {
      const T vmx = vmax(load<T>(q.s2 + i), s);  // a NaN in the new s propagates, as torch.max
      store(q.s2 + i, vmx);
      if constexpr (BC) v = vmx;  // the rectified rule reads s (the package's choice)
    }
    if constexpr (ADAPT && BC) p = p - c[kStepSize] * m / vfma(vsqrt(v), c[kInvSqrtBc2], c[kEps]);
    else if constexpr (ADAPT) p = p - c[kStepSize] * m / (vsqrt(v) + c[kEps]);
    else if constexpr (UPDATE) p = vfnma(c[kStepSize], m, p);
    if constexpr ((WD && DECOUPLED) || UPDATE || ADAPT) store(q.p + i, p);
  }
};

class AdaBelief final : public Policy {
 public:
  const char* name() const override { return "AdaBelief"; }
  const char* doc() const override {
    return "AdaBelief (Zhuang et al., NeurIPS 2020), as the authors' adabelief-pytorch 0.2.1.\n\n"
           "m ← β1m + (1−β1)g; s ← β2s + (1−β2)(g − m)² + ε; θ ← θ − η/(1−β1ᵗ)·m/(√s/√(1−β2ᵗ) + ε).\n"
           "The step size adapts to the 'belief' (g − m)² instead of g². rectify=True\n"
           "(default) applies RAdam's rectification: SGD-with-momentum steps while the\n"
           "variance estimate is unreliable (N_t < 5, the first five steps at β2=0.999;\n"
           "degenerated_to_sgd=False skips them), then the rectified adaptive step.\n"
           "weight_decouple=True (default): θ ← θ(1 − ηλ) (fixed_decay: θ(1 − λ)); else L2.";
  }
  const std::vector<HyperSpec>& hyper() const override {
    static const std::vector<HyperSpec> h{lr_spec(1e-3),
                                          beta_spec("beta1", 0.9),
                                          beta_spec("beta2", 0.999),
                                          eps_spec(1e-16),
                                          wd_spec(),
                                          flag_spec("amsgrad", false, true),
                                          flag_spec("weight_decouple", true),
                                          flag_spec("fixed_decay", false),
                                          flag_spec("rectify", true),
                                          flag_spec("degenerated_to_sgd", true)};
    return h;
  }
  std::vector<SlotSpec> slots(const HyperValues& h) const override {
    if (h.flag(kAmsgradH)) return {{"exp_avg", 0.0, 0}, {"exp_avg_var", 0.0, 1}, {"max_exp_avg_var", 0.0, 2}};
    return {{"exp_avg", 0.0, 0}, {"exp_avg_var", 0.0, 1}};
  }
  void plan(const HyperValues& h, std::int64_t step, double*, StepPlan& out) const override {
    const double t = static_cast<double>(step), lr = h[kLrH], b1 = h[kBeta1H], b2 = h[kBeta2H];
    const double wd = h[kWeightDecayH];
    const double bc1 = 1.0 - std::pow(b1, t), b2t = std::pow(b2, t), bc2 = 1.0 - b2t;
    float* s = out.scalars;
    s[kWd] = static_cast<float>(wd);
    s[kDecayMult] = static_cast<float>(h.flag(kFixedDecayH) ? 1.0 - wd : 1.0 - lr * wd);
    s[kB1] = static_cast<float>(b1);
    s[kOmB1] = static_cast<float>(1.0 - b1);
    s[kB2] = static_cast<float>(b2);
    s[kOmB2] = static_cast<float>(1.0 - b2);
    s[kEps] = static_cast<float>(h[kEpsH]);
    s[kInvSqrtBc2] = static_cast<float>(1.0 / std::sqrt(bc2));
    bool adapt = true, bc = true, update = true;
    if (!h.flag(kRectifyH)) {
      s[kStepSize] = static_cast<float>(lr / bc1);
    } else {
      bc = false;
      const double n_max = 2.0 / (1.0 - b2) - 1.0;
      const double n = n_max - 2.0 * t * b2t / (1.0 - b2t);
      if (n >= 5.0) {
        const double r = std::sqrt(bc2 * (n - 4.0) / (n_max - 4.0) * (n - 2.0) / n * n_max / (n_max - 2.0)) / bc1;
        s[kStepSize] = static_cast<float>(lr * r);
      } else {
        adapt = false;
        update = h.flag(kSgdH);
        s[kStepSize] = static_cast<float>(lr / bc1);
      }
    }
    pick_both<AdaBeliefOp>(out, h.flag(kDecoupleH), h.flag(kAmsgradH), adapt, bc, update);
  }
};

}  // namespace

const Policy& adabelief_policy() {
  static const AdaBelief p;
  return p;
}

}  // namespace nerve
