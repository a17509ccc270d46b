#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>

#include "fashion_mnist_installed.hpp"
#include "gflex/runtime/dataset.hpp"
#include "gflex/runtime/shard.hpp"
#include "gflex/runtime/text_corpus.hpp"
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
  TEST_CASE("a dataset to upload is checked before it is encoded") {
    // Encoded unchecked, rows were read by the label count past the features' end, a wrong
    // dtype aborted, and labels or token ids of 256 and more wrapped to a byte unseen.
    auto make = [](int64_t rows, int64_t labels, int64_t classes, bool tokens) {
      dataset d;
      d.classes = classes;
      d.tokens = tokens;
      d.features = tensor::empty({rows, 4}, dtype::f32);
      for (auto& v : d.features.span<float>()) v = 1.0f;
      d.labels = tensor::empty({labels}, dtype::i32);
      for (auto& v : d.labels.span<int32_t>()) v = 2;
      return d;
    };
    auto why = [](const dataset& d) {
      auto r = check_dataset(d, "the training split");
      return r ? std::string() : r.error().message();
    };
    CHECK(why(make(10, 10, 3, false)).empty());
    CHECK(why(make(10, 10, 256, true)).empty());
    CHECK(why(make(10, 20, 3, false)) == "the training split: 10 rows of features but 20 labels");
    auto d = make(10, 10, 256, true);
    d.labels.span<int32_t>()[4] = 300;
    CHECK(why(d) == "the training split: label 300 of row 4 is outside [0, 256)");
    d = make(10, 10, 256, true);
    d.features.span<float>()[9] = 300.0f;
    CHECK(why(d).find("row 2 holds 300") != std::string::npos);
    d = make(10, 10, 256, true);
    d.features.span<float>()[0] = 1.5f;
    CHECK(why(d).find("not a token id") != std::string::npos);
    d = make(10, 10, 3, false);
    d.labels.span<int32_t>()[0] = -1;
    CHECK(why(d).find("label -1 of row 0") != std::string::npos);
    d = make(10, 10, 3, false);
    d.features.span<float>()[5] = NAN;
    CHECK(why(d).find("row 1 holds a value that is not finite") != std::string::npos);
    d = make(10, 10, 3, false);
    d.features = tensor::empty({10, 4}, dtype::u8);
    CHECK(why(d).find("features must be f32") != std::string::npos);
    d = make(10, 10, 3, false);
    d.labels = tensor::empty({10}, dtype::f32);
    CHECK(why(d).find("labels must be i32") != std::string::npos);
    CHECK(why(make(10, 10, 0, false)).find("classes must be in") != std::string::npos);
    // Past what a shard carries: the core refused the upload only once it had it all.
    CHECK(why(make(10, 10, 65536, false)).empty());
    CHECK(why(make(10, 10, 65537, false)) ==
          "the training split: classes must be in [2, 65536], got 65537");
    CHECK(why(make(10, 10, 1 << 24, true)).empty());
    CHECK(why(make(10, 10, (1 << 24) + 1, true)).find("for tokens") != std::string::npos);
    CHECK(why(make(10, 10, 1, false)).find("classes must be in [2, 65536]") != std::string::npos);
  }

  TEST_CASE("evenly spaced rows keep a class-sorted split's mix, in order, row for row") {
    // 1,000 rows sorted by class (100 of each of 10): the first 10 rows are all class 0.
    dataset d;
    d.classes = 10;
    d.features = tensor::empty({1000, 3}, dtype::f32);
    d.labels = tensor::empty({1000}, dtype::i32);
    for (int64_t i = 0; i < 1000; ++i) {
      d.labels.data<int32_t>()[i] = static_cast<int32_t>(i / 100);
      for (int64_t j = 0; j < 3; ++j)
        d.features.data<float>()[i * 3 + j] = static_cast<float>(i * 3 + j);
    }
    auto part = evenly_spaced_rows(d, 10);
    REQUIRE(part.size() == 10);
    REQUIRE(part.feature_dim() == 3);
    CHECK(part.classes == 10);
    for (int64_t i = 0; i < 10; ++i) {
      CHECK(part.labels.data<int32_t>()[i] == i);  // row 100 i: one of each class
      for (int64_t j = 0; j < 3; ++j)
        CHECK(part.features.data<float>()[i * 3 + j] == static_cast<float>(i * 300 + j));
    }
    // 3 of 1,000: rows 0, 333 and 666.
    auto three = evenly_spaced_rows(d, 3);
    REQUIRE(three.size() == 3);
    CHECK(three.features.data<float>()[1 * 3] == static_cast<float>(333 * 3));
    CHECK(three.features.data<float>()[2 * 3] == static_cast<float>(666 * 3));
    // All of it, or more, is the split itself, shared.
    auto all = evenly_spaced_rows(d, 1000);
    CHECK(all.features.raw() == d.features.raw());
    CHECK(evenly_spaced_rows(d, 5000).size() == 1000);
  }

  TEST_CASE("shards cover every row once, as many as asked for, of sizes one row apart") {
    // Cut by a fixed row count, 20 rows asked into 8 shards gave 7, and 100 into 16 gave 15
    // (a job of that many workers was then refused); a last shard could hold one sample.
    for (auto [n, shards] : std::vector<std::pair<int64_t, int64_t>>{
             {20, 8}, {100, 16}, {2000, 64}, {7, 3}, {5, 9}, {1, 1}}) {
      auto r = shard_ranges(n, 16, shards);
      CHECK(static_cast<int64_t>(r.size()) == std::min(n, shards));
      int64_t next = 0, smallest = n, largest = 0;
      for (auto [begin, end] : r) {
        CHECK(begin == next);
        smallest = std::min(smallest, end - begin);
        largest = std::max(largest, end - begin);
        next = end;
      }
      CHECK(next == n);
      CHECK(largest - smallest <= 1);
      CHECK(smallest >= 1);
    }
    // By size: 8 MiB a shard at most, and the rows spread evenly over the shards it takes.
    auto r = shard_ranges(1000, int64_t{1} << 16, 1);  // 128 rows fit: 8 shards of 125
    REQUIRE(r.size() == 8);
    for (auto [begin, end] : r) CHECK(end - begin == 125);
    CHECK(shard_ranges(0, 16, 4).empty());
    // No size bound (the core's catalog cuts by count): rounding up overflowed (UBSan).
    auto by_count = shard_ranges(60000, 1, 20, std::numeric_limits<int64_t>::max());
    REQUIRE(by_count.size() == 20);
    for (auto [begin, end] : by_count) CHECK(end - begin == 3000);
  }

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

  TEST_CASE(
      "a text corpus is read from its plain files; an entry that cannot be looked at "
      "is passed over, not thrown") {
    test::temp_dir dir;
    {
      std::ofstream(dir / "b") << "world";
      std::ofstream(dir / "a") << "hello ";
      std::ofstream(dir / "a.dat") << "index";
    }
    // A link to itself cannot be stat'ed (ELOOP); asking whether it is a file throws.
    std::filesystem::create_symlink(dir / "loop", dir / "loop");
    auto bytes = read_text_corpus(dir.path());
    REQUIRE(bytes.has_value());
    CHECK(std::string(bytes->begin(), bytes->end()) == "hello world");
    auto missing = read_text_corpus(dir / "nothing");
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().message().find("fortunes") != std::string::npos);
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
