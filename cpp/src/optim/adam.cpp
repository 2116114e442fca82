// Adam (Kingma & Ba, ICLR 2015), AMSGrad (Reddi et al., ICLR 2018), AdamW
// (Loshchilov & Hutter, ICLR 2019); torch.optim.Adam / AdamW:
//   AdamW: p *= 1 - lr*wd;  Adam: d = g + wd*p
//   m = b1*m + (1-b1)*d;  v = b2*v + (1-b2)*d^2;  amsgrad: vmax = max(vmax, v)
//   p -= lr/(1-b1^t) * m / (sqrt(v or vmax)/sqrt(1-b2^t) + eps)
// eps is added after the bias correction of sqrt(v), as PyTorch does (the
// paper's eps-hat); 1/sqrt(1-b2^t) is a precomputed multiplier.
// Slots: exp_avg, exp_avg_sq, max_exp_avg_sq (amsgrad).
#include "kernel.hpp"

namespace nerve {
namespace {

enum Hyper : int { kLrH, kBeta1H, kBeta2H, kEpsH, kWeightDecayH, kAmsgradH };
enum Scalar : int { kWd, kDecayMult, kB1, kOmB1, kB2, kOmB2, kEps, kInvSqrtBc2, kStepSize };

template <bool WD, bool DECOUPLED, bool AMS>
struct AdamOp {
  template <class T, class Q>
  static void apply(const Q& q, Index i, const Consts<T>& c) {
    const T p = load<T>(q.p + i);
    T d = q.template grad<T>(i);
    if constexpr (WD && !DECOUPLED) d = vfma(c[kWd], p, d);
    const T m = vfma(c[kB1], load<T>(q.s0 + i), c[kOmB1] * d);
    T v = vfma(c[kB2], load<T>(q.s1 + i), c[kOmB2] * d * d);
    store(q.s0 + i, m);
    store(q.s1 + i, v);
    if constexpr (AMS) {
      v = vmax(load<T>(q.s2 + i), v);  // a NaN in the new v propagates, as torch.maximum
      store(q.s2 + i, v);
    }
    const T step = c[kStepSize] * m / vfma(vsqrt(v), c[kInvSqrtBc2], c[kEps]);
    if constexpr (WD && DECOUPLED) store(q.p + i, vfms(p, c[kDecayMult], step));  // p (1 - lr wd) - step
    else store(q.p + i, p - step);
  }
};

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
    const double t = static_cast<double>(step), lr = h[kLrH], b1 = h[kBeta1H], b2 = h[kBeta2H];
    float* s = out.scalars;
    s[kWd] = static_cast<float>(h[kWeightDecayH]);
    s[kDecayMult] = static_cast<float>(1.0 - lr * h[kWeightDecayH]);
    s[kB1] = static_cast<float>(b1);
    s[kOmB1] = static_cast<float>(1.0 - b1);
    s[kB2] = static_cast<float>(b2);
    s[kOmB2] = static_cast<float>(1.0 - b2);
    s[kEps] = static_cast<float>(h[kEpsH]);
    s[kInvSqrtBc2] = static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(b2, t)));
    s[kStepSize] = static_cast<float>(lr / (1.0 - std::pow(b1, t)));
    pick_both<AdamOp>(out, decoupled_, h.flag(kAmsgradH));
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
