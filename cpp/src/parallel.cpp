#include "nerve/parallel.hpp"

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
