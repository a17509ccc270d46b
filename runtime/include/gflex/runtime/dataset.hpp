#pragma once
/// @file
/// In-memory labelled image data sets, and the loader for Fashion-MNIST.

#include <cstdint>
#include <filesystem>
#include <string>

#include "gflex/runtime/error.hpp"
#include "gflex/runtime/tensor.hpp"

namespace gflex {

/// A labelled data set held in memory: `features` is f32 [n, d] (pixels scaled to [0, 1], or
/// token ids for a language model), `labels`
/// is i32 [n] with values in [0, classes).
struct dataset {
  tensor features;
  tensor labels;
  int64_t classes = 0;
  /// The features are token ids below `classes` (a language model's text), not pixels.
  bool tokens = false;

  int64_t size() const { return labels.numel(); }
  int64_t feature_dim() const { return features.rank() == 2 ? features.dim(1) : 0; }
};

/// The training and test splits of one data set.
struct dataset_splits {
  dataset train;
  dataset test;
};

/// Whether `d` is a dataset that can be cut into shards, as `what` (named in the errors, with
/// the row at fault): f32 features [n, dim] with dim > 0, i32 labels [n], classes in
/// [2, 65536] (a vocabulary of tokens: [2, 2^24]), every label in [0, classes), and features
/// that are finite (token ids: whole numbers in [0, classes)). errc::invalid_argument
/// otherwise.
expected<void> check_dataset(const dataset& d, const std::string& what);

/// `n` rows of `d` spread evenly over it (rows floor(i * size / n) for i in [0, n)), in their
/// order: a part that keeps the mix of classes of a sorted split, where its first rows would
/// not. `d` itself (its tensors shared, not copied) when n >= size; n must be at least 1.
dataset evenly_spaced_rows(const dataset& d, int64_t n);

/// Where Debian's dataset-fashion-mnist package installs the files.
inline constexpr const char* default_fashion_mnist_dir = "/usr/share/datasets/fashion-mnist";

/// The directory to load Fashion-MNIST from: $GFLEX_FASHION_MNIST_DIR if set, else the
/// Debian location.
std::filesystem::path fashion_mnist_dir();

/// Loads Fashion-MNIST (train-*-ubyte.gz and t10k-*-ubyte.gz, gzip or plain) from `dir`.
/// Checks that image and label counts agree, images are 28x28 and labels are < 10; each
/// error names the file at fault and, for a missing directory, how to install the data.
expected<dataset_splits> load_fashion_mnist(const std::filesystem::path& dir);

/// Builds a dataset from IDX image [n, h, w] (u8) and label [n] (u8) tensors; `what` names
/// the source in error messages.
expected<dataset> make_image_dataset(const tensor& images, const tensor& labels, int64_t classes,
                                     const std::string& what);

}  // namespace gflex
