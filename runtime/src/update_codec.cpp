#include "gflex/runtime/update_codec.hpp"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>
#include <kj/io.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <string>

#include "capnp_bytes.hpp"
#include "gflex/runtime/check.hpp"
#include "gflex/runtime/tensor.hpp"
#include "gflex/schema/update.capnp.h"

namespace gflex {

// Floats go on the wire with memcpy, which is the schema's little-endian layout only here.
static_assert(std::endian::native == std::endian::little, "update_codec assumes little-endian");

namespace {

constexpr uint16_t max_compression_code = static_cast<uint16_t>(compression::int8);

/// Quantises one block into `q` and returns its scale; writes the dequantisation error
/// into `err` (which may alias `x`, as it does for error feedback).
float quantise_block(const float* x, size_t n, int8_t* q, float* err) {
  float max_abs = 0.0f;
  for (size_t i = 0; i < n; ++i) max_abs = std::max(max_abs, std::fabs(x[i]));
  float scale = max_abs / 127.0f;
  // A zero block, or one so small that max/127 underflows to zero, sends zeros; with error
  // feedback its values stay in the residual rather than being lost.
  if (scale == 0.0f) {
    std::memset(q, 0, n);
    if (err != nullptr && err != x) std::memcpy(err, x, n * sizeof(float));
    return 0.0f;
  }
  for (size_t i = 0; i < n; ++i) {
    float r = std::round(x[i] / scale);
    // x/scale can exceed 127 by an ulp of rounding; the clamp keeps q in the symmetric range.
    r = std::clamp(r, -127.0f, 127.0f);
    auto qi = static_cast<int8_t>(r);
    q[i] = qi;
    if (err != nullptr) err[i] = x[i] - static_cast<float>(qi) * scale;
  }
  return scale;
}

size_t words_for(size_t bytes) {
  return (bytes + sizeof(capnp::word) - 1) / sizeof(capnp::word);
}

error malformed(const std::string& what) {
  return error(errc::malformed_message, "malformed update message: " + what);
}

/// Words of a one-segment update message carrying `value_bytes` and `scale_bytes`: segment
/// table, root pointer, the root struct's 2 data and 2 pointer words, then the Data blobs.
size_t update_words(size_t value_bytes, size_t scale_bytes) {
  return 8 + words_for(value_bytes) + words_for(scale_bytes) +
         value_bytes / detail::max_piece_bytes + 2;
}

/// An int8 update message of n values in blocks of `block_size`; `fill(q, scales)` writes the
/// n quantised values and the blocks' scales straight into the message.
template <class Fill>
std::vector<uint8_t> build_int8(size_t n, uint32_t block_size, Fill&& fill) {
  const size_t blocks = (n + block_size - 1) / block_size;
  const size_t scale_bytes = blocks * sizeof(float);
  return detail::build_flat(update_words(n, scale_bytes), [&](capnp::MessageBuilder& message) {
    auto root = message.initRoot<schema::Update>();
    root.setCompression(schema::Compression::INT8);
    root.setCount(n);
    auto values = root.initValues(static_cast<unsigned>(n));
    root.setBlockSize(block_size);
    auto scales = root.initScales(static_cast<unsigned>(scale_bytes));
    fill(reinterpret_cast<int8_t*>(values.begin()), scales.begin());
  });
}

}  // namespace

std::vector<uint8_t> encode_update(std::span<const float> delta, compression c,
                                   std::vector<float>* residual, uint32_t block_size) {
  GFLEX_CHECK(c == compression::fp32 || c == compression::int8, "encode_update: bad compression");
  GFLEX_CHECK(residual == nullptr || residual->size() == delta.size(),
              "encode_update: residual size differs from delta size");
  GFLEX_CHECK(first_non_finite(delta) < 0, "encode_update: non-finite delta");
  const size_t n = delta.size();
  const bool int8 = c == compression::int8;
  GFLEX_CHECK(n <= (int8 ? max_update_count_int8 : max_update_count_fp32),
              "encode_update: too many values for one update message");
  if (int8) {
    GFLEX_CHECK(block_size >= 1 && block_size <= max_update_block_size,
                "encode_update: block size outside [1, 2^20]");
  }

  // With error feedback the residual becomes the quantiser's input in place (delta + residual)
  // and then its error, so no temporary of the update's size is needed.
  const float* input = delta.data();
  if (residual != nullptr) {
    float* r = residual->data();
    for (size_t i = 0; i < n; ++i) r[i] += delta[i];
    GFLEX_CHECK(first_non_finite(*residual) < 0, "encode_update: delta + residual overflows");
    input = r;
  }

  if (int8) {
    float* err = residual != nullptr ? residual->data() : nullptr;
    return build_int8(n, block_size, [&](int8_t* q, uint8_t* scales) {
      for (size_t begin = 0, b = 0; begin < n; begin += block_size, ++b) {
        const size_t len = std::min<size_t>(block_size, n - begin);
        float scale = quantise_block(input + begin, len, q + begin, err ? err + begin : nullptr);
        std::memcpy(scales + b * sizeof(float), &scale, sizeof(float));
      }
    });
  }
  const size_t value_bytes = n * sizeof(float);
  // Built in the vector it is returned in: an update exists once while it is encoded.
  return detail::build_flat(update_words(value_bytes, 0), [&](capnp::MessageBuilder& message) {
    auto root = message.initRoot<schema::Update>();
    root.setCompression(schema::Compression::FP32);
    root.setCount(n);
    // More than one Data field holds (a model of over 134 million values) goes in pieces.
    detail::write_blob(
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(input), value_bytes),
        [&](unsigned k) { return root.initValues(k); },
        [&](unsigned k) { return root.initValuePieces(k); });
    if (residual != nullptr) std::fill(residual->begin(), residual->end(), 0.0f);
  });
}

