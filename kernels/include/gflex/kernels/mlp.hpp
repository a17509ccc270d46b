#pragma once
/// @file
/// A multi-layer perceptron with ReLU hidden layers and a softmax cross-entropy head.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "gflex/kernels/workload.hpp"

namespace gflex::kernels {

/// An MLP workload: dense layers of the given widths (input first, classes last).
/// Weights are stored [in, out] row-major so that the forward pass is Y = X W + b with no
/// transposition; initialisation is He-normal for weights, zero for biases.
class mlp_workload final : public workload {
 public:
  /// `data` loads the data set; `widths` has at least two entries.
  mlp_workload(std::string name, std::vector<int64_t> widths,
               std::function<expected<dataset_splits>()> data);

  std::string name() const override { return name_; }
  std::string describe() const override;
  int64_t feature_dim() const override { return widths_.front(); }
  int64_t classes() const override { return widths_.back(); }
  std::vector<parameter_block> layout() const override;
  void init_parameters(uint64_t seed, std::span<float> out) const override;
  expected<std::unique_ptr<model>> instantiate(backend& b, int64_t max_batch) const override;
  expected<dataset_splits> load_data() const override { return data_(); }
  double forward_flops() const override;

  const std::vector<int64_t>& widths() const { return widths_; }

 private:
  std::string name_;
  std::vector<int64_t> widths_;
  std::function<expected<dataset_splits>()> data_;
};

}  // namespace gflex::kernels
