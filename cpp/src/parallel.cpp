#include "nerve/parallel.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
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

void guard_note_region(std::int64_t work_ns, std::int64_t wait_ns) {
  ThreadGuard& g = thread_guard;
  g.team_regions.fetch_add(1, std::memory_order_relaxed);
  if (!g.enabled.load(std::memory_order_relaxed)) return;
  const bool stalled = wait_ns > kStallNs && wait_ns > 2 * work_ns;
  const std::int64_t solo_until = g.solo_until_ns.load(std::memory_order_relaxed);
  const std::int64_t resumed = g.resumed_ns.load(std::memory_order_relaxed);
  std::int64_t backoff = g.backoff_ns.load(std::memory_order_relaxed);
  const std::int64_t now = now_ns();
  if (stalled) {
    g.stalls.fetch_add(1, std::memory_order_relaxed);
    // Stalled again soon after the team came back (or on the probe itself):
    // the neighbour is still there, wait longer before the next probe.
    if (solo_until != 0 || now - resumed < 4 * backoff) backoff = std::min(2 * backoff, kMaxBackoffNs);
    g.backoff_ns.store(backoff, std::memory_order_relaxed);
    g.solo_until_ns.store(now + backoff, std::memory_order_relaxed);
  } else if (solo_until != 0) {
    // A clean probe: the team again. The back-off is kept until the team has
    // run clean for a while (below): one lucky probe proves little.
    g.solo_until_ns.store(0, std::memory_order_relaxed);
    g.resumed_ns.store(now, std::memory_order_relaxed);
  } else if (backoff > kMinBackoffNs && now - resumed > 4 * backoff) {
    g.backoff_ns.store(std::max(backoff / 2, kMinBackoffNs), std::memory_order_relaxed);
    g.resumed_ns.store(now, std::memory_order_relaxed);
  }
}

void worker_delay() {
  const std::int64_t d = thread_guard.worker_delay_ns.load(std::memory_order_relaxed);
  if (d > 0) std::this_thread::sleep_for(std::chrono::nanoseconds(d));
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
