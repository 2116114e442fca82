// Sparse (CSR) products for pruned kernels at inference; see sparse.hpp.
#include "nerve/sparse.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "nerve/gemm.hpp"
#include "nerve/parallel.hpp"
#include "nerve/vec.hpp"

#ifdef __AVX2__
#include <immintrin.h>
#endif
// AVX2's vgatherdps measured slower on Zen 3 than eight scalar loads
// inserted into a vector (single-row predict of the 90%-pruned reference MLP:
// 20.4 vs 16.7 µs), so the hardware gather is opt-in at build time.
#ifndef NERVE_HW_GATHER
#define NERVE_HW_GATHER 0
#endif

namespace nerve {

namespace {

using simd::v8;
using simd::load8;
using simd::store8;
using simd::splat8;

constexpr Index kPanel = 32;   // rows per full panel (four vectors)
constexpr Index kPanelTail = 8;  // rows per tail panel (one vector)

inline v8 gather8(const float* x, const std::int32_t* idx) {
#if defined(__AVX2__) && NERVE_HW_GATHER
  const __m256i vi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx));
  const __m256 xv = _mm256_i32gather_ps(x, vi, 4);
  v8 out;
  std::memcpy(&out, &xv, sizeof out);
  return out;
#else
  return v8{x[idx[0]], x[idx[1]], x[idx[2]], x[idx[3]], x[idx[4]], x[idx[5]], x[idx[6]], x[idx[7]]};
#endif
}

// Groups [g0, g1) of the SELL-8 product for one row x.
void sell_groups(const SellMatrix& w, const float* x, float* y, Index g0, Index g1) {
  const std::int32_t* gp = w.group_ptr.data();
  const std::int32_t* ix = w.index.data();
  const float* v = w.value.data();
  for (Index g = g0; g < g1; ++g) {
    // Four accumulators over consecutive slices: the gathers and FMAs of
    // neighbouring slices do not wait on each other.
    v8 a0 = splat8(0.0f), a1 = a0, a2 = a0, a3 = a0;
    Index s = gp[g];
    const Index end = gp[g + 1];
    for (; s + 4 <= end; s += 4) {
      a0 += load8(v + 8 * s) * gather8(x, ix + 8 * s);
      a1 += load8(v + 8 * s + 8) * gather8(x, ix + 8 * s + 8);
      a2 += load8(v + 8 * s + 16) * gather8(x, ix + 8 * s + 16);
      a3 += load8(v + 8 * s + 24) * gather8(x, ix + 8 * s + 24);
    }
    for (; s < end; ++s) a0 += load8(v + 8 * s) * gather8(x, ix + 8 * s);
    float lanes[8];
    store8(lanes, (a0 + a1) + (a2 + a3));
    const std::int32_t* pg = w.perm.data() + 8 * g;
    for (int l = 0; l < 8; ++l)
      if (pg[l] >= 0) y[pg[l]] = lanes[l];
  }
}

// Transposes rows [0, rows) of x (row stride in) into xt (in x P), zero
// padding rows..P-1.
template <Index P>
void pack_panel(const float* x, Index rows, Index in, float* xt) {
  if (rows < P) std::fill(xt, xt + in * P, 0.0f);
  for (Index r = 0; r < rows; ++r) {
    const float* xr = x + r * in;
    for (Index i = 0; i < in; ++i) xt[i * P + r] = xr[i];
  }
}

// yt (out x P) = W^T xt for one panel; then y rows [0, rows) from yt.
template <Index P>
void panel_product(const CsrMatrix& w, const float* xt, Index rows, float* yt, float* y) {
  constexpr int V = static_cast<int>(P / 8);
  const std::int32_t* rp = w.row_ptr.data();
  const std::int32_t* ix = w.index.data();
  const float* v = w.value.data();
  const Index out = w.rows;
  for (Index j = 0; j < out; ++j) {
    // Two accumulator sets (even and odd nonzeros): 2V independent FMA chains.
    v8 a[V], b[V];
    for (int q = 0; q < V; ++q) a[q] = b[q] = splat8(0.0f);
    Index k = rp[j];
    const Index end = rp[j + 1];
    for (; k + 2 <= end; k += 2) {
      const v8 w0 = splat8(v[k]), w1 = splat8(v[k + 1]);
      const float* s0 = xt + static_cast<Index>(ix[k]) * P;
      const float* s1 = xt + static_cast<Index>(ix[k + 1]) * P;
      for (int q = 0; q < V; ++q) {
        a[q] += w0 * load8(s0 + 8 * q);
        b[q] += w1 * load8(s1 + 8 * q);
      }
    }
    if (k < end) {
      const v8 w0 = splat8(v[k]);
      const float* s0 = xt + static_cast<Index>(ix[k]) * P;
      for (int q = 0; q < V; ++q) a[q] += w0 * load8(s0 + 8 * q);
    }
    for (int q = 0; q < V; ++q) store8(yt + j * P + 8 * q, a[q] + b[q]);
  }
  for (Index r = 0; r < rows; ++r) {
    float* yr = y + r * out;
    for (Index j = 0; j < out; ++j) yr[j] = yt[j * P + r];
  }
}

