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

}  // namespace nerve
