// Margin-softmax heads: CosineDense (the head of cosface / arcface) and
// MarginDense (LargeMarginDense / SphereDense, the layer half of the
// large_margin_softmax / sphereface pairs). See layer.hpp for the formulas.
//
// Norms are summed in double, row by row in a fixed order, so results do not
// depend on the thread count; the products are nerve's gemm (same property).
#include <algorithm>
#include <cmath>

#include "nerve/gemm.hpp"
#include "nerve/layer.hpp"
#include "nerve/parallel.hpp"

namespace nerve {

namespace {

// torch.nn.functional.normalize's eps: v / max(‖v‖, eps).
constexpr double kNormEps = 1e-12;

// Row norms of x (rows x cols) into n; with u, u = x / max(n, eps).
void normalize_rows(const float* x, Index rows, Index cols, float* n, float* u) {
  const int t = threads_for(3.0 * static_cast<double>(rows) * cols, rows);
  parallel_for(rows, t, [&](Index i) {
    const float* xi = x + i * cols;
    double s = 0.0;
    for (Index k = 0; k < cols; ++k) s += static_cast<double>(xi[k]) * xi[k];
    const double norm = std::sqrt(s);
    n[i] = static_cast<float>(norm);
    if (u) {
      const double inv = 1.0 / std::max(norm, kNormEps);
      float* ui = u + i * cols;
      for (Index k = 0; k < cols; ++k) ui[k] = static_cast<float>(xi[k] * inv);
    }
  });
}

// Column norms of W (rows x cols) into n and, with v, v = W / max(n, eps)
// column-wise. W is row-major, so the squares are summed row after row (in
// order) into `sums` (cols doubles of scratch).
void normalize_cols(const float* w, Index rows, Index cols, double* sums, float* n, float* v) {
  for (Index j = 0; j < cols; ++j) sums[j] = 0.0;
  for (Index i = 0; i < rows; ++i) {
    const float* wi = w + i * cols;
    for (Index j = 0; j < cols; ++j) sums[j] += static_cast<double>(wi[j]) * wi[j];
  }
  for (Index j = 0; j < cols; ++j) {
    const double norm = std::sqrt(sums[j]);
    n[j] = static_cast<float>(norm);
    sums[j] = 1.0 / std::max(norm, kNormEps);
  }
  if (!v) return;
  for (Index i = 0; i < rows; ++i) {
    const float* wi = w + i * cols;
    float* vi = v + i * cols;
    for (Index j = 0; j < cols; ++j) vi[j] = static_cast<float>(wi[j] * sums[j]);
  }
}

// Backward of u = x / max(‖x‖, eps) for each row, in place on g (= dL/du on
// entry, dL/dx on exit): (g − u (u·g)) / ‖x‖ when ‖x‖ > eps, else g / eps.
void normalize_rows_backward(const float* u, const float* n, Index rows, Index cols, float* g) {
  const int t = threads_for(4.0 * static_cast<double>(rows) * cols, rows);
  parallel_for(rows, t, [&](Index i) {
    const float* ui = u + i * cols;
    float* gi = g + i * cols;
    const double norm = n[i];
    if (norm > kNormEps) {
      double d = 0.0;
      for (Index k = 0; k < cols; ++k) d += static_cast<double>(ui[k]) * gi[k];
      const double inv = 1.0 / norm;
      for (Index k = 0; k < cols; ++k) gi[k] = static_cast<float>((gi[k] - ui[k] * d) * inv);
    } else {
      for (Index k = 0; k < cols; ++k) gi[k] = static_cast<float>(gi[k] / kNormEps);
    }
  });
}

// The same per column of a (rows x cols) matrix, written to (or added to) out.
void normalize_cols_backward(const float* v, const float* n, Index rows, Index cols, const float* g,
                             double* d, float* out, bool accumulate) {
  for (Index j = 0; j < cols; ++j) d[j] = 0.0;
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j) d[j] += static_cast<double>(v[i * cols + j]) * g[i * cols + j];
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j) {
      const Index k = i * cols + j;
      const double norm = n[j];
      const double r = norm > kNormEps ? (g[k] - v[k] * d[j]) / norm : g[k] / kNormEps;
      out[k] = accumulate ? static_cast<float>(out[k] + r) : static_cast<float>(r);
    }
}

}  // namespace

// ---------------------------------------------------------------------------
// CosineDense

CosineDense::CosineDense(Index in, Index units_) : units(units_) {
  require(in > 0, "CosineDense: input features must be positive, got " + std::to_string(in));
  require(units_ > 0, "CosineDense: units must be positive, got " + std::to_string(units_));
  checked_mul(in, units_, "CosineDense kernel");
  in_features = in;
  out_features = units_;
}

