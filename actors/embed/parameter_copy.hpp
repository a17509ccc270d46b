#pragma once
/// @file
/// A job's exported model (checkpoint bytes) copied into a caller's flat buffer, block after
/// block in the model's layout order: what client::fetch_parameters does, with the round the
/// parameters are of (the checkpoint's step), which a pipeline's train stage pairs with the
/// job's status.

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "gflex/runtime/error.hpp"

namespace gflex::detail {

/// Copies the checkpoint's f32 tensors into `out`, which must hold exactly as many values;
/// appends their names to `names` when given. Returns the checkpoint's step (its round).
expected<int64_t> copy_parameters(const std::vector<uint8_t>& checkpoint_bytes,
                                  const std::string& job_id, std::span<float> out,
                                  std::vector<std::string>* names);

}  // namespace gflex::detail
