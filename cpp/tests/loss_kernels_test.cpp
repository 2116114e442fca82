// Standalone checks of nerve's loss kernels against independent double
// references (written plainly here, from the PyTorch documentation formulas),
// finite differences, golden values dumped from PyTorch 2.x, and bitwise
// thread-count invariance. Exits non-zero on any failure.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "nerve/loss.hpp"
#include "nerve/parallel.hpp"

using namespace nerve;
using Vec = std::vector<double>;
using Labels = std::vector<std::int64_t>;

static int g_failures = 0;
static int g_checks = 0;

#define CHECK(cond, ...)                                   \
  do {                                                     \
    ++g_checks;                                            \
    if (!(cond)) {                                         \
      ++g_failures;                                        \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__);     \
      std::printf(__VA_ARGS__);                            \
      std::printf("\n");                                   \
    }                                                      \
  } while (0)

static bool close(double a, double b, double rtol, double atol) {
  return std::fabs(a - b) <= atol + rtol * std::fabs(b);
}

// ---------------------------------------------------------------------------
// References: one plain formula per loss, everything in double.

struct Case {
  Loss loss;
  Index rows = 0, cols = 0;
  Vec target;     // values (regression targets / probabilities / teacher logits)
  Labels labels;  // class labels
};

static double lse_row(const double* x, Index c, double scale = 1.0) {
  double m = -std::numeric_limits<double>::infinity();
  for (Index j = 0; j < c; ++j) m = std::max(m, x[j] * scale);
  double s = 0.0;
  for (Index j = 0; j < c; ++j) s += std::exp(x[j] * scale - m);
  return m + std::log(s);
}

static double ref_loss(const Case& k, const Vec& x) {
  const Loss& L = k.loss;
  const Index R = k.rows, C = k.cols, n = R * C;
  double s = 0.0;
  switch (L.kind) {
    case LossKind::MSE:
      for (Index i = 0; i < n; ++i) s += (x[i] - k.target[i]) * (x[i] - k.target[i]);
      return s / n;
    case LossKind::MAE:
      for (Index i = 0; i < n; ++i) s += std::fabs(x[i] - k.target[i]);
      return s / n;
    case LossKind::Huber: {
      double d0 = L.delta;
      for (Index i = 0; i < n; ++i) {
        double a = std::fabs(x[i] - k.target[i]);
        s += a < d0 ? 0.5 * a * a : d0 * (a - 0.5 * d0);
      }
      return s / n;
    }
    case LossKind::SmoothL1: {
      double b = L.beta;
      for (Index i = 0; i < n; ++i) {
        double a = std::fabs(x[i] - k.target[i]);
        s += b == 0.0 ? a : (a < b ? 0.5 * a * a / b : a - 0.5 * b);
      }
      return s / n;
    }
    case LossKind::BinaryCrossEntropy:
      for (Index i = 0; i < n; ++i) {
        double y = k.target[i];
        s -= y * std::max(std::log(x[i]), -100.0) + (1 - y) * std::max(std::log(1 - x[i]), -100.0);
      }
      return s / n;
    case LossKind::BinaryCrossEntropyWithLogits:
      for (Index i = 0; i < n; ++i) {
        // -[y log sigmoid(x) + (1-y) log(1 - sigmoid(x))], with log sigmoid
        // written as -softplus(-x) so the reference survives |x| = 1000.
        auto softplus = [](double v) { return v > 0 ? v + std::log1p(std::exp(-v)) : std::log1p(std::exp(v)); };
        double y = k.target[i];
        s += y * softplus(-x[i]) + (1 - y) * softplus(x[i]);
      }
      return s / n;
    case LossKind::CrossEntropy: {
      const double e = L.label_smoothing;
      const bool w = !L.class_weight.empty();
      auto wt = [&](Index c) { return w ? (double)L.class_weight[c] : 1.0; };
      double denom = 0.0;
      for (Index i = 0; i < R; ++i) {
        const double* xi = &x[i * C];
        double lse = lse_row(xi, C);
        if (!k.labels.empty()) {
          Index y = k.labels[i];
          // PyTorch: (1-e) * nll_loss(weight) + e/C * sum_c w_c (-logp_c) / sum_i w_{y_i}
          double nll = wt(y) * (lse - xi[y]);
          double smooth = 0.0;
          for (Index c = 0; c < C; ++c) smooth += wt(c) * (lse - xi[c]);
          s += (1 - e) * nll + e / C * smooth;
          denom += wt(y);
        } else {
          for (Index c = 0; c < C; ++c) {
            double t = (1 - e) * k.target[i * C + c] + e / C;
            s += wt(c) * t * (lse - xi[c]);
          }
          denom += 1.0;
        }
      }
      return s / denom;
    }
    case LossKind::Focal: {
      const double a = L.has_alpha ? L.alpha : 1.0;
      for (Index i = 0; i < R; ++i) {
        const double* xi = &x[i * C];
        double logp = xi[k.labels[i]] - lse_row(xi, C);
        double p = std::exp(logp);
        s += -a * std::pow(1 - p, (double)L.gamma) * logp;
      }
      return s / R;
    }
    case LossKind::Distillation: {
      const double T = L.temperature, a = L.alpha;
      for (Index i = 0; i < R; ++i) {
        const double* xi = &x[i * C];
        const double* ti = &k.target[i * C];
        double ls = lse_row(xi, C, 1 / T), lt = lse_row(ti, C, 1 / T), l1 = lse_row(xi, C);
        double kl = 0.0;
        for (Index c = 0; c < C; ++c) {
          double logq = ti[c] / T - lt, logp = xi[c] / T - ls;
          kl += std::exp(logq) * (logq - logp);
        }
        s += a * T * T * kl + (1 - a) * (l1 - xi[k.labels[i]]);
      }
      return s / R;
    }
  }
  return NAN;
}

