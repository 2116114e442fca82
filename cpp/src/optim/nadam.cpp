// NAdam (Dozat, ICLR 2016 workshop; torch.optim.NAdam, with its momentum
// schedule mu_t = b1*(1 - 0.5*0.96^(t*psi)), psi = momentum_decay):
//   d = g + wd*p;  m = b1*m + (1-b1)*d;  v = b2*v + (1-b2)*d^2
//   den = sqrt(v/(1-b2^t)) + eps
//   p -= lr*(1-mu_t)/(1-prod_{i<=t} mu_i) * d/den
//      + lr*mu_{t+1}/(1-prod_{i<=t+1} mu_i) * m/den
// Both coefficients are per-step scalars; one divide per element. The
// running product of mu_t is state, kept in double (saved as
// "nadam_mu_product"). L2 (not decoupled) weight decay.
// Slots: exp_avg, exp_avg_sq.
#include "kernel.hpp"

namespace nerve {
namespace {

enum Hyper : int { kLrH, kBeta1H, kBeta2H, kEpsH, kWeightDecayH, kMomentumDecayH };
enum Scalar : int { kWd, kB1, kOmB1, kB2, kOmB2, kEps, kInvBc2, kCg, kCm };

template <bool WD>
struct NadamOp {
  template <class T, class Q>
  static void apply(const Q& q, Index i, const Consts<T>& c) {
    T p = load<T>(q.p + i), d = q.template grad<T>(i);
    if constexpr (WD) d = vfma(c[kWd], p, d);
    const T m = vfma(c[kB1], load<T>(q.s0 + i), c[kOmB1] * d);
    const T v = vfma(c[kB2], load<T>(q.s1 + i), c[kOmB2] * d * d);
    store(q.s0 + i, m);
    store(q.s1 + i, v);
    store(q.p + i, p - vfma(c[kCg], d, c[kCm] * m) / (vsqrt(v * c[kInvBc2]) + c[kEps]));
  }
};

class Nadam final : public Policy {
 public:
  const char* name() const override { return "NAdam"; }
  const char* doc() const override {
    return "NAdam (Dozat, 2016), torch.optim.NAdam semantics:\n"
           "μ_t = β1(1 − ½·0.96^(tψ)), with ψ = momentum_decay.";
  }
  const std::vector<HyperSpec>& hyper() const override {
    static const std::vector<HyperSpec> h{lr_spec(2e-3),   beta_spec("beta1", 0.9), beta_spec("beta2", 0.999),
                                          eps_spec(1e-8),  wd_spec(),               real_spec("momentum_decay", 4e-3)};
    return h;
  }
  const std::vector<ScalarSpec>& scalars() const override {
    static const std::vector<ScalarSpec> s{{"nadam_mu_product", 1.0, 0.0, 1.0}};
    return s;
  }
  std::vector<SlotSpec> slots(const HyperValues&) const override {
    return {{"exp_avg", 0.0, 0}, {"exp_avg_sq", 0.0, 1}};
  }
  void plan(const HyperValues& h, std::int64_t step, double* state, StepPlan& out) const override {
    const double t = static_cast<double>(step), lr = h[kLrH], b1 = h[kBeta1H], b2 = h[kBeta2H];
    const double psi = h[kMomentumDecayH];
    double& mu_product = state[0];
    const double mu = b1 * (1.0 - 0.5 * std::pow(0.96, t * psi));
    const double mu_next = b1 * (1.0 - 0.5 * std::pow(0.96, (t + 1.0) * psi));
    mu_product *= mu;
    const double prod_next = mu_product * mu_next;
    float* s = out.scalars;
    s[kWd] = static_cast<float>(h[kWeightDecayH]);
    s[kB1] = static_cast<float>(b1);
    s[kOmB1] = static_cast<float>(1.0 - b1);
    s[kB2] = static_cast<float>(b2);
    s[kOmB2] = static_cast<float>(1.0 - b2);
    s[kEps] = static_cast<float>(h[kEpsH]);
    s[kInvBc2] = static_cast<float>(1.0 / (1.0 - std::pow(b2, t)));
    s[kCg] = static_cast<float>(lr * (1.0 - mu) / (1.0 - mu_product));
    s[kCm] = static_cast<float>(lr * mu_next / (1.0 - prod_next));
    pick_both<NadamOp>(out);
  }
};

}  // namespace

const Policy& nadam_policy() {
  static const Nadam p;
  return p;
}

}  // namespace nerve
