// Thread ownership. nerve's own OpenMP loops own the threads; Eigen is built
// single-threaded (EIGEN_DONT_PARALLELIZE), so parallel regions never nest.
// Work is always split into pieces whose boundaries depend only on the problem
// shape, never on the thread count, so results are bit-identical for any
// number of threads.
#pragma once
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

// body(i) for i in [0, count), split statically over `threads` threads. One
// thread runs the plain loop and never enters an OpenMP region: libgomp
// mallocs and frees a team for every single-thread region (it caches only
// multi-thread teams), which would be the only heap traffic of a training step.
template <class F>
inline void parallel_for(Index count, int threads, F&& body) {
  if (threads <= 1) {
    for (Index i = 0; i < count; ++i) body(i);
    return;
  }
#pragma omp parallel for num_threads(threads) schedule(static)
  for (Index i = 0; i < count; ++i) body(i);
}

}  // namespace nerve
