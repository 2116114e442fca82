// Reductions over one row of a matrix, shared by the row-wise activations
// (softmax, log_softmax) and the losses on logits.
#pragma once
#include <limits>

#include "nerve/common.hpp"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace nerve {

// The largest non-NaN value of x[0, n) (-inf when there is none). Four AVX2
// registers of running maxima: one accumulator would chain every compare to
// the previous one, and this pass then cost as much as a softmax's
// exponentials. NaN elements are skipped (vmaxps returns its second operand,
// the running maximum, for an unordered pair); they still make the row NaN
// through the exponentials and their sum, as in PyTorch.
inline float row_max(const float* x, Index n) {
  float m = -std::numeric_limits<float>::infinity();
  Index c = 0;
#if defined(__AVX2__)
  if (n >= 32) {
    __m256 m0 = _mm256_set1_ps(m), m1 = m0, m2 = m0, m3 = m0;
    for (; c + 32 <= n; c += 32) {
      m0 = _mm256_max_ps(_mm256_loadu_ps(x + c), m0);
      m1 = _mm256_max_ps(_mm256_loadu_ps(x + c + 8), m1);
      m2 = _mm256_max_ps(_mm256_loadu_ps(x + c + 16), m2);
      m3 = _mm256_max_ps(_mm256_loadu_ps(x + c + 24), m3);
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, _mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3)));
    for (float v : lanes) m = v > m ? v : m;
  }
#endif
  for (; c < n; ++c) m = x[c] > m ? x[c] : m;
  return m;
}

}  // namespace nerve
