// First-order optimizers: a hyper-parameter struct, a state of the same
// layout as the parameters, and one fused kernel that reads p, g and the state
// once and writes them once. Step-dependent scalars are computed once per
// step, in double. The step counter advances once per step().
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

namespace nerve {

enum class OptKind : int { SGD, Adagrad, RMSprop, Adadelta, Adam, AdamW, Adamax, NAdam, Ftrl };

// Field names follow torch.optim (Keras for FTRL). Unused fields are ignored.
struct OptHyper {
  double lr = 1e-3;
  double weight_decay = 0.0;     // L2 added to the gradient (AdamW: decoupled)
  // SGD / RMSprop
  double momentum = 0.0;
  double dampening = 0.0;
  bool nesterov = false;
  // Adam family
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  bool amsgrad = false;
  double momentum_decay = 4e-3;  // NAdam
  // Adagrad
  double lr_decay = 0.0;
  double initial_accumulator_value = 0.0;  // Adagrad; FTRL uses ftrl_initial_accumulator
  // RMSprop / Adadelta
  double alpha = 0.99;           // RMSprop smoothing; Adadelta rho
  bool centered = false;
  // FTRL (Keras)
  double learning_rate_power = -0.5;
  double ftrl_initial_accumulator = 0.1;
  double l1 = 0.0;
  double l2 = 0.0;
  double l2_shrinkage = 0.0;
  double ftrl_beta = 0.0;
  // Gradient clipping before the update (Keras meanings; <= 0 means off)
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

// A dense layer's weight gradient at a small batch, by its factors: for
// rows r in [0, rows) and columns j in [0, cols),
//   g[r, j] = x[r] dz[j] + x[x_stride + r] dz[cols + j] + ...  (batch terms)
// i.e. rows of x^T dz, x pointing at the first row's input column.
struct OuterGrad {
  const float* x;
  Index x_stride;
  const float* dz;
  Index rows, cols;
  int batch;  // 1 to 4
};

// The per-step scalars of an update (optimizer.cpp), computed once in double
// by begin_step() and rounded once to float.
struct StepScalars {
  float lr, wd;
  float decay_mult;           // 1 - lr*wd (AdamW, FTRL: decoupled decay)
  float mom, damp_c;          // SGD/RMSprop momentum, 1 - dampening
  float b1, omb1, b2, omb2;   // betas and 1 - betas
  float eps;
  float inv_sqrt_bc2;         // Adam: 1/sqrt(1 - beta2^t)
  float inv_bc2;              // NAdam: 1/(1 - beta2^t)
  float step_size;            // Adam/Adamax: lr/(1 - beta1^t)
  float nadam_cg, nadam_cm;   // NAdam: coefficients of g and m
  float clr;                  // Adagrad: lr/(1 + (t-1)*lr_decay)
  float a, oma;               // RMSprop alpha / Adadelta rho, and 1 - it
  float inv_lr, l1, quad_l2, shrink2, neg_pow;  // FTRL
  float clipvalue;            // > 0: g is clamped to [-clipvalue, clipvalue] first
};

// Throws ValueError for hyper-parameters out of range (negative lr, betas
// outside [0, 1), nesterov without momentum, ...).
void validate_hyper(OptKind kind, const OptHyper& h);

// Names of the per-element state slots, in order, e.g. Adam: {"exp_avg",
// "exp_avg_sq"} (+ "max_exp_avg_sq" with amsgrad). SGD without momentum: {}.
std::vector<std::string> state_slot_names(OptKind kind, const OptHyper& h);

struct Ptrs;  // optimizer.cpp: the arrays a kernel touches

class Optimizer {
 public:
  Optimizer(OptKind kind, const OptHyper& hyper);

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
  // nadam_mu_product = 1) without reallocating. bind() does the same.
  void reset_state();

  // The learning rate is read from hyper().lr at every step and lives outside
  // every state slot, so changing it mid-training behaves as assigning
  // param_group["lr"] in PyTorch. This setter only adds the range check.
  void set_lr(double lr);

  OptKind kind() const { return kind_; }
  OptHyper& hyper() { return hyper_; }
  const std::vector<ParamSpan>& spans() const { return spans_; }
  std::int64_t iterations = 0;      // steps taken
  double nadam_mu_product = 1.0;    // NAdam's running product of mu_t
  std::vector<std::string> slot_names;
  std::vector<AlignedBuffer> slots;  // each of size total_size()
  Index total_size() const { return total_; }

 private:
  OptKind kind_;
  OptHyper hyper_;
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
  StepScalars scalars_{};
  float* slot_base_[3] = {nullptr, nullptr, nullptr};  // in the order the kernels expect
  bool sgd_first_ = false;
  int rms_mode_ = 0, ftrl_pow_ = 0;
  std::vector<SpanSlice> updated_;   // marked slices, sorted by (span, begin)
  // Hyper-parameter flags that decide the slot layout, captured at bind():
  // step() refuses to run when they have changed since.
  bool bound_ = false;
  bool bound_amsgrad_ = false, bound_momentum_ = false, bound_centered_ = false;

  // Clips (when clamp) and updates elements [begin, begin + n) of span `span`.
  void update_elements(int span, Index begin, Index n, bool clamp);
  // The kernel that kind and flags select, passed to f as a KernelOf<Op>.
  template <class F>
  void with_kernel(bool wd, F&& f) const;
  Ptrs pointers(int span, Index begin) const;  // p, g and slots at an element
  bool decays(int span) const;                 // weight decay applies to the span
};

// Functional clipping helpers (nv.clip_grad_value_, nv.clip_grad_norm_).
void clip_grad_value(const std::vector<ParamSpan>& spans, double clip_value);
// Returns the global L2 norm before clipping (double, deterministic order).
double clip_grad_norm(const std::vector<ParamSpan>& spans, double max_norm);

}  // namespace nerve
