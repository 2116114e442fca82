// Adagrad (Duchi et al., JMLR 2011; torch.optim.Adagrad):
//   d = g + wd*p;  s += d^2;  p -= clr * d / (sqrt(s) + eps)
//   clr = lr / (1 + (t-1)*lr_decay)
// Slots: sum (starts at initial_accumulator_value).
#include "kernel.hpp"

namespace nerve {
namespace {

enum Hyper : int { kLrH, kLrDecayH, kWeightDecayH, kInitAccH, kEpsH };
enum Scalar : int { kClr, kWd, kEps };

template <bool WD>
struct AdagradOp {
  template <class T, class Q>
  static void apply(const Q& q, Index i, const Consts<T>& c) {
    T p = load<T>(q.p + i), d = q.template grad<T>(i);
    if constexpr (WD) d = vfma(c[kWd], p, d);
    const T acc = vfma(d, d, load<T>(q.s0 + i));
    store(q.s0 + i, acc);
    store(q.p + i, p - c[kClr] * d / (vsqrt(acc) + c[kEps]));
  }
};

class Adagrad final : public Policy {
 public:
  const char* name() const override { return "Adagrad"; }
  const char* doc() const override {
    return "AdaGrad (Duchi et al., 2011), torch.optim.Adagrad semantics.\n\n"
           "η_t = η / (1 + (t−1)·lr_decay); s ← s + g²; θ ← θ − η_t·g / (√s + ε).";
  }
  const std::vector<HyperSpec>& hyper() const override {
    static const std::vector<HyperSpec> h{lr_spec(1e-2), real_spec("lr_decay", 0.0), wd_spec(),
                                          real_spec("initial_accumulator_value", 0.0), eps_spec(1e-10)};
    return h;
  }
  std::vector<SlotSpec> slots(const HyperValues& h) const override { return {{"sum", h[kInitAccH], 0}}; }
  void plan(const HyperValues& h, std::int64_t t, double*, StepPlan& out) const override {
    float* s = out.scalars;
    s[kClr] = static_cast<float>(h[kLrH] / (1.0 + (static_cast<double>(t) - 1.0) * h[kLrDecayH]));
    s[kWd] = static_cast<float>(h[kWeightDecayH]);
    s[kEps] = static_cast<float>(h[kEpsH]);
    pick_both<AdagradOp>(out);
  }
};

}  // namespace

const Policy& adagrad_policy() {
  static const Adagrad p;
  return p;
}

}  // namespace nerve
