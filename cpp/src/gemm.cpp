#include "nerve/gemm.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <new>
#include <type_traits>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include <Eigen/Core>

#include "nerve/parallel.hpp"
#include "nerve/vec.hpp"

// The 12 x 32 zmm micro-kernel (NERVE_AVX512_GEMM=ON in CMake) at the avx512
// level; off by default: on the shared 2-core Zen 4 VM it was not shown
// faster than the 6 x 16 ymm kernel (docs/design.md, "GEMM per level"), and
// the avx512 level must never be slower than avx2. Off, the avx512 level runs
// the avx2 table below, compiled with AVX-512 enabled.
#if defined(NERVE_VEC_AVX512) && defined(NERVE_AVX512_GEMM)
#define NERVE_GEMM_ZMM 1
#endif

// The avx512 level's cache blocks (overridable for the blocking sweep in docs/design.md).
#ifndef NERVE_GEMM_KC
#define NERVE_GEMM_KC 256
#endif
#ifndef NERVE_GEMM_MC
#define NERVE_GEMM_MC 96
#endif

namespace nerve {
namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMap = Eigen::Map<const RowMat, Eigen::Unaligned, Eigen::OuterStride<>>;
using MutMap = Eigen::Map<RowMat, Eigen::Unaligned, Eigen::OuterStride<>>;

// Tile edges. Rows of C are split when there are many (large batches, or the
// dW = X^T dZ product with many input features); columns when the rows alone
// give too few tiles. Each tile packs its own copy of the op(B) columns it
// needs, and of op(A) when A is transposed (dW); packing is memory-bound
// (~0.3 ns a float against ~5 ns of arithmetic per float of a 256-row tile),
// so the tile edges trade that cost against enough tiles for the threads.
// Products with a row-major A (forward, dX: rows = batch) use row tiles of up
// to 512 (B packed half as often as with 256: 1-3% faster at batch 512-2048);
// dW keeps 256-row tiles and splits its columns 256 wide, not 128 (A packed
// once per row tile instead of twice: dW 512x2048x256 80 -> 85 GFLOP/s).
// Row tiles share out the rows evenly: 784 rows become 4 tiles of ~196, not
// 3 x 256 + 16, which left one of 2 threads idle a third of the time
// (bench/README.md, "Levers"), and their edges fall on the micro-kernel's
// 6-row panels (a partial panel costs a whole one; see row_start).
constexpr Index kTileRows = 512;
constexpr Index kTileRowsTransposedA = 256;
constexpr Index kTileCols = 128;
constexpr Index kTileColsTransposedA = 256;
constexpr Index kMinHalfRows = 64;  // rows of each half of a small product split in two
constexpr Index kMinTiles = 4;  // what a product worth splitting is cut into at least
constexpr Index kVectorChunks = 2;        // depth chunks of a row vector times a matrix
constexpr Index kVectorDepthChunk = 128;  // ... of at least this many rows
constexpr Index kMinSplitRows = 48;
constexpr Index kMinSplitCols = 64;

// op(B) packed for a whole product (pack_whole_b, or a PackedB kept across
// calls), seen from one tile: the packing, op(B)'s column count, and the
// column where the tile starts. base null: the tile packs its own blocks.
struct PrepackedB {
  const float* base = nullptr;
  Index n_whole = 0;
  Index col0 = 0;
};

// Row tiles are placed by row_start; columns in tiles of col_tile.
struct Tiling {
  Index col_tile, row_tiles, col_tiles;
};

Index ceil_div(Index a, Index b) { return (a + b - 1) / b; }

// The edge of `pieces` equal blocks covering `total`, rounded up to `unit`
// (the last block may be shorter).
Index equal_blocks(Index total, Index pieces, Index unit) {
  return ceil_div(ceil_div(total, pieces), unit) * unit;
}

// The same with as few blocks as keep each within `cap`: K = 1000 under a cap
// of 392 gives 3 x 334, not 2 x 392 + 216.
Index balanced_block(Index total, Index cap, Index unit) {
  return equal_blocks(total, ceil_div(total, cap), unit);
}

// The GEMM of each CPU level, one row of a table as BLIS's cntx_init files:
//   level    micro-kernel                  MR  NR  KC   MC   NC
//   avx512   12 x 32, 24 zmm accumulators  12  32  256  96   2048  (NERVE_AVX512_GEMM=ON)
//   avx512   as avx2 (the default)
//   avx2     6 x 16, 12 ymm accumulators    6  16  392  72   2048
//   generic  Eigen's own GEMM kernel (its blocking), 6 x 16 tiles
// The level is fixed at compile time (each level is its own build), so the
// table is constants. Tiles, panels and cache blocks depend on the shape and
// these constants alone: the same bits for any thread count within a level.
// Tile edges are a whole number of micro-kernel rows and columns.
#if defined(NERVE_GEMM_ZMM)
constexpr Index kRowQuantum = 12;
constexpr Index kColQuantum = 32;
#else
constexpr Index kRowQuantum = 6;
constexpr Index kColQuantum = 16;
#endif

// How many row tiles M rows make when cut into `pieces` equal tiles of whole
// panels (at most `pieces`).
Index row_tile_count(Index M, Index pieces) { return ceil_div(M, equal_blocks(M, pieces, kRowQuantum)); }

Tiling choose_tiling(bool trans_a, Index M, Index N, Index K) {
  Tiling t{N, 1, 1};
  const double flops = 2.0 * static_cast<double>(M) * N * K;
  if (flops < 4.0 * kParallelFlops) {
    // A small product is one tile, unless it is still worth two threads: the
    // logits layer's (N or K = 10) took ~150 us of a 7.5 ms 2-thread step at
    // batch 512 on one thread while the other waited. A shallow product is
    // bound by writing C, not by its flops (its dX, 512 x 256 x 10: 64 us),
    // so C's streaming work counts too. Two row tiles then, whatever the
    // thread count, so results never depend on it.
    const double work = std::max(flops, stream_work(static_cast<double>(M) * N));
    if (work >= kParallelFlops && M >= 2 * kMinHalfRows) t.row_tiles = row_tile_count(M, 2);
    return t;
  }
  const Index row_cap = trans_a ? kTileRowsTransposedA : kTileRows;
  if (M > row_cap) t.row_tiles = row_tile_count(M, ceil_div(M, row_cap));
  const Index col_tile = trans_a ? kTileColsTransposedA : kTileCols;
  if (t.row_tiles < 4 && N > col_tile) {
    t.col_tile = col_tile;
    t.col_tiles = ceil_div(N, col_tile);
  }
  // Still too few tiles to share (a 128-wide layer: 512 x 128 x 128, and its
  // dW 128 x 128 x batch, were one tile, so the deep model's step ran on one
  // thread of two): cut the rows further, to tiles of at least kMinSplitRows,
  // then the columns, to at least kMinSplitCols.
  if (t.row_tiles * t.col_tiles < kMinTiles) {
    const Index rows = std::min<Index>(kMinTiles / t.col_tiles, M / kMinSplitRows);
    if (rows > t.row_tiles) t.row_tiles = row_tile_count(M, rows);
    const Index cols = std::min<Index>(ceil_div(kMinTiles, t.row_tiles), N / kMinSplitCols);
    if (cols > t.col_tiles) {
      t.col_tile = equal_blocks(N, cols, kColQuantum);
      t.col_tiles = ceil_div(N, t.col_tile);
    }
  }
  return t;
}

// Where row tile i starts (i = row_tiles: M). The edges share out the 6-row
// micro-panels so that tile sizes differ by at most one panel and the larger
// ones are spread out (floor(i P / T) panels before tile i): a static split
// of the tiles over the threads is then as even as the panels allow. With
// equal tiles and the remainder last, 512 rows in 4 tiles of 132 (22, 22,
// 22, 20 panels) gave two threads 44 and 42 panels; as 21, 22, 21, 22 they
// get 43 each.
Index row_start(const Tiling& t, Index M, Index i) {
  const Index panels = ceil_div(M, kRowQuantum);
  return std::min(M, kRowQuantum * (i * panels / t.row_tiles));
}

// This thread's packing buffer of at least n floats (64-byte aligned), grown
// on demand and kept for the thread's life. Not an AlignedBuffer: its
// allocation counter is not atomic, and two threads may grow theirs at once.
// Slot 0: the tile's own packing; slot 1: op(B) packed once for a whole
// product by the calling thread (shared_packed_b), which is also a tile worker.
template <int Slot = 0>
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

#if defined(__AVX2__) && defined(__FMA__)
// BLIS-style GEMM for one tile. op(B) is copied into NR-column micro-panels
// and op(A) into MR-row micro-panels (zero-padded at the edges) so that the
// micro-kernel reads them contiguously whatever the transposes; a row-major
// op(A) is mostly read in place (packed_gemm says when). The micro-kernel
// keeps a 6 x 16 block of C in 12 ymm accumulators (Zen 3: 2 FMA/cycle x 4
// cycles of latency needs >= 8 independent chains), with 2 B loads and 6
// broadcasts of A per k; it runs at ~100 GFLOP/s on L1-resident panels on
// the 2-core EPYC (numpy's OpenBLAS peaks at ~95 on 2048^3). Measured
// against Eigen 3.4's kernel, which this replaces (1 thread, CPU time, medians
// of 5 interleaved runs): 1.03-1.11x on the MLPs' products with 128 or more
// columns, 1.2-1.35x on their 10-column ones, tie on dW of the deep model's
// 128 x 128 layers at batch 2048.
constexpr Index kMR = kRowQuantum, kNR = kColQuantum;
// Cache blocks for Zen 3 (32 KB L1d, 512 KB L2 per core). A kc x NR
// micro-panel of B (25 KB at kc = 392) stays in L1 while the micro-kernel
// sweeps the mc rows of A past it; the mc x kc block of A (113 KB) stays in
// L2. The kc x nc block of B may live in L3 (each micro-panel of it is read
// from there once per mc block). Each bound is a cap: blocks are balanced
// (K = 1000 gives 3 x 334, not 2 x 392 + 216) and depend on the tile shape
// alone, so every element of C sees the same sums whatever the thread.
// Measured (1 thread, 2048 x 2048 x 2048 and the MLPs' shapes, best of
// interleaved runs on a shared machine): kc = 384 and mc = 72 beat 256/144
// by 2-5% on the large products and tie on the rest; 192, 320, 512 and
// mc = 48, 96, 144, 264 were no better. 392 rather than 384 puts a
// 784-feature input (28 x 28 images) in 2 depth blocks instead of 3 x 262,
// so C is read and written once less: the forward 512 x 784 x 512 ran 1%
// faster on 1 and 2 threads, at batch 512 and 2048 (BM_gemm, best of 5,
// 3 alternating rounds); no other benchmarked depth changes.
#if defined(NERVE_GEMM_ZMM)
// Zen 4 (32 KB L1d, 1 MB L2 per core): a kc x 32 micro-panel of B is 32 KB
// at kc = 256 (128 bytes a k), the L1 with A's broadcasts streaming past it;
// the 96 x 256 block of A (96 KB) stays in L2. See docs/design.md for the
// measurements.
constexpr Index kMaxKC = NERVE_GEMM_KC, kMaxMC = NERVE_GEMM_MC, kMaxNC = 2048;
#else
constexpr Index kMaxKC = 392, kMaxMC = 72, kMaxNC = 2048;
#endif

// In-register transpose of 8 rows of 8 floats.
inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

// Packs the mc x kc block of a transposed op(A) (op(A)[i][k] = a[k lda + i])
// into MR-row micro-panels: panel p holds, for k = 0..kc-1, the MR values
// op(A)[p MR + r][k], missing rows 0.
#if defined(NERVE_GEMM_ZMM)
// AVX-512: one masked 16-lane load and one masked 12-lane store per panel and
// k (nothing read past a panel's last row, nothing written past its slot).
void pack_a_transposed(Index mc, Index kc, const float* a, Index lda, float* dst) {
  const Index panels = ceil_div(mc, kMR), panel_size = kMR * kc;
  const __mmask16 full = static_cast<__mmask16>((1u << kMR) - 1u);
  const __mmask16 last = static_cast<__mmask16>((1u << (mc - (panels - 1) * kMR)) - 1u);
  for (Index k = 0; k < kc; ++k) {
    const float* row = a + k * lda;
    for (Index i = 0; i < mc; i += 16)
      _mm_prefetch(reinterpret_cast<const char*>(row + 8 * lda + i), _MM_HINT_T0);
    float* d = dst + k * kMR;
    for (Index p = 0; p < panels; ++p, d += panel_size) {
      const __m512 v = _mm512_maskz_loadu_ps(p + 1 < panels ? full : last, row + p * kMR);
      _mm512_mask_storeu_ps(d, full, v);
    }
  }
}
#else
void pack_a_transposed(Index mc, Index kc, const float* a, Index lda, float* dst) {
  const Index panels = ceil_div(mc, kMR), panel_size = kMR * kc;
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  // Masked loads neither read nor fault past a panel's last row.
  const __m256i full = _mm256_cmpgt_epi32(_mm256_set1_epi32(kMR), lanes);
  const __m256i last = _mm256_cmpgt_epi32(
      _mm256_set1_epi32(static_cast<int>(mc - (panels - 1) * kMR)), lanes);
  // Row by row of a, so that each is read contiguously (panel by panel, each
  // pass would fetch a cache line per row for 6 floats of it). An 8-lane
  // store spills 2 lanes into the panel's next k slot, written afterwards;
  // the last k, whose spill would hit the next panel, is stored as 4 + 2.
  for (Index k = 0; k < kc; ++k) {
    const float* row = a + k * lda;
    // The rows lie lda apart, too far for the hardware prefetchers to run
    // ahead: fetch row k + 8 now (measured +1-2% on dW at batch 2048).
    for (Index i = 0; i < mc; i += 16)
      _mm_prefetch(reinterpret_cast<const char*>(row + 8 * lda + i), _MM_HINT_T0);
    float* d = dst + k * kMR;
    for (Index p = 0; p < panels; ++p, d += panel_size) {
      const __m256 v = _mm256_maskload_ps(row + p * kMR, p + 1 < panels ? full : last);
      if (k + 1 < kc) {
        _mm256_storeu_ps(d, v);
      } else {
        _mm_storeu_ps(d, _mm256_castps256_ps128(v));
        _mm_storel_pi(reinterpret_cast<__m64*>(d + 4), _mm256_extractf128_ps(v, 1));
      }
    }
  }
}
#endif

// Packs the mc x kc block of a row-major op(A) (op(A)[i][k] = a[i lda + k])
// into the same micro-panels, 8 k at a time: 6 rows (+2 zero rows) of 8 are
// transposed and each k's 8 lanes stored at its 6-float slot; the 2 extra
// lanes land in the next slot, which the next store overwrites. Writes up to
// 2 floats past the last panel (the caller leaves room).
void pack_a_rows(Index mc, Index kc, const float* a, Index lda, float* dst) {
  for (Index i0 = 0; i0 < mc; i0 += kMR, dst += kMR * kc) {
    const Index rows = std::min(kMR, mc - i0);
    const float* row = a + i0 * lda;
    Index k = 0;
    if (rows == kMR) {
#if defined(NERVE_GEMM_ZMM)
      // 12 rows as two 8 x 8 transposes (rows 0-7, rows 8-11 and 4 zero
      // rows); the second group's 4 extra lanes spill into the next slot,
      // which the next store overwrites (4 floats past the last panel).
      for (; k + 8 <= kc; k += 8) {
        __m256 r[8], q[8];
        for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(row + i * lda + k);
        for (int i = 0; i < 4; ++i) q[i] = _mm256_loadu_ps(row + (8 + i) * lda + k);
        for (int i = 4; i < 8; ++i) q[i] = _mm256_setzero_ps();
        transpose8(r);
        transpose8(q);
        for (int t = 0; t < 8; ++t) {
          _mm256_storeu_ps(dst + (k + t) * kMR, r[t]);
          _mm256_storeu_ps(dst + (k + t) * kMR + 8, q[t]);
        }
      }
#else
      for (; k + 8 <= kc; k += 8) {
        __m256 r[8];
        for (int i = 0; i < kMR; ++i) r[i] = _mm256_loadu_ps(row + i * lda + k);
        r[6] = r[7] = _mm256_setzero_ps();
        transpose8(r);
        for (int t = 0; t < 8; ++t) _mm256_storeu_ps(dst + (k + t) * kMR, r[t]);
      }
#endif
    }
    for (; k < kc; ++k)
      for (Index r = 0; r < kMR; ++r) dst[k * kMR + r] = r < rows ? row[r * lda + k] : 0.0f;
  }
}

// Packs the kc x nc block of op(B) at `b` into NR-column micro-panels: panel p
// holds, for k = 0..kc-1, the NR values op(B)[k][p NR + j]; missing columns
// are 0. B is always packed: rows of a row-major B lie ldb apart (a power of 2
// on most layers), so reading a micro-panel in place would map all its cache
// lines to a few L1 sets.
// Rows k .. k + count - 1 of a kc x nc block of a row-major op(B)
// (op(B)[k + r][j] = b[r ldb + j]) into their slots of each micro-panel, a
// few rows at a time per panel: the panels lie 64 kc bytes apart (16 KB at
// kc = 256), so storing one row across all of them touches lines of the same
// L1 sets; a group of rows fills whole lines of each panel. Measured on the
// batch-512 step with the dZ pass (2 threads, 4 alternating pairs on a noisy
// machine): groups of 8 rows about 1% faster than one row at a time.
void pack_b_rows(const float* b, Index ldb, Index count, Index k, Index kc, Index nc, float* dst) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (Index j0 = 0; j0 < nc; j0 += kNR) {
    float* d = dst + j0 * kc + k * kNR;
    const float* src = b + j0;
    const Index cols = std::min(kNR, nc - j0);
    if (cols == kNR) {
      for (Index r = 0; r < count; ++r, d += kNR, src += ldb)
        for (Index h = 0; h < kNR; h += 8) _mm256_store_ps(d + h, _mm256_loadu_ps(src + h));
    } else {  // masked loads neither read nor fault past the last column
      const __m256i c = _mm256_set1_epi32(static_cast<int>(cols));
      __m256i mask[kNR / 8];
      for (Index h = 0; h < kNR; h += 8)
        mask[h / 8] = _mm256_cmpgt_epi32(_mm256_sub_epi32(c, _mm256_set1_epi32(static_cast<int>(h))), lanes);
      for (Index r = 0; r < count; ++r, d += kNR, src += ldb)
        for (Index h = 0; h < kNR; h += 8) _mm256_store_ps(d + h, _mm256_maskload_ps(src + h, mask[h / 8]));
    }
  }
}

