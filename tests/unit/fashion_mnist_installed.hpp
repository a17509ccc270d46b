#pragma once
/// @file
/// Whether Debian's Fashion-MNIST is installed where the loader looks. Tests on the real data
/// are marked `* doctest::skip(!test::fashion_mnist_installed())`, so that without the data
/// doctest reports them as skipped rather than passed.

#include <filesystem>

#include "gflex/runtime/dataset.hpp"

namespace gflex::test {

inline bool fashion_mnist_installed() {
  return std::filesystem::exists(fashion_mnist_dir() / "train-images-idx3-ubyte.gz");
}

}  // namespace gflex::test
