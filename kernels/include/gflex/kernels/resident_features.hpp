#pragma once
/// @file
/// A data set's features held where a backend computes, so that batches can cross to it as
/// row numbers (model::backward_rows): what `gflex train` does with its training set and a
/// node's worker with an assignment's shard.

#include "gflex/kernels/backend.hpp"
#include "gflex/runtime/tensor.hpp"

namespace gflex::kernels {

class resident_features {
 public:
  /// Nothing held: held() is false.
  resident_features() = default;
  /// `features` (host memory, f32) where `b` computes: read in place by a CPU backend, copied
  /// in one upload to a GPU. Where the GPU has no memory left for them, nothing is held and
  /// held() says so: the caller sends host batches instead.
  resident_features(backend& b, const tensor& features);

  bool held() const noexcept { return at_ != nullptr; }
  /// The features in the backend's memory (null when nothing is held).
  const float* at() const noexcept { return at_; }

 private:
  tensor copy_;  // a GPU's copy
  const float* at_ = nullptr;
};

}  // namespace gflex::kernels
