// Adadelta (Zeiler 2012, arXiv:1212.5701; torch.optim.Adadelta):
//   d = g + wd*p;  v = rho*v + (1-rho)*d^2
//   delta = sqrt(u + eps) / sqrt(v + eps) * d;  u = rho*u + (1-rho)*delta^2
//   p -= lr*delta
// Slots: square_avg, acc_delta.
#include "kernel.hpp"

namespace nerve {
namespace {

enum Hyper : int { kLrH, kRhoH, kEpsH, kWeightDecayH };
enum Scalar : int { kLr, kWd, kA, kOmA, kEps };

template <bool WD>
struct AdadeltaOp {
  template <class T, class Q>
  static void apply(const Q& q, Index i, const Consts<T>& c) {
    T p = load<T>(q.p + i), d = q.template grad<T>(i);
    if constexpr (WD) d = vfma(c[kWd], p, d);
    const T v = vfma(c[kA], load<T>(q.s0 + i), c[kOmA] * d * d);
    store(q.s0 + i, v);
    const T u = load<T>(q.s1 + i);
    const T delta = vsqrt(u + c[kEps]) / vsqrt(v + c[kEps]) * d;
    store(q.s1 + i, vfma(c[kA], u, c[kOmA] * delta * delta));
    store(q.p + i, vfnma(c[kLr], delta, p));
  }
};

class Adadelta final : public Policy {
 public:
  const char* name() const override { return "Adadelta"; }
  const char* doc() const override {
    return "AdaDelta (Zeiler, 2012), torch.optim.Adadelta semantics.\n\n"
           "v ← ρv + (1−ρ)g²; Δ = √(u + ε)/√(v + ε)·g; u ← ρu + (1−ρ)Δ²; θ ← θ − ηΔ.";
  }
  const std::vector<HyperSpec>& hyper() const override {
    static const std::vector<HyperSpec> h{lr_spec(1.0), real_spec("rho", 0.9, 0.0, 1.0), eps_spec(1e-6), wd_spec()};
    return h;
  }
  std::vector<SlotSpec> slots(const HyperValues&) const override {
    return {{"square_avg", 0.0, 0}, {"acc_delta", 0.0, 1}};
  }
  void plan(const HyperValues& h, std::int64_t, double*, StepPlan& out) const override {
    float* s = out.scalars;
    s[kLr] = static_cast<float>(h[kLrH]);
    s[kWd] = static_cast<float>(h[kWeightDecayH]);
    s[kA] = static_cast<float>(h[kRhoH]);
    s[kOmA] = static_cast<float>(1.0 - h[kRhoH]);
    s[kEps] = static_cast<float>(h[kEpsH]);
    pick_both<AdadeltaOp>(out);
  }
};

}  // namespace

const Policy& adadelta_policy() {
  static const Adadelta p;
  return p;
}

}  // namespace nerve
