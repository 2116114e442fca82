// An optimizer as one self-describing unit (a policy): its name, its
// hyper-parameters with defaults and ranges, its state slots, the scalars it
// keeps between steps, the per-step scalars it computes in double, and its
// fused kernels. The generic Optimizer (optimizer.hpp) runs any policy; the
// table (optimizer_policies()) is what the bindings, Python's class list,
// state_dict and the model file read.
//
// Adding an optimizer: one file in cpp/src/optim/ defining a Policy and one
// line in registry.cpp, plus its oracle in tests/test_optimizers.py.
#pragma once
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "nerve/common.hpp"

namespace nerve {

// Where a hyper-parameter's valid range ends: closed ([lo, hi]) or open.
enum class Bound : int { Closed, Open };

// One hyper-parameter. name is the Python keyword (torch.optim's, Keras's
// for FTRL) and the name in error messages. Every value must be finite and
// representable as a float32 (the kernels round to float); flags are 0 or 1.
struct HyperSpec {
  const char* name;
  double default_value;
  bool flag = false;
  double lo = 0.0, hi = std::numeric_limits<double>::infinity();
  Bound lo_bound = Bound::Closed, hi_bound = Bound::Closed;
  // Consecutive specs with the same group travel as one tuple in Python
  // (torch's betas=(beta1, beta2)).
  const char* group = nullptr;
  // Which state slots exist depends on this value being non-zero (amsgrad,
  // momentum, centered): it may not change between bind() and step().
  bool layout = false;
  const char* doc = "";
};

// A state slot: same layout as the parameters. kernel_slot is the pointer
// (s0, s1, s2) the kernels read it through.
struct SlotSpec {
  std::string name;  // the state_dict key (torch's names)
  double init;       // value after bind() / reset_state()
  int kernel_slot;
};

// A scalar kept between steps in double (NAdam's running product of mu_t).
struct ScalarSpec {
  const char* name;  // the state_dict key
  double init;
  double lo, hi;     // valid range of a loaded value: (lo, hi]
};

// The hyper-parameter values of one optimizer, in the order of its specs.
class Policy;
struct HyperValues {
  const Policy* policy = nullptr;
  std::vector<double> v;
  double operator[](int i) const { return v[static_cast<std::size_t>(i)]; }
  bool flag(int i) const { return v[static_cast<std::size_t>(i)] != 0.0; }
};

// ---------------------------------------------------------------------------
// What a kernel touches, and the kernel as function pointers.

// The arrays one piece of a span touches; p, g and the slots never alias. The
// kernels read the gradient through grad(), so that RowPtrs can make it instead.
struct OptPtrs {
  float* __restrict p;
  float* __restrict g;
  float* __restrict s0;
  float* __restrict s1;
  float* __restrict s2;
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

// Most per-step scalars any policy needs; a policy names its own by index.
constexpr int kMaxStepScalars = 16;

// One instantiation of a policy's fused update (cpp/src/optim/kernel.hpp
// makes these from a per-element body).
struct OptKernel {
  // n elements from q, n any size (the tail goes through a padded copy).
  void (*run)(const OptPtrs& q, Index n, const float* scalars) = nullptr;
  // Rows of an outer-product gradient, made and stored into q.g as the update
  // reads it; og.cols a multiple of kOptWidth. rows1: og.batch == 1.
  void (*rows1)(const OptPtrs& q, const OuterGrad& og, const float* scalars) = nullptr;
  void (*rows)(const OptPtrs& q, const OuterGrad& og, const float* scalars) = nullptr;
};

// What begin_step() hands the kernels for one step.
struct StepPlan {
  float scalars[kMaxStepScalars] = {};  // computed in double, rounded once
  OptKernel plain;    // for spans without weight decay (or weight_decay == 0)
  OptKernel decayed;  // for spans with weight decay
};

class Policy {
 public:
  virtual ~Policy() = default;
  // Class name in Python and in saved files, e.g. "Adam".
  virtual const char* name() const = 0;
  // Formula, defaults and reference (Python's docstring).
  virtual const char* doc() const = 0;
  // lr first; "weight_decay" where the optimizer has one.
  virtual const std::vector<HyperSpec>& hyper() const = 0;
  virtual const std::vector<ScalarSpec>& scalars() const {
    static const std::vector<ScalarSpec> none;
    return none;
  }
  // The slots the values h call for.
  virtual std::vector<SlotSpec> slots(const HyperValues& h) const = 0;
  // Rules between parameters (nesterov needs momentum); the ranges of single
  // values are checked from hyper() before this runs.
  virtual void validate(const HyperValues&) const {}
  // Step t (from 1): the scalars in double, rounded once, and the kernels.
  // state: this policy's scalars() values, advanced here.
  virtual void plan(const HyperValues& h, std::int64_t t, double* state, StepPlan& out) const = 0;

  // Index of the spec called `name`, -1 if none.
  int index_of(const char* name) const;
};

// Every optimizer, in the order Python lists them.
const std::vector<const Policy*>& optimizer_policies();
// By class name ("Adam"); throws ValueError naming the known ones.
const Policy& optimizer_policy(const std::string& name);

// Defaults of `policy`, then `values` (name -> value) over them; unknown
// names throw ValueError. Validates.
HyperValues make_hyper(const Policy& policy, const std::vector<std::pair<std::string, double>>& values = {});
// Throws ValueError for a value out of its range or not finite and float32
// ("Invalid lr value: -0.1 (must be >= 0)"), or a broken rule between values.
void validate_hyper(const HyperValues& h);
// The check behind every message: builds the message only on failure (the
// training step re-validates and must not allocate).
void check_hyper(bool ok, const char* param, double value, const char* rule);
// Shortest decimal that round-trips (Python's repr), for messages.
std::string format_value(double x);

}  // namespace nerve
