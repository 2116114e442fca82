// Dense products with few rows: C (M x N) = A (M x K) B (K x N),
// all row-major, 2 <= M <= kSkinnyMaxRows, B read in place.
//
// The packed GEMM copies all of B into panels on every call: at batches of
// 2-32 that copy (the reference MLP's 0.54M weights) costs about as much as
// the product itself, while onnxruntime packs its weights once.
// Here B is streamed as it lies: for each strip of two vectors' columns and
// each block of up to kRowBlock rows (12 zmm / 6 ymm), the accumulators take
// one FMA per row per vector for every k (the packed micro-kernel's register
// block, without the packing). The strip (K x 32 or K x 16 floats) stays in
// L2 across the row blocks, so B is read from memory once. Every element of
// C is one FMA chain over k in order, computed by one thread: the result
// does not depend on the thread count or the vector width. Used by Dense's
// forward, in training as in inference (a training step packed all of W
// again on every step for a product that reads it once).
// Where it stops, measured on the reference MLP's whole training step
// (bench/ab_builds.py --bursts, bench/README.md "Levers"):
// - avx512 (zmm, 12-row blocks; Intel Xeon with two 512-bit FMA pipes,
//   2026-12-04): up to 32 rows 0.935-0.98x the packed kernel's step at
//   batches 24-32, at 48 rows 1.02-1.03x, so 32;
// - avx2 and generic (ymm, 6-row blocks; Zen 3/4): 0.78-0.96x at 2-16 rows,
//   at 32 rows 0.94-1.01x, at 64 1.05-1.07x, so 16.
#pragma once
#include "nerve/common.hpp"
#include "nerve/vec.hpp"

namespace nerve {

#if defined(NERVE_VEC_AVX512)
constexpr Index kSkinnyMaxRows = 32;
#else
constexpr Index kSkinnyMaxRows = 16;
#endif

// True when skinny_gemm takes this product (M rows, N columns, depth K).
bool skinny_applies(Index M, Index N, Index K);

// C = A B (assigned, not accumulated). lda, ldb, ldc: row strides.
void skinny_gemm(Index M, Index N, Index K, const float* A, Index lda, const float* B, Index ldb,
                 float* C, Index ldc);

}  // namespace nerve