// ---------------------------------------------------------------------------
// Running the kernel.

struct Result {
  double value;
  std::vector<float> grad;
};

static Target make_target(const Case& k, std::vector<float>& tf) {
  Target t;
  tf.assign(k.target.begin(), k.target.end());
  if (!k.target.empty()) t.values = tf.data();
  if (!k.labels.empty()) t.labels = k.labels.data();
  return t;
}

static Result run(const Case& k, const std::vector<float>& xf, bool with_grad = true) {
  std::vector<float> tf;
  Target t = make_target(k, tf);
  validate_target(k.loss, t, k.rows, k.cols);
  Result r;
  r.grad.assign(xf.size(), std::numeric_limits<float>::quiet_NaN());
  r.value = loss_forward_backward(k.loss, xf.data(), t, k.rows, k.cols, with_grad ? r.grad.data() : nullptr);
  return r;
}

// Elements whose finite difference would straddle a kink of the loss.
static bool near_kink(const Case& k, const Vec& x, Index i, double h) {
  const Loss& L = k.loss;
  double d = k.target.empty() ? 0 : std::fabs(x[i] - k.target[i]);
  switch (L.kind) {
    case LossKind::MAE: return d < 4 * h;
    case LossKind::Huber: return d < 4 * h || std::fabs(d - L.delta) < 4 * h;
    case LossKind::SmoothL1: return d < 4 * h || std::fabs(d - L.beta) < 4 * h;
    default: return false;
  }
}

static std::mt19937_64 rng(12345);
static double unif(double a, double b) { return std::uniform_real_distribution<double>(a, b)(rng); }

static std::vector<float> to_float(const Vec& v) { return std::vector<float>(v.begin(), v.end()); }
static Vec to_double(const std::vector<float>& v) { return Vec(v.begin(), v.end()); }

// Value against the reference, gradient against central differences of the
// reference (on a sample of elements; every element for small shapes).
// How far the kernel's value may honestly be from the double reference.
// Most losses sum float inputs in double (rel 1e-9). BCE evaluates each
// element's -(y log x + (1 - y) log(1 - x)) in float (nerve's float log, the
// scalar double std::log made it ~20 ns per element) before the double sum:
// with u = 2^-24, each log is within 1 ulp (2u relative), 1 - y, the two
// products and their sum round once each (u), so a term is within 5u of its
// exact value relative to |y log x| + |(1 - y) log(1 - x)| (the two parts
// have one sign: no cancellation); 8u leaves margin. A real bug (a wrong
// clamp, a lost term) is far outside it: one element's error is its whole term.
static double value_tolerance(const Case& k, const Vec& x, double ref) {
  double tol = 1e-12 + 1e-9 * std::fabs(ref);
  if (k.loss.kind == LossKind::BinaryCrossEntropy) {
    const double u = std::ldexp(1.0, -24);
    double s = 0.0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double y = k.target[i];
      s += std::fabs(y * std::max(std::log(x[i]), -100.0)) + std::fabs((1 - y) * std::max(std::log1p(-x[i]), -100.0));
    }
    tol += 8 * u * s / (double)x.size();
  }
  return tol;
}

static void check_case(const std::string& name, const Case& k_in, const std::vector<float>& xf,
                       bool fd = true) {
  Result r = run(k_in, xf);
  Vec x = to_double(xf);
  // The reference sees what the kernel sees: the targets rounded to float as
  // the predictions are (make_target passes floats).
  Case k = k_in;
  for (auto& v : k.target) v = (double)(float)v;
  double ref = ref_loss(k, x);
  CHECK(std::isfinite(r.value), "%s: value not finite (%g)", name.c_str(), r.value);
  CHECK(std::fabs(r.value - ref) <= value_tolerance(k, x, ref), "%s: value %.15g vs reference %.15g (tolerance %.3g)",
        name.c_str(), r.value, ref, value_tolerance(k, x, ref));
  Result r2 = run(k, xf, false);
  CHECK(r2.value == r.value, "%s: value differs without grad (%.17g vs %.17g)", name.c_str(), r2.value, r.value);
  for (float g : r.grad)
    if (!std::isfinite(g)) {
      CHECK(false, "%s: non-finite gradient", name.c_str());
      break;
    }
  if (!fd) return;
  const Index n = (Index)x.size();
  const Index stride = std::max<Index>(1, n / 150);
  double gmax = 0.0;
  for (float g : r.grad) gmax = std::max(gmax, (double)std::fabs(g));
  int bad = 0;
  for (Index i = 0; i < n; i += stride) {
    double h = 1e-5 * std::max(1.0, std::fabs(x[i]));
    if (near_kink(k, x, i, h)) continue;
    Vec xp = x, xm = x;
    xp[i] += h;
    xm[i] -= h;
    double num = (ref_loss(k, xp) - ref_loss(k, xm)) / (2 * h);
    if (!close(r.grad[i], num, 1e-4, 1e-6 * gmax + 1e-7 / k.rows)) {
      if (bad++ < 3)
        CHECK(false, "%s: grad[%td] = %.9g vs finite difference %.9g", name.c_str(), i, (double)r.grad[i], num);
    }
  }
  if (bad == 0) CHECK(true, "ok");
}

