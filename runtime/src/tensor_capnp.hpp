#pragma once
/// @file
/// Tensor <-> Cap'n Proto builder/reader, shared by every schema that embeds a Tensor.
/// Private to runtime/src.

#include <span>

#include "gflex/runtime/tensor.hpp"
#include "gflex/runtime/tensor_codec.hpp"
#include "gflex/schema/tensor.capnp.h"

namespace gflex::detail {

/// Fills `out` with host tensor `t`.
void write_tensor(schema::Tensor::Builder out, const tensor& t,
                  tensor_packing packing = tensor_packing::raw);

/// Fills `out` with a 1-D f32 tensor of `values` (memory the caller owns, not copied first).
/// f32 values as a tensor of `shape` (1-D when null; its product must be values' size).
void write_vector(schema::Tensor::Builder out, std::span<const float> values,
                  const shape_t* shape = nullptr, tensor_packing packing = tensor_packing::raw);

/// Words a message needs for a tensor of `bytes` data bytes and `rank` dimensions, at most.
inline size_t tensor_words(size_t bytes, size_t rank) {
  return 16 + rank + (bytes + 7) / 8 + bytes / (size_t{1} << 28) + 2;
}

/// A new host tensor from `in`, validated against `limits` (rank, element count, dtype, and
/// data size equal to product(shape) * sizeof(dtype)); errors are errc::malformed_message.
expected<tensor> read_tensor(schema::Tensor::Reader in, const decode_limits& limits);

}  // namespace gflex::detail
