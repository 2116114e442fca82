// Standalone test of cpp/src/optimizer.cpp. Every optimizer runs 60 steps on
// three spans (sizes 1, 7 and 1000; the 7-span has decay=false) under a
// deterministic gradient sequence, and parameters and state slots are compared
// with an independent scalar double-precision reference written from the
// PyTorch docs' pseudo-code (Keras' ftrl.py for FTRL). Also: clipping, FTRL's
// exact zeros, validate_hyper, the step counter, allocation-free steps and
// thread-count invariance. Exit status is non-zero on any failure.
//
//   opt_test            run all checks
//   opt_test --list     list the comparison configurations
//   opt_test --dump K   print configuration K's final parameters (one per
//                       line) so a script can compare them with torch.optim
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <new>
#include <string>
#include <vector>

#include "nerve/optimizer.hpp"
#include "nerve/parallel.hpp"

// GCC cannot see that this operator new and operator delete pair up.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
// Counts operator new calls while armed, to show that step() allocates nothing.
static bool g_count_new = false;
static long g_new_calls = 0;
void* operator new(std::size_t n) {
  if (g_count_new) ++g_new_calls;
  void* p = std::malloc(n ? n : 1);
  if (!p) throw std::bad_alloc();
  return p;
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

using namespace nerve;

// ---------------------------------------------------------------------------
// The configurations are described by one flat struct that the scalar
// reference reads (the test's own vocabulary, fields named as the old
// OptHyper); hyper_of() turns one into the named hyper-parameters of the
// optimizer's policy (cpp/src/optim/), unvalidated, so that validation can be
// tested through the library's own checks.
enum class OptKind : int { SGD, Adagrad, RMSprop, Adadelta, Adam, AdamW, Adamax, NAdam, Ftrl };
struct OptHyper {
  double lr = 1e-3, weight_decay = 0.0, momentum = 0.0, dampening = 0.0;
  bool nesterov = false;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  bool amsgrad = false;
  double momentum_decay = 4e-3, lr_decay = 0.0, initial_accumulator_value = 0.0;
  double alpha = 0.99;  // RMSprop alpha, Adadelta rho
  bool centered = false;
  double learning_rate_power = -0.5, ftrl_initial_accumulator = 0.1, l1 = 0.0, l2 = 0.0, l2_shrinkage = 0.0,
         ftrl_beta = 0.0;
  double clipvalue = 0.0, clipnorm = 0.0, global_clipnorm = 0.0;
};

static const char* kind_name(OptKind k) {
  static const char* names[] = {"SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "Adamax", "NAdam", "Ftrl"};
  return names[static_cast<int>(k)];
}

static HyperValues hyper_of(OptKind k, const OptHyper& h) {
  const Policy& pol = optimizer_policy(kind_name(k));
  const std::vector<std::pair<const char*, double>> all = {
      {"lr", h.lr}, {"weight_decay", h.weight_decay}, {"momentum", h.momentum}, {"dampening", h.dampening},
      {"nesterov", h.nesterov ? 1.0 : 0.0}, {"beta1", h.beta1}, {"beta2", h.beta2}, {"eps", h.eps},
      {"amsgrad", h.amsgrad ? 1.0 : 0.0}, {"momentum_decay", h.momentum_decay}, {"lr_decay", h.lr_decay},
      {"initial_accumulator_value", k == OptKind::Ftrl ? h.ftrl_initial_accumulator : h.initial_accumulator_value},
      {"alpha", h.alpha}, {"rho", h.alpha}, {"centered", h.centered ? 1.0 : 0.0},
      {"learning_rate_power", h.learning_rate_power}, {"l1_regularization_strength", h.l1},
      {"l2_regularization_strength", h.l2}, {"l2_shrinkage_regularization_strength", h.l2_shrinkage},
      {"beta", h.ftrl_beta}};
  HyperValues v;
  v.policy = &pol;
  for (const HyperSpec& s : pol.hyper()) v.v.push_back(s.default_value);
  for (const auto& kv : all) {
    const int i = pol.index_of(kv.first);
    if (i >= 0) v.v[static_cast<std::size_t>(i)] = kv.second;
  }
  return v;
}
static Clipping clip_of(const OptHyper& h) { return Clipping{h.clipvalue, h.clipnorm, h.global_clipnorm}; }

struct TestOptimizer : Optimizer {
  TestOptimizer(OptKind k, const OptHyper& h) : Optimizer(hyper_of(k, h), clip_of(h)) {}
};
// Validation is the library's: constructing an optimizer validates everything.
static void validate_hyper(OptKind k, const OptHyper& h) { TestOptimizer o(k, h); }
static std::vector<std::string> state_slot_names(OptKind k, const OptHyper& h) {
  std::vector<std::string> names;
  const HyperValues v = hyper_of(k, h);
  for (const SlotSpec& s : v.policy->slots(v)) names.push_back(s.name);
  return names;
}

static int g_failures = 0;
#define CHECK(cond, ...)                                           \
  do {                                                             \
    if (!(cond)) {                                                 \
      ++g_failures;                                                \
      std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      std::printf(__VA_ARGS__);                                    \
      std::printf("\n");                                           \
    }                                                              \
  } while (0)

// ---------------------------------------------------------------------------
// Deterministic noise in [-1, 1): splitmix64 of (step, span, index). 24-bit
// mantissa so the value is exact in float and double (and in Python).
static double noise(std::uint64_t t, std::uint64_t span, std::uint64_t i) {
  std::uint64_t x = (t << 40) ^ (span << 32) ^ i ^ 0x9E3779B97F4A7C15ull;
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  x ^= x >> 31;
  return static_cast<double>(x >> 40) * (2.0 / 16777216.0) - 1.0;
}
static const double kSpanGradScale[3] = {1.0, 0.5, 0.05};
// g = scale*noise + 0.3*p: a noisy quadratic, so weight decay and p interact.
static double grad_of(int t, int span, Index i, double p) {
  return kSpanGradScale[span] * noise(static_cast<std::uint64_t>(t), static_cast<std::uint64_t>(span),
                                      static_cast<std::uint64_t>(i)) +
         0.3 * p;
}
static double init_of(int span, Index i) { return 0.5 * noise(0x7777, static_cast<std::uint64_t>(span), i); }

// ---------------------------------------------------------------------------
// Scalar double reference, written from the PyTorch docs' algorithm boxes.
struct RefOpt {
  OptKind kind;
  OptHyper h;
  std::vector<std::vector<double>> p;
  std::vector<bool> decay;
  std::map<std::string, std::vector<std::vector<double>>> st;
  int t = 0;
  double mu_prod = 1.0;

  RefOpt(OptKind k, const OptHyper& hh, const std::vector<Index>& sizes, const std::vector<bool>& dec)
      : kind(k), h(hh), decay(dec) {
    for (std::size_t s = 0; s < sizes.size(); ++s) {
      p.emplace_back(sizes[s]);
      for (Index i = 0; i < sizes[s]; ++i) p[s][i] = init_of(static_cast<int>(s), i);
    }
    auto slot = [&](const char* name, double v) {
      auto& x = st[name];
      for (Index n : sizes) x.emplace_back(n, v);
    };
    switch (kind) {
      case OptKind::SGD: if (h.momentum > 0) slot("momentum_buffer", 0); break;
      case OptKind::Adagrad: slot("sum", h.initial_accumulator_value); break;
      case OptKind::RMSprop:
        slot("square_avg", 0);
        if (h.momentum > 0) slot("momentum_buffer", 0);
        if (h.centered) slot("grad_avg", 0);
        break;
      case OptKind::Adadelta: slot("square_avg", 0); slot("acc_delta", 0); break;
      case OptKind::Adam: case OptKind::AdamW:
        slot("exp_avg", 0); slot("exp_avg_sq", 0);
        if (h.amsgrad) slot("max_exp_avg_sq", 0);
        break;
      case OptKind::Adamax: slot("exp_avg", 0); slot("exp_inf", 0); break;
      case OptKind::NAdam: slot("exp_avg", 0); slot("exp_avg_sq", 0); break;
      case OptKind::Ftrl: slot("accumulator", h.ftrl_initial_accumulator); slot("linear", 0); break;
    }
  }

  void clip(std::vector<std::vector<double>>& g) const {
    if (h.clipvalue > 0)
      for (auto& v : g) for (double& x : v) x = std::min(std::max(x, -h.clipvalue), h.clipvalue);
    if (h.clipnorm > 0)
      for (auto& v : g) {
        double sq = 0;
        for (double x : v) sq += x * x;
        double nrm = std::sqrt(sq);
        if (nrm > h.clipnorm) for (double& x : v) x *= h.clipnorm / nrm;
      }
    if (h.global_clipnorm > 0) {
      double sq = 0;
      for (auto& v : g) for (double x : v) sq += x * x;
      double nrm = std::sqrt(sq);
      if (nrm > h.global_clipnorm) for (auto& v : g) for (double& x : v) x *= h.global_clipnorm / nrm;
    }
  }

  void step(std::vector<std::vector<double>> g) {
    clip(g);
    ++t;
    const double lr = h.lr;
    double mu = 0, mu_next = 0;
    if (kind == OptKind::NAdam) {
      mu = h.beta1 * (1 - 0.5 * std::pow(0.96, t * h.momentum_decay));
      mu_next = h.beta1 * (1 - 0.5 * std::pow(0.96, (t + 1) * h.momentum_decay));
      mu_prod *= mu;
    }
    for (std::size_t s = 0; s < p.size(); ++s) {
      const double wd = decay[s] ? h.weight_decay : 0.0;
      for (std::size_t i = 0; i < p[s].size(); ++i) {
        double& th = p[s][i];
        double gi = g[s][i];
        auto S = [&](const char* name) -> double& { return st.at(name)[s][i]; };
        switch (kind) {
          case OptKind::SGD: {
            if (wd != 0) gi += wd * th;
            if (h.momentum != 0) {
              double& b = S("momentum_buffer");
              b = t > 1 ? h.momentum * b + (1 - h.dampening) * gi : gi;
              gi = h.nesterov ? gi + h.momentum * b : b;
            }
            th -= lr * gi;
            break;
          }
          case OptKind::Adagrad: {
            if (wd != 0) gi += wd * th;
            double clr = lr / (1 + (t - 1) * h.lr_decay);
            double& sm = S("sum");
            sm += gi * gi;
            th -= clr * gi / (std::sqrt(sm) + h.eps);
            break;
          }
          case OptKind::RMSprop: {
            if (wd != 0) gi += wd * th;
            double& v = S("square_avg");
            v = h.alpha * v + (1 - h.alpha) * gi * gi;
            double vt = v;
            if (h.centered) {
              double& ga = S("grad_avg");
              ga = h.alpha * ga + (1 - h.alpha) * gi;
              vt = v - ga * ga;
            }
            double den = std::sqrt(vt) + h.eps;
            if (h.momentum > 0) {
              double& b = S("momentum_buffer");
              b = h.momentum * b + gi / den;
              th -= h.nesterov ? lr * (gi / den + h.momentum * b) : lr * b;
            } else {
              th -= lr * gi / den;
            }
            break;
          }
          case OptKind::Adadelta: {
            const double rho = h.alpha;
            if (wd != 0) gi += wd * th;
            double& v = S("square_avg");
            double& u = S("acc_delta");
            v = rho * v + (1 - rho) * gi * gi;
            double dx = std::sqrt(u + h.eps) / std::sqrt(v + h.eps) * gi;
            u = rho * u + (1 - rho) * dx * dx;
            th -= lr * dx;
            break;
          }
          case OptKind::Adam:
          case OptKind::AdamW: {
            if (kind == OptKind::AdamW) th *= 1 - lr * wd;
            else if (wd != 0) gi += wd * th;
            double& m = S("exp_avg");
            double& v = S("exp_avg_sq");
            m = h.beta1 * m + (1 - h.beta1) * gi;
            v = h.beta2 * v + (1 - h.beta2) * gi * gi;
            double bc1 = 1 - std::pow(h.beta1, t), bc2 = 1 - std::pow(h.beta2, t);
            double vv = v;
            if (h.amsgrad) {
              double& vm = S("max_exp_avg_sq");
              vm = std::max(vm, v);
              vv = vm;
            }
            th -= lr / bc1 * m / (std::sqrt(vv) / std::sqrt(bc2) + h.eps);
            break;
          }
          case OptKind::Adamax: {
            if (wd != 0) gi += wd * th;
            double& m = S("exp_avg");
            double& u = S("exp_inf");
            m = h.beta1 * m + (1 - h.beta1) * gi;
            u = std::max(h.beta2 * u, std::fabs(gi) + h.eps);
            th -= lr / (1 - std::pow(h.beta1, t)) * m / u;
            break;
          }
          case OptKind::NAdam: {
            if (wd != 0) gi += wd * th;
            double& m = S("exp_avg");
            double& v = S("exp_avg_sq");
            m = h.beta1 * m + (1 - h.beta1) * gi;
            v = h.beta2 * v + (1 - h.beta2) * gi * gi;
            double vhat = v / (1 - std::pow(h.beta2, t));
            double den = std::sqrt(vhat) + h.eps;
            th -= lr * (1 - mu) / (1 - mu_prod) * gi / den + lr * mu_next / (1 - mu_prod * mu_next) * m / den;
            break;
          }
          case OptKind::Ftrl: {
            if (wd != 0) th -= th * wd * lr;  // Keras' decoupled decay
            double& n = S("accumulator");
            double& z = S("linear");
            double l2r = h.l2 + h.ftrl_beta / (2 * lr);
            double gs = gi + 2 * h.l2_shrinkage * th;
            double nn = n + gi * gi;
            z += gs - (std::pow(nn, -h.learning_rate_power) - std::pow(n, -h.learning_rate_power)) / lr * th;
            double quad = std::pow(nn, -h.learning_rate_power) / lr + 2 * l2r;
            double zc = std::min(std::max(z, -h.l1), h.l1);
            th = (zc - z) / quad;
            n = nn;
            break;
          }
        }
      }
    }
  }
};

// ---------------------------------------------------------------------------
struct Config {
  std::string name;
  OptKind kind;
  OptHyper h;
};

static OptHyper H(std::function<void(OptHyper&)> f) {
  OptHyper h;
  f(h);
  return h;
}

static std::vector<Config> configs() {
  std::vector<Config> c;
  c.push_back({"sgd", OptKind::SGD, H([](OptHyper& h) { h.lr = 0.05; })});
  c.push_back({"sgd_mom", OptKind::SGD, H([](OptHyper& h) { h.lr = 0.05; h.momentum = 0.9; })});
  c.push_back({"sgd_mom_damp_wd", OptKind::SGD,
               H([](OptHyper& h) { h.lr = 0.05; h.momentum = 0.9; h.dampening = 0.1; h.weight_decay = 0.01; })});
  c.push_back({"sgd_nesterov_wd", OptKind::SGD,
               H([](OptHyper& h) { h.lr = 0.05; h.momentum = 0.9; h.nesterov = true; h.weight_decay = 0.01; })});
  c.push_back({"adagrad", OptKind::Adagrad, H([](OptHyper& h) { h.lr = 0.05; h.eps = 1e-10; })});
  c.push_back({"adagrad_decay_wd_init", OptKind::Adagrad, H([](OptHyper& h) {
                 h.lr = 0.05; h.eps = 1e-10; h.lr_decay = 0.01; h.weight_decay = 0.01;
                 h.initial_accumulator_value = 0.1; })});
  c.push_back({"rmsprop", OptKind::RMSprop, H([](OptHyper& h) { h.lr = 0.01; })});
  c.push_back({"rmsprop_mom", OptKind::RMSprop, H([](OptHyper& h) { h.lr = 0.01; h.momentum = 0.9; })});
  c.push_back({"rmsprop_centered", OptKind::RMSprop, H([](OptHyper& h) { h.lr = 0.01; h.centered = true; })});
  c.push_back({"rmsprop_centered_mom_wd", OptKind::RMSprop, H([](OptHyper& h) {
                 h.lr = 0.01; h.centered = true; h.momentum = 0.9; h.weight_decay = 0.01; h.alpha = 0.9; })});
  c.push_back({"rmsprop_nesterov_centered", OptKind::RMSprop, H([](OptHyper& h) {
                 h.lr = 0.01; h.centered = true; h.momentum = 0.5; h.nesterov = true; })});
  c.push_back({"adadelta", OptKind::Adadelta, H([](OptHyper& h) { h.lr = 1.0; h.alpha = 0.9; h.eps = 1e-6; })});
  c.push_back({"adadelta_wd", OptKind::Adadelta,
               H([](OptHyper& h) { h.lr = 0.5; h.alpha = 0.95; h.eps = 1e-6; h.weight_decay = 0.01; })});
  c.push_back({"adam", OptKind::Adam, H([](OptHyper& h) { h.lr = 0.01; })});
  c.push_back({"adam_amsgrad_wd", OptKind::Adam,
               H([](OptHyper& h) { h.lr = 0.01; h.amsgrad = true; h.weight_decay = 0.01; h.beta1 = 0.8; })});
  c.push_back({"adamw", OptKind::AdamW, H([](OptHyper& h) { h.lr = 0.01; h.weight_decay = 0.01; })});
  c.push_back({"adamw_amsgrad", OptKind::AdamW,
               H([](OptHyper& h) { h.lr = 0.01; h.weight_decay = 0.1; h.amsgrad = true; h.beta2 = 0.99; })});
  c.push_back({"adamax", OptKind::Adamax, H([](OptHyper& h) { h.lr = 0.002; })});
  c.push_back({"adamax_wd", OptKind::Adamax, H([](OptHyper& h) { h.lr = 0.01; h.weight_decay = 0.01; })});
  c.push_back({"nadam", OptKind::NAdam, H([](OptHyper& h) { h.lr = 0.002; })});
  c.push_back({"nadam_wd", OptKind::NAdam,
               H([](OptHyper& h) { h.lr = 0.01; h.weight_decay = 0.01; h.momentum_decay = 0.01; })});
  c.push_back({"ftrl", OptKind::Ftrl, H([](OptHyper& h) { h.lr = 0.1; })});
  c.push_back({"ftrl_l1_l2_shrink_beta", OptKind::Ftrl, H([](OptHyper& h) {
                 h.lr = 0.1; h.l1 = 0.01; h.l2 = 0.01; h.l2_shrinkage = 0.01; h.ftrl_beta = 0.1; })});
  c.push_back({"ftrl_pow_general", OptKind::Ftrl, H([](OptHyper& h) {
                 h.lr = 0.1; h.learning_rate_power = -0.3; h.l1 = 0.001; })});
  c.push_back({"ftrl_pow0", OptKind::Ftrl,
               H([](OptHyper& h) { h.lr = 0.1; h.learning_rate_power = 0.0; h.ftrl_initial_accumulator = 0.0; })});
  c.push_back({"adam_clipvalue", OptKind::Adam, H([](OptHyper& h) { h.lr = 0.01; h.clipvalue = 0.3; })});
  c.push_back({"sgd_clipnorm", OptKind::SGD, H([](OptHyper& h) { h.lr = 0.05; h.momentum = 0.9; h.clipnorm = 1.0; })});
  c.push_back({"rmsprop_global_clipnorm", OptKind::RMSprop,
               H([](OptHyper& h) { h.lr = 0.01; h.global_clipnorm = 2.0; })});
  c.push_back({"nadam_all_clips", OptKind::NAdam, H([](OptHyper& h) {
                 h.lr = 0.01; h.clipvalue = 0.8; h.clipnorm = 3.0; h.global_clipnorm = 4.0; })});
  return c;
}

static const std::vector<Index> kSizes = {1, 7, 1000};
static const std::vector<bool> kDecay = {true, false, true};
constexpr int kSteps = 60;
constexpr int kLrChangeAt = 30;  // lr halves before this step

struct Run {
  std::vector<std::vector<float>> p, g;
  TestOptimizer opt;
  Run(const Config& c) : opt(c.kind, c.h) {
    std::vector<ParamSpan> spans;
    for (std::size_t s = 0; s < kSizes.size(); ++s) {
      p.emplace_back(kSizes[s]);
      g.emplace_back(kSizes[s]);
      for (Index i = 0; i < kSizes[s]; ++i) p[s][i] = static_cast<float>(init_of(static_cast<int>(s), i));
    }
    for (std::size_t s = 0; s < kSizes.size(); ++s) spans.push_back({p[s].data(), g[s].data(), kSizes[s], kDecay[s]});
    opt.bind(spans);
  }
  void step(int t) {
    for (std::size_t s = 0; s < p.size(); ++s)
      for (std::size_t i = 0; i < p[s].size(); ++i)
        g[s][i] = static_cast<float>(grad_of(t, static_cast<int>(s), static_cast<Index>(i), p[s][i]));
    opt.step();
  }
};

static void compare_config(const Config& c) {
  Run run(c);
  RefOpt ref(c.kind, c.h, kSizes, kDecay);
  double worst = 0;
  for (int t = 1; t <= kSteps; ++t) {
    if (t == kLrChangeAt) {
      run.opt.set_lr(c.h.lr * 0.5);
      ref.h.lr = c.h.lr * 0.5;
    }
    run.step(t);
    std::vector<std::vector<double>> g(kSizes.size());
    for (std::size_t s = 0; s < kSizes.size(); ++s)
      for (Index i = 0; i < kSizes[s]; ++i) g[s].push_back(grad_of(t, static_cast<int>(s), i, ref.p[s][i]));
    ref.step(g);
  }
  // |a - b| <= rtol*(|b| + floor): a relative test, with a floor at the scale
  // of the values so that entries that pass near zero do not dominate.
  auto cmp = [&](double a, double b, double floor) {
    double e = std::fabs(a - b) / (std::fabs(b) + floor);
    if (!(e <= worst)) worst = e;
    return e;
  };
  const double rtol = 1e-5;
  int bad = 0;
  for (std::size_t s = 0; s < kSizes.size(); ++s)
    for (Index i = 0; i < kSizes[s]; ++i) {
      double e = cmp(run.p[s][i], ref.p[s][i], 1e-2);
      if (!(e <= rtol) && bad++ < 3)
        std::printf("  %s p[%zu][%td] = %.9g, reference %.9g\n", c.name.c_str(), s, i, run.p[s][i], ref.p[s][i]);
    }
  // State slots by name, in the concatenated layout. Momentum-like slots sum
  // terms of both signs, so their floor is a tenth of the slot's largest
  // magnitude.
  CHECK(run.opt.slot_names.size() == ref.st.size(), "%s: %zu slots, reference %zu", c.name.c_str(),
        run.opt.slot_names.size(), ref.st.size());
  for (std::size_t k = 0; k < run.opt.slot_names.size(); ++k) {
    const std::string& nm = run.opt.slot_names[k];
    auto it = ref.st.find(nm);
    CHECK(it != ref.st.end(), "%s: unexpected slot %s", c.name.c_str(), nm.c_str());
    if (it == ref.st.end()) continue;
    double mx = 1e-30;
    for (auto& v : it->second) for (double x : v) mx = std::max(mx, std::fabs(x));
    Index off = 0;
    for (std::size_t s = 0; s < kSizes.size(); ++s)
      for (Index i = 0; i < kSizes[s]; ++i, ++off) {
        double e = cmp(run.opt.slots[k].data()[off], it->second[s][i], 0.1 * mx);
        if (!(e <= rtol) && bad++ < 6)
          std::printf("  %s %s[%zu][%td] = %.9g, reference %.9g\n", c.name.c_str(), nm.c_str(), s, i,
                      run.opt.slots[k].data()[off], it->second[s][i]);
      }
  }
  CHECK(run.opt.iterations == kSteps, "%s: iterations %lld", c.name.c_str(), (long long)run.opt.iterations);
  CHECK(bad == 0, "%s: %d entries beyond rtol %.0e (worst %.3g)", c.name.c_str(), bad, rtol, worst);
  std::printf("  %-28s worst rel err %.2e\n", c.name.c_str(), worst);
}

// ---------------------------------------------------------------------------
static void test_slot_names() {
  OptHyper h;
  auto eq = [](const std::vector<std::string>& a, std::vector<std::string> b) { return a == b; };
  CHECK(eq(state_slot_names(OptKind::Adam, h), {"exp_avg", "exp_avg_sq"}), "Adam");
  h.amsgrad = true;
  CHECK(eq(state_slot_names(OptKind::AdamW, h), {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}), "AdamW amsgrad");
  CHECK(state_slot_names(OptKind::SGD, h).empty(), "SGD without momentum");
  h.momentum = 0.9;
  CHECK(eq(state_slot_names(OptKind::SGD, h), {"momentum_buffer"}), "SGD momentum");
  CHECK(eq(state_slot_names(OptKind::RMSprop, h), {"square_avg", "momentum_buffer"}), "RMSprop momentum");
  h.centered = true;
  CHECK(eq(state_slot_names(OptKind::RMSprop, h), {"square_avg", "momentum_buffer", "grad_avg"}), "RMSprop");
  h.momentum = 0;
  CHECK(eq(state_slot_names(OptKind::RMSprop, h), {"square_avg", "grad_avg"}), "RMSprop centered");
  CHECK(eq(state_slot_names(OptKind::Adagrad, h), {"sum"}), "Adagrad");
  CHECK(eq(state_slot_names(OptKind::Adadelta, h), {"square_avg", "acc_delta"}), "Adadelta");
  CHECK(eq(state_slot_names(OptKind::Adamax, h), {"exp_avg", "exp_inf"}), "Adamax");
  CHECK(eq(state_slot_names(OptKind::NAdam, h), {"exp_avg", "exp_avg_sq"}), "NAdam");
  CHECK(eq(state_slot_names(OptKind::Ftrl, h), {"accumulator", "linear"}), "Ftrl");
}

static void expect_error(OptKind k, std::function<void(OptHyper&)> f, const char* param, const char* value) {
  OptHyper h;
  f(h);
  bool threw = false;
  std::string msg;
  try {
    validate_hyper(k, h);
  } catch (const ValueError& e) {
    threw = true;
    msg = e.what();
  }
  CHECK(threw, "expected ValueError for %s=%s", param, value);
  if (threw)
    CHECK(msg.find(param) != std::string::npos && msg.find(value) != std::string::npos,
          "message should name %s and %s: %s", param, value, msg.c_str());
  // The constructor validates too.
  bool ctor_threw = false;
  try {
    TestOptimizer o(k, h);
  } catch (const ValueError&) {
    ctor_threw = true;
  }
  CHECK(ctor_threw, "constructor accepted %s=%s", param, value);
}

static void test_validate() {
  expect_error(OptKind::Adam, [](OptHyper& h) { h.lr = -0.1; }, "lr", "-0.1");
  expect_error(OptKind::Adam, [](OptHyper& h) { h.eps = -1e-8; }, "eps", "-1e-08");
  expect_error(OptKind::Adam, [](OptHyper& h) { h.beta1 = 1.0; }, "beta1", "1");
  expect_error(OptKind::NAdam, [](OptHyper& h) { h.beta2 = -0.5; }, "beta2", "-0.5");
  expect_error(OptKind::SGD, [](OptHyper& h) { h.momentum = -0.9; }, "momentum", "-0.9");
  expect_error(OptKind::SGD, [](OptHyper& h) { h.nesterov = true; }, "momentum", "0");
  expect_error(OptKind::SGD, [](OptHyper& h) { h.nesterov = true; h.momentum = 0.9; h.dampening = 0.1; },
               "dampening", "0.1");
  expect_error(OptKind::RMSprop, [](OptHyper& h) { h.nesterov = true; }, "momentum", "0");
  expect_error(OptKind::RMSprop, [](OptHyper& h) { h.alpha = 1.5; }, "alpha", "1.5");
  expect_error(OptKind::Adadelta, [](OptHyper& h) { h.alpha = -0.1; }, "rho", "-0.1");
  expect_error(OptKind::AdamW, [](OptHyper& h) { h.weight_decay = -0.01; }, "weight_decay", "-0.01");
  expect_error(OptKind::Adagrad, [](OptHyper& h) { h.lr_decay = -1; }, "lr_decay", "-1");
  expect_error(OptKind::Adagrad, [](OptHyper& h) { h.initial_accumulator_value = -0.5; },
               "initial_accumulator_value", "-0.5");
  expect_error(OptKind::Ftrl, [](OptHyper& h) { h.ftrl_initial_accumulator = -0.5; }, "initial_accumulator_value",
               "-0.5");
  expect_error(OptKind::Ftrl, [](OptHyper& h) { h.learning_rate_power = 0.5; }, "learning_rate_power", "0.5");
  expect_error(OptKind::Ftrl, [](OptHyper& h) { h.l1 = -1; }, "l1", "-1");
  expect_error(OptKind::Ftrl, [](OptHyper& h) { h.l2 = -2; }, "l2", "-2");
  expect_error(OptKind::Ftrl, [](OptHyper& h) { h.l2_shrinkage = -3; }, "l2_shrinkage", "-3");
  expect_error(OptKind::Ftrl, [](OptHyper& h) { h.lr = 0; }, "lr", "0");
  expect_error(OptKind::Adam, [](OptHyper& h) { h.clipvalue = -1; }, "clipvalue", "-1");
  expect_error(OptKind::Adam, [](OptHyper& h) { h.clipnorm = -1; }, "clipnorm", "-1");
  expect_error(OptKind::Adam, [](OptHyper& h) { h.global_clipnorm = -1; }, "global_clipnorm", "-1");
  expect_error(OptKind::Adam, [](OptHyper& h) { h.lr = std::nan(""); }, "lr", "nan");
  // Fields a kind does not use are ignored.
  OptHyper h;
  h.beta1 = 5;
  h.alpha = 7;
  bool threw = false;
  try {
    validate_hyper(OptKind::SGD, h);
  } catch (const ValueError&) {
    threw = true;
  }
  CHECK(!threw, "SGD should ignore betas and alpha");

  // set_lr checks; step() refuses a slot layout that changed since bind().
  std::vector<float> p(4, 1.0f), g(4, 0.5f);
  TestOptimizer o(OptKind::SGD, H([](OptHyper& x) { x.lr = 0.1; }));
  threw = false;
  try {
    o.step();
  } catch (const ValueError&) {
    threw = true;
  }
  CHECK(threw, "step before bind");
  o.bind({{p.data(), g.data(), 4, true}});
  threw = false;
  try {
    o.set_lr(-1);
  } catch (const ValueError&) {
    threw = true;
  }
  CHECK(threw && o.lr() == 0.1, "set_lr(-1)");
  o.set("momentum", 0.9);
  threw = false;
  try {
    o.step();
  } catch (const ValueError&) {
    threw = true;
  }
  CHECK(threw && o.iterations == 0 && p[0] == 1.0f, "momentum changed after bind must throw before touching state");
}

static void test_iterations_and_reset() {
  std::vector<float> p(10, 1.0f), g(10, 0.5f);
  TestOptimizer o(OptKind::NAdam, OptHyper{});
  o.bind({{p.data(), g.data(), 10, true}});
  for (int i = 1; i <= 5; ++i) {
    o.step();
    CHECK(o.iterations == i, "iterations %lld after %d steps", (long long)o.iterations, i);
  }
  CHECK(o.scalar_state[0] < 1.0, "mu product advances");
  o.reset_state();
  CHECK(o.iterations == 0 && o.scalar_state[0] == 1.0 && o.slots[0].data()[3] == 0.0f, "reset_state");
  // Accumulators start at their initial values.
  TestOptimizer f(OptKind::Ftrl, OptHyper{});
  f.bind({{p.data(), g.data(), 10, true}});
  CHECK(f.slots[0].data()[9] == 0.1f && f.slots[1].data()[9] == 0.0f, "FTRL accumulator starts at 0.1");
  TestOptimizer a(OptKind::Adagrad, H([](OptHyper& x) { x.initial_accumulator_value = 0.25; }));
  a.bind({{p.data(), g.data(), 10, true}});
  CHECK(a.slots[0].data()[0] == 0.25f, "Adagrad sum starts at initial_accumulator_value");
}

static void test_ftrl_exact_zero() {
  const Index n = 1003;
  std::vector<float> p(n), g(n);
  for (Index i = 0; i < n; ++i) p[i] = static_cast<float>(init_of(0, i));
  TestOptimizer o(OptKind::Ftrl, H([](OptHyper& x) { x.lr = 0.1; x.l1 = 10.0; x.l2 = 0.1; }));
  o.bind({{p.data(), g.data(), n, true}});
  for (int t = 1; t <= 5; ++t) {
    for (Index i = 0; i < n; ++i) g[i] = static_cast<float>(grad_of(t, 0, i, p[i]));
    o.step();
  }
  int nonzero = 0;
  for (float x : p) nonzero += !(x == 0.0f && !std::signbit(x));
  CHECK(nonzero == 0, "strong l1: %d of %td parameters are not exactly +0.0f", nonzero, n);
}

static void test_clip_helpers() {
  std::vector<float> a(5), b(3000);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(3 * noise(1, 0, i));
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(noise(1, 1, i));
  const std::vector<float> a0 = a, b0 = b;
  std::vector<ParamSpan> spans = {{nullptr, a.data(), 5, true}, {nullptr, b.data(), 3000, false}};
  double sq = 0;
  for (float x : a) sq += double(x) * x;
  for (float x : b) sq += double(x) * x;
  const double total = std::sqrt(sq);
  double got = clip_grad_norm(spans, 1e9);
  CHECK(std::fabs(got - total) <= 1e-12 * total, "total norm %.17g vs %.17g", got, total);
  CHECK(a == a0 && b == b0, "no clipping when max_norm is large");
  got = clip_grad_norm(spans, 2.0);
  CHECK(std::fabs(got - total) <= 1e-12 * total, "returns the norm before clipping");
  const float coef = static_cast<float>(2.0 / (total + 1e-6));
  bool ok = true;
  for (std::size_t i = 0; i < a.size(); ++i) ok &= a[i] == a0[i] * coef;
  for (std::size_t i = 0; i < b.size(); ++i) ok &= b[i] == b0[i] * coef;
  CHECK(ok, "gradients scaled by max_norm/(total+1e-6)");
  double after = clip_grad_norm(spans, 1e9);
  CHECK(std::fabs(after - 2.0) < 1e-5, "norm after clipping %.9g", after);
  clip_grad_value(spans, 0.01);
  ok = true;
  for (float x : b) ok &= std::fabs(x) <= 0.01f;
  CHECK(ok, "clip_grad_value");
  bool threw = false;
  try {
    clip_grad_norm(spans, -1);
  } catch (const ValueError&) {
    threw = true;
  }
  CHECK(threw, "negative max_norm");
}

static void test_no_alloc() {
  const Index n = 100000;
  std::vector<float> p(n, 0.5f), g(n, 0.1f), q(7, 0.5f), gq(7, 0.2f);
  for (OptKind k : {OptKind::SGD, OptKind::Adam, OptKind::RMSprop, OptKind::Ftrl}) {
    TestOptimizer o(k, H([](OptHyper& x) { x.momentum = 0.9; x.centered = true; x.clipnorm = 1; x.global_clipnorm = 1; }));
    o.bind({{p.data(), g.data(), n, true}, {q.data(), gq.data(), 7, false}});
    o.step();  // the first parallel region may set up the thread pool
    g_new_calls = 0;
    g_count_new = true;
    for (int i = 0; i < 5; ++i) o.step();
    g_count_new = false;
    CHECK(g_new_calls == 0, "step() called operator new %ld times", g_new_calls);
  }
}

// Same result, bit for bit, with 1 and 2 threads, on a 1M-element span
// (plus a small one) through the clipping and update paths.
static void test_threads() {
  if (!have_openmp()) {
    std::printf("  (no OpenMP: thread invariance not tested)\n");
    return;
  }
  const Index n = 1 << 20;
  auto go = [&](int threads, OptKind k, OptHyper h) {
    set_num_threads(threads);
    std::vector<float> p(n), g(n), q(13), gq(13);
    for (Index i = 0; i < n; ++i) p[i] = static_cast<float>(init_of(0, i));
    for (Index i = 0; i < 13; ++i) q[i] = static_cast<float>(init_of(1, i));
    TestOptimizer o(k, h);
    o.bind({{p.data(), g.data(), n, true}, {q.data(), gq.data(), 13, false}});
    for (int t = 1; t <= 4; ++t) {
      for (Index i = 0; i < n; ++i) g[i] = static_cast<float>(grad_of(t, 0, i, p[i]));
      for (Index i = 0; i < 13; ++i) gq[i] = static_cast<float>(grad_of(t, 1, i, q[i]));
      o.step();
    }
    std::vector<float> out = p;
    out.insert(out.end(), q.begin(), q.end());
    for (auto& s : o.slots) out.insert(out.end(), s.data(), s.data() + s.size());
    return out;
  };
  const int saved = num_threads();
  struct C { const char* name; OptKind k; OptHyper h; };
  std::vector<C> cs = {
      {"adam+clipnorm+global", OptKind::Adam, H([](OptHyper& x) { x.lr = 0.01; x.clipnorm = 50; x.global_clipnorm = 40; x.weight_decay = 0.01; })},
      {"rmsprop centered nesterov", OptKind::RMSprop, H([](OptHyper& x) { x.centered = true; x.momentum = 0.9; x.nesterov = true; })},
      {"ftrl", OptKind::Ftrl, H([](OptHyper& x) { x.lr = 0.1; x.l1 = 0.001; x.clipvalue = 0.5; })},
  };
  for (auto& c : cs) {
    auto a = go(1, c.k, c.h);
    auto b = go(2, c.k, c.h);
    CHECK(a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0,
          "%s: 1 vs 2 threads differ", c.name);
  }
  set_num_threads(saved);
}

static void bench_adam() {
  const Index n = 10'000'000;
  std::vector<float> p(n, 0.1f), g(n, 0.01f);
  const int saved = num_threads();
  for (int threads : {1, saved}) {
    set_num_threads(threads);
    TestOptimizer o(OptKind::Adam, OptHyper{});
    o.bind({{p.data(), g.data(), n, true}});
    o.step();
    const int reps = 10;
    const double t0 = omp_get_wtime();
    for (int i = 0; i < reps; ++i) o.step();
    const double dt = (omp_get_wtime() - t0) / reps;
    std::printf("  Adam, 10M params, %d thread(s): %.2f ms/step, %.3f ns/param\n", threads, dt * 1e3, dt / n * 1e9);
    if (threads == saved) break;
  }
  set_num_threads(saved);
}

int main(int argc, char** argv) {
  const auto cs = configs();
  if (argc >= 2 && std::strcmp(argv[1], "--list") == 0) {
    for (std::size_t k = 0; k < cs.size(); ++k) std::printf("%zu %s\n", k, cs[k].name.c_str());
    return 0;
  }
  if (argc >= 3 && std::strcmp(argv[1], "--dump") == 0) {
    const Config& c = cs.at(std::atoi(argv[2]));
    Run run(c);
    for (int t = 1; t <= kSteps; ++t) {
      if (t == kLrChangeAt) run.opt.set_lr(c.h.lr * 0.5);
      run.step(t);
    }
    for (auto& v : run.p) for (float x : v) std::printf("%.9g\n", x);
    return 0;
  }
  const bool bench = argc >= 2 && std::strcmp(argv[1], "--bench") == 0;

  std::printf("reference comparison (%d steps, spans 1/7/1000, lr halved at step %d):\n", kSteps, kLrChangeAt);
  for (const auto& c : cs) compare_config(c);
  std::printf("slot names, validation, counters, FTRL zeros, clipping helpers, allocation, threads\n");
  test_slot_names();
  test_validate();
  test_iterations_and_reset();
  test_ftrl_exact_zero();
  test_clip_helpers();
  test_no_alloc();
  test_threads();
  if (bench) bench_adam();
  if (g_failures) {
    std::printf("%d FAILURES\n", g_failures);
    return 1;
  }
  std::printf("all optimizer kernel tests passed\n");
  return 0;
}
