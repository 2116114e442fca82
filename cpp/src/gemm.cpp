#include "nerve/gemm.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <new>

#include <Eigen/Core>

#include "nerve/parallel.hpp"

namespace nerve {
namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMap = Eigen::Map<const RowMat, Eigen::Unaligned, Eigen::OuterStride<>>;
using MutMap = Eigen::Map<RowMat, Eigen::Unaligned, Eigen::OuterStride<>>;

// Tile edges. Rows of C are split when there are many (large batches, or the
// dW = X^T dZ product with many input features); columns when the rows alone
// give too few tiles. A tile of ~256 rows re-packs B once per tile, which costs
// ~1/(2*256) of the tile's flops: negligible. Row tiles are made equal (a
// multiple of 8 rows) so that they share out evenly: 784 rows become 4 x ~200,
// not 3 x 256 + 16, which left one of 2 threads idle a third of the time
// (bench/README.md, "Levers").
constexpr Index kTileRows = 256;
constexpr Index kTileCols = 128;

struct Tiling {
  Index row_tile, col_tile, row_tiles, col_tiles;
};

Index ceil_div(Index a, Index b) { return (a + b - 1) / b; }

Tiling choose_tiling(Index M, Index N, Index K) {
  Tiling t{M, N, 1, 1};
  // Small products stay whole: one tile, no split overhead.
  if (2.0 * static_cast<double>(M) * N * K < 4.0 * kParallelFlops) return t;
  if (M > kTileRows) {
    const Index pieces = ceil_div(M, kTileRows);
    t.row_tile = ceil_div(ceil_div(M, pieces), 8) * 8;
    t.row_tiles = ceil_div(M, t.row_tile);
  }
  if (t.row_tiles < 4 && N > kTileCols) {
    t.col_tile = kTileCols;
    t.col_tiles = ceil_div(N, kTileCols);
  }
  return t;
}

// Eigen's GEMM kernel called directly, with its packing buffers supplied by
// us. Through the expression API (c = a * b) Eigen mallocs and frees those
// buffers on every product larger than EIGEN_STACK_ALLOCATION_LIMIT (128 KB),
// i.e. several times per training step; here each thread keeps its own
// buffers, grown on first use, so a step allocates nothing. The blocking sizes
// are Eigen's own heuristic for the tile, so the arithmetic (and the result)
// is the same as Eigen's product.
// This thread's packing buffer of at least n floats (64-byte aligned), grown
// on demand and kept for the thread's life. Not an AlignedBuffer: its
// allocation counter is not atomic, and two threads may grow theirs at once.
float* workspace(Index n) {
  struct Buffer {
    float* data = nullptr;
    Index size = 0;
    ~Buffer() { std::free(data); }
  };
  thread_local Buffer buf;
  if (n > buf.size) {
    std::free(buf.data);
    const std::size_t bytes = (static_cast<std::size_t>(n) * sizeof(float) + 63) / 64 * 64;
    buf.data = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!buf.data) throw std::bad_alloc();
    buf.size = n;
  }
  return buf.data;
}

class Blocking : public Eigen::internal::level3_blocking<float, float> {
 public:
  Blocking(Index m, Index n, Index K) {
    // Row-major C is computed as the column-major C^T = op(B)^T op(A)^T:
    // Eigen's "rows" are our n, its "cols" our m.
    m_mc = n;
    m_nc = m;
    m_kc = K;
    Eigen::internal::computeProductBlockingSizes<float, float>(m_kc, m_mc, m_nc, Index(1));
    const Index size_a = ceil_div(m_kc * m_mc, 16) * 16, size_b = m_kc * m_nc;
    m_blockA = workspace(size_a + size_b);
    m_blockB = m_blockA + size_a;
  }
};

