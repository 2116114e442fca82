// First-order optimizers: a policy (optim/policy.hpp: hyper-parameters, state
// slots, per-step scalars, fused kernels), a state of the same layout as the
// parameters, and one fused kernel pass that reads p, g and the state once
// and writes them once. Step-dependent scalars are computed once per step, in
// double. The step counter advances once per step(). This class knows no
// optimizer by name: everything particular comes from the policy.
//
// A step can also be taken in pieces (begin_step, update_slice, finish_step)
// so that a layer updates its weights inside its own backward pass, while
// they are still in cache (Network::train_step at batches of 1 to 4); the
// same kernels run in both cases, so the result is bit-identical.
#pragma once
#include <string>
#include <vector>

#include "nerve/arena.hpp"
#include "nerve/common.hpp"
#include "nerve/optim/policy.hpp"

namespace nerve {

// Gradient clipping before the update (Keras meanings; <= 0 means off),
// common to every optimizer.
struct Clipping {
  double clipvalue = 0.0;
  double clipnorm = 0.0;         // per tensor
  double global_clipnorm = 0.0;  // over all tensors
};

// One parameter tensor: its values, its gradient, and whether weight decay
// applies (biases and norm scales can be excluded).
struct ParamSpan {
  float* p = nullptr;
  float* g = nullptr;
  Index n = 0;
  bool decay = true;
};

// Where a tensor lies among an optimizer's spans: span index and first
// element within that span. span < 0: not (wholly) inside one span.
struct SpanSlice {
  int span = -1;
  Index begin = 0;
  Index n = 0;
  bool found() const { return span >= 0; }
  // Elements [from, from + count) of this slice.
  SpanSlice sub(Index from, Index count) const { return {span, begin + from, count}; }
};

class Optimizer {
 public:
  // Validates (ValueError).
  Optimizer(const HyperValues& hyper, const Clipping& clip = {});
  // By class name ("Adam"), defaults overridden by name.
  explicit Optimizer(const std::string& name, const std::vector<std::pair<std::string, double>>& values = {},
                     const Clipping& clip = {});

  // Tensors to update. State slots are laid out as the concatenation of the
  // spans and are (re)allocated and initialised here. Fresh state means a
  // fresh step count: iterations restarts at 0 (load saved state after bind).
  void bind(const std::vector<ParamSpan>& spans);

  // Clip (clipvalue, clipnorm, global_clipnorm), then one fused update:
  // begin_step() then finish_step().
  void step();

  // A step in pieces. begin_step() validates (throws before touching any
  // state), advances the step count and computes the per-step scalars.
  // update_slice() clips (clipvalue) and updates one slice of a span right
  // away; slices updated concurrently must not overlap. mark_updated() (one
  // thread) records a slice as done; finish_step() clips and updates every
  // element not marked. Norm clipping needs every gradient before any update,
  // so slices may be updated only when slices_allowed().
  void begin_step();
  bool slices_allowed() const;
  // Where [p, p + n) lies in the spans; not found() outside a step, or when
  // no single span holds it (e.g. a frozen layer's weights).
  SpanSlice find(const float* p, Index n) const;
  void update_slice(const SpanSlice& s);
  // update_slice for a slice holding og's rows, whose gradient is made from
  // its factors (and stored into g) in the same pass as the update. Returns
  // false, having done nothing, where that pass does not apply (clipvalue
  // set, or cols not a whole number of vectors): then write g and call
  // update_slice.
  bool update_outer(const SpanSlice& s, const OuterGrad& og);
  void mark_updated(const SpanSlice& s);
  void finish_step();

  // Back to the freshly bound state (slots re-initialised, iterations = 0,
  // the policy's scalars at their initial values) without reallocating.
  // bind() does the same.
  void reset_state();

  // The learning rate is read from hyper().lr at every step and lives outside
  // every state slot, so changing it mid-training behaves as assigning
  // param_group["lr"] in PyTorch. This setter only adds the range check.
  void set_lr(double lr);

  // Value of the hyper-parameter `name` (ValueError if the policy has none),
  // and its setter (validated; the state layout is checked at the next step).
  double get(const std::string& name) const;
  void set(const std::string& name, double value);
  double lr() const { return hyper_.v[0]; }
  // All values at once (validated first, nothing changes on error).
  void set_hyper(const HyperValues& h);
  void set_clipping(const Clipping& c);

  const Policy& policy() const { return *policy_; }
  const HyperValues& hyper() const { return hyper_; }
  const Clipping& clipping() const { return clip_; }
  const std::vector<ParamSpan>& spans() const { return spans_; }
  std::int64_t iterations = 0;      // steps taken
  std::vector<double> scalar_state;  // the policy's scalars() (NAdam's mu product)
  std::vector<std::string> slot_names;
  std::vector<AlignedBuffer> slots;  // each of size total_size()
  Index total_size() const { return total_; }

 private:
  const Policy* policy_;
  HyperValues hyper_;
  Clipping clip_;
  int wd_index_;  // the policy's "weight_decay", -1 if it has none
  std::vector<ParamSpan> spans_;
  Index total_ = 0;

  // Fixed-size pieces of the spans (boundaries depend only on the span sizes,
  // never on the thread count), built by bind() so step() allocates nothing.
  struct Chunk {
    int span;
    Index begin;   // within the span
    Index len;
  };
  std::vector<Chunk> chunks_;
  std::vector<double> chunk_sq_;     // per-chunk sums of g^2 for clipping
  std::vector<double> span_scale_;   // per-span clip factor
  std::vector<Index> span_first_chunk_;
  std::vector<Index> span_offset_;   // where each span starts in the state slots
  // The step in progress (begin_step to finish_step).
  bool in_step_ = false;
  StepPlan plan_{};
  float clipvalue_ = 0.0f;
  std::vector<int> slot_kernel_;      // each slot's kernel pointer (SlotSpec::kernel_slot)
  float* slot_base_[3] = {nullptr, nullptr, nullptr};  // in the order the kernels expect
  std::vector<SpanSlice> updated_;   // marked slices, sorted by (span, begin)
  // Whether each layout hyper-parameter (HyperSpec::layout) was non-zero at
  // bind(): step() refuses to run when one has changed since.
  bool bound_ = false;
  std::vector<char> bound_layout_;

  // Clips (when clamp) and updates elements [begin, begin + n) of span `span`.
  void update_elements(int span, Index begin, Index n, bool clamp);
  OptPtrs pointers(int span, Index begin) const;  // p, g and slots at an element
  const OptKernel& kernel(int span) const;        // plan_'s, with or without weight decay
};

// Functional clipping helpers (nv.clip_grad_value_, nv.clip_grad_norm_).
void clip_grad_value(const std::vector<ParamSpan>& spans, double clip_value);
// Returns the global L2 norm before clipping (double, deterministic order).
double clip_grad_norm(const std::vector<ParamSpan>& spans, double max_norm);

}  // namespace nerve