#ifdef _OPENMP
inline int thread_slot() { return omp_get_thread_num(); }
#else
inline int thread_slot() { return 0; }
#endif

}  // namespace

CsrMatrix csr_from_kernel(const float* w, Index in, Index out) {
  require(in > 0 && out > 0, "sparse kernel: shape must be positive");
  require(in <= std::numeric_limits<std::int32_t>::max(), "sparse kernel: too many inputs");
  CsrMatrix m;
  m.rows = out;
  m.cols = in;
  m.row_ptr.assign(out + 1, 0);
  for (Index i = 0; i < in; ++i)
    for (Index j = 0; j < out; ++j)
      if (w[i * out + j] != 0.0f) ++m.row_ptr[j + 1];
  Index total = 0;
  for (Index j = 0; j < out; ++j) {
    total += m.row_ptr[j + 1];
    require(total <= std::numeric_limits<std::int32_t>::max(), "sparse kernel: too many nonzeros");
    m.row_ptr[j + 1] = static_cast<std::int32_t>(total);
  }
  m.index.resize(total);
  m.value.resize(total);
  std::vector<std::int32_t> fill(m.row_ptr.begin(), m.row_ptr.end() - 1);
  for (Index i = 0; i < in; ++i)  // i ascending: each row's indices come out sorted
    for (Index j = 0; j < out; ++j) {
      const float a = w[i * out + j];
      if (a != 0.0f) {
        const std::int32_t at = fill[j]++;
        m.index[at] = static_cast<std::int32_t>(i);
        m.value.data()[at] = a;
      }
    }
  return m;
}

SellMatrix sell_from_csr(const CsrMatrix& c) {
  SellMatrix m;
  m.rows = c.rows;
  m.cols = c.cols;
  std::vector<std::int32_t> order(c.rows);
  for (Index j = 0; j < c.rows; ++j) order[j] = static_cast<std::int32_t>(j);
  auto len = [&](std::int32_t j) { return c.row_ptr[j + 1] - c.row_ptr[j]; };
  // Longest rows first: a group's rows have similar lengths, so little padding.
  std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) { return len(a) > len(b); });
  const Index groups = (c.rows + 7) / 8;
  m.group_ptr.assign(groups + 1, 0);
  m.perm.assign(8 * groups, -1);
  Index slices = 0;
  for (Index g = 0; g < groups; ++g) {
    slices += len(order[8 * g]);  // the group's longest row
    require(slices <= std::numeric_limits<std::int32_t>::max() / 8, "sparse kernel: too many nonzeros");
    m.group_ptr[g + 1] = static_cast<std::int32_t>(slices);
  }
  m.index.assign(8 * slices, 0);
  m.value.resize(8 * slices, 0.0f);
  for (Index g = 0; g < groups; ++g) {
    for (Index l = 0; l < 8 && 8 * g + l < c.rows; ++l) {
      const std::int32_t j = order[8 * g + l];
      m.perm[8 * g + l] = j;
      for (std::int32_t k = c.row_ptr[j], t = 0; k < c.row_ptr[j + 1]; ++k, ++t) {
        const Index at = 8 * (m.group_ptr[g] + t) + l;
        m.index[at] = c.index[k];
        m.value.data()[at] = c.value.data()[k];
      }
    }
  }
  return m;
}

void sparse_matmul_small(const SellMatrix& w, const float* x, Index batch, float* y, int threads) {
  require(batch > 0 && batch < kSparsePanelMin, "sparse_matmul_small: batch out of range");
  const Index groups = static_cast<Index>(w.group_ptr.size()) - 1;
  constexpr Index kGroupsPerPiece = 4;
  const Index pieces = (groups + kGroupsPerPiece - 1) / kGroupsPerPiece;
  // A slice (8 nonzeros) costs one gather, ~8 cycles on Zen 3: counted as 256 flops.
  const double work = 256.0 * static_cast<double>(w.group_ptr.back()) * static_cast<double>(batch);
  const int t = std::min(threads, threads_for(work, pieces));
  parallel_for(pieces, t, [&](Index p) {
    for (Index r = 0; r < batch; ++r)
      sell_groups(w, x + r * w.cols, y + r * w.rows, p * kGroupsPerPiece,
                  std::min(groups, (p + 1) * kGroupsPerPiece));
  });
}