template <int OrderA, int OrderB>
void eigen_gemm(Index m, Index n, Index K, const float* A, Index lda, const float* B, Index ldb,
                float* C, Index ldc) {
  Blocking blocking(m, n, K);
  Eigen::internal::general_matrix_matrix_product<Index, float, OrderA, false, float, OrderB, false,
                                                 Eigen::RowMajor, 1>::run(m, n, K, A, lda, B, ldb,
                                                                          C, 1, ldc, 1.0f, blocking);
}

// A product of depth K <= 4 is a rank-K update: dW = X^T dZ on a batch of 1 to
// 4 rows. Eigen's GEMM would zero C, pack both operands and then read and
// write C again; here C is written once, each element as
// c = (accumulate ? c : 0) + a_0 b_0 + ... in that order (FMA). At batch 1
// this is the largest memory pass of the step after the optimizer's
// (bench/README.md, "Levers").
constexpr Index kSmallDepth = 4;

template <int KD>
void small_depth(bool trans_a, bool trans_b, Index m, Index n, const float* A, Index lda,
                 const float* B, Index ldb, float* C, Index ldc, bool accumulate) {
  for (Index i = 0; i < m; ++i) {
    float a[KD];
    for (int k = 0; k < KD; ++k) a[k] = trans_a ? A[k * lda + i] : A[i * lda + k];
    float* __restrict c = C + i * ldc;
    if (!trans_b) {
#pragma omp simd
      for (Index j = 0; j < n; ++j) {
        float acc = accumulate ? c[j] : 0.0f;  // never 0 * c: C may hold NaN garbage
        for (int k = 0; k < KD; ++k) acc = std::fma(a[k], B[k * ldb + j], acc);
        c[j] = acc;
      }
    } else {
      for (Index j = 0; j < n; ++j) {
        float acc = accumulate ? c[j] : 0.0f;  // never 0 * c: C may hold NaN garbage
        for (int k = 0; k < KD; ++k) acc = std::fma(a[k], B[j * ldb + k], acc);
        c[j] = acc;
      }
    }
  }
}

void gemm_tile(bool trans_a, bool trans_b, Index m, Index n, Index K, const float* A, Index lda,
               const float* B, Index ldb, float* C, Index ldc, bool accumulate) {
  if (K <= kSmallDepth && m > 1 && n > 1) {
    switch (K) {
      case 1: small_depth<1>(trans_a, trans_b, m, n, A, lda, B, ldb, C, ldc, accumulate); break;
      case 2: small_depth<2>(trans_a, trans_b, m, n, A, lda, B, ldb, C, ldc, accumulate); break;
      case 3: small_depth<3>(trans_a, trans_b, m, n, A, lda, B, ldb, C, ldc, accumulate); break;
      default: small_depth<4>(trans_a, trans_b, m, n, A, lda, B, ldb, C, ldc, accumulate); break;
    }
    return;
  }
  // A single row or column is a matrix-vector product, and a tiny product is
  // coefficient-based: Eigen's expressions pick those kernels (stack
  // temporaries at most), as its own GEMM dispatch would.
  if (m == 1 || n == 1 || m + n + K < 20) {
    MutMap c(C, m, n, Eigen::OuterStride<>(ldc));
    auto run = [&](const auto& a, const auto& b) {
      if (accumulate)
        c.noalias() += a * b;
      else
        c.noalias() = a * b;
    };
    if (!trans_a && !trans_b)
      run(ConstMap(A, m, K, Eigen::OuterStride<>(lda)), ConstMap(B, K, n, Eigen::OuterStride<>(ldb)));
    else if (!trans_a && trans_b)
      run(ConstMap(A, m, K, Eigen::OuterStride<>(lda)),
          ConstMap(B, n, K, Eigen::OuterStride<>(ldb)).transpose());
    else if (trans_a && !trans_b)
      run(ConstMap(A, K, m, Eigen::OuterStride<>(lda)).transpose(),
          ConstMap(B, K, n, Eigen::OuterStride<>(ldb)));
    else
      run(ConstMap(A, K, m, Eigen::OuterStride<>(lda)).transpose(),
          ConstMap(B, n, K, Eigen::OuterStride<>(ldb)).transpose());
    return;
  }
  if (!accumulate)
    for (Index i = 0; i < m; ++i) std::fill(C + i * ldc, C + i * ldc + n, 0.0f);
  // op(A) = A^T of a row-major K x m A is a column-major m x K matrix with the same stride.
  if (!trans_a && !trans_b)
    eigen_gemm<Eigen::RowMajor, Eigen::RowMajor>(m, n, K, A, lda, B, ldb, C, ldc);
  else if (!trans_a && trans_b)
    eigen_gemm<Eigen::RowMajor, Eigen::ColMajor>(m, n, K, A, lda, B, ldb, C, ldc);
  else if (trans_a && !trans_b)
    eigen_gemm<Eigen::ColMajor, Eigen::RowMajor>(m, n, K, A, lda, B, ldb, C, ldc);
  else
    eigen_gemm<Eigen::ColMajor, Eigen::ColMajor>(m, n, K, A, lda, B, ldb, C, ldc);
}

}  // namespace

