#include "nerve/parallel.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif
#ifdef __linux__
#include <fcntl.h>
#include <unistd.h>
#endif

namespace nerve {

int num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

void set_num_threads(int n) {
  require(n >= 1, "number of threads must be >= 1, got " + std::to_string(n));
#ifdef _OPENMP
  omp_set_num_threads(n);
#endif
}

namespace detail {
std::atomic<int> fp_mode{-1};

bool apply_fp_mode(int mode) {
#if defined(__x86_64__) || defined(__i386__)
  constexpr unsigned kFlushBits = 0x8040;  // FTZ (bit 15) | DAZ (bit 6)
  const unsigned csr = _mm_getcsr();
  const unsigned want = mode ? (csr | kFlushBits) : (csr & ~kFlushBits);
  if (csr != want) _mm_setcsr(want);
  return true;
#elif defined(__aarch64__)
  constexpr unsigned long kFlushBit = 1ul << 24;  // FPCR.FZ
  unsigned long fpcr;
  __asm__ __volatile__("mrs %0, fpcr" : "=r"(fpcr));
  const unsigned long want = mode ? (fpcr | kFlushBit) : (fpcr & ~kFlushBit);
  if (fpcr != want) __asm__ __volatile__("msr fpcr, %0" : : "r"(want));
  return true;
#else
  (void)mode;
  return false;
#endif
}
}  // namespace detail

namespace {
bool adaptive_from_env() {
  const char* v = std::getenv("NERVE_ADAPTIVE_THREADS");
  return !(v && (std::strcmp(v, "0") == 0 || std::strcmp(v, "off") == 0 || std::strcmp(v, "false") == 0));
}
}  // namespace

namespace detail {
ThreadGuard thread_guard;
const bool thread_guard_env_read = [] {
  thread_guard.enabled.store(adaptive_from_env());
  return true;
}();

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::int64_t run_delay_ns() {
  const std::int64_t fake = thread_guard.fake_run_delay_ns.load(std::memory_order_relaxed);
  if (fake >= 0) return fake;
#ifdef __linux__
  // /proc/thread-self/schedstat: "<ns on CPU> <ns runnable, waiting> <slices>".
  // The file stays open for the thread's life (a pread is ~1 µs, once per
  // run-delay window of >= 8 ms of regions). A forked child inherits the
  // descriptor, which still names the parent's thread: it is reopened when
  // the process id changes.
  struct File {
    int fd = -2;  // -2: not opened yet; -1: no such file here
    pid_t pid = 0;
    ~File() {
      if (fd >= 0) ::close(fd);
    }
  };
  thread_local File f;
  const pid_t pid = ::getpid();
  if (f.fd == -2 || f.pid != pid) {
    if (f.fd >= 0) ::close(f.fd);
    f.fd = ::open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
    f.pid = pid;
  }
  if (f.fd < 0) return -1;
  char buf[96];
  const ssize_t n = ::pread(f.fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return -1;
  buf[n] = '\0';
  char* end = nullptr;
  std::strtoull(buf, &end, 10);  // time on a CPU
  if (end == buf) return -1;
  const char* delay = end;
  const unsigned long long d = std::strtoull(delay, &end, 10);
  if (end == delay) return -1;
  return static_cast<std::int64_t>(d);
#else
  return -1;
#endif
}

namespace {
constexpr auto relaxed = std::memory_order_relaxed;

// Tells threads apart cheaply: the address of a thread_local.
std::uintptr_t this_thread_token() {
  static thread_local char token;
  return reinterpret_cast<std::uintptr_t>(&token);
}

void open_cost_window(ThreadGuard& g) {
  g.win_work_ns.store(0, relaxed);
  g.win_wait_ns.store(0, relaxed);
}

// Opens a run-delay window on the calling thread (a reading of its run delay).
void open_delay_window(ThreadGuard& g) {
  const std::int64_t delay = run_delay_ns();
  g.delay_win_ns.store(0, relaxed);
  g.delay_open_value_ns.store(delay, relaxed);
  g.delay_open_ns.store(now_ns(), relaxed);
  g.delay_owner.store(delay >= 0 ? this_thread_token() : 0, relaxed);
}

void open_windows(ThreadGuard& g) {
  open_cost_window(g);
  open_delay_window(g);
}

// The cost test (parallel.hpp): true when the window that this region
// completes shows the team slower than the calling thread alone.
// (Concurrent callers may both close a window: one extra reset, no harm.)
bool slow_window(ThreadGuard& g, std::int64_t work_ns, std::int64_t wait_ns, int threads) {
  const std::int64_t work = g.win_work_ns.fetch_add(work_ns, relaxed) + work_ns;
  const std::int64_t wait = g.win_wait_ns.fetch_add(wait_ns, relaxed) + wait_ns;
  if (work + wait < kCostWindowNs) return false;
  open_cost_window(g);
  if (wait <= static_cast<std::int64_t>(threads - 1) * work) return false;
  g.slow_windows.fetch_add(1, relaxed);
  return true;
}

// The run-delay test (parallel.hpp), on the window this region completes:
// true when the calling thread waited for a CPU for more than
// 1/kRunDelayShare of the window's wall time. Judged only on the thread that
// opened the window (a run delay is per thread).
bool preempted_window(ThreadGuard& g, std::int64_t region_ns, std::int64_t now) {
  if (g.delay_win_ns.fetch_add(region_ns, relaxed) + region_ns < kDelayWindowNs) return false;
  bool preempted = false;
  if (g.delay_owner.load(relaxed) == this_thread_token()) {
    const std::int64_t delay = run_delay_ns() - g.delay_open_value_ns.load(relaxed);
    const std::int64_t wall = now - g.delay_open_ns.load(relaxed);
    preempted = delay > kMinRunDelayNs && kRunDelayShare * delay > wall;
  }
  open_delay_window(g);
  if (preempted) g.preempted_windows.fetch_add(1, relaxed);
  return preempted;
}
}  // namespace

void reset_thread_guard() {
  ThreadGuard& g = thread_guard;
  g.solo_until_ns.store(0);
  g.backoff_ns.store(kMinBackoffNs);
  g.resumed_ns.store(0);
  g.last_threads.store(0);
  g.team_regions.store(0);
  g.solo_regions.store(0);
  g.stalls.store(0);
  g.slow_windows.store(0);
  g.preempted_windows.store(0);
  open_windows(g);
}

void guard_note_region(std::int64_t work_ns, std::int64_t wait_ns, int threads) {
  ThreadGuard& g = thread_guard;
  g.team_regions.fetch_add(1, std::memory_order_relaxed);
  if (!g.enabled.load(std::memory_order_relaxed)) return;
  const std::int64_t solo_until = g.solo_until_ns.load(std::memory_order_relaxed);
  const int last_threads = g.last_threads.exchange(threads, std::memory_order_relaxed);
  const std::int64_t now = now_ns();
  if (solo_until != 0 || last_threads != threads) {
    // The first region after the loops ran alone (the probe) or after the
    // team changed size is not judged: its workers were asleep (idle through
    // the back-off, or not used at this size), and waking a sleeping thread,
    // on a VM an idle virtual CPU, takes 0.1 to over 1 ms on a quiet machine
    // too. Judged, every probe stalled, the back-off grew to 1 s and a quiet
    // machine ran on one thread (batch 1: 0.95x of 1 thread instead of
    // 1.30x). The team is taken back and the regions after it are judged.
    if (solo_until != 0) {
      g.solo_until_ns.store(0, std::memory_order_relaxed);
      g.resumed_ns.store(now, std::memory_order_relaxed);
    }
    open_windows(g);
    return;
  }
  // Both tests run (each keeps its window going).
  const bool slow = slow_window(g, work_ns, wait_ns, threads);
  const bool stalled = preempted_window(g, work_ns + wait_ns, now) || slow;
  const std::int64_t resumed = g.resumed_ns.load(std::memory_order_relaxed);
  std::int64_t backoff = g.backoff_ns.load(std::memory_order_relaxed);
  if (stalled) {
    g.stalls.fetch_add(1, std::memory_order_relaxed);
    // Stalled again soon after the team came back: the neighbour is still
    // there, wait longer before the next probe.
    if (now - resumed < 4 * backoff) backoff = std::min(2 * backoff, kMaxBackoffNs);
    g.backoff_ns.store(backoff, std::memory_order_relaxed);
    g.solo_until_ns.store(now + backoff, std::memory_order_relaxed);
    open_windows(g);
  } else if (backoff > kMinBackoffNs && now - resumed > 4 * backoff) {
    // The team has run clean for four back-off periods: probe sooner next time.
    g.backoff_ns.store(std::max(backoff / 2, kMinBackoffNs), std::memory_order_relaxed);
    g.resumed_ns.store(now, std::memory_order_relaxed);
  }
}

void worker_delay() {
  const std::int64_t d = thread_guard.worker_delay_ns.load(std::memory_order_relaxed);
  if (d <= 0) return;
  if (d >= 1'000'000) {
    std::this_thread::sleep_for(std::chrono::nanoseconds(d));
    return;
  }
  // Below 1 ms a spin: a sleep would overshoot by the timer slack (~50 µs
  // and more), and the short-delay tests need the lateness they ask for.
  const std::int64_t until = now_ns() + d;
  while (now_ns() < until) {
  }
}
}  // namespace detail

void set_adaptive_threads(bool on) {
  detail::thread_guard.enabled.store(on);
  if (!on) detail::thread_guard.solo_until_ns.store(0);
}

bool adaptive_threads() { return detail::thread_guard.enabled.load(); }

bool set_flush_denormal(bool on) {
  if (!detail::apply_fp_mode(on ? 1 : 0)) return false;
  detail::fp_mode.store(on ? 1 : 0, std::memory_order_relaxed);
  return true;
}

bool flush_denormal() { return detail::fp_mode.load(std::memory_order_relaxed) == 1; }

bool have_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace nerve