static Loss mk(const std::string& name, std::map<std::string, double> p = {}, std::vector<float> w = {}) {
  return make_loss(name, p, w);
}

// Random case of a given loss and shape, inputs in the loss's natural range.
static Case random_case(const Loss& L, Index rows, Index cols, std::vector<float>& xf, bool prob_target = false,
                        double scale = 3.0) {
  Case k;
  k.loss = L;
  k.rows = rows;
  k.cols = cols;
  const Index n = rows * cols;
  Vec x(n);
  for (auto& v : x) v = unif(-scale, scale);
  switch (L.kind) {
    case LossKind::BinaryCrossEntropy:
      for (auto& v : x) v = unif(0.02, 0.98);
      k.target.resize(n);
      for (auto& v : k.target) v = unif(0, 1);
      break;
    case LossKind::BinaryCrossEntropyWithLogits:
      k.target.resize(n);
      for (auto& v : k.target) v = unif(0, 1);
      break;
    case LossKind::CrossEntropy:
      if (prob_target) {
        k.target.resize(n);
        for (Index i = 0; i < rows; ++i) {
          double s = 0;
          for (Index c = 0; c < cols; ++c) s += (k.target[i * cols + c] = unif(0, 1));
          for (Index c = 0; c < cols; ++c) k.target[i * cols + c] /= s;
        }
        break;
      }
      // fallthrough
    case LossKind::Focal:
      k.labels.resize(rows);
      for (auto& y : k.labels) y = (std::int64_t)(rng() % cols);
      break;
    case LossKind::Distillation:
      k.labels.resize(rows);
      for (auto& y : k.labels) y = (std::int64_t)(rng() % cols);
      k.target.resize(n);
      for (auto& v : k.target) v = unif(-scale, scale);
      break;
    default:
      k.target.resize(n);
      for (auto& v : k.target) v = unif(-scale, scale);
      break;
  }
  xf = to_float(x);
  // The kernel sees float targets; the reference must see the same numbers.
  for (auto& v : k.target) v = static_cast<double>(static_cast<float>(v));
  return k;
}

static std::vector<std::pair<std::string, Loss>> all_losses() {
  std::vector<float> w10, w17, w2, w1;
  return {
      {"mse", mk("mse")},
      {"mae", mk("mae")},
      {"l1", mk("l1")},
      {"huber", mk("huber")},
      {"huber(0.3)", mk("huber", {{"delta", 0.3}})},
      {"smooth_l1", mk("smooth_l1")},
      {"smooth_l1(2.5)", mk("smooth_l1", {{"beta", 2.5}})},
      {"smooth_l1(0)", mk("smooth_l1", {{"beta", 0.0}})},
      {"bce", mk("binary_cross_entropy")},
      {"bce_logits", mk("binary_cross_entropy_with_logits")},
      {"ce", mk("cross_entropy")},
      {"ce_ls0.1", mk("cross_entropy", {{"label_smoothing", 0.1}})},
      {"ce_ls1", mk("cross_entropy", {{"label_smoothing", 1.0}})},
      {"focal", mk("focal")},
      {"focal(0.5,a=0.25)", mk("focal", {{"gamma", 0.5}, {"alpha", 0.25}})},
      {"focal(3)", mk("focal", {{"gamma", 3.0}})},
      {"distill", mk("distillation")},
      {"distill(T=4,a=0.9)", mk("distillation", {{"temperature", 4.0}, {"alpha", 0.9}})},
      {"distill(T=0.5,a=0.3)", mk("distillation", {{"temperature", 0.5}, {"alpha", 0.3}})},
  };
}

static std::vector<float> weights(Index cols, bool with_zero) {
  std::vector<float> w(cols);
  for (Index c = 0; c < cols; ++c) w[c] = (float)unif(0.2, 3.0);
  if (with_zero && cols > 1) w[cols / 2] = 0.0f;
  return w;
}

static void test_shapes() {
  const Index rows_list[] = {1, 3, 37, 1000};
  const Index cols_list[] = {1, 2, 10, 17};
  for (auto& [name, L] : all_losses()) {
    for (Index R : rows_list)
      for (Index C : cols_list) {
        std::vector<float> xf;
        Case k = random_case(L, R, C, xf);
        check_case(name + " " + std::to_string(R) + "x" + std::to_string(C), k, xf);
      }
  }
  // Cross-entropy variants: class weights, smoothing, probability targets.
  for (Index R : rows_list)
    for (Index C : cols_list) {
      const std::string shape = " " + std::to_string(R) + "x" + std::to_string(C);
      for (double e : {0.0, 0.15}) {
        const std::string tag = "e=" + std::to_string(e).substr(0, 4);
        std::vector<float> xf;
        Loss w = mk("cross_entropy", {{"label_smoothing", e}}, weights(C, false));
        check_case("ce weighted " + tag + shape, random_case(w, R, C, xf), xf);
        check_case("ce weighted probs " + tag + shape, random_case(w, R, C, xf, true), xf);
        Loss p = mk("cross_entropy", {{"label_smoothing", e}});
        check_case("ce probs " + tag + shape, random_case(p, R, C, xf, true), xf);
        if (C > 1) {
          Loss wz = mk("cross_entropy", {{"label_smoothing", e}}, weights(C, true));
          Case k = random_case(wz, R, C, xf);
          k.labels[0] = (C / 2 + 1) % C;  // at least one row with non-zero weight
          check_case("ce weight with zero " + tag + shape, k, xf);
        }
      }
    }
}