// Rows packed together by pack_b_rows: 8 rows of 64 bytes fill 8 lines of a
// panel.
constexpr Index kPackGroup = 8;

void pack_b(bool trans, Index kc, Index nc, const float* b, Index ldb, float* dst) {
  if (!trans) {
    // A few rows at a time (panel by panel over all kc rows, each pass
    // would fetch one cache line per row: measured 0.7 ns per float from L3
    // on the wide layers).
    for (Index k = 0; k < kc; k += kPackGroup)
      pack_b_rows(b + k * ldb, ldb, std::min(kPackGroup, kc - k), k, kc, nc, dst);
    return;
  }
  for (Index j0 = 0; j0 < nc; j0 += kNR, dst += kNR * kc) {
    const Index cols = std::min(kNR, nc - j0);
    // op(B)[k][j] = b[j ldb + k]: NR rows of b, transposed 8 x 8 at a time.
    const float* col = b + j0 * ldb;
    Index k = 0;
    if (cols == kNR) {
      for (; k + 8 <= kc; k += 8)
        for (Index h = 0; h < kNR; h += 8) {
          __m256 r[8];
          for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(col + (h + i) * ldb + k);
          transpose8(r);
          for (int t = 0; t < 8; ++t) _mm256_store_ps(dst + (k + t) * kNR + h, r[t]);
        }
    }
    for (; k < kc; ++k)
      for (Index j = 0; j < kNR; ++j) dst[k * kNR + j] = j < cols ? col[j * ldb + k] : 0.0f;
  }
}

