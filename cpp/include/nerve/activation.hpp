// Activation functions: one registry (name -> enum + parameters) shared by
// C++ and Python, and forward/backward kernels over row-major matrices.
//
// Adding an activation is local: an enum value and one unit in activation.cpp
// (a struct with its registry row, its parameter checks, its forward and
// derivative functors and where the derivative reads from), listed in the
// Units table there; plus its oracle in tests/test_activations.py.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "nerve/common.hpp"

namespace nerve {

enum class Act : int {
  Identity,
  Sigmoid,
  Tanh,
  Relu,
  LeakyRelu,
  Elu,
  Selu,
  Crelu,
  Swish,
  BinaryStep,
  Softmax,
  LogSoftmax,
  Gelu,
  Softplus,
  Mish,
  HardSigmoid,
  HardSwish,
  Relu6,
  Rrelu,
};

// What backward needs to be kept from forward: each unit's kFrom
// (activation.cpp), which also decides what its derivative reads.
enum class GradFrom : int {
  Output,  // derivative is a function of y alone (relu, sigmoid, tanh, ...): z need not be kept
  Input,   // derivative needs the pre-activation z (gelu, swish, softplus, ...)
};

// A resolved activation: kind plus its (already validated) parameters.
// Field meanings per kind (unused fields are ignored):
//   leaky_relu: alpha (negative slope)      elu: alpha
//   swish: beta                              binary_step: straight_through
//   gelu: approximate_tanh                   softplus: beta, threshold
//   rrelu: lower, upper
struct Activation {
  Act kind = Act::Identity;
  float alpha = 0.0f;
  float beta = 1.0f;
  float threshold = 20.0f;
  float lower = 1.0f / 8.0f;
  float upper = 1.0f / 3.0f;
  bool straight_through = false;
  bool approximate_tanh = false;
};

struct ActParamInfo {
  std::string name;
  double default_value;  // booleans are 0/1; gelu's approximate is 0 ("none") / 1 ("tanh")
};

struct ActInfo {
  std::string name;                   // canonical name, e.g. "swish"
  std::vector<std::string> aliases;   // e.g. {"silu"}
  Act kind;
  std::vector<ActParamInfo> params;   // keyword parameters with defaults
  bool rowwise;                       // softmax / log_softmax: the kernel sees whole rows
  int width_factor;                   // output columns = width_factor * input columns (crelu: 2)
  GradFrom grad_from;
  std::string formula;                // one line, for docs and error messages
};

const std::vector<ActInfo>& activation_registry();

// Looks up a canonical name or alias; throws ValueError for unknown names or
// parameters (the Python layer adds "did you mean" suggestions first).
Activation make_activation(const std::string& name, const std::map<std::string, double>& params);
const ActInfo& activation_info(Act kind);

// Randomness for rrelu in training: slopes come from the counter-based
// generator keyed by (seed, stream, step, element index), so forward and
// backward recompute the same slope without storing it, for any thread count.
struct ActContext {
  bool training = false;
  std::uint64_t seed = 0;
  std::uint64_t stream = 0;  // distinguishes layers
  std::uint64_t step = 0;    // advances once per training forward
};

// y = act(z + bias) for a rows x cols matrix z (row-major, contiguous).
//   bias: null or `cols` floats, added to every row first; when bias is given
//         and the activation has GradFrom::Input, z is overwritten with z + bias
//         so backward sees the true pre-activation.
//   y:    rows x (width_factor*cols). y may alias z when width_factor == 1.
void activation_forward(const Activation& a, float* z, const float* bias, float* y, Index rows,
                        Index cols, const ActContext& ctx);

// dz = dy * act'(z) (elementwise), or the row-wise Jacobian-vector product for
// softmax / log_softmax, or the width-halving sum for crelu.
//   z: the pre-activation (rows x cols); may be null when grad_from == Output.
//   y: the forward output (rows x width_factor*cols). rrelu in training reads
//      it (slope = y / x); there, null makes it regenerate the slopes instead.
//   dy: rows x width_factor*cols; dz: rows x cols. dz may alias dy when width_factor == 1.
void activation_backward(const Activation& a, const float* z, const float* y, const float* dy,
                         float* dz, Index rows, Index cols, const ActContext& ctx);

// The elementwise backward on one contiguous run of n elements, on the
// calling thread, with activation_backward's bits: for a caller that sweeps
// the matrix itself (Dense's dW product applies it to dZ's rows as it packs
// them). Only for activations where activation_backward_is_elementwise;
// z, y, dy and dz point at the run's first element.
void activation_backward_run(const Activation& a, const float* z, const float* y, const float* dy,
                             float* dz, Index n, const ActContext& ctx);
// False for softmax, log_softmax, crelu and rrelu in training.
bool activation_backward_is_elementwise(const Activation& a, const ActContext& ctx);
// dz = dy: identity, and binary_step with straight_through.
bool activation_backward_is_identity(const Activation& a);

}  // namespace nerve
