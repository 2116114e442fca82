// A feed-forward stack of layers that runs a whole training step (forward,
// loss, backward, penalties, optimizer update, constraints) in one call.
#pragma once
#include <memory>
#include <vector>

#include "nerve/layer.hpp"
#include "nerve/loss.hpp"
#include "nerve/optimizer.hpp"

namespace nerve {

struct StepResult {
  double loss = 0.0;     // data loss + weight penalties, as reported
  Index correct = 0;     // rows classified correctly (when counted)
};

class Network {
 public:
  Network(Index input_dim, std::vector<std::shared_ptr<Layer>> layers);

  Index input_dim() const { return input_dim_; }
  Index output_dim() const { return stack_.out_features; }
  const std::vector<std::shared_ptr<Layer>>& layers() const { return stack_.layers; }

  // Sizes every buffer for batches of up to `capacity` rows. Steps with
  // batch <= capacity allocate nothing.
  void plan(Index capacity);
  Index capacity() const { return capacity_; }

  // Runs the layers on x (batch x input_dim). With training, x must stay
  // alive and unchanged until backward (train_step's own x does; the Python
  // binding passes a private copy). Returns the output (batch x output_dim)
  // in an internal buffer.
  // A sequence batch is `batch` = sequences * steps rows (row-major
  // (sequences, steps, input_dim)); the output then has
  // output_rows(batch, steps) rows.
  // margin: the labels and loss a margin head needs (forward_loss only).
  const float* forward(const float* x, Index batch, bool training, Index steps = 1,
                       const MarginTarget* margin = nullptr);
  Index output_rows(Index rows, Index steps) const { return stack_.out_rows(rows, steps); }
  Index output_steps(Index steps) const { return stack_.out_steps(steps); }
  // Rows and steps of the last forward's input and output rows.
  Index last_rows() const { return last_batch_; }
  Index last_steps() const { return last_steps_; }
  Index last_out_rows() const { return last_out_rows_; }
  // Drops the pointer to the last forward's input: backward then refuses to
  // run until the next training forward.
  void forget_input() {
    input_ = nullptr;
    last_training_ = false;
  }

  // Back-propagates dout = dL/d(output) through the layers of the last
  // forward. Parameter gradients are added (accumulate) or assigned. When dx
  // is not null it receives dL/dx; otherwise backward stops below the lowest
  // layer that needs a gradient (frozen prefixes cost nothing).
  // `batch`: the rows of the last forward's input.
  void backward(const float* dout, Index batch, bool accumulate, float* dx) {
    backward(dout, batch, accumulate, dx, nullptr);
  }

  // Sum of all weight penalties; with add_grad, their gradients are added.
  double regularize(bool add_grad);
  void apply_constraints();
  // Re-zeroes pruned parameters (arenas with a mask), after every update.
  void apply_masks();
  // Throws ValueError when some layer cannot run on `batch` rows.
  void check_batch(Index batch, bool training, Index steps = 1) const;

  // One fused step. Validates everything first: a bad batch throws
  // ValueError and leaves parameters and optimizer state untouched.
  // data_checked: the caller has checked x and the target already (NaN/Inf,
  // labels in range: train_batches checks the whole arrays once per epoch).
  // With steps > 1 (or a recurrent layer), x is batch rows of sequences of
  // `steps` rows and the target has output_rows(batch, steps) rows.
  StepResult train_step(const float* x, Index batch, const Target& target, const Loss& loss,
                        Optimizer& opt, bool count, bool data_checked = false, Index steps = 1);

  // The same step in two calls, for data-parallel training: the caller
  // averages the gradient arena over the ranks in between.
  // compute_gradients: checks (as train_step), forward, loss, and a backward
  // that assigns every trainable parameter's gradient of the data loss times
  // grad_scale (the loss gradient is scaled before backward: with a power of
  // two, e.g. 1/world_size, exactly the same bits as scaling afterwards).
  // Nothing is updated and `step` does not move.
  // apply_update: weight-penalty gradients, clipping (so global_clipnorm sees
  // the averaged gradient), the optimizer, masks, constraints, step += 1;
  // returns the penalty. With grad_scale 1, the pair gives the same bits as
  // train_step (whose fused Dense update is bit-identical to the separate one).
  // Neither allocates once the network is planned for the batch.
  StepResult compute_gradients(const float* x, Index batch, const Target& target, const Loss& loss,
                               bool count, bool data_checked = false, float grad_scale = 1.0f,
                               Index steps = 1);
  double apply_update(Optimizer& opt);

  // Throws ValueError naming the row and column of the first NaN/Inf.
  void check_finite(const float* x, Index rows, Index cols, const char* what) const;

  std::uint64_t seed = 0;
  std::uint64_t step = 0;  // training forwards so far (keys the random draws)
  // train_step lets layers apply the optimizer's update inside backward
  // (Dense at batches of 1 to 4: one pass over W instead of three). The
  // result is bit-identical either way; false forces the separate update
  // (for tests comparing the two).
  bool fuse_updates = true;

 private:
  // With `update` set (between its begin_step and finish_step), layers may
  // update their parameters as their gradients complete (StepContext).
  void backward(const float* dout, Index batch, bool accumulate, float* dx, Optimizer* update);
  // The part train_step and compute_gradients share: the batch's checks
  // (unless data_checked), the training forward, the (weighted) loss and its
  // gradient into loss_grad(), and the count of correct predictions.
  StepResult forward_loss(const char* who, const float* x, Index batch, const Target& target,
                          const Loss& loss, bool count, bool data_checked, Index steps);

  Index input_dim_;
  LayerStack stack_;                    // the layers and the buffers between them
  std::vector<ParamArena*> arenas_;     // every arena a layer's parameters live in
  Index capacity_ = 0;
  std::vector<bool> has_params_;        // layer i has parameters (of nonzero size)
  const float* input_ = nullptr;        // x of the last forward
  bool last_training_ = false;
  Index last_batch_ = 0;
  Index last_steps_ = 1;
  Index last_out_rows_ = 0;

 public:
  float* loss_grad() { return stack_.grad_buffer(); }
};

}  // namespace nerve