// c[0:MR, 0:NR] = (add ? c : 0) + sum_k a_ik b[k NR + j], where op(A)'s
// a_ik = a[i row_stride + k k_stride] (a packed panel: 1, MR; a row-major
// op(A): lda, 1). The products are summed in k order in the accumulators
// before C is touched: C is never read when !add (it may hold NaN garbage)
// and never scaled by 0. Rows of A past `rows` repeat the last one (their
// results are not wanted, and the rows may not exist). Not inlined: inside
// packed_gemm's loops the compiler ran short of registers and kept the k
// counter and accumulators on the stack.
#if defined(NERVE_GEMM_ZMM)
// The avx512 micro-kernel: a 12 x 32 block of C in 24 zmm accumulators (of
// 32 registers: 2 hold B's row, the broadcasts of A fold into the FMAs as
// {1to16} memory operands). Per k: 2 loads of B, 12 broadcasts, 24 FMAs;
// the 6 x 16 ymm kernel needs 8 loads for 12 FMAs of half the width. Zen 4
// issues one zmm FMA per cycle (two 256-bit pipes), so the gain is in fewer
// instructions, loads and C traffic per flop, not in peak flops.
template <bool add>
__attribute__((noinline)) void micro_kernel(Index kc, const float* a, Index row_stride,
                                            Index k_stride, Index rows, const float* b, float* c,
                                            Index ldc) {
  __m512 acc[kMR][2];
#pragma GCC unroll 12
  for (int i = 0; i < kMR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  const float* a_row[kMR];
#pragma GCC unroll 12
  for (int i = 0; i < kMR; ++i) {
    a_row[i] = a + std::min<Index>(i, rows - 1) * row_stride;
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + kNR - 1), _MM_HINT_T0);
  }
  if (k_stride == kMR && row_stride == 1) {
    // A packed panel (zero rows past `rows`): a k's 12 values are adjacent.
    for (Index k = 0; k < kc; ++k, a += kMR, b += kNR) {
      const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 12
      for (int i = 0; i < kMR; ++i) {
        const __m512 x = _mm512_set1_ps(a[i]);
        acc[i][0] = _mm512_fmadd_ps(x, b0, acc[i][0]);
        acc[i][1] = _mm512_fmadd_ps(x, b1, acc[i][1]);
      }
    }
  } else {
    for (Index ak = 0, end = kc * k_stride; ak != end; ak += k_stride, b += kNR) {
      const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 12
      for (int i = 0; i < kMR; ++i) {
        const __m512 x = _mm512_set1_ps(a_row[i][ak]);
        acc[i][0] = _mm512_fmadd_ps(x, b0, acc[i][0]);
        acc[i][1] = _mm512_fmadd_ps(x, b1, acc[i][1]);
      }
    }
  }
