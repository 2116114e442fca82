// The generic optimizer: runs any policy (cpp/src/optim/*.cpp, one file per
// optimizer with its formulas and conventions) over the spans.
//
// Layout of the work: step() validates, asks the policy for the step's
// scalars (computed once in double) and kernels (begin_step), optionally
// clips the gradient, then makes one pass over each fixed-size chunk of each
// span that reads p, g and the state once and writes p and the state once
// (finish_step). A layer may update a slice of a span in between, inside its
// backward (update_slice: the same kernels; finish_step then skips that
// slice). The policy's flags (weight decay on/off, amsgrad, nesterov, ...)
// are template parameters of its kernel, so the element loops are
// branch-free and vectorize. The per-element math is done in float, as
// PyTorch does for float32 parameters; the scalars are rounded once from double.
//
// Conventions:
// - Clipping (clipvalue, clipnorm, global_clipnorm: Keras meanings) happens in
//   step() before the update and is written back into g (clipvalue element by
//   element just before each element's update). Keras allows only one
//   of them; here any combination is applied in that order.
// - Weight decay applies only to spans with decay == true.
// - bind() and reset_state() restart the step count (state is fresh).
#include "nerve/optimizer.hpp"

#include <algorithm>
#include <limits>
#include <cmath>
#include "nerve/parallel.hpp"
#include "nerve/vec.hpp"

namespace nerve {

namespace {

// Chunk length in floats. Large enough that the per-chunk overhead vanishes
// (and a multiple of 16 so chunks after the first keep the span's alignment),
// small enough that a 1M-parameter span still splits over many threads.
constexpr Index kChunk = 1 << 15;

// The vector width of the kernels at this CPU level (cpp/src/optim/kernel.hpp):
// an outer product's rows go through the fused pass only when their width is
// a multiple of it.
constexpr Index kOptWidth = simd::kLanes;

inline void check(bool ok, const char* param, double value, const char* rule) { check_hyper(ok, param, value, rule); }

// Sum of squares in double. The order of additions is fixed by the compiler's
// vectorization of this loop, never by the thread count.
double sum_sq(const float* __restrict g, Index n) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (Index i = 0; i < n; ++i) {
    const double x = g[i];
    acc += x * x;
  }
  return acc;
}

// Clamps to [-c, c] in place and returns the sum of squares of the result.
double clamp_sum_sq(float* __restrict g, Index n, float c) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (Index i = 0; i < n; ++i) {
    const float x = std::min(std::max(g[i], -c), c);
    g[i] = x;
    const double xd = x;
    acc += xd * xd;
  }
  return acc;
}

void clamp_only(float* __restrict g, Index n, float c) {
#pragma omp simd
  for (Index i = 0; i < n; ++i) g[i] = std::min(std::max(g[i], -c), c);
}

void scale_in_place(float* __restrict g, Index n, float f) {
#pragma omp simd
  for (Index i = 0; i < n; ++i) g[i] *= f;
}

// Runs body(c) for c in [0, count): on one thread below the parallel
// threshold, else over OpenMP threads. Each chunk's result depends only on the
// chunk, so the thread count never changes the result.
template <typename F>
void for_chunks(Index count, double flops, F&& body) {
  parallel_for(count, threads_for(flops, count), body);
}

// Pieces of a list of spans for the free clipping helpers.
struct Piece {
  float* g;
  Index n;
  std::size_t span;
};

std::vector<Piece> split(const std::vector<ParamSpan>& spans) {
  std::vector<Piece> out;
  for (std::size_t s = 0; s < spans.size(); ++s)
    for (Index b = 0; b < spans[s].n; b += kChunk)
      out.push_back({spans[s].g + b, std::min(kChunk, spans[s].n - b), s});
  return out;
}

void check_spans(const std::vector<ParamSpan>& spans, bool need_p) {
  for (std::size_t s = 0; s < spans.size(); ++s) {
    const ParamSpan& sp = spans[s];
    require(sp.n >= 0, "span " + std::to_string(s) + " has negative size " + std::to_string(sp.n));
    require(sp.n == 0 || (sp.g && (sp.p || !need_p)),
            "span " + std::to_string(s) + " has a null parameter or gradient pointer");
  }
}

// ---------------------------------------------------------------------------