// Logits of +-1000: finite values and gradients that still match the reference.
static void test_extreme() {
  const char* names[] = {"cross_entropy", "focal", "distillation", "binary_cross_entropy_with_logits"};
  for (const char* nm : names)
    for (Index C : {1, 2, 10}) {
      if (C == 1 && std::string(nm) != "binary_cross_entropy_with_logits" && std::string(nm) != "cross_entropy") continue;
      Loss L = mk(nm);
      std::vector<float> xf;
      Case k = random_case(L, 37, C, xf);
      for (Index i = 0; i < (Index)xf.size(); ++i) xf[i] = (rng() % 2) ? 1000.0f : -1000.0f;
      if (L.kind == LossKind::Distillation)
        for (auto& v : k.target) v = (rng() % 2) ? 1000.0 : -1000.0;
      std::string name = std::string(nm) + " extreme C=" + std::to_string(C);
      Result r = run(k, xf);
      CHECK(std::isfinite(r.value), "%s: value %g", name.c_str(), r.value);
      double ref = ref_loss(k, to_double(xf));
      CHECK(close(r.value, ref, 1e-9, 1e-9), "%s: %.15g vs %.15g", name.c_str(), r.value, ref);
      bool fin = true;
      for (float g : r.grad) fin = fin && std::isfinite(g);
      CHECK(fin, "%s: non-finite grad", name.c_str());
    }
  // Focal with gamma < 1 and p_y == 1 exactly: the gradient's limit is 0, not NaN.
  {
    Loss L = mk("focal", {{"gamma", 0.5}});
    Case k;
    k.loss = L;
    k.rows = 2;
    k.cols = 3;
    k.labels = {0, 2};
    std::vector<float> xf = {1000.0f, -1000.0f, 0.0f, 0.0f, 0.0f, 1000.0f};
    Result r = run(k, xf);
    bool fin = std::isfinite(r.value);
    for (float g : r.grad) fin = fin && std::isfinite(g);
    CHECK(fin, "focal gamma=0.5 confident rows: non-finite");
  }
  // BCE at the clamp: probabilities 0 and 1 give the -100 log clamp, finite grads.
  {
    Case k;
    k.loss = mk("binary_cross_entropy");
    k.rows = 1;
    k.cols = 4;
    k.target = {0.0, 1.0, 1.0, 0.0};
    std::vector<float> xf = {0.0f, 1.0f, 0.0f, 1.0f};
    Result r = run(k, xf);
    CHECK(r.value == 50.0, "bce clamp: %.17g, want 50", r.value);
    bool fin = true;
    for (float g : r.grad) fin = fin && std::isfinite(g);
    CHECK(fin, "bce clamp: non-finite grad");
  }
}

// The vectorised exp / log1p must hold double precision: per-element values
// over a wide sweep of logits, each checked alone at 1e-13.
static void test_precision() {
  for (double x = -40.0; x <= 40.0; x += 0.0371) {
    for (double y : {0.0, 0.3, 1.0}) {
      Case k;
      k.loss = mk("binary_cross_entropy_with_logits");
      k.rows = 1;
      k.cols = 5;  // 4 vector lanes + 1 scalar tail, all the same element
      std::vector<float> xf(5, (float)x);
      k.target.assign(5, (double)(float)y);
      double v = run(k, xf, false).value, ref = ref_loss(k, to_double(xf));
      CHECK(close(v, ref, 1e-13, 1e-300), "bce_logits precision x=%g y=%g: %.17g vs %.17g", x, y, v, ref);
    }
    Case c;
    c.loss = mk("cross_entropy");
    c.rows = 1;
    c.cols = 7;
    std::vector<float> xf = {(float)x, 0.0f, (float)(-x), (float)(0.5 * x), 1.0f, -2.0f, (float)(x * 0.9)};
    c.labels = {1};
    double v = run(c, xf, false).value, ref = ref_loss(c, to_double(xf));
    CHECK(close(v, ref, 1e-13, 1e-300), "ce precision x=%g: %.17g vs %.17g", x, v, ref);
  }
}

static void compare_results(const std::string& name, const Result& a, const Result& b) {
  CHECK(std::memcmp(&a.value, &b.value, sizeof(double)) == 0, "%s: value %.17g vs %.17g", name.c_str(), a.value,
        b.value);
  CHECK(a.grad.size() == b.grad.size() &&
            std::memcmp(a.grad.data(), b.grad.data(), a.grad.size() * sizeof(float)) == 0,
        "%s: gradients differ bitwise", name.c_str());
}

