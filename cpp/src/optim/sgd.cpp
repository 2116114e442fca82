// SGD with momentum (Polyak 1964; Sutskever et al., ICML 2013 for Nesterov;
// torch.optim.SGD):
//   d = g + wd*p;  b = first step ? d : mu*b + (1-dampening)*d
//   d = nesterov ? d + mu*b : b;  p -= lr*d
// Slots: momentum_buffer (with momentum > 0).
#include "kernel.hpp"

namespace nerve {
namespace {

enum Hyper : int { kLrH, kMomentumH, kDampeningH, kNesterovH, kWeightDecayH };
enum Scalar : int { kLr, kWd, kMom, kDampC };

template <bool WD, bool MOM, bool NEST, bool FIRST>
struct SgdOp {
  template <class T, class Q>
  static void apply(const Q& q, Index i, const Consts<T>& c) {
    T p = load<T>(q.p + i), d = q.template grad<T>(i);
    if constexpr (WD) d = vfma(c[kWd], p, d);
    if constexpr (MOM) {
      T b;
      if constexpr (FIRST) b = d;
      else b = vfma(c[kMom], load<T>(q.s0 + i), c[kDampC] * d);
      store(q.s0 + i, b);
      if constexpr (NEST) d = vfma(c[kMom], b, d);
      else d = b;
    }
    store(q.p + i, vfnma(c[kLr], d, p));
  }
};

class Sgd final : public Policy {
 public:
  const char* name() const override { return "SGD"; }
  const char* doc() const override {
    return "Stochastic gradient descent with momentum (PyTorch semantics).\n\n"
           "g ← g + λθ; b ← μb + (1−τ)g (b = g at the first step); g ← g + μb if\n"
           "nesterov else b; θ ← θ − ηg. References: Polyak (1964); Sutskever et al.\n"
           "(2013) for Nesterov momentum; torch.optim.SGD.";
  }
  const std::vector<HyperSpec>& hyper() const override {
    static const std::vector<HyperSpec> h = [] {
      HyperSpec mom = real_spec("momentum", 0.0);
      mom.layout = true;
      return std::vector<HyperSpec>{lr_spec(1e-2), mom, real_spec("dampening", 0.0, -kInf),
                                    flag_spec("nesterov", false), wd_spec()};
    }();
    return h;
  }
  std::vector<SlotSpec> slots(const HyperValues& h) const override {
    if (h[kMomentumH] > 0.0) return {{"momentum_buffer", 0.0, 0}};
    return {};
  }
  void validate(const HyperValues& h) const override {
    if (h.flag(kNesterovH)) {
      check_hyper(h[kMomentumH] > 0.0, "momentum", h[kMomentumH], "nesterov=True requires momentum > 0");
      check_hyper(h[kDampeningH] == 0.0, "dampening", h[kDampeningH], "nesterov=True requires dampening == 0");
    }
  }
  void plan(const HyperValues& h, std::int64_t t, double*, StepPlan& out) const override {
    float* s = out.scalars;
    s[kLr] = static_cast<float>(h[kLrH]);
    s[kWd] = static_cast<float>(h[kWeightDecayH]);
    s[kMom] = static_cast<float>(h[kMomentumH]);
    s[kDampC] = static_cast<float>(1.0 - h[kDampeningH]);
    const bool mom = h[kMomentumH] > 0.0;
    pick_both<SgdOp>(out, mom, mom && h.flag(kNesterovH), mom && t == 1);
  }
};

}  // namespace

const Policy& sgd_policy() {
  static const Sgd p;
  return p;
}

}  // namespace nerve
