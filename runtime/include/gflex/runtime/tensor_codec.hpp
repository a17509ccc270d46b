#pragma once
/// @file
/// Encoding of tensors with the Cap'n Proto schema schemas/tensor.capnp.

#include <cstdint>
#include <span>
#include <vector>

#include "gflex/runtime/error.hpp"
#include "gflex/runtime/tensor.hpp"

namespace gflex {

/// Bounds applied when decoding bytes that came from outside the process.
struct decode_limits {
  size_t max_bytes = size_t{1} << 30;  ///< Largest encoded message accepted.
  size_t max_rank = 8;                 ///< Most dimensions a tensor may have.
  int64_t max_elements = int64_t{1} << 28;
};

/// Encodes a host tensor as a single-segment Cap'n Proto message.
std::vector<uint8_t> encode_tensor(const tensor& t);

/// Encodes `values` as a 1-D f32 tensor, from where they are (no tensor copy first).
std::vector<uint8_t> encode_vector(std::span<const float> values);

/// Decodes bytes made by encode_tensor into a new host tensor. Truncated, malformed or
/// inconsistent input (shape disagreeing with the data size, unknown dtype, limits exceeded)
/// gives errc::malformed_message with a message that says what was wrong; it never crashes.
expected<tensor> decode_tensor(std::span<const uint8_t> bytes, const decode_limits& limits = {});

}  // namespace gflex
