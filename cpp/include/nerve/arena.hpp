// 64-byte aligned float buffers: the parameter arena, its gradient twin,
// optimizer state slots, and per-batch activation buffers all use this.
#pragma once
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include "nerve/common.hpp"

namespace nerve {

// Counts allocations so tests can check that a training step allocates nothing.
struct AllocStats {
  static inline std::int64_t allocations = 0;
  static inline std::int64_t bytes = 0;
};

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(Index n, float fill = 0.0f) { resize(n, fill); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  AlignedBuffer(AlignedBuffer&& o) noexcept
      : base_(std::exchange(o.base_, nullptr)), data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    if (this != &o) {
      release();
      base_ = std::exchange(o.base_, nullptr);
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  ~AlignedBuffer() { release(); }

  // Reallocates only when the size changes; contents are set to `fill`.
  // A negative n, or one whose byte count (plus alignment and stagger) does
  // not fit in a ptrdiff_t, throws ValueError before anything is freed or
  // allocated: n * sizeof(float) used to wrap around for n >= 2^62, giving a
  // tiny block that fill_with then overran.
  void resize(Index n, float fill = 0.0f) {
    if (n < 0 || n > kMaxFloats) size_overflow("AlignedBuffer", n, static_cast<Index>(sizeof(float)), '*');
    if (n != size_) {
      release();
      if (n > 0) {
        const std::size_t bytes = (static_cast<std::size_t>(n) * sizeof(float) + kAlign - 1) / kAlign * kAlign;
        const std::size_t shift = bytes >= kStaggerFrom ? kStaggerStep * next_stagger() : 0;
        base_ = std::aligned_alloc(kAlign, bytes + shift);
        if (!base_) throw std::bad_alloc();
        data_ = reinterpret_cast<float*>(static_cast<char*>(base_) + shift);
        AllocStats::allocations += 1;
        AllocStats::bytes += static_cast<std::int64_t>(bytes + shift);
      }
      size_ = n;
    }
    fill_with(fill);
  }
  // Grows without clearing when the buffer is already large enough (for scratch space).
  void reserve(Index n) {
    if (n > size_) resize(n);
  }
  void fill_with(float v) {
    for (Index i = 0; i < size_; ++i) data_[i] = v;
  }
  float* data() { return data_; }
  const float* data() const { return data_; }
  Index size() const { return size_; }

 private:
  // Large buffers come from mmap: page-aligned plus the same header offset,
  // so parameters, gradients and optimizer slots would all start at the same
  // address modulo 4 KiB, and a kernel streaming several of them at one index
  // (Adam: loads of p, g, m, v and stores of p, m, v) has its loads and
  // stores 4K-aliasing, which the core resolves slowly. Each large buffer
  // starts a different multiple of 256 bytes past its allocation. (Reference
  // MLP, batch-1 training step, one thread: 312 -> 300 us, best of 40 x 25
  // steps in 4 alternating pairs of processes.)
  static constexpr std::size_t kStaggerFrom = 64 * 1024;
  static constexpr std::size_t kStaggerStep = 256;
  static constexpr std::size_t kStaggerSlots = 15;  // shifts of 256 .. 3840 bytes
  // The most floats a buffer may hold: bytes, rounded up to kAlign, plus the
  // largest stagger, stay below PTRDIFF_MAX (so pointer differences and Index
  // offsets into the buffer are defined).
  static constexpr Index kMaxFloats =
      static_cast<Index>((static_cast<std::size_t>(PTRDIFF_MAX) - kAlign - kStaggerStep * kStaggerSlots) /
                         sizeof(float));
  static std::size_t next_stagger() {
    static std::atomic<std::size_t> counter{0};
    return 1 + counter.fetch_add(1, std::memory_order_relaxed) % kStaggerSlots;
  }
  void release() {
    std::free(base_);
    base_ = nullptr;
    data_ = nullptr;
    size_ = 0;
  }
  void* base_ = nullptr;  // what aligned_alloc returned; data_ may start past it
  float* data_ = nullptr;
  Index size_ = 0;
};

}  // namespace nerve
