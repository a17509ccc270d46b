#include "gflex/runtime/shard.hpp"

#include <algorithm>
#include <cmath>

#include "capnp_bytes.hpp"
#include "gflex/schema/dataset.capnp.h"
#include "tensor_capnp.hpp"

namespace gflex {

std::vector<std::pair<int64_t, int64_t>> shard_ranges(int64_t samples, int64_t bytes_per_sample,
                                                      int64_t min_shards, int64_t max_shard_bytes) {
  std::vector<std::pair<int64_t, int64_t>> out;
  if (samples <= 0) return out;
  const int64_t rows_fit =
      std::max<int64_t>(max_shard_bytes / std::max<int64_t>(bytes_per_sample, 1), 1);
  // Rounded up without samples + rows_fit - 1, which overflows for a bound of INT64_MAX.
  const int64_t by_size = samples / rows_fit + (samples % rows_fit != 0 ? 1 : 0);
  const int64_t count = std::min(samples, std::max({by_size, min_shards, int64_t{1}}));
  // Shard k is rows [k n / count, (k + 1) n / count): sizes differ by one at most.
  for (int64_t k = 0; k < count; ++k) {
    const auto begin = static_cast<int64_t>(static_cast<__int128>(k) * samples / count);
    const auto end = static_cast<int64_t>(static_cast<__int128>(k + 1) * samples / count);
    out.emplace_back(begin, end);
  }
  return out;
}

std::vector<uint8_t> encode_shard(const dataset& d, int64_t begin, int64_t end) {
  GFLEX_CHECK(0 <= begin && begin <= end && end <= d.size(), "shard range outside the data set");
  int64_t n = end - begin, dim = d.feature_dim();
  const float* src = d.features.data<float>() + begin * dim;
  // Pixels travel as bytes (scaled back by the node), tokens as their ids: a byte each for a
  // vocabulary of up to 256, else four. Labels likewise, whatever the features: a byte each
  // for up to 256 classes (wider ones were cut to their low byte, 299 read back as 43).
  const bool wide = d.tokens && d.classes > 256;
  const bool wide_labels = d.classes > 256;
  // Values that are not 8-bit pixels (a user's standardised features) travel as f32. Pixels
  // are found and quantised in one pass, rounding without libm's lround (a call per value:
  // most of the time a data set took to cut): for v in [0, 1], v * 255 + 0.5 truncated is
  // lround(v * 255) except within one ulp of a half, where neither result times 1/255 gives
  // back v, so the check fails alike.
  const int64_t values = n * dim;
  tensor images;
  bool pixels = !d.tokens;
  if (pixels) {
    images = tensor::empty({n, dim}, dtype::u8);
    uint8_t* out = images.data<uint8_t>();
    for (int64_t i = 0; i < values && pixels; ++i) {
      const float v = src[i];
      const bool in_range = v >= 0.0f && v <= 1.0f;  // false for NaN
      const auto q = static_cast<uint8_t>(in_range ? static_cast<int>(v * 255.0f + 0.5f) : 0);
      pixels = in_range && static_cast<float>(q) * (1.0f / 255.0f) == v;
      out[i] = q;
    }
  }
  const bool real = !d.tokens && !pixels;
  if (!pixels) {
    images = tensor::empty({n, dim}, wide ? dtype::i32 : real ? dtype::f32 : dtype::u8);
    for (int64_t i = 0; i < values; ++i) {
      if (wide)
        images.data<int32_t>()[i] = static_cast<int32_t>(src[i]);
      else if (real)
        images.data<float>()[i] = src[i];
      else
        images.data<uint8_t>()[i] = static_cast<uint8_t>(src[i]);
    }
  }
  tensor labels = tensor::empty({n}, wide_labels ? dtype::i32 : dtype::u8);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t label = d.labels.data<int32_t>()[begin + i];
    if (wide_labels)
      labels.data<int32_t>()[i] = label;
    else
      labels.data<uint8_t>()[i] = static_cast<uint8_t>(label);
  }
  capnp::MallocMessageBuilder message(
      static_cast<unsigned>(64 + (images.nbytes() + labels.nbytes()) / 8));
  auto root = message.initRoot<schema::Shard>();
  // Packed: a node downloads each shard it trains on, and images compress (Fashion-MNIST's
  // to 56%).
  detail::write_tensor(root.initImages(), images, tensor_packing::zstd);
  detail::write_tensor(root.initLabels(), labels, tensor_packing::zstd);
  root.setClasses(static_cast<uint32_t>(d.classes));
  root.setTokens(d.tokens);
  return detail::to_bytes(message);
}

