// The parameter arena's pruning-mask pass (nv.pruning).
#include <algorithm>

#include "nerve/layer.hpp"
#include "nerve/parallel.hpp"

namespace nerve {

void ParamArena::apply_mask() {
  if (!has_mask()) return;
  float* p = values.data();
  const float* m = mask.data();
  const Index n = size();
  constexpr Index kPiece = 1 << 16;
  const Index pieces = (n + kPiece - 1) / kPiece;
  const int threads = threads_for(2.0 * n, pieces);
  parallel_for(pieces, threads, [&](Index c) {
    const Index end = std::min(n, (c + 1) * kPiece);
#pragma omp simd
    for (Index i = c * kPiece; i < end; ++i) p[i] = m[i] != 0.0f ? p[i] : 0.0f;
  });
}

}  // namespace nerve
