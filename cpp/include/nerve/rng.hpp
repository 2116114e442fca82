// Counter-based random numbers (Philox4x32-10, Salmon et al., SC'11).
// Every random number is a pure function of (seed, stream, counter), so
// results do not depend on the number of threads or the order of evaluation.
#pragma once
#include <cmath>
#include <cstdint>

#include "nerve/vec.hpp"

namespace nerve {

struct Philox4x32 {
  // Returns 4 independent 32-bit words for a 128-bit counter under a 64-bit key.
  // Returns 4 independent 32-bit words for a 128-bit counter under a 64-bit
  // key: vec.hpp's philox4x32_10 on one lane (the vector kernels run the same
  // body on 8 or 16 counters at once).
  static inline void generate(std::uint64_t key, std::uint64_t ctr_hi, std::uint64_t ctr_lo,
                              std::uint32_t out[4]) {
    std::int32_t c0 = static_cast<std::int32_t>(static_cast<std::uint32_t>(ctr_lo));
    std::int32_t c1 = static_cast<std::int32_t>(static_cast<std::uint32_t>(ctr_lo >> 32));
    std::int32_t c2 = static_cast<std::int32_t>(static_cast<std::uint32_t>(ctr_hi));
    std::int32_t c3 = static_cast<std::int32_t>(static_cast<std::uint32_t>(ctr_hi >> 32));
    simd::philox4x32_10(c0, c1, c2, c3, static_cast<std::uint32_t>(key), static_cast<std::uint32_t>(key >> 32));
    out[0] = static_cast<std::uint32_t>(c0);
    out[1] = static_cast<std::uint32_t>(c1);
    out[2] = static_cast<std::uint32_t>(c2);
    out[3] = static_cast<std::uint32_t>(c3);
  }
};

// A stream of randomness: (seed, stream) select the key and high counter, the
// element index selects the low counter. `draw` returns word `w` (0..3) of the
// block for element i, so up to 4 numbers per element come from one block.
struct RandomKey {
  std::uint64_t seed = 0;
  std::uint64_t stream = 0;

  inline void block(std::uint64_t i, std::uint32_t out[4]) const {
    Philox4x32::generate(seed, stream, i, out);
  }
  // Uniform in [0, 1) with 24 random bits (exactly representable in float).
  static inline float to_unit_float(std::uint32_t w) { return (w >> 8) * (1.0f / 16777216.0f); }
  // Uniform in (0, 1) with 53 bits, for transforms that take a log.
  static inline double to_open_unit_double(std::uint32_t a, std::uint32_t b) {
    std::uint64_t bits = (static_cast<std::uint64_t>(a) << 21) ^ (b >> 11);
    bits &= (1ull << 53) - 1;
    return (static_cast<double>(bits) + 0.5) * (1.0 / 9007199254740992.0);
  }
  inline float uniform(std::uint64_t i) const {
    std::uint32_t w[4];
    block(i, w);
    return to_unit_float(w[0]);
  }
  // Standard normal by Box-Muller (double precision) from one block.
  inline double normal(std::uint64_t i) const {
    std::uint32_t w[4];
    block(i, w);
    double u1 = to_open_unit_double(w[0], w[1]);
    double u2 = to_open_unit_double(w[2], w[3]);
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
};

// Mixes a user seed with a purpose tag so init, dropout and shuffling draw
// from unrelated streams of the same seed (SplitMix64 finaliser).
inline std::uint64_t mix_seed(std::uint64_t seed, std::uint64_t tag) {
  std::uint64_t z = seed + 0x9E3779B97F4A7C15ull * (tag + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace nerve
