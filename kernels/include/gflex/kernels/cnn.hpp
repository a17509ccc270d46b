#pragma once
/// @file
/// A small convolutional network for 28x28 single-channel images (Fashion-MNIST):
///   conv 3x3 (pad 1) -> ReLU -> 2x2 max pool -> conv 3x3 (pad 1) -> ReLU -> 2x2 max pool
///   -> dense -> ReLU -> dense (logits) -> softmax cross-entropy.
/// Activations are NHWC and filters KRSC (see conv2d_geometry), so biases and ReLUs are the
/// row-wise operations the MLP uses. Convolutions are im2col + GEMM on the CPU backend and
/// cuDNN on CUDA.

#include <cstdint>
#include <functional>
#include <string>

#include "gflex/kernels/workload.hpp"

namespace gflex::kernels {

/// The network's widths.
struct cnn_shape {
  int64_t height = 28;
  int64_t width = 28;
  int64_t channels = 1;
  int64_t conv1 = 32;    ///< Filters of the first convolution.
  int64_t conv2 = 64;    ///< Filters of the second.
  int64_t hidden = 128;  ///< Width of the dense hidden layer.
  int64_t classes = 10;
};

class cnn_workload final : public workload {
 public:
  /// `data` loads the data set; `shape` needs height and width positive multiples of 4,
  /// positive widths and at least 2 classes. Another shape makes a workload with no
  /// parameters whose instantiate() and check_batch() are errc::invalid_argument naming it.
  cnn_workload(std::string name, cnn_shape shape, std::function<expected<dataset_splits>()> data);

  std::string name() const override { return name_; }
  std::string describe() const override;
  int64_t feature_dim() const override { return shape_.height * shape_.width * shape_.channels; }
  int64_t classes() const override { return shape_.classes; }
  std::vector<parameter_block> layout() const override;
  void init_parameters(uint64_t seed, std::span<float> out) const override;
  expected<std::unique_ptr<model>> instantiate(backend& b, int64_t max_batch) const override;
  expected<void> check_batch(int64_t batch) const override;
  expected<dataset_splits> load_data() const override { return data_(); }
  double forward_flops() const override;

  const cnn_shape& shape() const { return shape_; }

 private:
  std::string name_;
  cnn_shape shape_;
  std::function<expected<dataset_splits>()> data_;
  std::string invalid_;  ///< Why the shape cannot make this network; empty when it can.
};

}  // namespace gflex::kernels