Index sparse_workspace_per_thread(const CsrMatrix& w) {
  // One (in x P) input panel and one (out x P) output panel, each rounded up
  // to a cache line so the next thread's block starts aligned.
  auto up = [](Index n) { return (n + 15) / 16 * 16; };
  return up(w.cols * kPanel) + up(w.rows * kPanel);
}

void sparse_matmul(const CsrMatrix& w, const float* x, Index batch, float* y, float* workspace,
                   int threads) {
  const Index in = w.cols, out = w.rows;
  // A nonzero costs a load of its index and weight besides the FMA: counted
  // as 8 flops when deciding whether the fork/join pays.
  const double work = 8.0 * static_cast<double>(w.nnz()) * static_cast<double>(batch);
  const Index full = batch / kPanel;
  const Index tail_rows = batch - full * kPanel;
  const Index tails = (tail_rows + kPanelTail - 1) / kPanelTail;
  const Index pieces = full + tails;
  const Index per_thread = sparse_workspace_per_thread(w);
  const int t = std::min(threads, threads_for(work, pieces));
  parallel_for(pieces, t, [&](Index p) {
    float* xt = workspace + static_cast<Index>(thread_slot()) * per_thread;
    float* yt = xt + (per_thread - (out * kPanel + 15) / 16 * 16);
    if (p < full) {
      const Index r0 = p * kPanel;
      pack_panel<kPanel>(x + r0 * in, kPanel, in, xt);
      panel_product<kPanel>(w, xt, kPanel, yt, y + r0 * out);
    } else {
      const Index r0 = full * kPanel + (p - full) * kPanelTail;
      const Index rows = std::min(kPanelTail, batch - r0);
      pack_panel<kPanelTail>(x + r0 * in, rows, in, xt);
      panel_product<kPanelTail>(w, xt, rows, yt, y + r0 * out);
    }
  });
}

// ---------------------------------------------------------------------------

SparseDense::SparseDense(Index in, Index units_, const Activation& a, const float* kernel,
                         const float* b, bool dense_single_rows)
    : units(units_), act(a), use_bias(b != nullptr) {
  require(in > 0 && units_ > 0, "SparseDense: in and units must be positive");
  in_features = in;
  out_features = units_ * activation_info(a.kind).width_factor;
  trainable = false;
  weights = csr_from_kernel(kernel, in, units_);
  if (dense_single_rows) {
    dense_kernel.resize(in * units_);
    std::copy(kernel, kernel + in * units_, dense_kernel.data());
  } else {
    sell = sell_from_csr(weights);
  }
  if (b) {
    bias.resize(units_);
    std::copy(b, b + units_, bias.data());
  }
}

void SparseDense::reserve_workspace() {
  const int t = std::max(1, num_threads());
  if (t > workspace_threads_) {
    workspace_.resize(static_cast<Index>(t) * sparse_workspace_per_thread(weights));
    workspace_threads_ = t;
  }
}

void SparseDense::plan(Index capacity) {
  if (activation_info(act.kind).width_factor != 1) z_.reserve(capacity * units);
  reserve_workspace();
}

void SparseDense::check_batch(Index /*batch*/, bool training) const {
  if (training)
    throw std::runtime_error(
        "SparseDense is predict-only (a model from optimize_for_inference() cannot train)");
}

void SparseDense::forward(const float* x, float* y, Index batch, const StepContext& ctx) {
  if (ctx.training) check_batch(batch, true);
  reserve_workspace();  // allocates only when the thread count grew since plan()
  float* z = activation_info(act.kind).width_factor == 1 ? y : z_.data();
  if (batch < kSparsePanelMin && dense_kernel.size() > 0)
    gemm(false, false, batch, units, in_features, x, in_features, dense_kernel.data(), units, z, units, false);
  else if (batch < kSparsePanelMin)
    sparse_matmul_small(sell, x, batch, z, workspace_threads_);
  else
    sparse_matmul(weights, x, batch, z, workspace_.data(), workspace_threads_);
  activation_forward(act, z, use_bias ? bias.data() : nullptr, y, batch, units,
                     ActContext{false, ctx.seed, stream, ctx.step});
}

void SparseDense::backward(const float*, const float*, float*, float*, Index, const StepContext&, bool) {
  throw std::runtime_error(
      "SparseDense is predict-only (a model from optimize_for_inference() cannot train)");
}

}  // namespace nerve
