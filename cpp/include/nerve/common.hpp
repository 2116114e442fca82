// Shared basics: index type, errors, alignment, small helpers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace nerve {

using Index = std::ptrdiff_t;

// Alignment of every buffer nerve allocates: one cache line, so AVX2 loads of
// a row start never split a line and arenas never share lines between slots.
constexpr std::size_t kAlign = 64;

// std::invalid_argument becomes Python's ValueError through pybind11's
// default translator; std::runtime_error becomes RuntimeError. Bad user
// input throws ValueError before any state is touched.
struct ValueError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

inline void require(bool ok, const std::string& message) {
  if (!ok) throw ValueError(message);
}
// A literal message builds no std::string unless the check fails: checks on
// the training-step path must not allocate (tests/test_alloc.py).
inline void require(bool ok, const char* message) {
  if (!ok) throw ValueError(message);
}

// Checked size arithmetic. Every element count that sizes an allocation (or
// indexes one) is a product of user-given widths and batch sizes; a product
// that wraps around would allocate a small block and then write the full
// count into it. These throw ValueError instead (the message is built only on
// failure, so planning a step allocates nothing).
[[noreturn]] inline void size_overflow(const char* what, Index a, Index b, char op) {
  throw ValueError(std::string(what) + ": size " + std::to_string(a) + " " + op + " " + std::to_string(b) +
                   " is negative or overflows a 64-bit size");
}
inline Index checked_mul(Index a, Index b, const char* what) {
  Index r = 0;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r)) size_overflow(what, a, b, '*');
  return r;
}
inline Index checked_add(Index a, Index b, const char* what) {
  Index r = 0;
  if (a < 0 || b < 0 || __builtin_add_overflow(a, b, &r)) size_overflow(what, a, b, '+');
  return r;
}

}  // namespace nerve