void validate_clipping(const Clipping& c) {
  // NaN fails every comparison, so it is rejected too.
  check(c.clipvalue >= 0.0, "clipvalue", c.clipvalue, "must be >= 0 (0 disables)");
  check(c.clipnorm >= 0.0, "clipnorm", c.clipnorm, "must be >= 0 (0 disables)");
  check(c.global_clipnorm >= 0.0, "global_clipnorm", c.global_clipnorm, "must be >= 0 (0 disables)");
}

}  // namespace

Optimizer::Optimizer(const HyperValues& hyper, const Clipping& clip)
    : policy_(hyper.policy), hyper_(hyper), clip_(clip), wd_index_(-1) {
  validate_hyper(hyper_);
  validate_clipping(clip_);
  wd_index_ = policy_->index_of("weight_decay");
  for (const ScalarSpec& s : policy_->scalars()) scalar_state.push_back(s.init);
}

Optimizer::Optimizer(const std::string& name, const std::vector<std::pair<std::string, double>>& values,
                     const Clipping& clip)
    : Optimizer(make_hyper(optimizer_policy(name), values), clip) {}

double Optimizer::get(const std::string& name) const {
  const int i = policy_->index_of(name.c_str());
  require(i >= 0, std::string(policy_->name()) + " has no hyper-parameter '" + name + "'");
  return hyper_[i];
}

void Optimizer::set(const std::string& name, double value) {
  const int i = policy_->index_of(name.c_str());
  require(i >= 0, std::string(policy_->name()) + " has no hyper-parameter '" + name + "'");
  HyperValues h = hyper_;
  h.v[static_cast<std::size_t>(i)] = value;
  validate_hyper(h);
  hyper_.v[static_cast<std::size_t>(i)] = value;
}

void Optimizer::set_hyper(const HyperValues& h) {
  require(h.policy == policy_, "hyper-parameters of another optimizer");
  validate_hyper(h);
  hyper_ = h;
}

void Optimizer::set_clipping(const Clipping& c) {
  validate_clipping(c);
  clip_ = c;
}

void Optimizer::bind(const std::vector<ParamSpan>& spans) {
  validate_hyper(hyper_);
  validate_clipping(clip_);
  check_spans(spans, true);
  spans_ = spans;
  total_ = 0;
  chunks_.clear();
  span_first_chunk_.clear();
  span_offset_.clear();
  for (std::size_t s = 0; s < spans_.size(); ++s) {
    span_first_chunk_.push_back(static_cast<Index>(chunks_.size()));
    span_offset_.push_back(total_);
    for (Index b = 0; b < spans_[s].n; b += kChunk)
      chunks_.push_back({static_cast<int>(s), b, std::min(kChunk, spans_[s].n - b)});
    total_ += spans_[s].n;
  }
  span_first_chunk_.push_back(static_cast<Index>(chunks_.size()));
  chunk_sq_.assign(chunks_.size(), 0.0);
  span_scale_.assign(spans_.size(), 1.0);

  const std::vector<SlotSpec> specs = policy_->slots(hyper_);
  slot_names.clear();
  for (const SlotSpec& sp : specs) slot_names.push_back(sp.name);
  slots.resize(specs.size());
  // Slot base pointers in the order the kernels expect (SlotSpec::kernel_slot).
  slot_kernel_.clear();
  for (const SlotSpec& sp : specs) slot_kernel_.push_back(sp.kernel_slot);
  const auto& hs = policy_->hyper();
  bound_layout_.assign(hs.size(), 0);
  for (std::size_t i = 0; i < hs.size(); ++i) bound_layout_[i] = hyper_.v[i] != 0.0;
  bound_ = true;
  in_step_ = false;
  updated_.clear();
  for (auto& buf : slots) buf.resize(total_, 0.0f);
  reset_state();
}

void Optimizer::reset_state() {
  iterations = 0;
  scalar_state.clear();
  for (const ScalarSpec& s : policy_->scalars()) scalar_state.push_back(s.init);
  // Accumulators may start non-zero (Adagrad's "sum", FTRL's "accumulator").
  const std::vector<SlotSpec> specs = policy_->slots(hyper_);
  for (std::size_t k = 0; k < slots.size() && k < specs.size(); ++k)
    slots[k].fill_with(static_cast<float>(specs[k].init));
}

void Optimizer::set_lr(double lr) { set("lr", lr); }

void Optimizer::step() {
  begin_step();
  finish_step();
}

