// First-order optimizers: a hyper-parameter struct, a state of the same
// layout as the parameters, and one fused kernel that reads p, g and the state
// once and writes them once. Step-dependent scalars are computed once per
// step, in double. The step counter advances once per step().
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

// Throws ValueError for hyper-parameters out of range (negative lr, betas
// outside [0, 1), nesterov without momentum, ...).
void validate_hyper(OptKind kind, const OptHyper& h);

// Names of the per-element state slots, in order, e.g. Adam: {"exp_avg",
// "exp_avg_sq"} (+ "max_exp_avg_sq" with amsgrad). SGD without momentum: {}.
std::vector<std::string> state_slot_names(OptKind kind, const OptHyper& h);

class Optimizer {
 public:
  Optimizer(OptKind kind, const OptHyper& hyper);

  // Tensors to update. State slots are laid out as the concatenation of the
  // spans and are (re)allocated and initialised here. Fresh state means a
  // fresh step count: iterations restarts at 0 (load saved state after bind).
  void bind(const std::vector<ParamSpan>& spans);

  // Clip (clipvalue, clipnorm, global_clipnorm), then one fused update.
  void step();

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
    Index offset;  // within the state slots
  };
  std::vector<Chunk> chunks_;
  std::vector<double> chunk_sq_;     // per-chunk sums of g^2 for clipping
  std::vector<double> span_scale_;   // per-span clip factor
  std::vector<Index> span_first_chunk_;
  // Hyper-parameter flags that decide the slot layout, captured at bind():
  // step() refuses to run when they have changed since.
  bool bound_ = false;
  bool bound_amsgrad_ = false, bound_momentum_ = false, bound_centered_ = false;
};

// Functional clipping helpers (nv.clip_grad_value_, nv.clip_grad_norm_).
void clip_grad_value(const std::vector<ParamSpan>& spans, double clip_value);
// Returns the global L2 norm before clipping (double, deterministic order).
double clip_grad_norm(const std::vector<ParamSpan>& spans, double max_norm);

}  // namespace nerve
