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
  /// `data` loads the data set; `widths` needs at least two entries, all positive, and at
  /// least 2 classes (the last). Other widths make a workload with no parameters whose
  /// instantiate() and check_batch() are errc::invalid_argument naming the width at fault.
  mlp_workload(std::string name, std::vector<int64_t> widths,
               std::function<expected<dataset_splits>()> data);

  std::string name() const override { return name_; }
  std::string describe() const override;
  int64_t feature_dim() const override;
  int64_t classes() const override;
  std::vector<parameter_block> layout() const override;
  void init_parameters(uint64_t seed, std::span<float> out) const override;
  expected<std::unique_ptr<model>> instantiate(backend& b, int64_t max_batch) const override;
  expected<void> check_batch(int64_t batch) const override;
  expected<dataset_splits> load_data() const override { return data_(); }
  double forward_flops() const override;

  const std::vector<int64_t>& widths() const { return widths_; }

 private:
  std::string name_;
  std::vector<int64_t> widths_;
  std::function<expected<dataset_splits>()> data_;
  std::string invalid_;  ///< Why the widths cannot make an MLP; empty when they can.
};

}  // namespace gflex::kernels