std::vector<uint8_t> encode_quantized_update(std::span<const int8_t> q,
                                             std::span<const float> scales, uint32_t block_size) {
  const size_t n = q.size();
  GFLEX_CHECK(n <= max_update_count_int8, "encode_quantized_update: too many values");
  GFLEX_CHECK(block_size >= 1 && block_size <= max_update_block_size,
              "encode_quantized_update: block size outside [1, 2^20]");
  GFLEX_CHECK(scales.size() == (n + block_size - 1) / block_size,
              "encode_quantized_update: one scale per block");
  for (float s : scales)
    GFLEX_CHECK(std::isfinite(s) && s >= 0.0f, "encode_quantized_update: bad scale");
  for (int8_t v : q) GFLEX_CHECK(v != -128, "encode_quantized_update: -128 is outside the range");
  return build_int8(n, block_size, [&](int8_t* out, uint8_t* out_scales) {
    std::memcpy(out, q.data(), n);
    std::memcpy(out_scales, scales.data(), scales.size_bytes());
  });
}

expected<packed_update> decode_packed_update(std::span<const uint8_t> bytes,
                                             uint64_t expected_count, uint64_t max_count) {
  // The largest honest message is int8 with block size 1: one byte and one scale per value.
  // The slack covers the header, the root struct and a segment table of many segments.
  constexpr uint64_t slack = 4096;
  uint64_t max_bytes = max_count > (std::numeric_limits<uint64_t>::max() - slack) / 5
                           ? std::numeric_limits<uint64_t>::max()
                           : max_count * 5 + slack;
  if (max_bytes > std::numeric_limits<size_t>::max())
    max_bytes = std::numeric_limits<size_t>::max();
  return detail::read_message<packed_update>(
      bytes, "update message", static_cast<size_t>(max_bytes),
      [&](capnp::MessageReader& reader) -> expected<packed_update> {
        auto root = reader.getRoot<schema::Update>();
        auto raw_compression = static_cast<uint16_t>(root.getCompression());
        if (raw_compression > max_compression_code)
          return malformed("unknown compression code " + std::to_string(raw_compression));
        auto c = static_cast<compression>(raw_compression);
        uint64_t count = root.getCount();
        if (count > max_count)
          return malformed("count " + std::to_string(count) + " exceeds the limit of " +
                           std::to_string(max_count));
        auto values = root.getValues();
        const bool in_pieces = root.hasValuePieces() && root.getValuePieces().size() > 0;
        auto scales = root.getScales();
        uint32_t block_size = root.getBlockSize();
        uint64_t blocks = 0;
        std::optional<std::vector<kj::ArrayPtr<const kj::byte>>> fp32_parts;
        if (c == compression::fp32) {
          if (block_size != 0 || scales.size() != 0)
            return malformed("an fp32 update has block size " + std::to_string(block_size) +
                             " and " + std::to_string(scales.size()) +
                             " scale bytes; both must be 0");
          fp32_parts = detail::blob_parts(values, root.getValuePieces());
          if (!fp32_parts)
            return malformed("values in both forms, or in pieces of the wrong sizes");
          const size_t have = detail::blob_size(*fp32_parts);
          // Compared by division: count * 4 could wrap for a hostile count and a large max_count.
          if (have % sizeof(float) != 0 || have / sizeof(float) != count)
            return malformed("fp32 count " + std::to_string(count) +
                             " needs 4 bytes per value but " + "the message has " +
                             std::to_string(have) + " value bytes");
        } else {
          if (block_size == 0 || block_size > max_update_block_size)
            return malformed("block size " + std::to_string(block_size) + " is outside [1, " +
                             std::to_string(max_update_block_size) + "]");
          if (in_pieces)
            return malformed("int8 values in pieces (only fp32 values come in pieces)");
          if (values.size() != count)
            return malformed("int8 count " + std::to_string(count) + " needs " +
                             std::to_string(count) + " value bytes but the message has " +
                             std::to_string(values.size()));
          // count is now at most a Data field's size, so the block arithmetic cannot wrap.
          blocks = (count + block_size - 1) / block_size;
          if (scales.size() != blocks * sizeof(float))
            return malformed("int8 count " + std::to_string(count) + " in blocks of " +
                             std::to_string(block_size) + " needs " +
                             std::to_string(blocks * sizeof(float)) +
                             " scale bytes but the message has " + std::to_string(scales.size()));
        }
        // Only a well-formed update can disagree with the receiver about its size.
        if (count != expected_count)
          return error(errc::shape_mismatch, "update has " + std::to_string(count) +
                                                 " values, expected " +
                                                 std::to_string(expected_count));

        // count is now bounded by max_count and by the bytes actually received.
        packed_update out;
        out.compression_ = c;
        out.count_ = count;
        if (c == compression::fp32) {
          out.values_.resize(static_cast<size_t>(count));
          if (count > 0)
            detail::copy_blob(*fp32_parts, reinterpret_cast<uint8_t*>(out.values_.data()));
          if (int64_t bad = first_non_finite(out.values_); bad >= 0)
            return error(errc::non_finite,
                         "update value " + std::to_string(bad) + " is not finite");
          return out;
        }
        out.block_size_ = block_size;
        out.scales_.resize(static_cast<size_t>(blocks));
        if (blocks > 0) std::memcpy(out.scales_.data(), scales.begin(), scales.size());
        if (int64_t bad = first_non_finite(out.scales_); bad >= 0)
          return error(errc::non_finite,
                       "update scale " + std::to_string(bad) + " (values from " +
                           std::to_string(static_cast<uint64_t>(bad) * block_size) +
                           ") is not finite");
        out.q_.resize(static_cast<size_t>(count));
        if (count > 0) std::memcpy(out.q_.data(), values.begin(), static_cast<size_t>(count));
        // A finite scale near the float maximum times q can still overflow: every value that
        // read() can yield is checked here once.
        for (size_t b = 0; b < blocks; ++b) {
          const size_t begin = b * block_size;
          const size_t end = std::min<size_t>(begin + block_size, count);
          for (size_t i = begin; i < end; ++i)
            if (!std::isfinite(static_cast<float>(out.q_[i]) * out.scales_[b]))
              return error(errc::non_finite,
                           "update value " + std::to_string(i) + " is not finite");
        }
        return out;
      });
}

