// RMSprop (Hinton, Coursera lecture 6e; Graves 2013 for `centered`;
// torch.optim.RMSprop):
//   d = g + wd*p;  v = a*v + (1-a)*d^2
//   centered: ga = a*ga + (1-a)*d;  den = sqrt(v - ga^2) + eps;  else sqrt(v) + eps
//   no momentum: p -= lr*d/den
//   momentum:    b = mu*b + d/den;  p -= lr*b
//   nesterov (a nerve extension, torch has none; as optax): u = d/den;
//                b = mu*b + u;  p -= lr*(u + mu*b)
// Slots: square_avg, momentum_buffer (momentum > 0), grad_avg (centered).
#include "kernel.hpp"

namespace nerve {
namespace {

enum Hyper : int { kLrH, kAlphaH, kEpsH, kWeightDecayH, kMomentumH, kCenteredH, kNesterovH };
enum Scalar : int { kLr, kWd, kA, kOmA, kEps, kMom };

template <bool WD, bool CENTERED, bool MOM, bool NEST>
struct RmspropOp {
  template <class T, class Q>
  static void apply(const Q& q, Index i, const Consts<T>& c) {
    T p = load<T>(q.p + i), d = q.template grad<T>(i);
    if constexpr (WD) d = vfma(c[kWd], p, d);
    const T v = vfma(c[kA], load<T>(q.s0 + i), c[kOmA] * d * d);
    store(q.s0 + i, v);
    T den;
    if constexpr (CENTERED) {
      const T ga = vfma(c[kA], load<T>(q.s2 + i), c[kOmA] * d);
      store(q.s2 + i, ga);
      den = vsqrt(vfnma(ga, ga, v)) + c[kEps];
    } else {
      den = vsqrt(v) + c[kEps];
    }
    const T u = d / den;
    if constexpr (!MOM) {
      store(q.p + i, vfnma(c[kLr], u, p));
    } else {
      const T b = vfma(c[kMom], load<T>(q.s1 + i), u);
      store(q.s1 + i, b);
      if constexpr (!NEST) store(q.p + i, vfnma(c[kLr], b, p));
      else store(q.p + i, vfnma(c[kLr], vfma(c[kMom], b, u), p));
    }
  }
};

class Rmsprop final : public Policy {
 public:
  const char* name() const override { return "RMSprop"; }
  const char* doc() const override {
    return "RMSProp (Hinton, 2012 lecture 6e), torch.optim.RMSprop semantics.\n\n"
           "v ← αv + (1−α)g²; (centered: ḡ ← αḡ + (1−α)g, v̂ = v − ḡ²); with momentum\n"
           "b ← μb + g/(√v̂ + ε), θ ← θ − ηb; without, θ ← θ − ηg/(√v̂ + ε).\n"
           "nesterov=True (as optax): u = g/(√v̂ + ε), b ← μb + u, θ ← θ − η(u + μb).";
  }
  const std::vector<HyperSpec>& hyper() const override {
    static const std::vector<HyperSpec> h = [] {
      HyperSpec mom = real_spec("momentum", 0.0);
      mom.layout = true;
      return std::vector<HyperSpec>{lr_spec(1e-2), real_spec("alpha", 0.99, 0.0, 1.0), eps_spec(1e-8), wd_spec(),
                                    mom, flag_spec("centered", false, true), flag_spec("nesterov", false)};
    }();
    return h;
  }
  std::vector<SlotSpec> slots(const HyperValues& h) const override {
    std::vector<SlotSpec> v{{"square_avg", 0.0, 0}};
    if (h[kMomentumH] > 0.0) v.push_back({"momentum_buffer", 0.0, 1});
    if (h.flag(kCenteredH)) v.push_back({"grad_avg", 0.0, 2});
    return v;
  }
  void validate(const HyperValues& h) const override {
    if (h.flag(kNesterovH))
      check_hyper(h[kMomentumH] > 0.0, "momentum", h[kMomentumH], "nesterov=True requires momentum > 0");
  }
  void plan(const HyperValues& h, std::int64_t, double*, StepPlan& out) const override {
    float* s = out.scalars;
    s[kLr] = static_cast<float>(h[kLrH]);
    s[kWd] = static_cast<float>(h[kWeightDecayH]);
    s[kA] = static_cast<float>(h[kAlphaH]);
    s[kOmA] = static_cast<float>(1.0 - h[kAlphaH]);
    s[kEps] = static_cast<float>(h[kEpsH]);
    s[kMom] = static_cast<float>(h[kMomentumH]);
    const bool mom = h[kMomentumH] > 0.0;
    pick_both<RmspropOp>(out, h.flag(kCenteredH), mom, mom && h.flag(kNesterovH));
  }
};

}  // namespace

const Policy& rmsprop_policy() {
  static const Rmsprop p;
  return p;
}

}  // namespace nerve
