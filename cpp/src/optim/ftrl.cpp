// FTRL-Proximal (McMahan et al., KDD 2013, Algorithm 1), exactly as
// keras.optimizers.Ftrl (keras/src/optimizers/ftrl.py):
//   gs = g + 2*l2_shrinkage*p;  n' = n + g^2
//   z += gs - (n'^-pow - n^-pow)/lr * p
//   p = (clip(z, -l1, l1) - z) / (n'^-pow/lr + 2*(l2 + beta/(2*lr)));  n = n'
// Keras doubles l2 in the quadratic term (the paper has lambda_2 there); we
// follow Keras. When |z| <= l1 the numerator is z - z == +0 exactly, so
// strong l1 gives exact zeros. The power is a square root for
// learning_rate_power == -0.5, 1 for 0, else pow per lane.
// Slots: accumulator (starts at initial_accumulator_value), linear.
#include "kernel.hpp"

namespace nerve {
namespace {

enum Hyper : int { kLrH, kPowerH, kInitAccH, kL1H, kL2H, kShrinkH, kBetaH };
enum Scalar : int { kInvLr, kL1, kNegL1, kQuadL2, kShrink2, kNegPow, kOne };

template <bool SQRT, bool GENERAL>
struct FtrlOp {
  template <class T, class Q>
  static void apply(const Q& q, Index i, const Consts<T>& c) {
    const T p = load<T>(q.p + i);
    const T g = q.template grad<T>(i);
    const T a0 = load<T>(q.s0 + i);
    const T a1 = vfma(g, g, a0);
    T pw0, pw1;
    if constexpr (SQRT) {
      pw0 = vsqrt(a0);
      pw1 = vsqrt(a1);
    } else if constexpr (!GENERAL) {
      pw0 = c[kOne];
      pw1 = c[kOne];
    } else {
      pw0 = vpow(a0, c.scalar(kNegPow));
      pw1 = vpow(a1, c.scalar(kNegPow));
    }
    const T z = vfnma((pw1 - pw0) * c[kInvLr], p, load<T>(q.s1 + i) + vfma(c[kShrink2], p, g));
    store(q.s1 + i, z);
    store(q.s0 + i, a1);
    const T zc = vmin(vmax(z, c[kNegL1]), c[kL1]);
    store(q.p + i, (zc - z) / vfma(pw1, c[kInvLr], c[kQuadL2]));
  }
};

class Ftrl final : public Policy {
 public:
  const char* name() const override { return "Ftrl"; }
  const char* doc() const override {
    return "FTRL-Proximal (McMahan et al., 2013) with Keras's semantics\n"
           "(tf.keras.optimizers.Ftrl): per-coordinate rates n^(−lr_power), L1 gives\n"
           "exact zeros, L2 enters the denominator as 2·l2 as in Keras.";
  }
  const std::vector<HyperSpec>& hyper() const override {
    static const std::vector<HyperSpec> h{
        real_spec("lr", 1e-3, 0.0, kInf, Bound::Open),  // FTRL divides by the learning rate
        real_spec("learning_rate_power", -0.5, -kInf, 0.0),
        real_spec("initial_accumulator_value", 0.1),
        real_spec("l1_regularization_strength", 0.0),
        real_spec("l2_regularization_strength", 0.0),
        real_spec("l2_shrinkage_regularization_strength", 0.0),
        real_spec("beta", 0.0)};
    return h;
  }
  std::vector<SlotSpec> slots(const HyperValues& h) const override {
    return {{"accumulator", h[kInitAccH], 0}, {"linear", 0.0, 1}};
  }
  void plan(const HyperValues& h, std::int64_t, double*, StepPlan& out) const override {
    const double lr = h[kLrH], power = h[kPowerH];
    float* s = out.scalars;
    s[kInvLr] = static_cast<float>(1.0 / lr);
    s[kL1] = static_cast<float>(h[kL1H]);
    s[kNegL1] = -s[kL1];
    s[kQuadL2] = static_cast<float>(2.0 * (h[kL2H] + h[kBetaH] / (2.0 * lr)));
    s[kShrink2] = static_cast<float>(2.0 * h[kShrinkH]);
    s[kNegPow] = static_cast<float>(-power);
    s[kOne] = 1.0f;
    const bool sqrt_pow = power == -0.5;
    // No weight decay (the l1/l2 terms regularize): one kernel for every span.
    out.plain = out.decayed = pick<FtrlOp>(sqrt_pow, !sqrt_pow && power != 0.0);
  }
};

}  // namespace

const Policy& ftrl_policy() {
  static const Ftrl p;
  return p;
}

}  // namespace nerve
