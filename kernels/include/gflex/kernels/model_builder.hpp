#pragma once
/// @file
/// A model declared in C++: the same layer graph a job spec's `[model]` table declares
/// (model_spec.hpp), built by chaining one call per layer. `toml()` prints it as that table,
/// so a trainer can put it in a job spec or show it to a user; `plan()` checks it as the core
/// will, with the same messages.
///
/// ```cpp
/// auto mlp = gflex::kernels::model_builder("my-mlp", {784})
///                .linear(256).relu().dropout(0.1).linear(10).softmax_xent();
/// std::string spec = "[job]\nrounds = 20\n[data]\nset = \"fashion-mnist\"\n" + mlp.toml();
/// ```

#include <cstdint>
#include <string>
#include <vector>

#include "gflex/kernels/model_spec.hpp"

namespace gflex::kernels {

class model_builder {
 public:
  /// A model whose samples have shape `input` (NHWC for images).
  model_builder(std::string name, std::vector<int64_t> input);
  /// A token model: `context` token ids per sample from a vocabulary of `vocab`.
  static model_builder tokens(std::string name, int64_t context, int64_t vocab);

  model_builder& linear(int64_t units, bool bias = true);
  model_builder& conv2d(int64_t filters, int64_t kernel, int64_t stride = 1, int64_t padding = 0,
                        bool bias = true);
  model_builder& max_pool(int64_t size, int64_t stride = 0);  ///< stride 0: the window's size
  model_builder& avg_pool(int64_t size, int64_t stride = 0);
  model_builder& flatten();
  model_builder& reshape(std::vector<int64_t> shape);
  model_builder& relu();
  model_builder& gelu();
  model_builder& tanh();
  model_builder& dropout(double rate);
  model_builder& layer_norm(double eps = 1e-5);
  model_builder& rms_norm(double eps = 1e-5);
  model_builder& embedding(int64_t dim);
  model_builder& position_embedding();
  model_builder& attention(int64_t heads, bool bias = true);
  /// Adds the output of the layer named `with` (a residual).
  model_builder& add(std::string with);
  model_builder& softmax_xent();
  model_builder& next_token_xent();
  model_builder& mse();

  /// Names the last layer, for `from` and `add`.
  model_builder& named(std::string name);
  /// The last layer reads the output named `from` ("input": the model's) instead of the
  /// previous layer's.
  model_builder& from(std::string from);
  /// The last layer's weight initialisation (linear, conv2d, attention).
  model_builder& init(weight_init how);

  const model_spec& spec() const { return spec_; }
  /// The `[model]` table (to_toml).
  std::string toml() const;
  /// Plans the model as the core does before it accepts a job.
  expected<model_plan> plan(const model_limits& limits = {}) const;

 private:
  model_builder& push(layer_spec l);
  model_builder& pool(layer_kind kind, int64_t size, int64_t stride);
  model_builder& norm(layer_kind kind, double eps);
  layer_spec& last();

  model_spec spec_;
};

}  // namespace gflex::kernels
