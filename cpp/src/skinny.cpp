// Few-row dense products for inference; see skinny.hpp.
#include "nerve/skinny.hpp"

#include <algorithm>
#include <cstring>

#include "nerve/parallel.hpp"
#include "nerve/vec.hpp"

namespace nerve {

namespace {

using simd::v8;

// The level's register: a zmm of 16 floats at avx512 (where the packed
// kernel is 12 x 32 too), 8 floats elsewhere (one ymm at avx2, two xmm
// generic). Each element of C is one FMA chain over k in order at either
// width, so the width changes the speed, not the bits.
#if defined(NERVE_VEC_AVX512)
typedef float vec __attribute__((vector_size(64)));
constexpr int kRowBlock = 12;  // rows per register block: 24 accumulators + 2 B vectors + a broadcast
#else
typedef v8 vec;
constexpr int kRowBlock = 6;  // 12 accumulators + 2 B vectors + a broadcast
#endif
constexpr Index kPrefetchRows = 64;  // rows of B ahead (past the end is harmless: prefetches never fault)

template <class V>
constexpr Index lanes() { return sizeof(V) / sizeof(float); }
template <class V>
inline V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class V>
inline V splat(float a) {
  return a - V{};  // a in every lane, -0 kept (a + 0 would make it +0)
}

// C[0:MR, 0:L*NV] = A[0:MR, :] B[:, 0:L*NV], MR * NV accumulators of L lanes.
template <class V, int MR, int NV>
inline void block(Index K, const float* A, Index lda, const float* B, Index ldb, float* C, Index ldc) {
  constexpr Index L = lanes<V>();
  // The loops over m and v fully unrolled, so that the accumulators live in
  // registers (a 12-row block is past GCC's own unrolling limit).
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[m][v] = V{};
  for (Index k = 0; k < K; ++k) {
    // A strip walks down B's rows, a cache line or two a row and a new page
    // every few rows, where the hardware prefetchers stop: fetch ahead by hand.
#pragma GCC unroll 4
    for (Index l = 0; l < L * NV; l += 16) __builtin_prefetch(B + (k + kPrefetchRows) * ldb + l);
    V b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = load<V>(B + k * ldb + L * v);
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      const V a = splat<V>(A[m * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[m][v] += a * b[v];
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) std::memcpy(C + m * ldc + L * v, &acc[m][v], sizeof(V));
}

template <class V, int NV, int MR = kRowBlock>
void rows_block(Index rows, Index K, const float* a, Index lda, const float* B, Index ldb, float* c,
                Index ldc) {
  if constexpr (MR > 1) {
    if (rows < MR) return rows_block<V, NV, MR - 1>(rows, K, a, lda, B, ldb, c, ldc);
  }
  block<V, MR, NV>(K, a, lda, B, ldb, c, ldc);
}

// The M rows in ceil(M / kRowBlock) blocks of equal size (8 = 4 + 4, not
// 6 + 2: a 2-row block keeps too few accumulators busy).
template <class V, int NV>
void rows_of_strip(Index M, Index K, const float* A, Index lda, const float* B, Index ldb, float* C,
                   Index ldc) {
  const Index blocks = (M + kRowBlock - 1) / kRowBlock;
  Index m = 0;
  for (Index i = 0; i < blocks; ++i) {
    const Index rows = (M - m) / (blocks - i);
    rows_block<V, NV>(rows, K, A + m * lda, lda, B, ldb, C + m * ldc, ldc);
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
  // 1-3 rows: strips of 4 vectors, so that 2-3 rows still keep 8-12 FMA
  // chains in flight (an FMA waits 4 cycles on its accumulator, two issue
  // per cycle); more rows: strips of 2 vectors in blocks of kRowBlock rows.
  constexpr Index L = lanes<vec>();
  const Index width = M <= 3 ? 4 * L : 2 * L;
  const Index strips = N / width;
  const Index rest = N - strips * width;
  const Index pieces = strips + (rest > 0 ? 1 : 0);
  const int threads = threads_for(2.0 * static_cast<double>(M) * N * K, pieces);
  parallel_for(pieces, threads, [&](Index p) {
    if (p < strips) {
      if (width == 2 * L)
        rows_of_strip<vec, 2>(M, K, A, lda, B + p * width, ldb, C + p * width, ldc);
      else
        rows_of_strip<vec, 4>(M, K, A, lda, B + p * width, ldb, C + p * width, ldc);
      return;
    }
    // The rest of the columns 8 at a time (v8: one ymm), then one at a time.
    Index j = strips * width;
    for (; N - j >= 8; j += 8) rows_of_strip<v8, 1>(M, K, A, lda, B + j, ldb, C + j, ldc);
    if (j < N) tail_columns(M, j, N, K, A, lda, B, ldb, C, ldc);
  });
}

}  // namespace nerve
