#pragma once
/// @file
/// Checkpoints: a workload's name, a progress counter and named parameter tensors, encoded
/// with schemas/checkpoint.capnp. `gflex fetch` writes one; `gflex eval` reads it.

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "gflex/runtime/error.hpp"
#include "gflex/runtime/tensor.hpp"
#include "gflex/runtime/tensor_codec.hpp"

namespace gflex {

/// A named tensor of a checkpoint.
struct named_tensor {
  std::string name;
  tensor value;
};

/// A decoded checkpoint.
struct checkpoint {
  std::string workload;
  /// A user-defined model's declaration and data set (empty for a built-in workload).
  std::string model;
  std::string data_set;
  uint64_t step = 0;
  std::vector<named_tensor> tensors;

  /// The tensor called `name`, or nullptr.
  const tensor* find(std::string_view name) const;
};

std::vector<uint8_t> encode_checkpoint(const checkpoint& c);

/// A checkpoint whose tensors are f32 values the caller owns, encoded without copying them
/// into tensors first (the core writes a large model's checkpoint every round, and exports
/// a model's layers from its flat parameters). It decodes as a checkpoint like any other.
struct checkpoint_view {
  std::string workload;
  std::string model;
  std::string data_set;
  uint64_t step = 0;
  std::vector<std::pair<std::string, std::span<const float>>> vectors;
  /// The shape of each vector, where given (its product must be the vector's size); a vector
  /// without one is 1-D.
  std::vector<shape_t> shapes;
};
std::vector<uint8_t> encode_checkpoint(const checkpoint_view& c);

/// The most tensors a checkpoint holds: a model's blocks (up to 512 layers of up to 4 blocks,
/// an attention's with its biases) and the vectors beside them, with room to spare.
inline constexpr size_t max_checkpoint_tensors = 4096;

/// Bounds for a checkpoint: several tensors of up to a model's 2^28 values each (parameters
/// and optimizer state), 4 GiB in all.
inline constexpr decode_limits checkpoint_limits{size_t{1} << 32, 8, int64_t{1} << 28};

/// Decodes a checkpoint; malformed input is errc::malformed_message (never a crash).
expected<checkpoint> decode_checkpoint(std::span<const uint8_t> bytes,
                                       const decode_limits& limits = checkpoint_limits);

/// Whether a file written is synced to disk before it takes its name. A cache whose files
/// are checked against their digest when read needs not be (a node's chunk cache: a sync per
/// chunk made fetching a large model's parameters several seconds slower a round).
enum class file_sync : uint8_t { yes, no };

/// Writes bytes to `file` atomically (a temporary file, synced unless `sync` says no, renamed
/// over it), readable by its owner alone (mode 0600) unless it replaces a file, whose mode
/// it keeps.
expected<void> write_file_atomically(const std::filesystem::path& file,
                                     std::span<const uint8_t> bytes,
                                     file_sync sync = file_sync::yes);

/// Reads a whole file; errc::io_error naming it when it cannot.
expected<std::vector<uint8_t>> read_file(const std::filesystem::path& file,
                                         size_t max_bytes = size_t{1} << 32);

}  // namespace gflex