#pragma GCC unroll 12
  for (int i = 0; i < kMR; ++i) {
    float* ci = c + i * ldc;
    __m512 lo = acc[i][0], hi = acc[i][1];
    if (add) {
      lo = _mm512_add_ps(_mm512_loadu_ps(ci), lo);
      hi = _mm512_add_ps(_mm512_loadu_ps(ci + 16), hi);
    }
    _mm512_storeu_ps(ci, lo);
    _mm512_storeu_ps(ci + 16, hi);
  }
}
#else
template <bool add>
__attribute__((noinline)) void micro_kernel(Index kc, const float* a, Index row_stride,
                                            Index k_stride, Index rows, const float* b, float* c,
                                            Index ldc) {
  // Named accumulators, not an array: GCC kept an array's 12 ymm in registers
  // but also stored all of them to the stack on every k.
  const __m256 zero = _mm256_setzero_ps();
  __m256 c00 = zero, c01 = zero, c10 = zero, c11 = zero, c20 = zero, c21 = zero;
  __m256 c30 = zero, c31 = zero, c40 = zero, c41 = zero, c50 = zero, c51 = zero;
  const float* a_row[kMR];
  for (int i = 0; i < kMR; ++i) {
    a_row[i] = a + std::min<Index>(i, rows - 1) * row_stride;
    // C's lines arrive while the products run.
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + kNR - 1), _MM_HINT_T0);
  }
  const float *a0 = a_row[0], *a1 = a_row[1], *a2 = a_row[2], *a3 = a_row[3], *a4 = a_row[4],
              *a5 = a_row[5];
  for (Index ak = 0, end = kc * k_stride; ak != end; ak += k_stride, b += kNR) {
    const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
    auto row = [&](const float* ai, __m256& lo, __m256& hi) {
      const __m256 x = _mm256_broadcast_ss(ai + ak);
      lo = _mm256_fmadd_ps(x, b0, lo);
      hi = _mm256_fmadd_ps(x, b1, hi);
    };
    row(a0, c00, c01);
    row(a1, c10, c11);
    row(a2, c20, c21);
    row(a3, c30, c31);
    row(a4, c40, c41);
    row(a5, c50, c51);
  }
  auto store = [&](float* ci, __m256 lo, __m256 hi) {
    if (add) {
      lo = _mm256_add_ps(_mm256_loadu_ps(ci), lo);
      hi = _mm256_add_ps(_mm256_loadu_ps(ci + 8), hi);
    }
    _mm256_storeu_ps(ci, lo);
    _mm256_storeu_ps(ci + 8, hi);
  };
  store(c, c00, c01);
  store(c + ldc, c10, c11);
  store(c + 2 * ldc, c20, c21);
  store(c + 3 * ldc, c30, c31);
  store(c + 4 * ldc, c40, c41);
  store(c + 5 * ldc, c50, c51);
}
#endif