void CosineDense::plan(Index capacity) {
  u_.reserve(checked_mul(capacity, in_features, "CosineDense buffer"));
  xnorm_.reserve(capacity);
  v_.reserve(in_features * units);
  dv_.reserve(in_features * units);
  wnorm_.reserve(units);
  sums_.reserve(2 * units);
}

void CosineDense::forward(const float* x, float* y, Index batch, const StepContext& /*ctx*/) {
  const Index in = in_features;
  normalize_rows(x, batch, in, xnorm_.data(), u_.data());
  normalize_cols(kernel.value(), in, units, sums(), wnorm_.data(), v_.data());
  gemm(false, false, batch, units, in, u_.data(), in, v_.data(), units, y, units, false);
}

void CosineDense::backward(const float* /*x*/, const float* /*y*/, float* dy, float* dx, Index batch,
                           const StepContext& /*ctx*/, bool accumulate) {
  const Index in = in_features;
  if (dx) {
    // dL/du = dy V^T, then through the row normalisation.
    gemm(false, true, batch, in, units, dy, units, v_.data(), units, dx, in, false);
    normalize_rows_backward(u_.data(), xnorm_.data(), batch, in, dx);
  }
  if (trainable) {
    // dL/dV = U^T dy, then through the column normalisation into dL/dW.
    gemm(true, false, in, units, batch, u_.data(), in, dy, units, dv_.data(), units, false);
    normalize_cols_backward(v_.data(), wnorm_.data(), in, units, dv_.data(), sums(), kernel.grad(), accumulate);
  }
}

// ---------------------------------------------------------------------------
// MarginDense (LargeMarginDense / SphereDense)

double margin_lambda(const Loss& loss, std::uint64_t iter) {
  const double lam = loss.lambda_base * std::pow(1.0 + loss.lambda_gamma * static_cast<double>(iter),
                                                 -loss.lambda_power);
  return std::max(lam, loss.lambda_min);
}

MarginDense::MarginDense(Index in, Index units_, bool normalize)
    : units(units_), normalize_weights(normalize) {
  const char* who = normalize ? "SphereDense" : "LargeMarginDense";
  require(in > 0, std::string(who) + ": input features must be positive, got " + std::to_string(in));
  require(units_ > 0, std::string(who) + ": units must be positive, got " + std::to_string(units_));
  checked_mul(in, units_, "margin layer kernel");
  in_features = in;
  out_features = units_;
}

void MarginDense::plan(Index capacity) {
  xnorm_.reserve(capacity);
  dphi_.reserve(capacity);
  rest_.reserve(capacity);
  if (static_cast<Index>(label_.size()) < capacity) label_.resize(static_cast<std::size_t>(capacity));
  wnorm_.reserve(units);
  sums_.reserve(2 * units);
  dv_.reserve(in_features * units);
  if (normalize_weights) v_.reserve(in_features * units);
}

namespace {

// ψ(c) = (−1)^k T_m(c) − 2k for θ = acos(c) in [kπ/m, (k+1)π/m] and its
// derivative dψ/dc = (−1)^k m U_{m−1}(c) (T_m' = m U_{m−1}); k counts the
// thresholds cos(jπ/m), j = 1..m−1, that c lies below, as the authors' code.
void psi(double c, int m, double& value, double& deriv) {
  double t_prev = 1.0, t = c;    // T_0, T_1
  double u_prev = 0.0, u = 1.0;  // U_{-1}, U_0
  for (int n = 1; n < m; ++n) {
    const double t_next = 2.0 * c * t - t_prev, u_next = 2.0 * c * u - u_prev;
    t_prev = t;
    t = t_next;
    u_prev = u;
    u = u_next;
  }  // t = T_m, u = U_{m-1}
  int k = 0;
  for (int j = 1; j < m; ++j) k += c < std::cos(j * M_PI / m);
  const double sign = (k % 2) ? -1.0 : 1.0;
  value = sign * t - 2.0 * k;
  deriv = sign * m * u;
}

}  // namespace

