// Matrix products for the layers: nerve's own packed AVX2/FMA GEMM kernel
// (Eigen's in a build without AVX2 + FMA), matrix-vector products from Eigen.
//
// Threads split the output C into tiles whose shape depends only on (M, N, K),
// never on the thread count; each tile is one single-threaded product whose
// cache blocking also depends only on the tile's shape. Every element of C
// therefore sees the same sequence of floating-point operations whatever the
// number of threads: training is bit-reproducible on 1 or 2 (or 64) threads.
// Eigen's own threading chooses its k-blocking from the thread count, which
// would break that, so it is compiled out (EIGEN_DONT_PARALLELIZE).
//
// Per tile: one row or column -> Eigen's matrix-vector product; depth K <= 4
// (dW at batch 1-4) -> a single-pass rank-K update; otherwise a BLIS-style
// packed GEMM (6 x 16 micro-kernel) with this thread's packing buffer (grown
// once, kept), so a product allocates nothing. dW = X^T dZ with 2-12 output
// columns (a logits layer) skips packing: 8 rows of C per vector, N
// accumulators. See bench/README.md, "Levers".
#pragma once
#include "nerve/arena.hpp"
#include "nerve/common.hpp"

namespace nerve {

// C (M x N) = op(A) * op(B), or C += op(A) * op(B) when accumulate.
// All matrices row-major with leading dimensions lda, ldb, ldc (row strides).
// op(A) is M x K: A is M x K (lda >= K), or K x M transposed (lda >= M).
void gemm(bool trans_a, bool trans_b, Index M, Index N, Index K, const float* A, Index lda,
          const float* B, Index ldb, float* C, Index ldc, bool accumulate);

// op(B) (K x N: B row-major, or N x K read transposed) packed once for
// many products C = A op(B) with the same B: a predict-only model's kernel
// (optimize_for_inference), and a recurrent layer's W_hh over the time steps
// of one call (forward: H_{t-1} W_hh; backward: dZ_t W_hh^T). gemm packs B
// into micro-panels on every call, which at batches of 16-256 is 10-40% of
// the product (LSTM, hidden 512, batch 32: ~0.4 of a 1.0 ms step product
// packs the 4 MB W_hh; onnxruntime packs its weights once). Empty (nothing
// kept, gemm_prepacked is gemm) where this level's GEMM packs nothing
// (generic), for depths <= 4, one column, or more columns than one column
// block (N > 2048). Packing again at the same size reuses the buffer.
class PackedB {
 public:
  void pack(Index K, Index N, const float* B, Index ldb) { pack(false, K, N, B, ldb); }
  void pack(bool trans, Index K, Index N, const float* B, Index ldb);
  void clear() { data_ = AlignedBuffer(); k_ = n_ = 0; }
  bool empty() const { return k_ == 0; }
  bool trans() const { return trans_; }
  Index depth() const { return k_; }
  Index cols() const { return n_; }
  const float* data() const { return data_.data(); }

 private:
  Index k_ = 0, n_ = 0;
  bool trans_ = false;
  AlignedBuffer data_;
};

// C (M x N) = A (M x K) op(B) (+ C with accumulate), with `packed` made from
// this B with the same trans_b (or empty): the same bits as
// gemm(false, trans_b, ...), without packing B.
void gemm_prepacked(bool trans_b, Index M, Index N, Index K, const float* A, Index lda, const float* B,
                    Index ldb, const PackedB& packed, float* C, Index ldc, bool accumulate);
inline void gemm_prepacked(Index M, Index N, Index K, const float* A, Index lda, const float* B, Index ldb,
                           const PackedB& packed, float* C, Index ldc) {
  gemm_prepacked(false, M, N, K, A, lda, B, ldb, packed, C, ldc, false);
}

// Work on B's rows that gemm_b_pass does while it packs B, so that B is read
// once for all of it: backward's dW = X^T dZ applies the activation's
// derivative to dZ (in place) and sums its columns for the bias gradient in
// the sweep that packs dZ, instead of two passes of their own over dZ before.
struct BRowPass {
  // Rewrites B's row `row` (n floats at b) in place before it is packed
  // (and summed); null: B as it is.
  void (*rewrite)(const void* ctx, Index row, Index n, float* b) = nullptr;
  const void* ctx = nullptr;
  // When set: col_sums[j] (+)= sum over the rows of (rewritten) B[:, j],
  // summed in order within fixed blocks of rows (shape-only), the blocks'
  // sums then added in order: the same bits for any thread count.
  float* col_sums = nullptr;
  bool accumulate_sums = false;
};

// gemm (op(B) = B, not transposed) with B passed through `pass` row by row as
// it is packed. Returns false, touching nothing, when this product is not
// computed from one packing of all of B (small or column-tiled products, the
// generic build): the caller then makes the passes itself and calls gemm.
bool gemm_b_pass(bool trans_a, Index M, Index N, Index K, const float* A, Index lda, float* B,
                 Index ldb, float* C, Index ldc, bool accumulate, const BRowPass& pass);

// out[j] (+)= sum_i X[i, j] for a rows x cols row-major X: the bias gradient.
// Rows are summed in order, so the result does not depend on the thread count.
void column_sums(const float* X, Index rows, Index cols, float* out, bool accumulate);

// True when every value is finite; writes the first bad (row, col) otherwise.
bool all_finite(const float* X, Index rows, Index cols, Index* bad_row, Index* bad_col);

}  // namespace nerve