void Optimizer::begin_step() {
  // Everything that can throw happens before any state is touched.
  if (!bound_) throw ValueError(std::string(policy_->name()) + ".step() called before bind()");
  validate_hyper(hyper_);
  validate_clipping(clip_);
  const auto& hs = policy_->hyper();
  for (std::size_t i = 0; i < hs.size(); ++i)
    if (hs[i].layout && bound_layout_[i] != (hyper_.v[i] != 0.0))
      throw ValueError(std::string(policy_->name()) + ": " + hs[i].name +
                       " changed after bind(); the state slots no longer match, call bind() again");

  // A step count loaded or assigned at INT64_MAX would overflow (UB) here.
  require(iterations < std::numeric_limits<std::int64_t>::max(), "optimizer iterations overflow");
  iterations += 1;
  plan_ = StepPlan{};
  policy_->plan(hyper_, iterations, scalar_state.data(), plan_);
  clipvalue_ = static_cast<float>(clip_.clipvalue);

  float** base = slot_base_;
  base[0] = base[1] = base[2] = nullptr;
  for (std::size_t k = 0; k < slots.size(); ++k) base[slot_kernel_[k]] = slots[k].data();
  updated_.clear();
  in_step_ = true;
}

bool Optimizer::slices_allowed() const { return clip_.clipnorm <= 0.0 && clip_.global_clipnorm <= 0.0; }

SpanSlice Optimizer::find(const float* p, Index n) const {
  if (!in_step_ || !slices_allowed() || p == nullptr || n <= 0) return {};
  for (std::size_t s = 0; s < spans_.size(); ++s) {
    const ParamSpan& sp = spans_[s];
    // Compared as addresses: p may lie in another arena altogether.
    const auto lo = reinterpret_cast<std::uintptr_t>(sp.p), at = reinterpret_cast<std::uintptr_t>(p);
    if (at >= lo && at + n * sizeof(float) <= lo + sp.n * sizeof(float))
      return {static_cast<int>(s), static_cast<Index>(p - sp.p), n};
  }
  return {};
}

void Optimizer::update_slice(const SpanSlice& s) { update_elements(s.span, s.begin, s.n, clipvalue_ > 0.0f); }

void Optimizer::mark_updated(const SpanSlice& s) {
  // Kept sorted so that finish_step() walks each chunk's gaps in one pass.
  auto at = std::upper_bound(updated_.begin(), updated_.end(), s, [](const SpanSlice& a, const SpanSlice& b) {
    return a.span != b.span ? a.span < b.span : a.begin < b.begin;
  });
  updated_.insert(at, s);
}

void Optimizer::finish_step() {
  const Clipping& h = clip_;
  const Index nchunks = static_cast<Index>(chunks_.size());
  in_step_ = false;

  // --- Norm clipping. Keras order of meanings; several may be set at once
  // and are then applied as clipvalue, per-span clipnorm, global_clipnorm.
  // The clipped gradient is written back into g (Keras clips a copy; writing
  // back saves a buffer and lets the caller see what the optimizer used).
  // Without a norm, clipvalue is applied piece by piece with the update.
  const bool cv = h.clipvalue > 0.0, cn = h.clipnorm > 0.0, gn = h.global_clipnorm > 0.0;
  if (cn || gn) {
    const float c = static_cast<float>(h.clipvalue);
    for_chunks(nchunks, 3.0 * static_cast<double>(total_), [&](Index k) {
      const Chunk& ch = chunks_[k];
      float* g = spans_[ch.span].g + ch.begin;
      chunk_sq_[k] = cv ? clamp_sum_sq(g, ch.len, c) : sum_sq(g, ch.len);
    });
    double global_sq = 0.0;
    for (std::size_t s = 0; s < spans_.size(); ++s) {
      double sq = 0.0;
      for (Index k = span_first_chunk_[s]; k < span_first_chunk_[s + 1]; ++k) sq += chunk_sq_[k];
      double norm = std::sqrt(sq), scale = 1.0;
      if (cn && norm > h.clipnorm) {
        scale = h.clipnorm / norm;
        norm = h.clipnorm;
      }
      span_scale_[s] = scale;
      global_sq += norm * norm;
    }
    const double gnorm = std::sqrt(global_sq);
    if (gn && gnorm > h.global_clipnorm)
      for (auto& sc : span_scale_) sc *= h.global_clipnorm / gnorm;
    for_chunks(nchunks, static_cast<double>(total_), [&](Index k) {
      const Chunk& ch = chunks_[k];
      const double sc = span_scale_[ch.span];
      if (sc != 1.0) scale_in_place(spans_[ch.span].g + ch.begin, ch.len, static_cast<float>(sc));
    });
  }
  const bool clamp = cv && !(cn || gn);

  // --- The update of every element no slice has covered: each chunk minus
  // the marked slices of its span (sorted, usually none or one).
  const SpanSlice* marks = updated_.data();
  const Index nmarks = static_cast<Index>(updated_.size());
  for_chunks(nchunks, 12.0 * static_cast<double>(total_), [&](Index k) {
    const Chunk& ch = chunks_[k];
    const Index end = ch.begin + ch.len;
    Index from = ch.begin;
    for (Index m = 0; m < nmarks && from < end; ++m) {
      const SpanSlice& done = marks[m];
      if (done.span != ch.span || done.begin + done.n <= from) continue;
      if (done.begin >= end) break;
      if (done.begin > from) update_elements(ch.span, from, done.begin - from, clamp);
      from = done.begin + done.n;
    }
    if (from < end) update_elements(ch.span, from, end - from, clamp);
  });
}

