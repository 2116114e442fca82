// Sparse kernels for pruned models at inference (model.optimize_for_inference).
//
// A pruned kernel W (in x out, row-major, mostly zeros) is stored as CSR of
// W^T: row j lists the inputs i with W[i, j] != 0 and their weights, so
// output j is one sparse dot product with the input row.
//
// Two products, chosen by batch size (docs/interop.md, "Fast inference"):
//   batch < kSparsePanelMin: SELL-8 (sliced ELLPACK, rows sorted by length):
//     outputs in groups of 8 with similar nonzero counts, each step eight
//     inputs gathered into one vector times 8 weights (one FMA per 8
//     nonzeros; the gather is 8 scalar loads, which beat vgatherdps on Zen 3);
//   larger batches: rows are transposed in panels of P = 32 (then 8) into a
//     per-thread (in x P) block, so each nonzero is one broadcast weight times
//     P contiguous inputs (four AVX2 FMAs for P = 32), accumulated in
//     registers; the (out x P) result is transposed back.
// Every output element is computed by one thread in a fixed order, so the
// result does not depend on the thread count. After plan() nothing allocates.
#pragma once
#include <cstdint>
#include <vector>

#include "nerve/layer.hpp"

namespace nerve {

// W^T in compressed sparse rows: row j holds the nonzero inputs of output j.
struct CsrMatrix {
  Index rows = 0;                      // outputs (W's columns)
  Index cols = 0;                      // inputs (W's rows)
  std::vector<std::int32_t> row_ptr;   // rows + 1 offsets into index/value
  std::vector<std::int32_t> index;     // input index of each nonzero, ascending within a row
  AlignedBuffer value;                 // the nonzero weights
  Index nnz() const { return row_ptr.empty() ? 0 : row_ptr.back(); }
};

// CSR of W^T from a dense kernel w (in x out, row-major). Exact zeros are dropped.
CsrMatrix csr_from_kernel(const float* w, Index in, Index out);

// Sliced ELLPACK with slice height 8 over the rows of W^T sorted by length
// (SELL-8-sigma, sigma = all rows; Kreutzer et al. 2014). Group g holds the
// outputs perm[8g .. 8g+7] (-1: padding) and slices group_ptr[g] ..
// group_ptr[g+1]-1, each 8 (input index, weight) pairs, zero-padded.
struct SellMatrix {
  Index rows = 0, cols = 0;
  std::vector<std::int32_t> group_ptr;  // groups + 1 slice offsets
  std::vector<std::int32_t> perm;       // 8 * groups output indices
  std::vector<std::int32_t> index;      // 8 per slice
  AlignedBuffer value;                  // 8 per slice
};
SellMatrix sell_from_csr(const CsrMatrix& csr);

// Below this many rows the gather product runs; from it on, the panels.
constexpr Index kSparsePanelMin = 2;

// Floats of workspace sparse_matmul needs per thread.
Index sparse_workspace_per_thread(const CsrMatrix& w);

// y (batch x w.rows) = x (batch x w.cols) W. workspace: threads *
// sparse_workspace_per_thread(w) floats, 64-byte aligned. threads: the
// threads the caller allows (fewer are used on small products).
void sparse_matmul(const CsrMatrix& w, const float* x, Index batch, float* y, float* workspace,
                   int threads);
// The same product for batch < kSparsePanelMin through the SELL-8 copy.
void sparse_matmul_small(const SellMatrix& w, const float* x, Index batch, float* y, int threads);

// A Dense layer whose kernel runs sparse: y = act(x W + b). Predict-only:
// the weights are a copy (CSR), there are no parameters and backward throws.
class SparseDense : public Layer {
 public:
  // kernel: in x units, row-major; bias: units floats or null.
  // dense_single_rows: keep a dense copy for batches below kSparsePanelMin,
  // where the gather product only wins at high sparsity (~0.87 measured).
  SparseDense(Index in, Index units, const Activation& act, const float* kernel, const float* bias,
              bool dense_single_rows = false);
  std::string type() const override { return "SparseDense"; }
  void plan(Index capacity) override;
  void forward(const float* x, float* y, Index batch, const StepContext& ctx) override;
  void backward(const float* x, const float* y, float* dy, float* dx, Index batch,
                const StepContext& ctx, bool accumulate) override;
  void check_batch(Index batch, bool training) const override;

  Index units;
  Activation act;
  bool use_bias;
  CsrMatrix weights;
  SellMatrix sell;  // the same weights for batches below kSparsePanelMin
  AlignedBuffer dense_kernel;  // or a dense copy for them (dense_single_rows)
  AlignedBuffer bias;

 private:
  void reserve_workspace();
  AlignedBuffer z_;          // pre-activation when the activation changes the width (crelu)
  AlignedBuffer workspace_;  // per-thread panels
  int workspace_threads_ = 0;
};

}  // namespace nerve