static void test_equivalences() {
  for (Index C : {2, 10, 17}) {
    std::vector<float> xf;
    Case ce = random_case(mk("cross_entropy"), 37, C, xf);
    Case fo = ce;
    fo.loss = mk("focal", {{"gamma", 0.0}});
    Result a = run(ce, xf), b = run(fo, xf);
    CHECK(close(a.value, b.value, 1e-12, 0), "focal gamma=0 %.17g vs ce %.17g", b.value, a.value);
    double md = 0;
    for (size_t i = 0; i < a.grad.size(); ++i) md = std::max(md, (double)std::fabs(a.grad[i] - b.grad[i]));
    CHECK(md < 1e-7, "focal gamma=0 grad differs from ce by %g", md);

    Case di = ce;
    di.loss = mk("distillation", {{"temperature", 1.0}, {"alpha", 0.0}});
    di.target.resize(37 * C);
    for (auto& v : di.target) v = unif(-3, 3);
    Result c = run(di, xf);
    CHECK(close(a.value, c.value, 1e-12, 0), "distill T=1 a=0 %.17g vs ce %.17g", c.value, a.value);
    md = 0;
    for (size_t i = 0; i < a.grad.size(); ++i) md = std::max(md, (double)std::fabs(a.grad[i] - c.grad[i]));
    CHECK(md < 1e-7, "distill T=1 a=0 grad differs from ce by %g", md);

    // Distillation with alpha = 1 and the teacher equal to the student: KL = 0.
    Case same = di;
    same.loss = mk("distillation", {{"temperature", 3.0}, {"alpha", 1.0}});
    same.target = to_double(xf);
    Result d = run(same, xf);
    CHECK(std::fabs(d.value) < 1e-12, "distill teacher==student: %g", d.value);
  }
  // smooth_l1 with beta = 0 is L1.
  std::vector<float> xf;
  Case a = random_case(mk("mae"), 37, 10, xf);
  Case b = a;
  b.loss = mk("smooth_l1", {{"beta", 0.0}});
  compare_results("smooth_l1(0) vs mae", run(a, xf), run(b, xf));
  // huber(delta) == delta * smooth_l1(beta = delta)
  Case h = a, s = a;
  h.loss = mk("huber", {{"delta", 0.7}});
  s.loss = mk("smooth_l1", {{"beta", 0.7}});
  double hv = run(h, xf).value, sv = run(s, xf).value;
  CHECK(close(hv, 0.7 * sv, 1e-6, 0), "huber %.15g vs 0.7*smooth_l1 %.15g", hv, 0.7 * sv);
}

// Same results bit for bit with 1, 2 and 3 threads, on sizes that do
// go parallel, including more chunks than fit the stack array.
static void test_threads() {
#ifdef _OPENMP
  const int saved = num_threads();
  struct Shape {
    Index rows, cols;
  };
  const Shape shapes[] = {{2048, 10}, {5000, 17}, {40000, 10}, {70000, 10}};
  std::vector<std::pair<std::string, Loss>> losses = all_losses();
  losses.push_back({"ce weighted ls", mk("cross_entropy", {{"label_smoothing", 0.1}}, weights(10, false))});
  for (auto& [name, L] : losses)
    for (const Shape& sh : shapes) {
      std::vector<float> xf;
      Loss LL = L;
      if (!LL.class_weight.empty()) LL.class_weight = weights(sh.cols, false);
      Case k = random_case(LL, sh.rows, sh.cols, xf);
      const std::string nm = name + " threads " + std::to_string(sh.rows) + "x" + std::to_string(sh.cols);
      omp_set_num_threads(1);
      Result r1 = run(k, xf);
      omp_set_num_threads(2);
      Result r2 = run(k, xf);
      omp_set_num_threads(3);
      Result r3 = run(k, xf);
      compare_results(nm + " (1 vs 2)", r1, r2);
      compare_results(nm + " (1 vs 3)", r1, r3);
      if (sh.rows == 5000) {
        Case kr = k;  // the float targets the kernel saw (as in check_case)
        for (auto& v : kr.target) v = (double)(float)v;
        const Vec x = to_double(xf);
        double ref = ref_loss(kr, x);
        CHECK(std::fabs(r1.value - ref) <= value_tolerance(kr, x, ref), "%s: value %.15g vs reference %.15g", nm.c_str(),
              r1.value, ref);
      }
    }
  // Probability-target CE at scale as well.
  {
    std::vector<float> xf;
    Case k = random_case(mk("cross_entropy", {{"label_smoothing", 0.2}}), 40000, 10, xf, true);
    omp_set_num_threads(1);
    Result r1 = run(k, xf);
    omp_set_num_threads(2);
    Result r2 = run(k, xf);
    compare_results("ce probs threads", r1, r2);
    double ref = ref_loss(k, to_double(xf));
    CHECK(close(r1.value, ref, 1e-9, 1e-12), "ce probs big: %.15g vs %.15g", r1.value, ref);
  }
  omp_set_num_threads(saved);
#else
  std::printf("note: built without OpenMP, thread invariance not exercised\n");
#endif
}

// Golden values from PyTorch (float64) on fixed inputs; shape 3 x 4.
struct Golden {
  const char* name;
  double value;
  std::vector<double> grad;
};

