// Embedding and the recurrent layers (nerve/recurrent.hpp).
#include <algorithm>
#include <cmath>
#include <string>

#include "nerve/gemm.hpp"
#include "nerve/parallel.hpp"
#include "nerve/recurrent.hpp"
#include "nerve/simd_math.hpp"

namespace nerve {

namespace {

// simd_math's branch-free sigmoid and tanh (~1-2 ulp): GCC vectorizes the
// gate loops below with them (std::exp / std::tanh would keep them scalar).
NERVE_INLINE float sigmoidf(float v) { return simd::sigmoid(v); }
NERVE_INLINE float tanhf_(float v) { return simd::tanh(v); }

// The pointwise passes run over the sequences of a batch: each sequence's
// rows are independent, so splitting them over threads changes no bits.
// Work per float: the streaming cost plus ~24 flops of sigmoid/tanh.
template <class F>
void over_sequences(Index seqs, double floats_per_seq, F&& body) {
  parallel_for(seqs, threads_for(stream_work(floats_per_seq * static_cast<double>(seqs), 24.0), seqs), body);
}

[[noreturn]] void bad_id(Index row, float v, Index vocab) {
  throw ValueError("Embedding: token id at row " + std::to_string(row) + " is " + std::to_string(v) +
                   ", expected an integer in [0, " + std::to_string(vocab) + ")");
}

}  // namespace

// ---------------------------------------------------------------------------
// Embedding

Embedding::Embedding(Index vocab_, Index dim_) : vocab(vocab_), dim(dim_) {
  require(vocab > 0 && vocab < (Index(1) << 24), "Embedding: vocab_size must be in [1, 2^24)");
  require(dim > 0, "Embedding: dim must be positive");
  checked_mul(vocab, dim, "Embedding table");
  in_features = 1;
  out_features = dim;
}

void Embedding::forward(const float* x, float* y, Index batch, const StepContext& /*ctx*/) {
  const float* t = table.value();
  for (Index r = 0; r < batch; ++r) {
    const float v = x[r];
    // NaN fails both comparisons; a fraction fails the round trip.
    if (!(v >= 0.0f && v < static_cast<float>(vocab)) || static_cast<float>(static_cast<Index>(v)) != v)
      bad_id(r, v, vocab);
    const Index id = static_cast<Index>(v);
    std::copy(t + id * dim, t + (id + 1) * dim, y + r * dim);
  }
}

void Embedding::backward(const float* x, const float* /*y*/, float* dy, float* dx, Index batch,
                         const StepContext& /*ctx*/, bool accumulate) {
  if (dx) std::fill(dx, dx + batch, 0.0f);
  if (!trainable) return;
  float* g = table.grad();
  if (!accumulate) std::fill(g, g + vocab * dim, 0.0f);
  for (Index r = 0; r < batch; ++r) {
    float* gr = g + static_cast<Index>(x[r]) * dim;
    const float* d = dy + r * dim;
#pragma omp simd
    for (Index j = 0; j < dim; ++j) gr[j] += d[j];
  }
}

// ---------------------------------------------------------------------------
// Recurrent

Recurrent::Recurrent(Index in, Index units_, CellKind cell_, bool return_sequences_, bool bidirectional)
    : units(units_), cell(cell_), return_sequences(return_sequences_), directions(bidirectional ? 2 : 1) {
  require(in > 0, "recurrent layer: input features must be positive");
  require(units > 0, "recurrent layer: units must be positive");
  checked_mul(checked_mul(std::max(in, units), units, "recurrent kernel"), gates(), "recurrent kernel");
  in_features = in;
  out_features = checked_mul(units, directions, "recurrent output");
}

std::string Recurrent::type() const {
  switch (cell) {
    case CellKind::Lstm: return "LSTM";
    case CellKind::Gru: return "GRU";
    default: return "SimpleRNN";
  }
}

Index Recurrent::gates() const {
  switch (cell) {
    case CellKind::Lstm: return 4;
    case CellKind::Gru: return 3;
    default: return 1;
  }
}

std::vector<ParamRef*> Recurrent::params() {
  std::vector<ParamRef*> out;
  for (int d = 0; d < directions; ++d) {
    out.push_back(&dir[d].kernel);
    out.push_back(&dir[d].recurrent_kernel);
    out.push_back(&dir[d].bias);
    if (cell == CellKind::Gru) out.push_back(&dir[d].recurrent_bias);
  }
  return out;
}

void Recurrent::plan(Index capacity) {
  if (capacity <= capacity_) return;
  const Index G = gates() * units;
  const Index rg = checked_mul(capacity, G, "recurrent gate buffer");
  const Index ru = checked_mul(capacity, units, "recurrent state buffer");
  for (int d = 0; d < directions; ++d) {
    z_[d].reserve(rg);
    h_[d].reserve(ru);
    hprev_[d].reserve(ru);
    if (cell == CellKind::Lstm) c_[d].reserve(ru);
    if (cell == CellKind::Gru) hh_[d].reserve(rg);
  }
  dz_.reserve(rg);
  if (cell == CellKind::Gru) dzh_.reserve(rg);
  dh_.reserve(ru);
  dc_.reserve(ru);
  capacity_ = capacity;
}

void Recurrent::forward(const float* x, float* y, Index batch, const StepContext& ctx) {
  const Index T = ctx.steps;
  require(T > 0 && batch % T == 0, "recurrent layer: rows must be a multiple of the steps");
  plan(batch);
  const Index B = batch / T;
  for (int d = 0; d < directions; ++d) forward_direction(d, x, y, B, T);
}

void Recurrent::forward_direction(int d, const float* x, float* y, Index B, Index T) {
  const Index U = units, G = gates() * units, rows = B * T, in = in_features;
  const Index DU = directions * U;
  const Weights& w = dir[d];
  float* Z = z_[d].data();
  float* H = h_[d].data();
  float* HP = hprev_[d].data();
  float* C = cell == CellKind::Lstm ? c_[d].data() : nullptr;
  float* HH = cell == CellKind::Gru ? hh_[d].data() : nullptr;
  const float* bias = w.bias.value();
  const float* rbias = cell == CellKind::Gru ? w.recurrent_bias.value() : nullptr;
  const float* Whh = w.recurrent_kernel.value();

  // Every step's input projection in one GEMM: Z = x W + b.
  for (Index r = 0; r < rows; ++r) std::copy(bias, bias + G, Z + r * G);
  gemm(false, false, rows, G, in, x, in, w.kernel.value(), G, Z, G, true);

  // W_hh packed once for the T - 1 step products (one sequence: gemm's
  // matrix-vector path, which packs nothing).
  PackedB& packed = whh_fwd_[d];
  if (T > 1 && B > 1)
    packed.pack(false, U, G, Whh, G);
  else
    packed.clear();
  const bool relu = cell == CellKind::RnnRelu;
  for (Index s = 0; s < T; ++s) {
    const Index t = d == 0 ? s : T - 1 - s;
    const Index tp = d == 0 ? t - 1 : t + 1;  // the step before, when s > 0
    // Rows of step t: sequence b's row b * T + t, a stride of T rows.
    if (cell == CellKind::Gru) {
      for (Index b = 0; b < B; ++b) std::copy(rbias, rbias + G, HH + (b * T + t) * G);
      if (s > 0) gemm_prepacked(false, B, G, U, H + tp * U, T * U, Whh, G, packed, HH + t * G, T * G, true);
    } else if (s > 0) {
      gemm_prepacked(false, B, G, U, H + tp * U, T * U, Whh, G, packed, Z + t * G, T * G, true);
    }
    over_sequences(B, 3.0 * G, [&](Index b) {
      const Index row = b * T + t;
      float* z = Z + row * G;
      float* h = H + row * U;
      float* hp = HP + row * U;
      if (s == 0)
        std::fill(hp, hp + U, 0.0f);
      else
        std::copy(H + (b * T + tp) * U, H + (b * T + tp + 1) * U, hp);
      switch (cell) {
        case CellKind::RnnTanh:
#pragma omp simd
          for (Index j = 0; j < U; ++j) h[j] = tanhf_(z[j]);
          break;
        case CellKind::RnnRelu:
          for (Index j = 0; j < U; ++j) h[j] = relu ? std::max(z[j], 0.0f) : z[j];
          break;
        case CellKind::Lstm: {
          float* c = C + row * U;
          // c' = 0 at the first step: a row of zeros keeps the loop branch-free.
          const float* cp = s > 0 ? C + (b * T + tp) * U : hp;
#pragma omp simd
          for (Index j = 0; j < U; ++j) {
            const float i = sigmoidf(z[j]);
            const float f = sigmoidf(z[U + j]);
            const float g = tanhf_(z[2 * U + j]);
            const float o = sigmoidf(z[3 * U + j]);
            z[j] = i;
            z[U + j] = f;
            z[2 * U + j] = g;
            z[3 * U + j] = o;
            const float cv = f * cp[j] + i * g;
            c[j] = cv;
            h[j] = o * tanhf_(cv);
          }
          break;
        }
        case CellKind::Gru: {
          const float* hh = HH + row * G;
#pragma omp simd
          for (Index j = 0; j < U; ++j) {
            const float r = sigmoidf(z[j] + hh[j]);
            const float zg = sigmoidf(z[U + j] + hh[U + j]);
            const float n = tanhf_(z[2 * U + j] + r * hh[2 * U + j]);
            z[j] = r;
            z[U + j] = zg;
            z[2 * U + j] = n;
            h[j] = (1.0f - zg) * n + zg * hp[j];
          }
          break;
        }
      }
    });
  }

  // The output: every step's state, or the final one (torch's h_n).
  if (return_sequences) {
    for (Index r = 0; r < rows; ++r) std::copy(H + r * U, H + (r + 1) * U, y + r * DU + d * U);
  } else {
    const Index t_last = d == 0 ? T - 1 : 0;
    for (Index b = 0; b < B; ++b)
      std::copy(H + (b * T + t_last) * U, H + (b * T + t_last + 1) * U, y + b * DU + d * U);
  }
}

void Recurrent::backward(const float* x, const float* /*y*/, float* dy, float* dx, Index batch,
                         const StepContext& ctx, bool accumulate) {
  const Index T = ctx.steps;
  require(T > 0 && batch % T == 0, "recurrent layer: rows must be a multiple of the steps");
  require(batch <= capacity_, "recurrent layer: backward before forward");
  const Index B = batch / T;
  for (int d = 0; d < directions; ++d) backward_direction(d, x, dy, dx, B, T, accumulate);
}

void Recurrent::backward_direction(int d, const float* x, const float* dy, float* dx, Index B, Index T,
                                   bool accumulate) {
  const Index U = units, G = gates() * units, rows = B * T, in = in_features;
  const Index DU = directions * U;
  const Weights& w = dir[d];
  const float* Z = z_[d].data();  // activated gates (LSTM, GRU) or unused (RNN)
  const float* H = h_[d].data();
  const float* HP = hprev_[d].data();
  const float* C = cell == CellKind::Lstm ? c_[d].data() : nullptr;
  const float* HH = cell == CellKind::Gru ? hh_[d].data() : nullptr;
  const float* Whh = w.recurrent_kernel.value();
  float* dZ = dz_.data();
  float* dZh = cell == CellKind::Gru ? dzh_.data() : nullptr;
  float* dH = dh_.data();  // (B, U): d loss / d h carried from the later step
  float* dC = dc_.data();
  std::fill(dH, dH + B * U, 0.0f);
  if (cell == CellKind::Lstm) std::fill(dC, dC + B * U, 0.0f);
  // W_hh^T packed once for the T - 1 products dZ_t W_hh^T.
  PackedB& packed = whh_bwd_[d];
  if (T > 1 && B > 1)
    packed.pack(true, G, U, Whh, G);
  else
    packed.clear();

  for (Index s = T; s-- > 0;) {
    const Index t = d == 0 ? s : T - 1 - s;
    const Index tp = d == 0 ? t - 1 : t + 1;
    over_sequences(B, 3.0 * G, [&](Index b) {
      const Index row = b * T + t;
      float* dh = dH + b * U;
      // This step's own output gradient joins the carried one.
      const float* dyt = return_sequences ? dy + row * DU + d * U : (s == T - 1 ? dy + b * DU + d * U : nullptr);
      if (dyt) {
#pragma omp simd
        for (Index j = 0; j < U; ++j) dh[j] += dyt[j];
      }
      float* dz = dZ + row * G;
      const float* h = H + row * U;
      switch (cell) {
        case CellKind::RnnTanh:
#pragma omp simd
          for (Index j = 0; j < U; ++j) dz[j] = dh[j] * (1.0f - h[j] * h[j]);
          break;
        case CellKind::RnnRelu:
          for (Index j = 0; j < U; ++j) dz[j] = h[j] > 0.0f ? dh[j] : 0.0f;
          break;
        case CellKind::Lstm: {
          const float* z = Z + row * G;
          const float* c = C + row * U;
          const float* cp = s > 0 ? C + (b * T + tp) * U : HP + row * U;  // zeros at the first step
          float* dc = dC + b * U;
#pragma omp simd
          for (Index j = 0; j < U; ++j) {
            const float i = z[j], f = z[U + j], g = z[2 * U + j], o = z[3 * U + j];
            const float tc = tanhf_(c[j]);
            const float dcv = dc[j] + dh[j] * o * (1.0f - tc * tc);
            const float cpv = cp[j];
            dz[j] = dcv * g * i * (1.0f - i);
            dz[U + j] = dcv * cpv * f * (1.0f - f);
            dz[2 * U + j] = dcv * i * (1.0f - g * g);
            dz[3 * U + j] = dh[j] * tc * o * (1.0f - o);
            dc[j] = dcv * f;
          }
          break;
        }
        case CellKind::Gru: {
          const float* z = Z + row * G;
          const float* hh = HH + row * G;
          const float* hp = HP + row * U;
          float* dzh = dZh + row * G;
#pragma omp simd
          for (Index j = 0; j < U; ++j) {
            const float r = z[j], zg = z[U + j], n = z[2 * U + j];
            const float dhv = dh[j];
            const float dan = dhv * (1.0f - zg) * (1.0f - n * n);
            const float dar = dan * hh[2 * U + j] * r * (1.0f - r);
            const float daz = dhv * (hp[j] - n) * zg * (1.0f - zg);
            dz[j] = dar;
            dz[U + j] = daz;
            dz[2 * U + j] = dan;
            dzh[j] = dar;
            dzh[U + j] = daz;
            dzh[2 * U + j] = dan * r;
            dh[j] = dhv * zg;  // the direct path h = ... + z h'; the GEMM below adds the rest
          }
          break;
        }
      }
    });
    if (s == 0) break;
    // dh' = dZ U^T (the GRU's direct path z dh is in dH already).
    if (cell == CellKind::Gru)
      gemm_prepacked(true, B, U, G, dZh + t * G, T * G, Whh, G, packed, dH, U, true);
    else
      gemm_prepacked(true, B, U, G, dZ + t * G, T * G, Whh, G, packed, dH, U, false);
  }

  if (trainable) {
    // Over all steps at once: the rows of x, H' and dZ line up.
    gemm(true, false, in, G, rows, x, in, dZ, G, w.kernel.grad(), G, accumulate);
    column_sums(dZ, rows, G, w.bias.grad(), accumulate);
    const float* dRec = cell == CellKind::Gru ? dZh : dZ;
    gemm(true, false, U, G, rows, HP, U, dRec, G, w.recurrent_kernel.grad(), G, accumulate);
    if (cell == CellKind::Gru) column_sums(dZh, rows, G, w.recurrent_bias.grad(), accumulate);
  }
  if (dx) gemm(false, true, rows, in, G, dZ, G, w.kernel.value(), G, dx, in, d > 0);
}

}  // namespace nerve