void gemm(bool trans_a, bool trans_b, Index M, Index N, Index K, const float* A, Index lda,
          const float* B, Index ldb, float* C, Index ldc, bool accumulate) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!accumulate)
      for (Index i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, 0.0f);
    return;
  }
  const Tiling t = choose_tiling(M, N, K);
  const Index tiles = t.row_tiles * t.col_tiles;
  const int threads = threads_for(2.0 * static_cast<double>(M) * N * K, tiles);
  parallel_for(tiles, threads, [&](Index tile) {
    const Index r0 = (tile / t.col_tiles) * t.row_tile;
    const Index c0 = (tile % t.col_tiles) * t.col_tile;
    const Index m = std::min(t.row_tile, M - r0);
    const Index n = std::min(t.col_tile, N - c0);
    // Offsets into op(A) rows and op(B) columns.
    const float* a = trans_a ? A + r0 : A + r0 * lda;
    const float* b = trans_b ? B + c0 * ldb : B + c0;
    gemm_tile(trans_a, trans_b, m, n, K, a, lda, b, ldb, C + r0 * ldc + c0, ldc, accumulate);
  });
}

void column_sums(const float* X, Index rows, Index cols, float* out, bool accumulate) {
  // Column blocks are independent; within a block rows are added in order.
  constexpr Index kBlock = 256;
  const Index blocks = (cols + kBlock - 1) / kBlock;
  const int threads = threads_for(static_cast<double>(rows) * cols, blocks);
  parallel_for(blocks, threads, [&](Index blk) {
    const Index c0 = blk * kBlock, c1 = std::min(cols, c0 + kBlock);
    float acc[kBlock];
    for (Index j = c0; j < c1; ++j) acc[j - c0] = accumulate ? out[j] : 0.0f;
    for (Index i = 0; i < rows; ++i) {
      const float* row = X + i * cols;
#pragma omp simd
      for (Index j = c0; j < c1; ++j) acc[j - c0] += row[j];
    }
    for (Index j = c0; j < c1; ++j) out[j] = acc[j - c0];
  });
}

bool all_finite(const float* X, Index rows, Index cols, Index* bad_row, Index* bad_col) {
  const Index n = rows * cols;
  // A branch-free pass first (vectorizes); locate the culprit only on failure.
  float probe = 0.0f;
#pragma omp simd reduction(+ : probe)
  for (Index i = 0; i < n; ++i) probe += X[i] * 0.0f;
  if (probe == 0.0f) return true;
  for (Index i = 0; i < n; ++i) {
    if (!std::isfinite(X[i])) {
      if (bad_row) *bad_row = i / cols;
      if (bad_col) *bad_col = i % cols;
      return false;
    }
  }
  return true;  // unreachable in practice: x*0 is NaN only for NaN/Inf
}

}  // namespace nerve
