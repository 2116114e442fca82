// Thread ownership. nerve's own OpenMP loops own the threads; Eigen is built
// single-threaded (EIGEN_DONT_PARALLELIZE), so parallel regions never nest.
// Work is always split into pieces whose boundaries depend only on the problem
// shape, never on the thread count, so results are bit-identical for any
// number of threads.
#pragma once
#include <atomic>

#include "nerve/common.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace nerve {

int num_threads();
void set_num_threads(int n);
bool have_openmp();

// Below this many floating-point operations a loop stays on one thread: the
// fork/join (a few µs, far more when the machine is oversubscribed) would
// cost more than it saves.
constexpr double kParallelFlops = 1 << 20;

// Streaming loops (elementwise maps, column sums, finiteness checks) are
// bound by moving their floats, not by their arithmetic, so each float counts
// as this many flops of work when deciding whether to split. (Counted by
// flops alone, the activation tails and bias sums of a 512-wide layer at batch
// 512, ~260K floats, ran on one thread while the other waited.)
constexpr double kStreamFlopsPerFloat = 8.0;
inline double stream_work(double floats, double flops_per_float = 0.0) {
  return (flops_per_float + kStreamFlopsPerFloat) * floats;
}

// Threads to use for a loop of `work` flops over `pieces` independent pieces.
inline int threads_for(double work, Index pieces) {
  if (work < kParallelFlops || pieces < 2) return 1;
  int t = num_threads();
  return static_cast<int>(t < pieces ? t : pieces);
}

// Flush-to-zero, opt-in (torch.set_flush_denormal): subnormal inputs read
// as 0 and subnormal results become 0 (x86: MXCSR's DAZ and FTZ; AArch64:
// FPCR.FZ). Arithmetic on subnormals takes a slow path in the FPU: Adam's
// (1 - beta2) g^2 is subnormal for |g| < ~1e-18, which made its update 2.4x
// slower and a batch-1 step 2x (bench/README.md). The mode belongs to each
// thread, so it is set on the calling thread at once and on every thread
// nerve's loops run on at the start of each loop (sync_fp_mode). Returns
// false, changing nothing, on a CPU without such a mode.
bool set_flush_denormal(bool on);
bool flush_denormal();
namespace detail {
// -1: never set (nerve leaves the threads' mode alone, so a mode set by
// another library stays); 0: off; 1: on.
extern std::atomic<int> fp_mode;
bool apply_fp_mode(int mode);
}  // namespace detail
inline void sync_fp_mode() {
  const int mode = detail::fp_mode.load(std::memory_order_relaxed);
  if (mode >= 0) detail::apply_fp_mode(mode);
}

// body(i) for i in [0, count), split statically over `threads` threads. One
// thread runs the plain loop and never enters an OpenMP region: libgomp
// mallocs and frees a team for every single-thread region (it caches only
// multi-thread teams), which would be the only heap traffic of a training step.
template <class F>
inline void parallel_for(Index count, int threads, F&& body) {
  sync_fp_mode();
  if (threads <= 1) {
    for (Index i = 0; i < count; ++i) body(i);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    sync_fp_mode();
#pragma omp for schedule(static)
    for (Index i = 0; i < count; ++i) body(i);
  }
}

}  // namespace nerve