// One rows x cols (<= MR x NR) block of C. A partial block is computed into a
// local buffer first, so that nothing outside C is read or written.
void block_product(Index kc, const float* a, Index row_stride, Index k_stride, const float* b,
                   float* c, Index ldc, Index rows, Index cols, bool add) {
  if (rows == kMR && cols == kNR) {
    if (add)
      micro_kernel<true>(kc, a, row_stride, k_stride, rows, b, c, ldc);
    else
      micro_kernel<false>(kc, a, row_stride, k_stride, rows, b, c, ldc);
    return;
  }
  alignas(64) float tmp[kMR * kNR];
  micro_kernel<false>(kc, a, row_stride, k_stride, rows, b, tmp, kNR);
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j)
      c[i * ldc + j] = add ? c[i * ldc + j] + tmp[i * kNR + j] : tmp[i * kNR + j];
}

// Where block (jc, pc) of op(B) starts in a whole-product packing: the
// blocks of one column block are stacked along k, each kc x (nc rounded up
// to NR) (nc_max is a multiple of NR, so earlier column blocks take K jc).
Index packed_b_offset(Index K, Index jc, Index pc, Index nc) {
  return K * jc + pc * ceil_div(nc, kNR) * kNR;
}

// Where panel of block (jc, pc) of a tile whose columns start at column
// col0 of op(B) lies in a whole-product packing of all of op(B)'s n_whole
// columns (pack_whole_b, or a PackedB kept across calls). The tile's column
// blocks must fall inside the whole packing's (true when it has one, n_whole
// <= kMaxNC, or when the tile spans all columns).
const float* whole_b_block(const PrepackedB& pre, Index K, Index jc, Index pc, Index kc) {
  const Index nc_whole = balanced_block(pre.n_whole, kMaxNC, kNR);
  const Index g = pre.col0 + jc, jcg = g / nc_whole * nc_whole;
  const Index ncg = std::min(nc_whole, pre.n_whole - jcg);
  return pre.base + packed_b_offset(K, jcg, pc, ncg) + (g - jcg) * kc;
}

// pre.base: all of op(B) already packed (pack_whole_b, PackedB), or null to
// pack each block here.
void packed_gemm(bool trans_a, bool trans_b, Index m, Index n, Index K, const float* A, Index lda,
                 const float* B, Index ldb, float* C, Index ldc, bool accumulate,
                 const PrepackedB& pre) {
  const float* prepacked_b = pre.base;
  const Index kc_max = balanced_block(K, kMaxKC, 1);
  const Index mc_max = balanced_block(m, kMaxMC, kMR);
  const Index nc_max = balanced_block(n, kMaxNC, kNR);
  // A row-major op(A) is read in place (its rows are contiguous in k already;
  // packing them cost ~6% on the 128-column tiles), unless its rows lie a
  // multiple of 4 KB apart, so that they share cache sets and the mc x kc
  // block does not stay in L2, and the tile is wide enough to repay the copy:
  // measured on 2048^3 (the wide MLP's second layer at batch 2048), packing
  // gained 2-5% (NN) and 0-3% (NT); on its 128-column tiles at batch 512 it
  // lost 3-5%.
  const bool pack_a = trans_a || (lda % 1024 == 0 && n >= 512);
  // +8: pack_a_rows may write 2 (avx512: 4) floats past its last panel; the
  // rounding keeps B 64-byte aligned.
  const Index size_a = pack_a ? ceil_div(mc_max * kc_max + 8, 16) * 16 : 0;
  float* packed_a = workspace(size_a + (prepacked_b ? 0 : kc_max * nc_max));
  float* block_b = packed_a + size_a;
  for (Index jc = 0; jc < n; jc += nc_max) {
    const Index nc = std::min(nc_max, n - jc);
    for (Index pc = 0; pc < K; pc += kc_max) {
      const Index kc = std::min(kc_max, K - pc);
      const float* packed_b = block_b;
      if (prepacked_b)
        packed_b = whole_b_block(pre, K, jc, pc, kc);
      else
        pack_b(trans_b, kc, nc, trans_b ? B + jc * ldb + pc : B + pc * ldb + jc, ldb, block_b);
      // The first depth block writes C, later ones (and accumulate) add to it.
      const bool add = accumulate || pc > 0;
      for (Index ic = 0; ic < m; ic += mc_max) {
        const Index mc = std::min(mc_max, m - ic);
        if (trans_a)
          pack_a_transposed(mc, kc, A + pc * lda + ic, lda, packed_a);
        else if (pack_a)
          pack_a_rows(mc, kc, A + ic * lda + pc, lda, packed_a);
        for (Index jr = 0; jr < nc; jr += kNR)
          for (Index ir = 0; ir < mc; ir += kMR) {
            float* c = C + (ic + ir) * ldc + jc + jr;
            const Index rows = std::min(kMR, mc - ir), cols = std::min(kNR, nc - jr);
            if (pack_a)
              block_product(kc, packed_a + ir * kc, 1, kMR, packed_b + jr * kc, c, ldc, rows, cols, add);
            else
              block_product(kc, A + (ic + ir) * lda + pc, lda, 1, packed_b + jr * kc, c, ldc, rows,
                            cols, add);
          }
      }
    }
  }
}

