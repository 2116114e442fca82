// Adamax (Kingma & Ba 2015, section 7.1; torch.optim.Adamax):
//   d = g + wd*p;  m = b1*m + (1-b1)*d;  u = max(b2*u, |d| + eps)
//   p -= lr/(1-b1^t) * m / u
// Slots: exp_avg, exp_inf.
#include "kernel.hpp"

namespace nerve {
namespace {

enum Hyper : int { kLrH, kBeta1H, kBeta2H, kEpsH, kWeightDecayH };
enum Scalar : int { kWd, kB1, kOmB1, kB2, kEps, kStepSize };

template <bool WD>
struct AdamaxOp {
  template <class T, class Q>
  static void apply(const Q& q, Index i, const Consts<T>& c) {
    T p = load<T>(q.p + i), d = q.template grad<T>(i);
    if constexpr (WD) d = vfma(c[kWd], p, d);
    const T m = vfma(c[kB1], load<T>(q.s0 + i), c[kOmB1] * d);
    const T u = vmax(c[kB2] * load<T>(q.s1 + i), vabs(d) + c[kEps]);  // NaN in d propagates
    store(q.s0 + i, m);
    store(q.s1 + i, u);
    store(q.p + i, p - c[kStepSize] * m / u);
  }
};

class Adamax final : public Policy {
 public:
  const char* name() const override { return "Adamax"; }
  const char* doc() const override {
    return "AdaMax (Kingma & Ba, 2015, §7): u ← max(β2u, |g| + ε);\n"
           "θ ← θ − η/(1−β1ᵗ)·m/u (torch.optim.Adamax).";
  }
  const std::vector<HyperSpec>& hyper() const override {
    static const std::vector<HyperSpec> h{lr_spec(2e-3), beta_spec("beta1", 0.9), beta_spec("beta2", 0.999),
                                          eps_spec(1e-8), wd_spec()};
    return h;
  }
  std::vector<SlotSpec> slots(const HyperValues&) const override {
    return {{"exp_avg", 0.0, 0}, {"exp_inf", 0.0, 1}};
  }
  void plan(const HyperValues& h, std::int64_t step, double*, StepPlan& out) const override {
    const double t = static_cast<double>(step), b1 = h[kBeta1H];
    float* s = out.scalars;
    s[kWd] = static_cast<float>(h[kWeightDecayH]);
    s[kB1] = static_cast<float>(b1);
    s[kOmB1] = static_cast<float>(1.0 - b1);
    s[kB2] = static_cast<float>(h[kBeta2H]);
    s[kEps] = static_cast<float>(h[kEpsH]);
    s[kStepSize] = static_cast<float>(h[kLrH] / (1.0 - std::pow(b1, t)));
    pick_both<AdamaxOp>(out);
  }
};

}  // namespace

const Policy& adamax_policy() {
  static const Adamax p;
  return p;
}

}  // namespace nerve
