#pragma once
/// @file
/// User-defined models: a network declared as data, a list of layers in a job spec's
/// `[model]` table, which every node's own kernels execute (no code ever travels to a
/// volunteer). This file reads such a declaration and plans it: the shape of every layer's
/// output, the parameter blocks, the per-sample FLOPs. Planning is the validation the core
/// runs before it accepts a job; every error names the layer (its index, type and name) and
/// the key at fault.
///
/// ```toml
/// [model]
/// input = [28, 28, 1]                        # one sample's shape (NHWC for images)
/// layers = [
///   { type = "conv2d", filters = 16, kernel = 3, padding = 1 },
///   { type = "relu" },
///   { type = "max_pool", size = 2 },
///   { type = "flatten" },
///   { type = "linear", units = 10 },
///   { type = "softmax_xent" },
/// ]
/// ```
///
/// A layer reads the previous layer's output, or the output of the layer named by `from`
/// ("input" is the model's input); `add` adds the output named by `with` to its input (a
/// residual). A token model declares `vocab`: its input is `input = [T]` token ids, the data
/// set's samples are T + 1 tokens long and the loss `next_token_xent` predicts each next one.
/// Its positions meet only in (causal) attention: a layer that mixes them (flatten, conv2d,
/// a pool, a reshape whose first axis is not T) would let a position see what it predicts.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "gflex/kernels/backend.hpp"
#include "gflex/kernels/workload.hpp"
#include "gflex/runtime/error.hpp"
#include "gflex/runtime/tensor.hpp"

namespace gflex::kernels {

enum class layer_kind : uint8_t {
  linear,
  conv2d,
  max_pool,
  avg_pool,
  flatten,
  reshape,
  relu,
  gelu,
  tanh,
  dropout,
  layer_norm,
  rms_norm,
  embedding,
  position_embedding,
  attention,
  add,
  softmax_xent,
  next_token_xent,
  mse,
};

/// The spelling of a layer type in a spec ("linear", "next_token_xent").
const char* to_string(layer_kind kind) noexcept;

/// How a layer's weights start (biases start at zero): normal with variance gain / fan-in.
enum class weight_init : uint8_t {
  automatic,  ///< He (gain 2) before a ReLU or GELU, LeCun (gain 1) otherwise.
  he,         ///< `init = "he"`: gain 2.
  lecun,      ///< `init = "lecun"`: gain 1.
};

/// One layer as declared. Keys a type does not use must be absent.
struct layer_spec {
  layer_kind kind = layer_kind::linear;
  std::string name;     ///< `name`: optional; what `from` and `with` refer to.
  std::string from;     ///< `from`: the input, if not the previous layer ("input": the model's).
  std::string with;     ///< `with` (add): the other summand.
  int64_t units = 0;    ///< linear
  int64_t filters = 0;  ///< conv2d
  int64_t kernel = 0;   ///< conv2d
  int64_t stride = 0;   ///< conv2d (default 1), pools (default size)
  int64_t padding = 0;  ///< conv2d
  int64_t size = 0;     ///< pools: the window
  int64_t heads = 0;    ///< attention
  int64_t dim = 0;      ///< embedding: the vector width
  bool bias = true;     ///< linear, conv2d, attention
  weight_init init = weight_init::automatic;  ///< linear, conv2d, attention
  double rate = 0.0;                          ///< dropout, in [0, 1)
  double eps = 1e-5;                          ///< layer_norm, rms_norm
  std::vector<int64_t> shape;                 ///< reshape
};

/// A model as declared in a `[model]` table.
struct model_spec {
  std::string name;            ///< `name`: optional label.
  std::vector<int64_t> input;  ///< `input`: one sample's shape.
  int64_t vocab = 0;           ///< `vocab`: > 0 for a token model.
  std::vector<layer_spec> layers;
};

/// Limits a model must keep to. Parameters travel in every assignment, as content-addressed
/// chunks when large; their bound is the tensor decoder's (2^28 values, 1 GiB of fp32).
struct model_limits {
  int64_t max_layers = 512;
  int64_t max_parameters = int64_t{1} << 28;
  int64_t max_extent = int64_t{1} << 20;  ///< Any one dimension.
  /// Values of one sample's layer outputs (1 GiB of fp32).
  int64_t max_activations = int64_t{1} << 28;
  /// Values one sample's pass holds at once (2 GiB of fp32): its layer outputs, what each
  /// attention keeps for its backward pass (projections, context and [heads, t, t]
  /// probabilities, on the CPU), a max pool's winners, a norm's row statistics and the
  /// largest scratch (a convolution's patch matrix, the
  /// probabilities' gradients). The core evaluates every job's model on its own CPU, a batch
  /// of one sample at the least: a pass past this would not fit there. A GPT-2-small-sized
  /// model at a context of 1,024 holds about 390 million.
  int64_t max_working_values = int64_t{1} << 29;
  /// Floating-point operations of one sample's forward pass: a GPT-2-small-sized model at a
  /// context of 1,024 does about 3e11. The core evaluates every job on its CPU.
  double max_forward_flops = 2e12;
};

/// One planned layer: its inputs (value ids: 0 is the model input, layer i writes i + 1
/// unless it is a view), shapes and parameter blocks.
struct planned_layer {
  layer_spec spec;
  int input = 0;   ///< Value the layer reads.
  int other = -1;  ///< add: the other summand.
  int output = 0;  ///< Value it writes (== input for flatten and reshape: a view).
  shape_t in_shape, out_shape;
  std::vector<parameter_block> params;
  /// Forward floating-point operations per sample of its matrix products (linear, conv2d,
  /// attention) and pooling windows: what a training step's GEMM count reads.
  double flops = 0.0;
  /// Forward operations per sample beyond `flops`: activations, norms, softmax rows (a
  /// loss's, attention's [heads, t, t]), copies and sums, a few to twenty a value.
  double vector_flops = 0.0;
};

/// A validated model.
struct model_plan {
  model_spec spec;
  std::vector<planned_layer> layers;
  std::vector<shape_t> values;  ///< Shape of every value (per sample).
  int64_t parameters = 0;
  double forward_flops = 0.0;  ///< Per sample: every layer's flops and vector_flops.
  /// Values one sample's pass holds at once (model_limits::max_working_values).
  int64_t working_values = 0;
  int64_t classes = 0;        ///< Labels the loss takes (the vocabulary for a token model).
  int64_t sample_values = 0;  ///< Values per data sample (T + 1 for a token model).
};

/// Parses a model from TOML text holding a `[model]` table (as a job spec stores it).
/// `source` names the text in messages.
expected<model_spec> parse_model_spec(std::string_view toml_text, const std::string& source);

/// Whether the model declared in `toml_text` is a token model (declares a vocabulary); false
/// for text that does not parse.
bool model_takes_tokens(std::string_view toml_text);

/// The model as a `[model]` table that parse_model_spec reads back to the same spec: keys
/// at their defaults are left out, one inline table per layer.
std::string to_toml(const model_spec& spec);

/// Checks a model and works out its shapes, parameters and FLOPs.
expected<model_plan> plan_model(const model_spec& spec, const model_limits& limits = {});

/// A workload that trains a planned model on `data` (loaded lazily by load_data()); `label`
/// is its name in logs and job listings.
std::unique_ptr<workload> make_graph_workload(std::string label, model_plan plan,
                                              std::string model_text,
                                              std::function<expected<dataset_splits>()> data);

}  // namespace gflex::kernels