// Packs all of op(B) (K x n) once, over the threads, for a product whose
// row tiles all span its n columns: each tile would otherwise pack the same
// B again (packing is memory-bound: 4 row tiles of a batch-2048 forward
// repacked W four times, ~5% of the product). The blocks and their contents
// are those packed_gemm packs itself, so the result is the same. A row-major
// B is shared out in pieces of kPieceRows whole rows (a batch-512 dW has 2
// depth blocks, a batch-128 one 1: too few for the threads), each row read
// once, contiguously. `pass` (B not transposed): each row is rewritten,
// summed into its piece's column sums, then packed while in L1.
const float* pack_whole_b(bool trans_b, Index n, Index K, const float* B, Index ldb, int threads,
                          const BRowPass* pass = nullptr) {
  const Index kc_max = balanced_block(K, kMaxKC, 1);
  const Index nc_max = balanced_block(n, kMaxNC, kNR);
  float* dst = workspace<1>(K * ceil_div(n, kNR) * kNR);
  const Index depth_blocks = ceil_div(K, kc_max);
  if (trans_b) {
    const Index col_blocks = ceil_div(n, nc_max);
    parallel_for(col_blocks * depth_blocks, threads, [&](Index blk) {
      const Index jc = (blk / depth_blocks) * nc_max, pc = (blk % depth_blocks) * kc_max;
      const Index nc = std::min(nc_max, n - jc), kc = std::min(kc_max, K - pc);
      pack_b(true, kc, nc, B + jc * ldb + pc, ldb, dst + packed_b_offset(K, jc, pc, nc));
    });
    return dst;
  }
  constexpr Index kPieceRows = 8 * kPackGroup;
  const Index chunks = ceil_div(kc_max, kPieceRows);  // pieces per depth block
  const Index pieces = depth_blocks * chunks;
  float* sums = pass && pass->col_sums ? workspace<2>(pieces * n) : nullptr;
  parallel_for(pieces, threads, [&](Index piece) {
    const Index pc = piece / chunks * kc_max, kc = std::min(kc_max, K - pc);
    const Index k0 = piece % chunks * kPieceRows, k1 = std::min(kc, k0 + kPieceRows);
    float* sum = sums ? sums + piece * n : nullptr;
    if (sum) std::fill(sum, sum + n, 0.0f);
    for (Index k = k0; k < k1; k += kPackGroup) {
      const Index count = std::min(kPackGroup, k1 - k);
      float* rows = const_cast<float*>(B) + (pc + k) * ldb;  // written only with a pass
      for (Index r = 0; r < count; ++r) {
        float* row = rows + r * ldb;
        if (pass && pass->rewrite) pass->rewrite(pass->ctx, pc + k + r, n, row);
        if (sum) {
#pragma omp simd
          for (Index c = 0; c < n; ++c) sum[c] += row[c];
        }
      }
      for (Index jc = 0; jc < n; jc += nc_max) {
        const Index nc = std::min(nc_max, n - jc);
        pack_b_rows(rows + jc, ldb, count, k, kc, nc, dst + packed_b_offset(K, jc, pc, nc));
      }
    }
  });
  if (sums) {
    // The pieces' sums added in piece order (a short last depth block leaves
    // pieces of zeros).
    float* out = pass->col_sums;
    const bool acc = pass->accumulate_sums;
#pragma omp simd
    for (Index c = 0; c < n; ++c) out[c] = acc ? out[c] + sums[c] : sums[c];
    for (Index p = 1; p < pieces; ++p) {
      const float* part = sums + p * n;
#pragma omp simd
      for (Index c = 0; c < n; ++c) out[c] += part[c];
    }
  }
  return dst;
}
#else
// Eigen's GEMM kernel called directly, with its packing buffers supplied by
// us. Through the expression API (c = a * b) Eigen mallocs and frees those
// buffers on every product larger than EIGEN_STACK_ALLOCATION_LIMIT (128 KB),
// i.e. several times per training step; here each thread keeps its own
// buffers, grown on first use, so a step allocates nothing. The blocking sizes
// are Eigen's own heuristic for the tile, so the arithmetic (and the result)
// is the same as Eigen's product.
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
#endif

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

// shared_b: op(B) packed once for the whole product, or base null.
void gemm_tile(bool trans_a, bool trans_b, Index m, Index n, Index K, const float* A, Index lda,
               const float* B, Index ldb, float* C, Index ldc, bool accumulate,
               const PrepackedB& shared_b) {
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
#if defined(__AVX2__) && defined(__FMA__)
  packed_gemm(trans_a, trans_b, m, n, K, A, lda, B, ldb, C, ldc, accumulate, shared_b);
#else
  (void)shared_b;
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
#endif
}

#if defined(__AVX2__) && defined(__FMA__)
// dW = X^T dZ for a narrow output, 2 <= N <= kNarrowCols (the logits layer's
// 10 classes, a small regression head). The packed kernel's 16-column panels
// would leave 6 of 16 lanes idle, after packing X^T for 10 columns of work
// (the logits dW, 256 x 512 x 10, took 41 us on 2 threads at batch 512).
// Here 8 rows of C (8 columns of X: one vector) live in N accumulators, and
// each k adds X[k, i:i+8] * dZ[k, j] for every j: one load, N broadcasts,
// N FMAs, nothing packed, every lane used. Each element of C is one FMA chain
// over k in order, whatever the split over threads.
constexpr Index kNarrowCols = 12;  // N accumulators + X's vector + a broadcast <= 16 registers
constexpr Index kNarrowRows = 8;

