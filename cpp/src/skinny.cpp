// Few-row dense products for inference; see skinny.hpp.
#include "nerve/skinny.hpp"

#include <algorithm>
#include <cstring>

#include "nerve/parallel.hpp"
#include "nerve/vec.hpp"

namespace nerve {

namespace {

using simd::v8;
using simd::load8;
using simd::store8;
using simd::splat8;

constexpr Index kStrip = 16;  // columns per strip: two vectors
constexpr int kRowBlock = 6;  // rows per register block: 12 accumulators + 2 B vectors + a broadcast
constexpr Index kPrefetchRows = 64;  // rows of B ahead (past the end is harmless: prefetches never fault)

// C[0:MR, 0:8*NV] = A[0:MR, :] B[:, 0:8*NV], MR * NV accumulators.
template <int MR, int NV>
inline void block(Index K, const float* A, Index lda, const float* B, Index ldb, float* C, Index ldc) {
  v8 acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) acc[m][v] = splat8(0.0f);
  for (Index k = 0; k < K; ++k) {
    // A strip walks down B's rows, a cache line or two a row and a new page
    // every few rows, where the hardware prefetchers stop: fetch ahead by hand.
    __builtin_prefetch(B + (k + kPrefetchRows) * ldb);
    if (NV > 2) __builtin_prefetch(B + (k + kPrefetchRows) * ldb + 16);
    v8 b[NV];
    for (int v = 0; v < NV; ++v) b[v] = load8(B + k * ldb + 8 * v);
    for (int m = 0; m < MR; ++m) {
      const v8 a = splat8(A[m * lda + k]);
      for (int v = 0; v < NV; ++v) acc[m][v] += a * b[v];
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) store8(C + m * ldc + 8 * v, acc[m][v]);
}

template <int NV>
void rows_block(Index rows, Index K, const float* a, Index lda, const float* B, Index ldb, float* c,
                Index ldc) {
  switch (rows) {
    case 6: block<6, NV>(K, a, lda, B, ldb, c, ldc); break;
    case 5: block<5, NV>(K, a, lda, B, ldb, c, ldc); break;
    case 4: block<4, NV>(K, a, lda, B, ldb, c, ldc); break;
    case 3: block<3, NV>(K, a, lda, B, ldb, c, ldc); break;
    case 2: block<2, NV>(K, a, lda, B, ldb, c, ldc); break;
    default: block<1, NV>(K, a, lda, B, ldb, c, ldc); break;
  }
}

// The M rows in ceil(M / 6) blocks of equal size (8 = 4 + 4, not 6 + 2: a
// 2-row block keeps too few accumulators busy).
template <int NV>
void rows_of_strip(Index M, Index K, const float* A, Index lda, const float* B, Index ldb, float* C,
                   Index ldc) {
  const Index blocks = (M + kRowBlock - 1) / kRowBlock;
  Index m = 0;
  for (Index i = 0; i < blocks; ++i) {
    const Index rows = (M - m) / (blocks - i);
    rows_block<NV>(rows, K, A + m * lda, lda, B, ldb, C + m * ldc, ldc);
    m += rows;
  }
}

// The last N % 8 columns: one scalar FMA chain per element, k in order.
void tail_columns(Index M, Index n0, Index N, Index K, const float* A, Index lda, const float* B,
                  Index ldb, float* C, Index ldc) {
  for (Index m = 0; m < M; ++m)
    for (Index j = n0; j < N; ++j) {
      float s = 0.0f;
      for (Index k = 0; k < K; ++k) s = __builtin_fmaf(A[m * lda + k], B[k * ldb + j], s);
      C[m * ldc + j] = s;
    }
}

}  // namespace

bool skinny_applies(Index M, Index N, Index K) {
  return M >= 2 && M <= kSkinnyMaxRows && N >= 8 && K >= 16;
}

void skinny_gemm(Index M, Index N, Index K, const float* A, Index lda, const float* B, Index ldb,
                 float* C, Index ldc) {
  // 1-3 rows: strips of 32 columns (4 vectors), so that 2-3 rows still keep
  // 8-12 FMA chains in flight (an FMA waits 4 cycles on its accumulator, two
  // issue per cycle); more rows: 16 columns in blocks of 6 rows.
  const Index width = M <= 3 ? 2 * kStrip : kStrip;
  const Index strips = N / width;
  const Index rest = N - strips * width;
  const Index pieces = strips + (rest > 0 ? 1 : 0);
  const int threads = threads_for(2.0 * static_cast<double>(M) * N * K, pieces);
  parallel_for(pieces, threads, [&](Index p) {
    if (p < strips) {
      if (width == kStrip)
        rows_of_strip<2>(M, K, A, lda, B + p * width, ldb, C + p * width, ldc);
      else
        rows_of_strip<4>(M, K, A, lda, B + p * width, ldb, C + p * width, ldc);
      return;
    }
    Index j = strips * width;
    for (; N - j >= 8; j += 8) rows_of_strip<1>(M, K, A, lda, B + j, ldb, C + j, ldc);
    if (j < N) tail_columns(M, j, N, K, A, lda, B, ldb, C, ldc);
  });
}

}  // namespace nerve
