#include <doctest/doctest.h>

#include <cstdlib>

#include "fashion_mnist_installed.hpp"
#include "gflex/runtime/dataset.hpp"
#include "idx_writer.hpp"
#include "temp_dir.hpp"

using namespace gflex;
using gflex::test::idx_bytes;
using gflex::test::write_file;

namespace {

// A miniature Fashion-MNIST: n images of 28x28 with labels i % 10.
void write_mini_fashion(const std::filesystem::path& dir, const std::string& prefix, uint32_t n,
                        uint8_t bad_label = 0) {
  std::vector<uint8_t> pixels(n * 28 * 28);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>(i % 256);
  std::vector<uint8_t> labels(n);
  for (uint32_t i = 0; i < n; ++i) labels[i] = static_cast<uint8_t>(i % 10);
  if (bad_label != 0) labels[n - 1] = bad_label;
  write_file(dir / (prefix + "-images-idx3-ubyte.gz"), idx_bytes({n, 28, 28}, pixels), true);
  write_file(dir / (prefix + "-labels-idx1-ubyte.gz"), idx_bytes({n}, labels), true);
}

}  // namespace

TEST_SUITE("dataset") {
  TEST_CASE("loads a Fashion-MNIST layout and scales pixels to [0, 1]") {
    test::temp_dir dir;
    write_mini_fashion(dir.path(), "train", 20);
    write_mini_fashion(dir.path(), "t10k", 10);
    auto splits = load_fashion_mnist(dir.path());
    REQUIRE(splits.has_value());
    CHECK(splits->train.size() == 20);
    CHECK(splits->test.size() == 10);
    CHECK(splits->train.feature_dim() == 784);
    CHECK(splits->train.features.span<float>()[255] == doctest::Approx(1.0));
    CHECK(splits->train.labels.span<int32_t>()[13] == 3);
  }

  TEST_CASE("a missing directory says how to get the data") {
    auto r = load_fashion_mnist("/nonexistent/fashion");
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message().find("/nonexistent/fashion") != std::string::npos);
    CHECK(r.error().message().find("dataset-fashion-mnist") != std::string::npos);
  }

  TEST_CASE("mismatched counts and out-of-range labels name the files") {
    test::temp_dir dir;
    write_mini_fashion(dir.path(), "train", 20);
    write_mini_fashion(dir.path(), "t10k", 10, /*bad_label=*/12);
    auto r = load_fashion_mnist(dir.path());
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message().find("t10k-images") != std::string::npos);
    CHECK(r.error().message().find("label 12") != std::string::npos);

    write_mini_fashion(dir.path(), "t10k", 10);
    write_file(dir / "t10k-labels-idx1-ubyte.gz", idx_bytes({9}, std::vector<uint8_t>(9, 1)), true);
    r = load_fashion_mnist(dir.path());
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message().find("10 images but 9 labels") != std::string::npos);
  }

  TEST_CASE("images that are not 28x28 are refused") {
    test::temp_dir dir;
    write_file(dir / "train-images-idx3-ubyte.gz", idx_bytes({1, 2, 2}, {1, 2, 3, 4}), true);
    auto r = load_fashion_mnist(dir.path());
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message().find("28x28") != std::string::npos);
  }

  TEST_CASE("the real Fashion-MNIST from Debian's package" *
            doctest::skip(!test::fashion_mnist_installed())) {
    auto dir = fashion_mnist_dir();
    auto splits = load_fashion_mnist(dir);
    REQUIRE(splits.has_value());
    CHECK(splits->train.size() == 60000);
    CHECK(splits->test.size() == 10000);
    std::vector<int> counts(10, 0);
    for (int32_t label : splits->test.labels.span<int32_t>()) counts[label]++;
    for (int c : counts) CHECK(c == 1000);  // the test split is balanced
  }
}
