#pragma once
/// @file
/// Encoding of pseudo-gradient updates with the Cap'n Proto schema schemas/update.capnp, with
/// optional int8 block quantisation and error feedback.

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "gflex/runtime/enum_names.hpp"
#include "gflex/runtime/error.hpp"

namespace gflex {

/// How a pseudo-gradient travels on the wire. (Values match schemas/update.capnp.)
enum class compression : uint8_t { fp32 = 0, int8 = 1 };

template <>
std::span<const enum_name<compression>> enum_names<compression>() noexcept;

/// The block size of int8 updates unless one is asked for.
inline constexpr uint32_t default_update_block_size = 256;

/// Largest block size an int8 update may use; a decoder rejects larger ones.
inline constexpr uint32_t max_update_block_size = uint32_t{1} << 20;

/// Most values one update can carry with each compression: as many as a model may have
/// (2^28; fp32 values beyond one Cap'n Proto Data field's 2^29 - 1 bytes go in pieces), and for
/// int8 what one Data field holds.
inline constexpr uint64_t max_update_count_fp32 = uint64_t{1} << 28;
inline constexpr uint64_t max_update_count_int8 = (uint64_t{1} << 29) - 1;

/// Encodes an update. For int8, values are quantised per block of `block_size` (default 256)
/// with scale = max|x|/127 (a zero block has scale 0), q = round(x/scale) clamped to [-127,127].
/// Error feedback: if `residual` is non-null it must have delta.size() elements (a zero-filled
/// vector on first use); the quantised input is delta + residual and afterwards residual holds
/// (delta + residual) - dequantised, so what the quantiser drops is carried into the next update.
/// For fp32, the values sent are delta + residual and residual (if given) is zeroed after use,
/// so switching from int8 to fp32 flushes what int8 carried. Non-finite input, a block size
/// outside [1, max_update_block_size] and more values than the compression's
/// max_update_count_* are caller bugs (GFLEX_CHECK).
std::vector<uint8_t> encode_update(std::span<const float> delta, compression c,
                                   std::vector<float>* residual = nullptr,
                                   uint32_t block_size = default_update_block_size);

/// Encodes an int8 update already quantised by encode_update's rule (where the values were
/// computed: a GPU quantises its update before it crosses to the host): `q` holds the values,
/// `scales` one per block of `block_size`. The bytes are those encode_update gives for the
/// same quantisation. Wrong counts, a non-finite or negative scale, a value of -128 and a
/// block size outside [1, max_update_block_size] are caller bugs (GFLEX_CHECK).
std::vector<uint8_t> encode_quantized_update(std::span<const int8_t> q,
                                             std::span<const float> scales,
                                             uint32_t block_size = default_update_block_size);

/// Decodes an update into floats. `expected_count` is what the receiver expects; a different
/// count is errc::shape_mismatch ("update has N values, expected M"). Malformed bytes
/// (truncated, trailing bytes, bad enum, sizes inconsistent with count/blockSize, block_size 0 or
/// > 1<<20, count above `max_count`) are errc::malformed_message; non-finite scales or values are
/// errc::non_finite naming the first bad index. Never crashes, never allocates more than the
/// limits allow before validating sizes.
expected<std::vector<float>> decode_update(std::span<const uint8_t> bytes, uint64_t expected_count,
                                           uint64_t max_count = uint64_t{1} << 28);

class packed_update;

/// Decodes an update into its packed form (packed_update below), with decode_update's checks
/// and errors (every value it can yield is finite).
expected<packed_update> decode_packed_update(std::span<const uint8_t> bytes,
                                             uint64_t expected_count,
                                             uint64_t max_count = uint64_t{1} << 28);

/// A decoded update kept in its wire form: fp32 values, or int8 values with one scale per
/// block. A core holds a round's int8 updates of a large model at a quarter of their float
/// size and reads them a range of coordinates at a time; the floats read are exactly
/// decode_update's.
class packed_update {
 public:
  packed_update() = default;

  /// How many values it holds.
  uint64_t size() const noexcept { return count_; }
  /// Bytes it holds in memory.
  uint64_t memory_bytes() const noexcept;
  /// Values [begin, begin + out.size()) into `out`; the range must lie inside (GFLEX_CHECK).
  void read(uint64_t begin, std::span<float> out) const;
  /// All values as floats (an fp32 update's are moved out, not copied).
  std::vector<float> unpack() &&;
  std::vector<float> unpack() const&;
  /// Lets its memory go.
  void clear() noexcept;

 private:
  friend expected<packed_update> decode_packed_update(std::span<const uint8_t>, uint64_t, uint64_t);
  compression compression_ = compression::fp32;
  uint64_t count_ = 0;
  uint32_t block_size_ = 0;
  std::vector<float> values_;  // fp32
  std::vector<int8_t> q_;      // int8: the quantised values
  std::vector<float> scales_;  // int8: one per block
};

/// A short, stable name for a compression ("int8").
const char* to_string(compression c) noexcept;

/// The compression named `name` ("fp32" or "int8"); anything else is errc::invalid_argument.
expected<compression> parse_compression(std::string_view name);

}  // namespace gflex
