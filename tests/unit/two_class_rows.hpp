#pragma once
/// @file
/// A small two-class data set of four values a sample, for tests that need rows of any
/// count (a data catalog's cuts, a push's parts) and not what they learn.

#include <cstdint>

#include "gflex/runtime/dataset.hpp"

namespace gflex::test {

/// `n` samples: values i % 7 in order, labels alternating 0 and 1.
inline dataset two_class_rows(int64_t n) {
  dataset d;
  d.classes = 2;
  d.features = tensor::empty({n, 4}, dtype::f32);
  d.labels = tensor::empty({n}, dtype::i32);
  for (int64_t i = 0; i < n * 4; ++i) d.features.data<float>()[i] = static_cast<float>(i % 7);
  for (int64_t i = 0; i < n; ++i) d.labels.data<int32_t>()[i] = static_cast<int32_t>(i % 2);
  return d;
}

}  // namespace gflex::test
