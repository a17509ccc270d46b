#pragma once
/// @file
/// Workloads: the models GPUFlex can train, compiled into every node (a job never ships code
/// to a volunteer). A workload defines its parameter layout and initialisation and makes
/// `model` instances bound to a backend; the trainer and the worker actors drive them.

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gflex/kernels/backend.hpp"
#include "gflex/runtime/dataset.hpp"
#include "gflex/runtime/error.hpp"
#include "gflex/runtime/tensor.hpp"

namespace gflex::kernels {

/// A named block of a workload's flat parameter vector (e.g. "fc1.weight", [784, 512]).
struct parameter_block {
  std::string name;
  shape_t shape;
  int64_t offset = 0;  ///< First element in the flat vector.
};

/// Loss and accuracy accumulated over some samples.
struct batch_stats {
  double loss_sum = 0.0;
  int64_t correct = 0;
  int64_t samples = 0;

  double mean_loss() const { return samples > 0 ? loss_sum / static_cast<double>(samples) : 0.0; }
  double accuracy() const {
    return samples > 0 ? static_cast<double>(correct) / static_cast<double>(samples) : 0.0;
  }
};

/// One instance of a workload's network on one backend: parameters, gradients, AdamW state
/// and activation buffers for batches of up to `max_batch` rows, all in backend memory.
class model {
 public:
  virtual ~model() = default;

  virtual int64_t parameter_count() const = 0;
  /// Values per sample in the batches the model takes.
  virtual int64_t feature_dim() const = 0;
  /// Replaces the parameters with host values (parameter_count() floats).
  virtual void load_parameters(std::span<const float> host) = 0;
  /// Copies the parameters to host memory (parameter_count() floats).
  virtual void store_parameters(std::span<float> host) = 0;
  /// Copies parameters [offset, offset + host.size()) to host memory, so that a large
  /// model's can be read a block at a time.
  virtual void store_parameters(std::span<float> host, int64_t offset) = 0;
  /// Zeroes the AdamW moments and the step counter.
  virtual void reset_optimizer() = 0;
  /// Makes now the buffers a backward pass needs: otherwise the first one makes them, so
  /// that a model that only evaluates holds none. A trainer that must know the model fits
  /// calls it right after instantiate; a device failure (out of memory) is its error.
  virtual expected<void> prepare_training() { return {}; }
  /// Seeds the training noise (dropout masks) of the passes after the next reset_optimizer:
  /// an assignment's seed, so that each assignment draws its own masks and its re-computation
  /// the same ones.
  virtual void set_noise_seed(uint64_t seed) { (void)seed; }
  /// The inner optimiser's hyper-parameters; changes apply from the next step.
  virtual adamw_config& optimizer() = 0;

  /// One AdamW step on a batch in host memory: features [batch, d], labels [batch].
  /// Adds the batch's loss and accuracy (before the update) to the statistics. The same as
  /// backward(features, labels, batch, 1 / batch) then apply_gradients().
  void train_step(const float* features, const int32_t* labels, int64_t batch) {
    backward(features, labels, batch, 1.0f / static_cast<float>(batch));
    apply_gradients();
  }

  /// Forward and backward pass of a batch in host memory: leaves `loss_scale` times the
  /// gradient of the batch's summed loss in gradients() and adds the batch's loss and accuracy
  /// to the statistics. Replicas that each take a part of a batch pass 1 / (whole batch), so
  /// that the sum of their gradients is the whole batch's mean-loss gradient.
  virtual void backward(const float* features, const int32_t* labels, int64_t batch,
                        float loss_scale) = 0;
  /// Where the rows of the next backward pass lie in the whole batch, when replicas share
  /// it (`rows` 0: this replica takes no part in this step, though the step counts). Dropout
  /// draws a sample's mask by its place in the batch and by the step, so a batch split over
  /// ranks follows the noise path of one device; a model without randomness ignores it.
  virtual void batch_part(int64_t first_row, int64_t rows) {
    (void)first_row;
    (void)rows;
  }
  /// The gradient buffer (parameter_count() floats in backend memory); a replica group
  /// all-reduces it between backward and apply_gradients.
  virtual float* gradients() = 0;
  /// One optimiser step (AdamW, or SGD if the optimiser says so) with gradients().
  virtual void apply_gradients() = 0;
  /// The gradient of the batch's mean loss with respect to the parameters, copied to host
  /// memory `out` (parameter_count() floats); parameters and optimiser state are unchanged.
  virtual void compute_gradients(const float* features, const int32_t* labels, int64_t batch,
                                 std::span<float> out) = 0;
  /// Forward pass only; adds the batch's loss and accuracy to the statistics.
  virtual void evaluate_batch(const float* features, const int32_t* labels, int64_t batch) = 0;
  /// The output the loss reads (logits: [batch, classes], or [batch, context, vocab] for a
  /// token model) for a batch in host memory, copied to `out`; errc::invalid_argument as a
  /// compute_error where the model does not offer it (the built-in workloads).
  virtual void predict(const float* features, int64_t batch, std::span<float> out);
  // -- batches gathered where the model computes, updates quantised there -------------------