static void test_golden() {
  const Vec X = {0.3, -1.2, 2.0, 0.5, 1.5, 0.1, -0.7, -2.2, -0.4, 0.9, 0.8, 3.1};
  const Vec T = {0.1, 0.2, 0.3, 0.4, 0.7, 0.0, 0.3, 0.0, 0.25, 0.25, 0.25, 0.25};
  const Vec P = {0.2, 0.9, 0.0, 1.0, 0.5, 0.3, 0.05, 0.99, 0.6, 0.4, 0.7, 0.1};
  const Labels Y = {2, 0, 3};
  const std::vector<float> W = {0.5f, 2.0f, 1.0f, 0.0f};
  const Vec Teacher = {1.0, 0.0, -1.0, 2.0, 0.3, 0.3, 0.3, -5.0, 2.0, 1.0, 0.0, -1.0};
  // Generated with torch.nn.functional (see the names) in float64.
  const std::vector<Golden> gold = {
      {"mse", 1.7216666666666667, {0.033333333333333326,-0.23333333333333331,0.28333333333333333,0.016666666666666663,0.13333333333333333,0.016666666666666666,-0.16666666666666666,-0.3666666666666667,-0.10833333333333334,0.10833333333333334,0.091666666666666674,0.47499999999999998}},
      {"mae", 1.0166666666666666, {0.083333333333333329,-0.083333333333333329,0.083333333333333329,0.083333333333333329,0.083333333333333329,0.083333333333333329,-0.083333333333333329,-0.083333333333333329,-0.083333333333333329,0.083333333333333329,0.083333333333333329,0.083333333333333329}},
      {"huber_0.5", 0.4004166666666667, {0.016666666666666663,-0.041666666666666664,0.041666666666666664,0.0083333333333333315,0.041666666666666664,0.0083333333333333332,-0.041666666666666664,-0.041666666666666664,-0.041666666666666664,0.041666666666666664,0.041666666666666664,0.041666666666666664}},
      {"smooth_l1_0.5", 0.8008333333333334, {0.033333333333333326,-0.083333333333333329,0.083333333333333329,0.016666666666666663,0.083333333333333329,0.016666666666666666,-0.083333333333333329,-0.083333333333333329,-0.083333333333333329,0.083333333333333329,0.083333333333333329,0.083333333333333329}},
      {"smooth_l1_0", 1.0166666666666666, {0.083333333333333329,-0.083333333333333329,0.083333333333333329,0.083333333333333329,0.083333333333333329,0.083333333333333329,-0.083333333333333329,-0.083333333333333329,-0.083333333333333329,0.083333333333333329,0.083333333333333329,0.083333333333333329}},
      {"bce", 8.4907051515365328, {0.052083333333333322,0.64814814814814825,-25000000099.895069,50000000199.790138,-0.066666666666666652,0.11904761904761905,-0.43859649122807021,8.333333333333325,0.12152777777777778,0.052083333333333343,0.17857142857142852,-0.13888888888888887}},
      {"bce_logits", 0.89267131456320892, {0.039536876400971588,0.0026229347084151971,0.048399756498156865,0.018538277600154546,0.009797873016136974,0.043748265623244999,0.0026510189859861588,0.0083125407599737612,0.012609361657295667,0.03841245855208366,0.036664540093967711,0.058907728754909489}},
      {"ce", 0.30298233242976558, {0.042095619396927728,0.0093928022975838313,-0.10290412733237986,0.051415705637868278,-0.092158577638395259,0.05947296253373039,0.0267229246482634,0.0059626904564014354,0.0081093400715685493,0.029755574501197677,0.026923957203840349,-0.064788871776606555}},
      {"ce_w", 0.35400660232478148, {0.084191238793855455,0.018785604595167663,-0.20580825466475972,0.10283141127573656,-0.092158577638395259,0.05947296253373039,0.0267229246482634,0.0059626904564014354,0,0,0,-0}},
      {"ce_ls", 0.48381566576309898, {0.033762286063594403,0.0010594689642505002,-0.077904127332379849,0.043082372304534954,-0.067158577638395209,0.051139629200397073,0.018389591314930075,-0.0023706428769318957,-0.00022399326176478302,0.021422241167864349,0.018590623870507021,-0.039788871776606546}},
      {"ce_w_ls", 0.7166278502675123, {0.074805514975598938,-0.014782548795605263,-0.1615689848147836,0.10154601863478986,-0.049070470961274919,0.030600101390426841,0.01206047733021649,0.0064098922406315437,-0.0069141988208088374,-0.028126107795623738,-0.011954974155994605,0.046995280772427185}},
      {"ce_p", 1.659648999096432, {0.0087622860635944034,-0.057273864369082834,0.13042920600095351,-0.08191762769546504,0.0078414223616047468,0.05947296253373039,-0.073277075351736595,0.0059626904564014354,-0.075223993261764779,-0.053577758832135655,-0.056409376129492983,0.18521112822339342}},
      {"ce_p_w", 1.6046213136512797, {0.014905047881029133,-0.12628873161014545,0.072821904500715115,0.038561779228401212,0.040096924535043078,0.038657425646924752,-0.082630098978628788,0.003875748796660933,-0.034570994104044184,-0.1406305389781187,-0.059774870779973024,0.23497640386213589}},
      {"ce_p_w_ls", 1.6817189590962325, {0.010957438365952322,-0.13272057821937255,0.081915967984072274,0.039847171869347914,0.06594978854131528,0.0080003756276092845,-0.078094234036123589,0.0041440698671989977,-0.034570994104044184,-0.1406305389781187,-0.059774870779973024,0.23497640386213589}},
      {"focal_2", 0.022696019996916561, {0.010645320386455003,0.0023752920426610494,-0.026022836110630884,0.013002223681514827,-0.018976482605847729,0.012246148627291471,0.0055025492771264102,0.0012277847014298428,0.0008552443691486883,0.0031381453137174042,0.0028395113030857035,-0.0068329009859517944}},
      {"focal_0.5_a0.25", 0.039215083409317841, {0.0082643524082792394,0.0018440262763824084,-0.020202481510541558,0.010094102825879907,-0.017244347534476005,0.011128344871603593,0.0050002876734968364,0.0011157149893755687,0.0012941328675202491,0.0047485574182485864,0.0042966724337235541,-0.010339362719492387}},
      {"distill_3_0.7", 1.2045681196462308, {-0.022710938039918076,-0.039854943731641425,0.14798906202420087,-0.085423180252641409,0.04341803373037563,-0.019916486614639704,-0.072576382439934681,0.049074835324198714,-0.17041119662023632,-0.035133675600175628,0.013861918120800027,0.19168295409961178}},
  };
  for (const Golden& gd : gold) {
    const std::string nm = gd.name;
    Case k;
    k.rows = 3;
    k.cols = 4;
    Vec x = X;
    if (nm == "mse") k.loss = mk("mse");
    else if (nm == "mae") k.loss = mk("l1");
    else if (nm == "huber_0.5") k.loss = mk("huber", {{"delta", 0.5}});
    else if (nm == "smooth_l1_0.5") k.loss = mk("smooth_l1", {{"beta", 0.5}});
    else if (nm == "smooth_l1_0") k.loss = mk("smooth_l1", {{"beta", 0.0}});
    else if (nm == "bce") { k.loss = mk("binary_cross_entropy"); x = P; }
    else if (nm == "bce_logits") k.loss = mk("binary_cross_entropy_with_logits");
    else if (nm == "ce") k.loss = mk("cross_entropy");
    else if (nm == "ce_w") k.loss = mk("cross_entropy", {}, W);
    else if (nm == "ce_ls") k.loss = mk("cross_entropy", {{"label_smoothing", 0.1}});
    else if (nm == "ce_w_ls") k.loss = mk("cross_entropy", {{"label_smoothing", 0.1}}, W);
    else if (nm == "ce_p") k.loss = mk("cross_entropy");
    else if (nm == "ce_p_w") k.loss = mk("cross_entropy", {}, W);
    else if (nm == "ce_p_w_ls") k.loss = mk("cross_entropy", {{"label_smoothing", 0.2}}, W);
    else if (nm == "focal_2") k.loss = mk("focal");
    else if (nm == "focal_0.5_a0.25") k.loss = mk("focal", {{"gamma", 0.5}, {"alpha", 0.25}});
    else if (nm == "distill_3_0.7") k.loss = mk("distillation", {{"temperature", 3.0}, {"alpha", 0.7}});
    const bool classy = k.loss.kind == LossKind::CrossEntropy || k.loss.kind == LossKind::Focal ||
                        k.loss.kind == LossKind::Distillation;
    if (classy && nm.rfind("ce_p", 0) != 0) k.labels = Y;
    if (k.loss.kind == LossKind::Distillation) k.target = Teacher;
    else if (!classy || nm.rfind("ce_p", 0) == 0) k.target = T;
    std::vector<float> xf = to_float(x);
    // The inputs are float here and float64 in torch: allow float rounding.
    Result r = run(k, xf);
    CHECK(close(r.value, gd.value, 1e-6, 1e-7), "golden %s: value %.12g vs torch %.12g", gd.name, r.value, gd.value);
    for (size_t i = 0; i < gd.grad.size(); ++i)
      CHECK(close(r.grad[i], gd.grad[i], 1e-5, 1e-7), "golden %s: grad[%zu] %.9g vs torch %.9g", gd.name, i,
            (double)r.grad[i], gd.grad[i]);
  }
}

