// Reductions over one row of a matrix, shared by the row-wise activations
// (softmax, log_softmax) and the losses on logits.
#pragma once
#include <limits>

#include "nerve/common.hpp"

#include "nerve/vec.hpp"

namespace nerve {

// The largest non-NaN value of x[0, n) (-inf when there is none). Four
// vectors of running maxima (4 x 8 lanes at avx2, 4 x 16 at avx512): one
// accumulator would chain every compare to the previous one, and this pass
// then cost as much as a softmax's exponentials. NaN elements are skipped
// (vmaxps returns its second operand, the running maximum, for an unordered
// pair); they still make the row NaN through the exponentials and their sum,
// as in PyTorch. The maximum is exact, so it is the same at every level.
inline float row_max(const float* x, Index n) {
  using simd::vf;
  constexpr Index W = simd::kLanes;
  float m = -std::numeric_limits<float>::infinity();
  Index c = 0;
  if (W > 1 && n >= 4 * W) {
    vf m0 = vf(m), m1 = m0, m2 = m0, m3 = m0;
    // max_(a, b) keeps a when b is NaN: the running maxima come second.
    for (; c + 4 * W <= n; c += 4 * W) {
      m0 = simd::max_(m0, simd::load<vf>(x + c));
      m1 = simd::max_(m1, simd::load<vf>(x + c + W));
      m2 = simd::max_(m2, simd::load<vf>(x + c + 2 * W));
      m3 = simd::max_(m3, simd::load<vf>(x + c + 3 * W));
    }
    m = simd::reduce_max(simd::max_(simd::max_(m0, m1), simd::max_(m2, m3)));
  }
  for (; c < n; ++c) m = x[c] > m ? x[c] : m;
  return m;
}

}  // namespace nerve