expected<std::vector<float>> decode_update(std::span<const uint8_t> bytes, uint64_t expected_count,
                                           uint64_t max_count) {
  auto packed = decode_packed_update(bytes, expected_count, max_count);
  if (!packed) return packed.error();
  return std::move(*packed).unpack();
}

uint64_t packed_update::memory_bytes() const noexcept {
  return values_.size() * sizeof(float) + q_.size() + scales_.size() * sizeof(float);
}

void packed_update::read(uint64_t begin, std::span<float> out) const {
  GFLEX_CHECK(begin <= count_ && out.size() <= count_ - begin,
              "packed_update::read: range outside the update");
  if (compression_ == compression::fp32) {
    if (!out.empty()) std::memcpy(out.data(), values_.data() + begin, out.size() * sizeof(float));
    return;
  }
  for (size_t k = 0; k < out.size(); ++k) {
    const uint64_t i = begin + k;
    out[k] = static_cast<float>(q_[i]) * scales_[i / block_size_];
  }
}

std::vector<float> packed_update::unpack() && {
  if (compression_ == compression::fp32) return std::move(values_);
  return static_cast<const packed_update&>(*this).unpack();
}

std::vector<float> packed_update::unpack() const& {
  std::vector<float> out(static_cast<size_t>(count_));
  read(0, out);
  return out;
}

void packed_update::clear() noexcept {
  std::vector<float>().swap(values_);
  std::vector<int8_t>().swap(q_);
  std::vector<float>().swap(scales_);
  count_ = 0;
}

namespace {
constexpr std::array<enum_name<compression>, 2> k_compression_names{{
    {compression::fp32, "fp32"},
    {compression::int8, "int8"},
}};
}  // namespace

template <>
std::span<const enum_name<compression>> enum_names<compression>() noexcept {
  return k_compression_names;
}

const char* to_string(compression c) noexcept {
  return name_of(c);
}

expected<compression> parse_compression(std::string_view name) {
  if (auto c = enum_from_name<compression>(name)) return *c;
  return error(errc::invalid_argument, "unknown compression \"" + std::string(name) +
                                           "\" (expected " + enum_choices<compression>() + ")");
}

}  // namespace gflex
