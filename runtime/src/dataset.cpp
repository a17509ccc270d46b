#include "gflex/runtime/dataset.hpp"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "gflex/runtime/check.hpp"
#include "gflex/runtime/idx.hpp"

namespace gflex {

std::filesystem::path fashion_mnist_dir() {
  if (const char* dir = std::getenv("GFLEX_FASHION_MNIST_DIR"); dir != nullptr && *dir != 0)
    return dir;
  return default_fashion_mnist_dir;
}

expected<void> check_dataset(const dataset& d, const std::string& what) {
  auto refuse = [&](const std::string& why) {
    return error(errc::invalid_argument, what + ": " + why);
  };
  if (!d.features.defined() || d.features.type() != dtype::f32 || d.features.rank() != 2 ||
      d.features.dim(1) <= 0)
    return refuse("features must be f32 [samples, values] with values > 0");
  if (!d.labels.defined() || d.labels.type() != dtype::i32 || d.labels.rank() != 1)
    return refuse("labels must be i32 [samples]");
  if (d.features.dim(0) != d.labels.dim(0))
    return refuse(std::to_string(d.features.dim(0)) + " rows of features but " +
                  std::to_string(d.labels.dim(0)) + " labels");
  // What a shard carries (decode_shard): a vocabulary of up to 2^24 tokens, up to 65,536
  // classes of other data. Wider ones were refused by the core only once uploaded.
  const int64_t most = d.tokens ? int64_t{1} << 24 : int64_t{65536};
  if (d.classes < 2 || d.classes > most)
    return refuse("classes must be in [2, " + std::to_string(most) + "]" +
                  (d.tokens ? " for tokens" : "") + ", got " + std::to_string(d.classes));
  const auto labels = d.labels.span<int32_t>();
  for (size_t i = 0; i < labels.size(); ++i)
    if (labels[i] < 0 || labels[i] >= d.classes)
      return refuse("label " + std::to_string(labels[i]) + " of row " + std::to_string(i) +
                    " is outside [0, " + std::to_string(d.classes) + ")");
  const auto values = d.features.span<float>();
  const auto dim = static_cast<size_t>(d.features.dim(1));
  for (size_t i = 0; i < values.size(); ++i) {
    const float v = values[i];
    if (!std::isfinite(v))
      return refuse("row " + std::to_string(i / dim) + " holds a value that is not finite");
    if (d.tokens && (v < 0.0f || v >= static_cast<float>(d.classes) || v != std::floor(v)))
      return refuse("row " + std::to_string(i / dim) + " holds " + std::to_string(v) +
                    ", not a token id in [0, " + std::to_string(d.classes) + ")");
  }
  return {};
}

dataset evenly_spaced_rows(const dataset& d, int64_t n) {
  const int64_t size = d.size();
  if (n >= size) return d;
  GFLEX_CHECK(n >= 1, "evenly_spaced_rows needs at least one row");
  const int64_t dim = d.feature_dim();
  dataset out;
  out.classes = d.classes;
  out.tokens = d.tokens;
  out.features = tensor::empty({n, dim}, dtype::f32);
  out.labels = tensor::empty({n}, dtype::i32);
  const float* from = d.features.data<float>();
  const int32_t* labels = d.labels.data<int32_t>();
  float* to = out.features.data<float>();
  int32_t* to_labels = out.labels.data<int32_t>();
  for (int64_t i = 0; i < n; ++i) {
    // In 128 bits, as the shards' cut: i * size may pass 2^63.
    const int64_t row = static_cast<int64_t>((static_cast<__int128>(i) * size) / n);
    std::memcpy(to + i * dim, from + row * dim, static_cast<size_t>(dim) * sizeof(float));
    to_labels[i] = labels[row];
  }
  return out;
}

expected<dataset> make_image_dataset(const tensor& images, const tensor& labels, int64_t classes,
                                     const std::string& what) {
  if (images.rank() != 3 || labels.rank() != 1)
    return error(errc::shape_mismatch, what + ": images must be [n, h, w] and labels [n]");
  if (images.dim(0) != labels.dim(0))
    return error(errc::shape_mismatch, what + ": " + std::to_string(images.dim(0)) +
                                           " images but " + std::to_string(labels.dim(0)) +
                                           " labels");
  int64_t n = images.dim(0);
  int64_t d = images.dim(1) * images.dim(2);
  dataset out;
  out.classes = classes;
  out.features = tensor::empty({n, d}, dtype::f32);
  out.labels = tensor::empty({n}, dtype::i32);
  auto in = images.span<uint8_t>();
  auto features = out.features.span<float>();
  for (size_t i = 0; i < in.size(); ++i) features[i] = static_cast<float>(in[i]) * (1.0f / 255.0f);
  auto label_in = labels.span<uint8_t>();
  auto label_out = out.labels.span<int32_t>();
  for (int64_t i = 0; i < n; ++i) {
    if (label_in[i] >= classes)
      return error(errc::bad_format, what + ": label " + std::to_string(label_in[i]) +
                                         " at index " + std::to_string(i) + " is not below " +
                                         std::to_string(classes));
    label_out[i] = label_in[i];
  }
  return out;
}

namespace {

// Prefers the gzip file Debian installs, falling back to an uncompressed copy.
std::filesystem::path locate(const std::filesystem::path& dir, const std::string& stem) {
  auto gz = dir / (stem + ".gz");
  std::error_code ec;
  if (std::filesystem::exists(gz, ec)) return gz;
  auto plain = dir / stem;
  if (std::filesystem::exists(plain, ec)) return plain;
  return gz;
}

expected<dataset> load_split(const std::filesystem::path& dir, const std::string& prefix) {
  auto image_file = locate(dir, prefix + "-images-idx3-ubyte");
  auto label_file = locate(dir, prefix + "-labels-idx1-ubyte");
  auto images = read_idx_u8(image_file, 3);
  if (!images) return images.error();
  if (images->dim(1) != 28 || images->dim(2) != 28)
    return error(errc::bad_format, image_file.string() + ": images are " +
                                       std::to_string(images->dim(1)) + "x" +
                                       std::to_string(images->dim(2)) + ", expected 28x28");
  auto labels = read_idx_u8(label_file, 1);
  if (!labels) return labels.error();
  return make_image_dataset(*images, *labels, 10,
                            image_file.string() + " and " + label_file.string());
}

}  // namespace

expected<dataset_splits> load_fashion_mnist(const std::filesystem::path& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    return error(errc::io_error, dir.string() +
                                     ": Fashion-MNIST directory not found (install Debian's "
                                     "dataset-fashion-mnist or set GFLEX_FASHION_MNIST_DIR)");
  auto train = load_split(dir, "train");
  if (!train) return train.error();
  auto test = load_split(dir, "t10k");
  if (!test) return test.error();
  return dataset_splits{std::move(*train), std::move(*test)};
}

}  // namespace gflex