template <class F>
static void expect_error(const std::string& what, F&& f, std::vector<std::string> needles) {
  try {
    f();
    CHECK(false, "%s: no error thrown", what.c_str());
  } catch (const ValueError& e) {
    std::string msg = e.what();
    for (const auto& nd : needles)
      CHECK(msg.find(nd) != std::string::npos, "%s: message '%s' lacks '%s'", what.c_str(), msg.c_str(), nd.c_str());
  } catch (const std::exception& e) {
    CHECK(false, "%s: wrong exception type: %s", what.c_str(), e.what());
  }
}

static void test_errors() {
  expect_error("unknown loss", [] { mk("msee"); }, {"msee", "mse", "cross_entropy", "l1"});
  expect_error("unknown param", [] { mk("huber", {{"beta", 1.0}}); }, {"beta", "delta"});
  expect_error("param on mse", [] { mk("mse", {{"delta", 1.0}}); }, {"delta"});
  expect_error("delta 0", [] { mk("huber", {{"delta", 0.0}}); }, {"delta"});
  expect_error("delta nan", [] { mk("huber", {{"delta", NAN}}); }, {"delta"});
  expect_error("beta < 0", [] { mk("smooth_l1", {{"beta", -0.1}}); }, {"beta"});
  expect_error("smoothing > 1", [] { mk("cross_entropy", {{"label_smoothing", 1.5}}); }, {"label_smoothing"});
  expect_error("smoothing < 0", [] { mk("cross_entropy", {{"label_smoothing", -0.1}}); }, {"label_smoothing"});
  expect_error("gamma < 0", [] { mk("focal", {{"gamma", -1.0}}); }, {"gamma"});
  expect_error("focal alpha", [] { mk("focal", {{"alpha", 1.5}}); }, {"alpha"});
  expect_error("temperature 0", [] { mk("distillation", {{"temperature", 0.0}}); }, {"temperature"});
  expect_error("distill alpha", [] { mk("distillation", {{"alpha", -0.5}}); }, {"alpha"});
  expect_error("weight negative", [] { mk("cross_entropy", {}, {1.0f, -1.0f}); }, {"weight"});
  expect_error("weight nan", [] { mk("cross_entropy", {}, {1.0f, NAN}); }, {"weight"});
  expect_error("weight all zero", [] { mk("cross_entropy", {}, {0.0f, 0.0f}); }, {"zero"});
  expect_error("weight on mse", [] { mk("mse", {}, {1.0f}); }, {"cross_entropy"});

  // Valid constructions.
  CHECK(mk("l1").kind == LossKind::MAE, "l1 alias");
  CHECK(!mk("focal").has_alpha, "focal without alpha");
  CHECK(!mk("focal", {{"alpha", NAN}}).has_alpha, "focal alpha NaN means none");
  CHECK(mk("focal", {{"alpha", 0.25}}).has_alpha, "focal with alpha");
  CHECK(mk("huber", {{"delta", 2.0}}).delta == 2.0f, "huber delta");
  bool have_all = true;
  for (const char* nm : {"mse", "mae", "huber", "smooth_l1", "binary_cross_entropy",
                         "binary_cross_entropy_with_logits", "cross_entropy", "focal", "distillation"}) {
    bool found = false;
    for (const auto& info : loss_registry()) found = found || info.name == nm;
    have_all = have_all && found;
  }
  CHECK(have_all, "registry lists every loss");

  std::vector<float> v(20, 0.5f);
  Labels lab = {0, 1, 10, 3};
  Labels neg = {0, -1, 2, 3};
  Labels ok = {0, 1, 2, 3};
  Loss ce = mk("cross_entropy");
  expect_error("label too large", [&] { validate_target(ce, Target{nullptr, lab.data()}, 4, 10); },
               {"label 10", "row 2", "[0, 10)"});
  expect_error("label negative", [&] { validate_target(ce, Target{nullptr, neg.data()}, 4, 10); },
               {"label -1", "row 1", "[0, 10)"});
  expect_error("ce both", [&] { validate_target(ce, Target{v.data(), ok.data()}, 4, 5); }, {"cross_entropy"});
  expect_error("ce none", [&] { validate_target(ce, Target{}, 4, 5); }, {"cross_entropy"});
  expect_error("mse labels", [&] { validate_target(mk("mse"), Target{nullptr, ok.data()}, 4, 5); }, {"mse"});
  expect_error("focal values", [&] { validate_target(mk("focal"), Target{v.data(), nullptr}, 4, 5); }, {"focal"});
  expect_error("distill labels only", [&] { validate_target(mk("distillation"), Target{nullptr, ok.data()}, 4, 5); },
               {"distillation"});
  expect_error("distill bad label", [&] { validate_target(mk("distillation"), Target{v.data(), lab.data()}, 4, 5); },
               {"label 10", "row 2", "[0, 5)"});
  std::vector<float> bt = {0.0f, 1.0f, 1.5f, 0.2f};
  expect_error("bce target range", [&] { validate_target(mk("binary_cross_entropy"), Target{bt.data(), nullptr}, 2, 2); },
               {"[0, 1]", "row 1"});
  expect_error("weight length", [&] {
    validate_target(mk("cross_entropy", {}, {1.0f, 2.0f, 3.0f}), Target{nullptr, ok.data()}, 4, 5);
  }, {"3", "5"});
  expect_error("zero rows", [&] { validate_target(ce, Target{nullptr, ok.data()}, 0, 5); }, {"row"});
  // BCE rejects predictions that are not probabilities, before writing the gradient.
  {
    std::vector<float> pr = {0.5f, 1.2f}, tg = {0.0f, 1.0f}, g = {7.0f, 7.0f};
    expect_error("bce pred range", [&] {
      loss_forward_backward(mk("binary_cross_entropy"), pr.data(), Target{tg.data(), nullptr}, 1, 2, g.data());
    }, {"[0, 1]"});
    CHECK(g[0] == 7.0f && g[1] == 7.0f, "bce pred range: gradient touched");
  }
  // Valid targets pass.
  try {
    validate_target(ce, Target{nullptr, ok.data()}, 4, 5);
    validate_target(mk("distillation"), Target{v.data(), ok.data()}, 4, 5);
    validate_target(mk("binary_cross_entropy"), Target{v.data(), nullptr}, 4, 5);
    CHECK(true, "ok");
  } catch (const std::exception& e) {
    CHECK(false, "valid target rejected: %s", e.what());
  }
}