bool narrow_product(bool trans_a, bool trans_b, Index M, Index N, Index K) {
  return trans_a && !trans_b && N >= 2 && N <= kNarrowCols && K > kSmallDepth && M >= 2;
}

template <int N, bool Full>
void narrow_block(Index K, const float* a, Index lda, const float* b, Index ldb, float* c,
                  Index ldc, Index rows, bool accumulate) {
  __m256 acc[N];
  for (int j = 0; j < N; ++j) acc[j] = _mm256_setzero_ps();
  const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rows)),
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  for (Index k = 0; k < K; ++k, a += lda, b += ldb) {
    // Masked: neither reads nor faults past the last column of X.
    const __m256 x = Full ? _mm256_loadu_ps(a) : _mm256_maskload_ps(a, mask);
    for (int j = 0; j < N; ++j) acc[j] = _mm256_fmadd_ps(x, _mm256_broadcast_ss(b + j), acc[j]);
  }
  alignas(32) float out[N][kNarrowRows];
  for (int j = 0; j < N; ++j) _mm256_store_ps(out[j], acc[j]);
  for (Index r = 0; r < rows; ++r)
    for (int j = 0; j < N; ++j)
      c[r * ldc + j] = accumulate ? c[r * ldc + j] + out[j][r] : out[j][r];
}

template <int N>
void narrow_rows(Index M, Index K, const float* A, Index lda, const float* B, Index ldb, float* C,
                 Index ldc, Index r0, Index r1, bool accumulate) {
  for (Index i = r0; i < r1; i += kNarrowRows) {
    const Index rows = std::min(kNarrowRows, M - i);
    if (rows == kNarrowRows)
      narrow_block<N, true>(K, A + i, lda, B, ldb, C + i * ldc, ldc, rows, accumulate);
    else
      narrow_block<N, false>(K, A + i, lda, B, ldb, C + i * ldc, ldc, rows, accumulate);
  }
}

void narrow_gemm(Index M, Index N, Index K, const float* A, Index lda, const float* B, Index ldb,
                 float* C, Index ldc, bool accumulate) {
  // Pieces of 4 blocks (32 rows) over the threads.
  constexpr Index kPieceRows = 4 * kNarrowRows;
  const Index pieces = ceil_div(M, kPieceRows);
  parallel_for(pieces, threads_for(2.0 * static_cast<double>(M) * N * K, pieces), [&](Index p) {
    const Index r0 = p * kPieceRows, r1 = std::min(M, r0 + kPieceRows);
    auto run = [&](auto n) {
      narrow_rows<decltype(n)::value>(M, K, A, lda, B, ldb, C, ldc, r0, r1, accumulate);
    };
    switch (N) {
      case 2: run(std::integral_constant<int, 2>{}); break;
      case 3: run(std::integral_constant<int, 3>{}); break;
      case 4: run(std::integral_constant<int, 4>{}); break;
      case 5: run(std::integral_constant<int, 5>{}); break;
      case 6: run(std::integral_constant<int, 6>{}); break;
      case 7: run(std::integral_constant<int, 7>{}); break;
      case 8: run(std::integral_constant<int, 8>{}); break;
      case 9: run(std::integral_constant<int, 9>{}); break;
      case 10: run(std::integral_constant<int, 10>{}); break;
      case 11: run(std::integral_constant<int, 11>{}); break;
      default: run(std::integral_constant<int, 12>{}); break;
    }
  });
}
#endif

// c[0:N] (+)= a[0:K] B for a row-major K x N matrix B (the forward at batch
// 1), with K cut in fixed chunks of at least kVectorDepthChunk rows: each
// chunk's matrix-vector product goes to its own partial row, the partials are
// added in chunk order. The chunks are shape-only, so the result does not
// depend on the threads, which share the chunks and so the stream of B.
void vector_matrix_split(Index N, Index K, const float* a, const float* B, Index ldb, float* c,
                         bool accumulate) {
  const Index chunks = std::min<Index>(kVectorChunks, K / kVectorDepthChunk);
  const Index depth = ceil_div(K, chunks);
  float* partial = workspace<1>(chunks * N);
  parallel_for(chunks, threads_for(stream_work(static_cast<double>(N) * K), chunks), [&](Index q) {
    const Index k0 = q * depth, k = std::min(depth, K - k0);
    gemm_tile(false, false, 1, N, k, a + k0, k, B + k0 * ldb, ldb, partial + q * N, N, false,
              PrepackedB{});
  });
  for (Index j = 0; j < N; ++j) {
    float sum = accumulate ? c[j] + partial[j] : partial[j];
    for (Index q = 1; q < chunks; ++q) sum += partial[q * N + j];
    c[j] = sum;
  }
}

int tile_threads(const Tiling& t, Index M, Index N, Index K) {
  return threads_for(2.0 * static_cast<double>(M) * N * K, t.row_tiles * t.col_tiles);
}

#if defined(__AVX2__) && defined(__FMA__)
// Row tiles spanning all columns, on the packed path (gemm_tile's tests for
// the other paths fail for every tile here): op(B) is packed once for all.
bool packs_whole_b(const Tiling& t, Index N, Index K) {
  return t.row_tiles > 1 && t.col_tiles == 1 && K > kSmallDepth && N > 1;
}
#endif

