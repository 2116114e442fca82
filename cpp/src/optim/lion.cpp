// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms",
// arXiv:2302.06675, Program 1), with the paper's decoupled weight decay:
//   c = b1*m + (1-b1)*g
//   p -= lr*(sign(c) + wd*p)        (computed as p*(1 - lr*wd) - lr*sign(c))
//   m = b2*m + (1-b2)*g
// sign(0) = 0 and NaN propagates, as torch.sign. Defaults lr=1e-4,
// betas=(0.9, 0.99), weight_decay=0 (the paper's; its lr is 3-10x below
// AdamW's, its weight decay 3-10x above, for the same lr*wd).
// Slots: exp_avg (the name lion-pytorch uses).
#include "kernel.hpp"

namespace nerve {
namespace {

enum Hyper : int { kLrH, kBeta1H, kBeta2H, kWeightDecayH };
enum Scalar : int { kLr, kDecayMult, kB1, kOmB1, kB2, kOmB2 };

template <bool WD>
struct LionOp {
  template <class T, class Q>
  static void apply(const Q& q, Index i, const Consts<T>& c) {
    const T p = load<T>(q.p + i), g = q.template grad<T>(i), m = load<T>(q.s0 + i);
    const T s = vsign(vfma(c[kB1], m, c[kOmB1] * g));
    store(q.s0 + i, vfma(c[kB2], m, c[kOmB2] * g));
    if constexpr (WD) store(q.p + i, vfms(p, c[kDecayMult], c[kLr] * s));  // p (1 - lr wd) - lr sign(c)
    else store(q.p + i, vfnma(c[kLr], s, p));
  }
};

class Lion final : public Policy {
 public:
  const char* name() const override { return "Lion"; }
  const char* doc() const override {
    return "Lion, EvoLved Sign Momentum (Chen et al., 2023, arXiv:2302.06675).\n\n"
           "c = β1m + (1−β1)g; θ ← θ − η(sign(c) + λθ); m ← β2m + (1−β2)g.\n"
           "Weight decay is decoupled, as in the paper. Every coordinate moves by ±η\n"
           "(the sign), so Lion wants a learning rate 3-10x smaller than AdamW's and a\n"
           "weight decay 3-10x larger.";
  }
  const std::vector<HyperSpec>& hyper() const override {
    static const std::vector<HyperSpec> h{lr_spec(1e-4), beta_spec("beta1", 0.9), beta_spec("beta2", 0.99), wd_spec()};
    return h;
  }
  std::vector<SlotSpec> slots(const HyperValues&) const override { return {{"exp_avg", 0.0, 0}}; }
  void plan(const HyperValues& h, std::int64_t, double*, StepPlan& out) const override {
    const double lr = h[kLrH], b1 = h[kBeta1H], b2 = h[kBeta2H];
    float* s = out.scalars;
    s[kLr] = static_cast<float>(lr);
    s[kDecayMult] = static_cast<float>(1.0 - lr * h[kWeightDecayH]);
    s[kB1] = static_cast<float>(b1);
    s[kOmB1] = static_cast<float>(1.0 - b1);
    s[kB2] = static_cast<float>(b2);
    s[kOmB2] = static_cast<float>(1.0 - b2);
    pick_both<LionOp>(out);
  }
};

}  // namespace

const Policy& lion_policy() {
  static const Lion p;
  return p;
}

}  // namespace nerve
