// Thread ownership. nerve's own OpenMP loops own the threads; Eigen is built
// single-threaded (EIGEN_DONT_PARALLELIZE), so parallel regions never nest.
// Work is always split into pieces whose boundaries depend only on the problem
// shape, never on the thread count, so results are bit-identical for any
// number of threads.
#pragma once
#include <atomic>
#include <cstdint>

#include "nerve/common.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace nerve {

int num_threads();
void set_num_threads(int n);
bool have_openmp();
// The oversubscription guard (parallel_for below), on by default.
void set_adaptive_threads(bool on);
bool adaptive_threads();

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

// Oversubscription guard. On a machine whose cores are shared (another
// process busy on one of them, a GridSearchCV with n_jobs = cores, a cloud
// VM's noisy neighbour), a worker thread is often not running when a
// parallel region starts: the team's barrier then waits for the scheduler to
// give it a time slice (milliseconds), and a step made of dozens of regions
// ran 2x slower on 2 threads than on 1 (issue 15). parallel_for therefore
// times each multi-thread region (the calling thread's own share, then its
// wait for the others) and the guard applies two tests:
// - Cost, over each window of kCostWindowNs of regions: the calling thread
//   waited longer than (threads - 1) x its own shares, so the team took
//   longer than the calling thread alone would have (threads x its share).
//   The window is long so that one late worker (a hypervisor pause, a daemon
//   waking up: 0.3-1 ms a few times a second on the 2-core VM of
//   bench/README.md) is weighed against the time the team saved around it.
//   Judged one region at a time (a wait over 0.3 ms and over twice the
//   share), such events sent the loops to one thread on a quiet machine and
//   cost 10-18% at batch 128-512 against no guard.
// - Run delay, over each window of kDelayWindowNs of regions: where the
//   kernel reports it (Linux schedstat's run_delay, the time a thread was
//   runnable but waiting for a CPU), the calling thread waited for a CPU more
//   than 1/kRunDelayShare of the window's wall time, and more than
//   kMinRunDelayNs. A worker off its core shows as a wait at the barrier
//   only when the scheduler happens to take the worker's core; when it takes
//   the calling thread's, the step just runs at 2/3 speed (three busy threads
//   on two cores) and the cost test sees nothing: at batch 1 the first stall
//   took from 0.3 to 250 ms to find without this test, 0.3 to 23 ms with it.
//   A thread that sleeps (I/O, a lock) is not runnable and does not count.
//   The window is long enough that a kernel thread taking a core for a
//   millisecond or two (on the benchmark VM, one every 512 ms) stays under
//   the share: over 2 ms windows it sent batch-32 steps to one thread twice
//   a second on a quiet machine.
// Either is a "stall": every region then runs on the calling thread alone
// for a back-off period, then the team is tried again (its first region,
// whose workers were asleep, is not judged, nor the first at a new team
// size); the period doubles (100 ms up to 1 s) while stalls come back soon
// after the team does, and halves after the team has run clean for four
// periods. Results are unchanged: every loop's pieces are split by shape,
// never by thread count (see the top of this file).
// NERVE_ADAPTIVE_THREADS=0 or nv.set_adaptive_threads(False) turns it off.
namespace detail {
// 100 ms alone after a first stall. Each trial of the team under a neighbour
// costs a wait of 16 ms or more for the worker to get the neighbour's core;
// from 20 ms, back-offs of 20, 40, 80 ms put five trials into a 0.3 s run
// (`nerve train` on the digits: 0.72x of one thread's speed; from 100 ms
// 0.87-0.93x, medians of 5 alternating runs). Stalls on a quiet machine
// being rare (0-1 per benchmark run), the longer first back-off costs it little.
constexpr std::int64_t kMinBackoffNs = 100'000'000;
constexpr std::int64_t kMaxBackoffNs = 1'000'000'000; // at most 1 s between probes
constexpr std::int64_t kCostWindowNs = 16'000'000;    // waits weighed over >= 16 ms of regions
constexpr std::int64_t kDelayWindowNs = 8'000'000;    // run delay read every >= 8 ms of regions
constexpr std::int64_t kRunDelayShare = 4;            // waited for a CPU > 1/4 of the wall time
constexpr std::int64_t kMinRunDelayNs = 300'000;      // and > 0.3 ms
struct ThreadGuard {
  std::atomic<bool> enabled{true};
  std::atomic<std::int64_t> solo_until_ns{0};  // 0: the team is in use
  std::atomic<std::int64_t> backoff_ns{kMinBackoffNs};
  std::atomic<std::int64_t> resumed_ns{0};     // when the team was last taken back
  std::atomic<int> last_threads{0};            // the team size of the last region
  std::atomic<std::uint64_t> team_regions{0}, solo_regions{0}, stalls{0};
  std::atomic<std::uint64_t> slow_windows{0};       // stalls found by the cost test
  std::atomic<std::uint64_t> preempted_windows{0};  // stalls found by the run-delay test
  // The cost window: the calling threads' own shares and their waits. (The
  // team size is the same for every region of a window: a new size opens new
  // windows, so the waits are weighed against (threads - 1) x the shares.)
  std::atomic<std::int64_t> win_work_ns{0}, win_wait_ns{0};
  // The run-delay window: its regions' time so far, when it opened, on which
  // thread (the reading is that thread's; 0: no reading) and that thread's
  // run delay then (ns).
  std::atomic<std::int64_t> delay_win_ns{0}, delay_open_ns{0}, delay_open_value_ns{0};
  std::atomic<std::uintptr_t> delay_owner{0};
  // Test hook: when >= 0, the run delay every thread reads (ns). -1 in normal use.
  std::atomic<std::int64_t> fake_run_delay_ns{-1};
  // Test hook: worker threads sleep this long (spin, below 1 ms) as a region
  // starts (a simulated neighbour that holds their core). 0 in normal use.
  std::atomic<std::int64_t> worker_delay_ns{0};
};
extern ThreadGuard thread_guard;
std::int64_t now_ns();
// True when this region should run on the calling thread only.
inline bool guard_says_solo() {
  if (!thread_guard.enabled.load(std::memory_order_relaxed)) return false;
  const std::int64_t until = thread_guard.solo_until_ns.load(std::memory_order_relaxed);
  if (until == 0 || now_ns() >= until) return false;
  thread_guard.solo_regions.fetch_add(1, std::memory_order_relaxed);
  return true;
}
// Records a team region of `threads` threads: the calling thread's own share
// took `work_ns`, then it waited `wait_ns` for the others.
void guard_note_region(std::int64_t work_ns, std::int64_t wait_ns, int threads);
// The calling thread's time spent runnable but not running since it started
// (ns), or -1 where the kernel does not say.
std::int64_t run_delay_ns();
// Forgets the guard's state and counters (tests); leaves enabled and the hooks alone.
void reset_thread_guard();
void worker_delay();
}  // namespace detail

// body(i) for i in [0, count), split statically over `threads` threads. One
// thread runs the plain loop and never enters an OpenMP region: libgomp
// mallocs and frees a team for every single-thread region (it caches only
// multi-thread teams), which would be the only heap traffic of a training step.
template <class F>
inline void parallel_for(Index count, int threads, F&& body) {
  sync_fp_mode();
  if (threads <= 1 || detail::guard_says_solo()) {
    for (Index i = 0; i < count; ++i) body(i);
    return;
  }
  const std::int64_t start = detail::now_ns();
  std::int64_t own_done = start;
#pragma omp parallel num_threads(threads)
  {
    sync_fp_mode();
#ifdef _OPENMP
    if (omp_get_thread_num() != 0) detail::worker_delay();
#endif
#pragma omp for schedule(static) nowait
    for (Index i = 0; i < count; ++i) body(i);
#ifdef _OPENMP
    if (omp_get_thread_num() == 0) own_done = detail::now_ns();
#endif
  }
  const std::int64_t end = detail::now_ns();
  detail::guard_note_region(own_done - start, end - own_done, threads);
}

}  // namespace nerve
