// Sequence layers (layers_recurrent.cpp): token embeddings and the recurrent
// cells SimpleRNN, LSTM and GRU with PyTorch's gate layout and numerics.
//
// A (batch, steps, features) sequence travels through the layer chain as
// batch * steps row-major rows (row b * steps + t); StepContext::steps says
// how many steps the layer's input has. A recurrent layer's output keeps the
// steps (return_sequences) or has one row per sequence (its last state).
#pragma once
#include <string>
#include <vector>

#include "nerve/gemm.hpp"
#include "nerve/layer.hpp"

namespace nerve {

// y[r] = table[id[r]]: one token id per row, given as an exact float
// (0 <= id < vocab < 2^24; Python checks the integer ids, forward checks
// again and throws ValueError rather than read outside the table). The ids
// have no gradient: dx is zero. d table[id] sums dy over the rows with that
// id, in row order (the same bits for any thread count).
class Embedding : public Layer {
 public:
  Embedding(Index vocab, Index dim);
  std::string type() const override { return "Embedding"; }
  std::vector<ParamRef*> params() override { return {&table}; }
  void forward(const float* x, float* y, Index batch, const StepContext& ctx) override;
  void backward(const float* x, const float* y, float* dy, float* dx, Index batch,
                const StepContext& ctx, bool accumulate) override;
  Index vocab, dim;
  ParamRef table;  // (vocab, dim)
};

enum class CellKind { RnnTanh, RnnRelu, Lstm, Gru };

// One recurrent layer, one or two directions, zero initial state. Per
// direction: kernel (in, G), recurrent_kernel (units, G), bias (G) and, for
// the GRU, recurrent_bias (G), G = gates * units, gates in PyTorch's order:
//   SimpleRNN (1): h = act(x W + h U + b)                 b = b_ih + b_hh
//   LSTM (4: i, f, g, o): c = f c' + i g, h = o tanh(c)   b = b_ih + b_hh
//   GRU (3: r, z, n): n = tanh(x W_n + b_n + r (h' U_n + b_hn)),
//                     h = (1 - z) n + z h'                b = b_ih, rb = b_hh
// The reverse direction reads the steps from last to first; outputs of both
// are concatenated per step (forward first), as torch's bidirectional. With
// return_sequences=False the output is each direction's final state (torch's
// h_n: step T-1 forward, step 0 reverse).
//
// Forward: one GEMM projects every step's input (x W + b for all rows), then
// one GEMM per step adds h' U into that step's rows in place, and one pass
// applies the gate nonlinearities and the cell update. Backward (through
// time, in the same call): one pass per step gives the pre-activation
// gradients dZ and one GEMM per step carries dh' = dZ U^T back; the weight
// gradients are then one GEMM each over all steps (dW = X^T dZ,
// dU = H'^T dZ with H' the states each step started from), dx = dZ W^T.
// All buffers are planned: no allocation per step.
class Recurrent : public Layer {
 public:
  Recurrent(Index in, Index units, CellKind cell, bool return_sequences, bool bidirectional);
  std::string type() const override;
  std::vector<ParamRef*> params() override;
  Index out_steps(Index steps) const override { return return_sequences ? steps : 1; }
  void plan(Index capacity) override;
  void forward(const float* x, float* y, Index batch, const StepContext& ctx) override;
  void backward(const float* x, const float* y, float* dy, float* dx, Index batch,
                const StepContext& ctx, bool accumulate) override;

  Index gates() const;  // G / units
  Index units;
  CellKind cell;
  bool return_sequences;
  int directions;
  struct Weights {
    ParamRef kernel, recurrent_kernel, bias, recurrent_bias;
  };
  Weights dir[2];

 private:
  void forward_direction(int d, const float* x, float* y, Index batch_seqs, Index steps);
  void backward_direction(int d, const float* x, const float* dy, float* dx, Index batch_seqs, Index steps,
                          bool accumulate);
  Index capacity_ = 0;
  AlignedBuffer z_[2];      // (rows, G): pre-activations, then the activated gates
  AlignedBuffer h_[2];      // (rows, units): state after each step
  AlignedBuffer hprev_[2];  // (rows, units): state each step started from (0 first)
  AlignedBuffer c_[2];      // LSTM: cell after each step
  AlignedBuffer hh_[2];     // GRU: h' U + b_hh per step (the n gate needs its part)
  AlignedBuffer dz_;        // (rows, G): d loss / d pre-activation (x part)
  AlignedBuffer dzh_;       // GRU: (rows, G): d loss / d (h' U + b_hh)
  AlignedBuffer dh_, dc_;   // (sequences, units): gradients carried to the previous step
  // W_hh packed once per call for every step's product (gemm.hpp, PackedB):
  // forward H_{t-1} W_hh, backward dZ_t W_hh^T.
  PackedB whh_fwd_[2], whh_bwd_[2];
};

}  // namespace nerve
