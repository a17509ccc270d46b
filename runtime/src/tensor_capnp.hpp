#pragma once
/// @file
/// Tensor <-> Cap'n Proto builder/reader, shared by every schema that embeds a Tensor.
/// Private to runtime/src.

#include "gflex/runtime/tensor.hpp"
#include "gflex/runtime/tensor_codec.hpp"
#include "gflex/schema/tensor.capnp.h"

namespace gflex::detail {

/// Fills `out` with host tensor `t`.
void write_tensor(schema::Tensor::Builder out, const tensor& t);

/// A new host tensor from `in`, validated against `limits` (rank, element count, dtype, and
/// data size equal to product(shape) * sizeof(dtype)); errors are errc::malformed_message.
expected<tensor> read_tensor(schema::Tensor::Reader in, const decode_limits& limits);

}  // namespace gflex::detail
