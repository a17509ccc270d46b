#pragma once
/// @file
/// Encoding of tensors with the Cap'n Proto schema schemas/tensor.capnp.

#include <cstdint>
#include <span>
#include <vector>

#include "gflex/runtime/error.hpp"
#include "gflex/runtime/tensor.hpp"

namespace gflex {

/// The largest tensor message decoded by default: 2^28 four-byte values (a model's parameters
/// at the bound the planner allows) with room for the message's header and shape.
inline constexpr size_t max_tensor_message_bytes = (size_t{1} << 30) + (size_t{1} << 16);

/// Bounds applied when decoding bytes that came from outside the process.
struct decode_limits {
  size_t max_bytes = max_tensor_message_bytes;  ///< Largest encoded message accepted.
  size_t max_rank = 8;                          ///< Most dimensions a tensor may have.
  int64_t max_elements = int64_t{1} << 28;
};

/// How a tensor's element bytes travel.
enum class tensor_packing {
  raw,   ///< As they are in memory.
  zstd,  ///< Compressed with zstd (byte planes first for wider elements) when that is smaller.
};

/// Encodes a host tensor as a single-segment Cap'n Proto message.
std::vector<uint8_t> encode_tensor(const tensor& t, tensor_packing packing = tensor_packing::raw);

/// Encodes `values` as a 1-D f32 tensor, from where they are (no tensor copy first).
std::vector<uint8_t> encode_vector(std::span<const float> values,
                                   tensor_packing packing = tensor_packing::raw);

/// The tensor message `encoded` written again with `packing` (the bytes as they are when they
/// do not decode).
std::vector<uint8_t> repack_tensor(std::span<const uint8_t> encoded, tensor_packing packing);

/// Decodes bytes made by encode_tensor into a new host tensor. Truncated, malformed or
/// inconsistent input (shape disagreeing with the data size, unknown dtype, limits exceeded)
/// gives errc::malformed_message with a message that says what was wrong; it never crashes.
expected<tensor> decode_tensor(std::span<const uint8_t> bytes, const decode_limits& limits = {});

}  // namespace gflex