static void test_count_correct() {
  // Ties go to the first maximum, like torch.argmax.
  std::vector<float> p = {1, 3, 3, 0, /**/ 5, 5, 1, 1, /**/ 0, 0, 0, 2};
  Labels y = {1, 1, 3};
  CHECK(count_correct(p.data(), Target{nullptr, y.data()}, 3, 4) == 2, "argmax ties");
  Labels y2 = {2, 0, 3};
  CHECK(count_correct(p.data(), Target{nullptr, y2.data()}, 3, 4) == 2, "argmax ties 2");
  std::vector<float> t = {0.1f, 0.7f, 0.2f, 0.0f, /**/ 0.0f, 1.0f, 0.0f, 0.0f, /**/ 0.0f, 0.0f, 0.0f, 1.0f};
  CHECK(count_correct(p.data(), Target{t.data(), nullptr}, 3, 4) == 2, "probability targets");
  std::vector<float> p1 = {0.7f, 0.2f, 0.5f, 0.51f}, t1 = {1.0f, 0.0f, 0.0f, 0.0f};
  CHECK(count_correct(p1.data(), Target{t1.data(), nullptr}, 4, 1) == 3, "single column 0.5");
  std::vector<float> l1 = {0.3f, -0.2f, 0.0f, 2.0f};
  CHECK(count_correct_logit_threshold(l1.data(), Target{t1.data(), nullptr}, 4, 1) == 3, "logit threshold");
}

int main() {
  test_golden();
  test_shapes();
  test_extreme();
  test_precision();
  test_equivalences();
  test_errors();
  test_count_correct();
  test_threads();
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