namespace {

// The largest class count of image or real-valued shards (check_dataset's bound for them).
constexpr uint32_t max_shard_classes = 65536;

// Labels travel as u8 for up to 256 classes, else as i32: read into `out` (i32 [n]), each
// checked below `classes`.
expected<void> read_labels(const tensor& labels, uint32_t classes, tensor& out,
                           const std::string& what) {
  const dtype want = classes > 256 ? dtype::i32 : dtype::u8;
  if (labels.type() != want || labels.rank() != 1)
    return error(errc::malformed_message,
                 what + ": labels must be [n], u8 for up to 256 classes, else i32");
  out = tensor::empty({labels.dim(0)}, dtype::i32);
  for (int64_t i = 0; i < labels.numel(); ++i) {
    const int64_t v = want == dtype::u8 ? labels.data<uint8_t>()[i] : labels.data<int32_t>()[i];
    if (v < 0 || v >= classes)
      return error(errc::malformed_message,
                   what + ": label " + std::to_string(v) + " out of range");
    out.data<int32_t>()[i] = static_cast<int32_t>(v);
  }
  return {};
}

// A token shard: ids (u8, or i32 for more than 256 classes) below `classes`, checked here so
// that an embedding never reads outside its table.
expected<dataset> decode_tokens(const tensor& ids, const tensor& labels, uint32_t classes) {
  auto malformed = [](const std::string& what) {
    return error(errc::malformed_message, "malformed token shard: " + what);
  };
  const dtype want = classes > 256 ? dtype::i32 : dtype::u8;
  if (classes < 2 || classes > (1u << 24)) return malformed("bad vocabulary size");
  if (ids.type() != want || labels.type() != want || ids.rank() != 2 || labels.rank() != 1 ||
      ids.dim(0) != labels.dim(0))
    return malformed("ids must be [n, d] and labels [n], u8 for up to 256 classes, else i32");
  dataset d;
  d.tokens = true;
  d.classes = classes;
  d.features = tensor::empty({ids.dim(0), ids.dim(1)}, dtype::f32);
  auto read = [&](const tensor& t, int64_t i) -> int64_t {
    return want == dtype::u8 ? t.data<uint8_t>()[i] : t.data<int32_t>()[i];
  };
  for (int64_t i = 0; i < ids.numel(); ++i) {
    const int64_t v = read(ids, i);
    if (v < 0 || v >= classes) return malformed("token " + std::to_string(v) + " out of range");
    d.features.data<float>()[i] = static_cast<float>(v);
  }
  if (auto ok = read_labels(labels, classes, d.labels, "malformed token shard"); !ok)
    return ok.error();
  return d;
}

// A shard of real-valued features (f32 [n, d], finite) with labels below `classes`.
expected<dataset> decode_values(const tensor& values, const tensor& labels, uint32_t classes) {
  auto malformed = [](const std::string& what) {
    return error(errc::malformed_message, "malformed shard: " + what);
  };
  if (classes < 2 || classes > max_shard_classes) return malformed("bad class count");
  if (values.rank() != 2 || labels.rank() != 1 || values.dim(0) != labels.dim(0))
    return malformed("values must be f32 [n, d] and labels [n]");
  dataset d;
  d.classes = classes;
  d.features = tensor::empty({values.dim(0), values.dim(1)}, dtype::f32);
  for (int64_t i = 0; i < values.numel(); ++i) {
    const float v = values.data<float>()[i];
    if (!std::isfinite(v)) return malformed("value " + std::to_string(i) + " is not finite");
    d.features.data<float>()[i] = v;
  }
  if (auto ok = read_labels(labels, classes, d.labels, "malformed shard"); !ok) return ok.error();
  return d;
}

// A shard of 8-bit pixels (u8 [n, d]), scaled back to [0, 1], with labels below `classes`.
expected<dataset> decode_pixels(const tensor& images, const tensor& labels, uint32_t classes) {
  auto malformed = [](const std::string& what) {
    return error(errc::malformed_message, "malformed shard: " + what);
  };
  if (classes < 2 || classes > max_shard_classes) return malformed("bad class count");
  if (images.type() != dtype::u8 || images.rank() != 2 || labels.rank() != 1)
    return malformed("images must be u8 [n, d] and labels [n]");
  if (images.dim(0) != labels.dim(0))
    return malformed(std::to_string(images.dim(0)) + " images but " +
                     std::to_string(labels.dim(0)) + " labels");
  dataset d;
  d.classes = classes;
  d.features = tensor::empty({images.dim(0), images.dim(1)}, dtype::f32);
  const uint8_t* in = images.data<uint8_t>();
  float* out = d.features.data<float>();
  for (int64_t i = 0; i < images.numel(); ++i) out[i] = static_cast<float>(in[i]) * (1.0f / 255.0f);
  if (auto ok = read_labels(labels, classes, d.labels, "malformed shard"); !ok) return ok.error();
  return d;
}

expected<dataset> decode_any_shard(std::span<const uint8_t> bytes, int64_t max_values) {
  decode_limits limits;
  limits.max_rank = 2;
  limits.max_elements = max_values;
  return detail::read_message<dataset>(
      bytes, "shard", limits.max_bytes, [&](capnp::MessageReader& reader) -> expected<dataset> {
        auto malformed = [](const std::string& what) {
          return error(errc::malformed_message, "malformed shard: " + what);
        };
        auto root = reader.getRoot<schema::Shard>();
        auto images = detail::read_tensor(root.getImages(), limits);
        if (!images) return images.error();
        auto labels = detail::read_tensor(root.getLabels(), limits);
        if (!labels) return labels.error();
        // Samples of no values passed every limit counted in values (a set's test values,
        // an upload's), while their labels alone took gigabytes.
        if (images->rank() == 2 && images->dim(1) <= 0) return malformed("samples of no values");
        if (root.getTokens()) return decode_tokens(*images, *labels, root.getClasses());
        if (images->type() == dtype::f32) return decode_values(*images, *labels, root.getClasses());
        return decode_pixels(*images, *labels, root.getClasses());
      });
}

}  // namespace

expected<dataset> decode_shard(std::span<const uint8_t> bytes, int64_t max_values) {
  auto d = decode_any_shard(bytes, max_values);
  // What a worker draws its batches from holds a sample at least (an honest core never makes
  // an empty shard).
  if (d && d->size() == 0) return error(errc::malformed_message, "malformed shard: no samples");
  return d;
}

}  // namespace gflex
