// Dense products with few rows: C (M x N) = A (M x K) B (K x N),
// all row-major, 2 <= M <= kSkinnyMaxRows, B read in place.
//
// The packed GEMM copies all of B into panels on every call: at predict
// batches of 2-32 that copy (the reference MLP's 0.54M weights) cost about
// as much as the product itself, while onnxruntime packs its weights once.
// From about 16 rows on the packed kernel is as fast again (measured on the
// reference MLP, 1 thread), so that is where this one stops.
// Here B is streamed as it lies: for each strip of 16 columns (two vectors)
// and each block of up to 6 rows, 12 accumulators take one FMA per row per
// vector for every k (the 6 x 16 micro-kernel's register block, without the
// packing). The strip (K x 16 floats) stays in L2 across the row blocks, so
// B is read from memory once. Every element of C is one FMA chain over k in
// order, computed by one thread: the result does not depend on the thread
// count. Used by Dense's forward, in training as in inference: a training
// step at 2-16 rows packed all of W again on every step for a product that
// reads it once (the reference MLP's whole step: 0.78-0.96x the time at
// batches 2-16 on 1 and 2 threads; taken at 32 rows 0.94-1.01x, at 64
// 1.05-1.07x, so the bound stays at 16; bench/README.md).
#pragma once
#include "nerve/common.hpp"

namespace nerve {

constexpr Index kSkinnyMaxRows = 16;

// True when skinny_gemm takes this product (M rows, N columns, depth K).
bool skinny_applies(Index M, Index N, Index K);

// C = A B (assigned, not accumulated). lda, ldb, ldc: row strides.
void skinny_gemm(Index M, Index N, Index K, const float* A, Index lda, const float* B, Index ldb,
                 float* C, Index ldc);

}  // namespace nerve
