// 64-byte aligned float buffers: the parameter arena, its gradient twin,
// optimizer state slots, and per-batch activation buffers all use this.
#pragma once
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
  AlignedBuffer(AlignedBuffer&& o) noexcept : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  ~AlignedBuffer() { release(); }

  // Reallocates only when the size changes; contents are set to `fill`.
  void resize(Index n, float fill = 0.0f) {
    if (n != size_) {
      release();
      if (n > 0) {
        std::size_t bytes = (static_cast<std::size_t>(n) * sizeof(float) + kAlign - 1) / kAlign * kAlign;
        data_ = static_cast<float*>(std::aligned_alloc(kAlign, bytes));
        if (!data_) throw std::bad_alloc();
        AllocStats::allocations += 1;
        AllocStats::bytes += static_cast<std::int64_t>(bytes);
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
  void release() {
    std::free(data_);
    data_ = nullptr;
    size_ = 0;
  }
  float* data_ = nullptr;
  Index size_ = 0;
};

}  // namespace nerve