  /// Whether backward_rows() can take this model's batches as row numbers (a token model
  /// checks and converts its features on the host first: it cannot).
  virtual bool gathers_rows() const { return true; }
  /// backward() on the batch made of rows `rows[0..batch)` of `features` ([data_rows,
  /// feature_dim()] in this backend's memory: a shard uploaded once for an assignment), with
  /// `labels` (host memory, one per row of the batch). Only the row numbers and the labels
  /// cross to the device; the features are gathered there. The same gradients, bit for bit,
  /// as backward() on those rows copied into a host batch. Row numbers outside [0, data_rows)
  /// and a model that does not gather rows are caller bugs (GFLEX_CHECK).
  virtual void backward_rows(const float* features, int64_t data_rows, const int32_t* rows,
                             const int32_t* labels, int64_t batch, float loss_scale) = 0;
  /// Keeps a copy of the parameters as they are now, where they are, for quantized_update().
  /// False, changing nothing, where the backend has no memory left for it.
  virtual bool mark_start() = 0;
  /// The pseudo-gradient start - now (start: the parameters at the last mark_start()),
  /// computed and quantised where the model computes by the update codec's int8 rule without
  /// error feedback, into host `q` (parameter_count() values) and `scales` (one per block of
  /// `block`): a quarter of an fp32 update's bytes cross to the host, and
  /// encode_quantized_update() of them gives encode_update()'s bytes. False, writing nothing,
  /// where a value of the update is not finite. The start is used up either way.
  virtual bool quantized_update(int64_t block, std::span<int8_t> q, std::span<float> scales) = 0;

  /// The statistics accumulated since the previous call (synchronising).
  virtual batch_stats take_stats() = 0;

  /// Floating-point operations of the GEMMs in one training step of `batch` rows.
  virtual double train_step_gemm_flops(int64_t batch) const = 0;
};

/// A trainable network and the data set it learns from.
class workload {
 public:
  virtual ~workload() = default;

  /// The registry name ("fashion-mlp").
  virtual std::string name() const = 0;
  /// One line for humans ("MLP 784-512-256-10, ReLU, on Fashion-MNIST").
  virtual std::string describe() const = 0;
  virtual int64_t feature_dim() const = 0;
  virtual int64_t classes() const = 0;

  /// The parameter blocks, in flat-vector order.
  virtual std::vector<parameter_block> layout() const = 0;
  /// Total number of parameters.
  int64_t parameter_count() const;
  /// Writes the initial parameters for `seed` (deterministic on every platform).
  virtual void init_parameters(uint64_t seed, std::span<float> out) const = 0;
  /// A model on backend `b` for batches of up to `max_batch` rows.
  virtual expected<std::unique_ptr<model>> instantiate(backend& b, int64_t max_batch) const = 0;
  /// Whether batches of `batch` rows fit the kernels' sizes: errc::invalid_argument naming the
  /// layer if one of its values would pass 2^31 - 1 elements (the 32-bit extents BLAS, cuBLAS
  /// and cuDNN take), before anything is allocated.
  virtual expected<void> check_batch(int64_t batch) const {
    (void)batch;
    return {};
  }
  /// The model's declaration (a `[model]` table as TOML) for a user-defined model, which
  /// assignments carry to nodes; empty for a built-in workload, which nodes know by name.
  virtual std::string model_text() const { return {}; }
  /// Whether samples are token ids (a language model: losses per token), not values.
  virtual bool token_input() const { return false; }
  /// The most samples an evaluation pass should take at once (activation memory).
  virtual int64_t eval_batch() const { return 1000; }
  /// Host memory an evaluation pass of eval_batch() samples holds beyond the parameters (the
  /// values the plan's working_values counts, 4 bytes each); 0 where not planned (the
  /// built-in models, whose passes are small).
  virtual uint64_t evaluation_bytes() const { return 0; }
  /// Floating-point operations of one sample's forward pass (model_plan::forward_flops).
  virtual double forward_flops() const = 0;
  /// Loads the workload's data set (training and test splits).
  virtual expected<dataset_splits> load_data() const = 0;
};

/// The workload registered under `name`, or errc::unknown_workload listing the known ones.
expected<std::unique_ptr<workload>> find_workload(std::string_view name);

/// A workload as a job or an assignment names it: the built-in one called `name` when
/// `model_text` is empty, else the user-defined model it declares (labelled `name`), which
/// trains on the data set `data_set` (empty: none attached, as on a node, which gets its data
/// from the core). A model that does not plan is errc::invalid_argument naming the layer.
expected<std::unique_ptr<workload>> find_workload(std::string_view name,
                                                  const std::string& model_text,
                                                  const std::string& data_set);

/// Whether `name` is a built-in data set ("fashion-mnist", "fortunes"), which every core
/// has; other names are users' data sets, which only the core that stores them knows.
bool is_builtin_data_set(std::string_view name);

/// Names of all built-in workloads.
std::vector<std::string> workload_names();

}  // namespace gflex::kernels