void MarginDense::forward(const float* x, float* y, Index batch, const StepContext& ctx) {
  const Index in = in_features;
  if (normalize_weights) normalize_cols(kernel.value(), in, units, sums(), wnorm_.data(), v_.data());
  gemm(false, false, batch, units, in, x, in, weights(), units, y, units, false);
  margin_applied_ = false;
  const MarginTarget* mt = ctx.margin;
  if (!(ctx.training && mt && mt->layer == this && mt->labels && mt->loss &&
        mt->loss->kind == loss_kind()))
    return;
  margin_applied_ = true;
  normalize_rows(x, batch, in, xnorm_.data(), nullptr);
  const float* V = weights();
  // ‖V_j‖: the kernel's column norms (1 for SphereDense's normalised columns,
  // below 1 only for a column shorter than eps).
  if (!normalize_weights) normalize_cols(V, in, units, sums(), wnorm_.data(), nullptr);
  const int m = static_cast<int>(mt->loss->margin);
  // The Caffe layers count their iterations from 1 (iter_ += 1 before λ):
  // the first training step (network step 0) is iteration 1.
  const double lam = margin_lambda(*mt->loss, ctx.step + 1);
  for (Index i = 0; i < batch; ++i) {
    const std::int64_t lab = mt->labels[i];
    const double vn = normalize_weights ? std::min(1.0, static_cast<double>(wnorm_.data()[lab]) / kNormEps)
                                        : wnorm_.data()[lab];
    const double r = static_cast<double>(xnorm_.data()[i]) * vn;
    label_[static_cast<std::size_t>(i)] = -1;
    if (!(r > 0.0)) continue;  // x = 0 or W_y = 0: f_y = 0 and no angle; left as it is
    double f = y[i * units + lab];
    double c = std::min(1.0, std::max(-1.0, f / r));
    double p, dp;
    psi(c, m, p, dp);
    const double phi = (lam * c + p) / (1.0 + lam);
    const double dphi = (lam + dp) / (1.0 + lam);
    y[i * units + lab] = static_cast<float>(r * phi);
    label_[static_cast<std::size_t>(i)] = lab;
    dphi_.data()[i] = static_cast<float>(dphi);
    rest_.data()[i] = static_cast<float>(phi - c * dphi);  // d f_y' / d r
  }
}

void MarginDense::backward(const float* x, const float* /*y*/, float* dy, float* dx, Index batch,
                           const StepContext& /*ctx*/, bool accumulate) {
  const Index in = in_features;
  const float* V = weights();
  // f_y' = r φ(f_y / r): d/df_y = φ'(c), d/dr = φ(c) − c φ'(c), r = ‖x‖ ‖V_y‖.
  // dy's label column becomes dL/df_y; dL/dr is kept per row in rest_ (as g_r).
  if (margin_applied_) {
    for (Index i = 0; i < batch; ++i) {
      const std::int64_t lab = label_[static_cast<std::size_t>(i)];
      if (lab < 0) continue;
      const float g = dy[i * units + lab];
      dy[i * units + lab] = g * dphi_.data()[i];
      rest_.data()[i] = g * rest_.data()[i];
    }
  }
  auto vnorm = [&](std::int64_t lab) {
    return normalize_weights ? std::min(1.0, static_cast<double>(wnorm_.data()[lab]) / kNormEps)
                             : static_cast<double>(wnorm_.data()[lab]);
  };
  if (dx) {
    gemm(false, true, batch, in, units, dy, units, V, units, dx, in, false);
    if (margin_applied_) {
      // + dL/dr ‖V_y‖ x / ‖x‖
      for (Index i = 0; i < batch; ++i) {
        const std::int64_t lab = label_[static_cast<std::size_t>(i)];
        if (lab < 0) continue;
        const double a = rest_.data()[i] * vnorm(lab) / xnorm_.data()[i];
        for (Index k = 0; k < in; ++k) dx[i * in + k] = static_cast<float>(dx[i * in + k] + a * x[i * in + k]);
      }
    }
  }
  if (!trainable) return;
  float* dV = normalize_weights ? dv_.data() : kernel.grad();
  const bool acc = normalize_weights ? false : accumulate;
  if (!margin_applied_) {
    gemm(true, false, in, units, batch, x, in, dy, units, dV, units, acc);
  } else {
    gemm(true, false, in, units, batch, x, in, dy, units, dv_.data(), units, false);
    // + dL/dr ‖x‖ V_y / ‖V_y‖ into column y, rows in order (deterministic).
    for (Index i = 0; i < batch; ++i) {
      const std::int64_t lab = label_[static_cast<std::size_t>(i)];
      if (lab < 0) continue;
      const double vn = vnorm(lab);
      if (!(vn > 0.0)) continue;
      const double a = rest_.data()[i] * xnorm_.data()[i] / vn;
      for (Index k = 0; k < in; ++k) {
        float& d = dv_.data()[k * units + lab];
        d = static_cast<float>(d + a * V[k * units + lab]);
      }
    }
    if (!normalize_weights) {
      float* g = kernel.grad();
      const float* d = dv_.data();
      const Index n = in * units;
      if (accumulate)
        for (Index k = 0; k < n; ++k) g[k] += d[k];
      else
        std::copy(d, d + n, g);
      return;
    }
  }
  if (normalize_weights)
    normalize_cols_backward(v_.data(), wnorm_.data(), in, units, dv_.data(), sums(), kernel.grad(), accumulate);
}

}  // namespace nerve