void run_tiles(const Tiling& t, int threads, bool trans_a, bool trans_b, Index M, Index N, Index K,
               const float* A, Index lda, const float* B, Index ldb, float* C, Index ldc,
               bool accumulate, const float* shared_b) {
  // shared_b packs all N columns; each tile reads its own columns of it.
  parallel_for(t.row_tiles * t.col_tiles, threads, [&](Index tile) {
    const Index r0 = row_start(t, M, tile / t.col_tiles);
    const Index c0 = (tile % t.col_tiles) * t.col_tile;
    const Index m = row_start(t, M, tile / t.col_tiles + 1) - r0;
    const Index n = std::min(t.col_tile, N - c0);
    // Offsets into op(A) rows and op(B) columns.
    const float* a = trans_a ? A + r0 : A + r0 * lda;
    const float* b = trans_b ? B + c0 * ldb : B + c0;
    gemm_tile(trans_a, trans_b, m, n, K, a, lda, b, ldb, C + r0 * ldc + c0, ldc, accumulate,
              PrepackedB{shared_b, N, c0});
  });
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
  if (M == 1 && !trans_a && !trans_b && K >= 2 * kVectorDepthChunk &&
      stream_work(static_cast<double>(N) * K) >= kParallelFlops) {
    vector_matrix_split(N, K, A, B, ldb, C, accumulate);
    return;
  }
  const float* shared_b = nullptr;
#if defined(__AVX2__) && defined(__FMA__)
  if (narrow_product(trans_a, trans_b, M, N, K)) {
    narrow_gemm(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
    return;
  }
#endif
  const Tiling t = choose_tiling(trans_a, M, N, K);
  const int threads = tile_threads(t, M, N, K);
#if defined(__AVX2__) && defined(__FMA__)
  if (packs_whole_b(t, N, K)) shared_b = pack_whole_b(trans_b, N, K, B, ldb, threads);
#endif
  run_tiles(t, threads, trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc, accumulate, shared_b);
}

bool gemm_b_pass(bool trans_a, Index M, Index N, Index K, const float* A, Index lda, float* B,
                 Index ldb, float* C, Index ldc, bool accumulate, const BRowPass& pass) {
#if defined(__AVX2__) && defined(__FMA__)
  if (M == 0 || N == 0 || K == 0) return false;
  const Tiling t = choose_tiling(trans_a, M, N, K);
  if (narrow_product(trans_a, false, M, N, K) || !packs_whole_b(t, N, K)) return false;
  const int threads = tile_threads(t, M, N, K);
  const float* shared_b = pack_whole_b(false, N, K, B, ldb, threads, &pass);
  run_tiles(t, threads, trans_a, false, M, N, K, A, lda, B, ldb, C, ldc, accumulate, shared_b);
  return true;
#else
  (void)trans_a, (void)M, (void)N, (void)K, (void)A, (void)lda, (void)B, (void)ldb, (void)C,
      (void)ldc, (void)accumulate, (void)pass;
  return false;
#endif
}

void PackedB::pack(bool trans, Index K, Index N, const float* B, Index ldb) {
  k_ = n_ = 0;
  trans_ = trans;
#if defined(__AVX2__) && defined(__FMA__)
  // One column block (N <= kMaxNC): every tile's blocks then lie inside it
  // (whole_b_block). Depths <= 4 and single columns never reach packed_gemm.
  if (K <= kSmallDepth || N <= 1 || balanced_block(N, kMaxNC, kNR) < N) {
    data_ = AlignedBuffer();
    return;
  }
  const Index size = checked_mul(K, ceil_div(N, kNR) * kNR, "packed kernel");
  const float* packed = pack_whole_b(trans, N, K, B, ldb, threads_for(stream_work(static_cast<double>(size)), K));
  if (data_.size() != size) data_.resize(size);  // the same size again: kept, not refilled
  std::copy(packed, packed + size, data_.data());
  k_ = K;
  n_ = N;
#else
  (void)K, (void)N, (void)B, (void)ldb;
  data_ = AlignedBuffer();
#endif
}

void gemm_prepacked(bool trans_b, Index M, Index N, Index K, const float* A, Index lda, const float* B,
                    Index ldb, const PackedB& packed, float* C, Index ldc, bool accumulate) {
#if defined(__AVX2__) && defined(__FMA__)
  // gemm(false, trans_b, ...)'s dispatch, less the single row (gemm's own
  // paths for it) and the packing: the tiles that reach packed_gemm read
  // their blocks of the kept packing, the same panels they would have packed.
  // (The narrow path is for a transposed A only.)
  if (!packed.empty() && M > 1) {
    require(packed.depth() == K && packed.cols() == N && packed.trans() == trans_b,
            "gemm_prepacked: the packing is of another shape");
    const Tiling t = choose_tiling(false, M, N, K);
    run_tiles(t, tile_threads(t, M, N, K), false, trans_b, M, N, K, A, lda, B, ldb, C, ldc, accumulate,
              packed.data());
    return;
  }
#else
  (void)packed;
#endif
  gemm(false, trans_b, M, N, K, A, lda, B, ldb, C, ldc, accumulate);
}

void column_sums(const float* X, Index rows, Index cols, float* out, bool accumulate) {
  // Column blocks are independent; within a block rows are added in order.
  constexpr Index kBlock = 128;
  const Index blocks = (cols + kBlock - 1) / kBlock;
  const int threads = threads_for(stream_work(static_cast<double>(rows) * cols), blocks);
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
  // A branch-free pass first (vectorizes), in chunks shared over the threads:
  // a training batch comes from DRAM here, and one core alone reads it at
  // ~16 GB/s (batch 512 x 784: 100 us). The culprit is located only on failure.
  constexpr Index kChunk = 1 << 15;
  const Index chunks = (n + kChunk - 1) / kChunk;
  int bad_chunks = 0;
  parallel_for(chunks, threads_for(stream_work(static_cast<double>(n)), chunks), [&](Index c) {
    const Index b = c * kChunk, e = std::min(n, b + kChunk);
    // x * 0 is 0 for finite x and NaN otherwise. 32 independent sums: 4
    // vectors, so the loop is bound by loading x, not by the latency of
    // one accumulator's FMA chain (8 sums read 25 GB/s from L3 on one core,
    // `BM_all_finite`).
    constexpr int kProbes = 32;
    float probe[kProbes] = {};
    Index i = b;
    for (; i + kProbes <= e; i += kProbes)
      for (int l = 0; l < kProbes; ++l) probe[l] += X[i + l] * 0.0f;
    for (; i < e; ++i) probe[0] += X[i] * 0.0f;
    float sum = 0.0f;
    for (float p : probe) sum += p;
    if (sum != 0.0f) {
#pragma omp atomic write
      bad_chunks = 1;
    }
  });
  if (bad_chunks == 0) return true;
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