OptPtrs Optimizer::pointers(int span, Index begin) const {
  const ParamSpan& sp = spans_[span];
  const Index o = span_offset_[span] + begin;
  float* const* base = slot_base_;
  return OptPtrs{sp.p + begin, sp.g + begin, base[0] ? base[0] + o : nullptr, base[1] ? base[1] + o : nullptr,
                 base[2] ? base[2] + o : nullptr};
}

const OptKernel& Optimizer::kernel(int span) const {
  const bool decays = wd_index_ >= 0 && spans_[span].decay && hyper_[wd_index_] != 0.0;
  return decays ? plan_.decayed : plan_.plain;
}

void Optimizer::update_elements(int span, Index begin, Index n, bool clamp) {
  if (clamp) clamp_only(spans_[span].g + begin, n, clipvalue_);
  kernel(span).run(pointers(span, begin), n, plan_.scalars);
}

bool Optimizer::update_outer(const SpanSlice& sl, const OuterGrad& og) {
  // clipvalue clamps g before the update reads it; a row whose width is not
  // a whole number of vectors would need run_kernel's padded tail per row.
  if (clipvalue_ > 0.0f || og.cols % kOptWidth != 0 || og.batch < 1 || og.batch > 4) return false;
  const OptKernel& k = kernel(sl.span);
  (og.batch == 1 ? k.rows1 : k.rows)(pointers(sl.span, sl.begin), og, plan_.scalars);
  return true;
}

// ---------------------------------------------------------------------------
void clip_grad_value(const std::vector<ParamSpan>& spans, double clip_value) {
  check(clip_value >= 0.0, "clip_value", clip_value, "must be >= 0");
  check_spans(spans, false);
  const std::vector<Piece> pieces = split(spans);
  const float c = static_cast<float>(clip_value);
  double total = 0.0;
  for (const auto& pc : pieces) total += static_cast<double>(pc.n);
  for_chunks(static_cast<Index>(pieces.size()), total, [&](Index k) { clamp_only(pieces[k].g, pieces[k].n, c); });
}

// torch.nn.utils.clip_grad_norm_ (norm_type=2): total = ||concat(g)||_2,
// coef = max_norm / (total + 1e-6), every g *= coef when coef < 1.
double clip_grad_norm(const std::vector<ParamSpan>& spans, double max_norm) {
  check(max_norm >= 0.0, "max_norm", max_norm, "must be >= 0");
  check_spans(spans, false);
  const std::vector<Piece> pieces = split(spans);
  std::vector<double> sq(pieces.size(), 0.0);
  double work = 0.0;
  for (const auto& pc : pieces) work += 2.0 * static_cast<double>(pc.n);
  const Index np = static_cast<Index>(pieces.size());
  for_chunks(np, work, [&](Index k) { sq[k] = sum_sq(pieces[k].g, pieces[k].n); });
  double acc = 0.0;
  for (double x : sq) acc += x;
  const double total = std::sqrt(acc);
  const double coef = max_norm / (total + 1e-6);
  if (coef < 1.0) {
    const float f = static_cast<float>(coef);
    for_chunks(np, work / 2.0, [&](Index k) { scale_in_place(pieces[k].g, pieces[k].n, f); });
  }
  return total;
}

}  // namespace nerve
