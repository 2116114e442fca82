// Losses with PyTorch's reductions ("mean"), forward and gradient in one pass,
// and the classification metrics.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "nerve/common.hpp"

namespace nerve {

enum class LossKind : int {
  MSE,
  MAE,
  Huber,
  SmoothL1,
  BinaryCrossEntropy,            // on probabilities, log clamped at -100 like PyTorch
  BinaryCrossEntropyWithLogits,
  CrossEntropy,                  // softmax on logits (stable log-sum-exp)
  Focal,                         // softmax focal loss on logits
  Distillation,                  // Hinton: alpha*T^2*KL(teacher||student at T) + (1-alpha)*CE
  CosFace,                       // AM-Softmax on cos θ: s (cos θ_y - m), then CE
  ArcFace,                       // additive angular margin on cos θ: s cos(θ_y + m), then CE
  LargeMarginSoftmax,            // L-Softmax: CE on LargeMarginDense's training output
  SphereFace,                    // A-Softmax: CE on SphereDense's training output
};

// Default softening temperature of the distillation loss (see loss.cpp).
constexpr double kDistillationTemperature = 4.0;

struct Loss {
  LossKind kind = LossKind::MSE;
  float delta = 1.0f;            // huber
  float beta = 1.0f;             // smooth_l1
  float label_smoothing = 0.0f;  // cross_entropy
  float gamma = 2.0f;            // focal
  float temperature = 4.0f;      // distillation (kDistillationTemperature)
  float alpha = 0.5f;            // distillation weight; focal class weight when has_alpha
  bool has_alpha = false;        // focal: alpha given
  std::vector<float> class_weight;  // cross_entropy weight= (empty: none)
  float scale = 30.0f;           // cosface / arcface s
  double margin = 0.35;          // cosface / arcface m; L-Softmax / SphereFace integer m
  // L-Softmax / SphereFace λ schedule: max(lambda_min, base (1 + gamma iter)^-power).
  double lambda_base = 1000.0, lambda_gamma = 0.12, lambda_power = 1.0, lambda_min = 5.0;
};

// λ of the L-Softmax / SphereFace annealing at iteration `iter` (the layer
// passes network step + 1: the authors' Caffe layers count from 1).
double margin_lambda(const Loss& loss, std::uint64_t iter);

// One row per loss, made from its unit in loss.cpp (adding a loss: an enum
// value and one unit there, plus its oracle in tests/test_losses.py).
struct LossInfo {
  std::string name;
  std::vector<std::string> aliases;
  LossKind kind;
  std::vector<std::pair<std::string, double>> params;  // scalar keyword params with defaults
  bool classification;  // accepts integer labels
  bool class_weight = false;  // takes per-class weights (weight=)
};

const std::vector<LossInfo>& loss_registry();
Loss make_loss(const std::string& name, const std::map<std::string, double>& params,
               const std::vector<float>& class_weight);

// What the prediction is compared with. Exactly one of `values` / `labels`
// is set, except distillation, which takes teacher logits in `values` and
// labels in `labels`.
struct Target {
  const float* values = nullptr;        // rows x cols (regression targets, probabilities, teacher logits)
  const std::int64_t* labels = nullptr;  // rows class indices in [0, cols)
  // Optional per-row loss weights (Keras sample_weight), used by Network::train_step only:
  // the loss becomes sum_i w_i l_i / rows and row i of its gradient is scaled by w_i.
  const float* weights = nullptr;
};

// Throws ValueError (before any work) when labels are outside [0, cols), or
// when the target kind does not fit the loss.
void validate_target(const Loss& loss, const Target& target, Index rows, Index cols);

// Mean loss over the batch with PyTorch's "mean" reduction (elementwise losses
// average over all rows*cols elements; cross-entropy-like losses over rows, or
// over sum of class weights when weight= is given). Computed in double.
// When grad is not null, writes d(loss)/d(pred) (rows x cols) in the same pass.
double loss_forward_backward(const Loss& loss, const float* pred, const Target& target, Index rows,
                             Index cols, float* grad);

// Number of rows whose arg-max of pred equals the label (or the arg-max of the
// target row when the target holds probabilities; for one column, pred > 0.5
// against target > 0.5).
Index count_correct(const float* pred, const Target& target, Index rows, Index cols);

// count_correct for models whose single output is a logit (e.g. trained with
// binary_cross_entropy_with_logits): one column compares pred > 0 (not 0.5)
// against target > 0.5; with two or more columns it is count_correct.
Index count_correct_logit_threshold(const float* pred, const Target& target, Index rows,
                                    Index cols);

}  // namespace nerve
