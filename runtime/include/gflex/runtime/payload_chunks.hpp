#pragma once
/// @file
/// Payloads larger than one network message (a model's parameters, a pseudo-gradient, an
/// exported checkpoint) travel as content-addressed chunks: consecutive pieces of at most
/// `chunk_bytes` bytes, each named by its BLAKE2b-256 digest (as data shards are). The sender
/// announces the list of digests; the receiver asks for the pieces it lacks, checks each
/// against its name, and puts them in place. CAF caps a message at 128 MiB, so without this
/// a model was limited to about 33 million fp32 parameters.

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "gflex/runtime/error.hpp"

namespace gflex {

/// The chunk sizes a payload may be cut in: [1 KiB, 64 MiB].
inline constexpr uint64_t min_chunk_bytes = uint64_t{1} << 10;
inline constexpr uint64_t max_chunk_bytes = uint64_t{64} << 20;

/// How many chunks a payload of `total` bytes has (at least one, even when empty).
uint64_t chunk_count(uint64_t total, uint64_t chunk_bytes) noexcept;

/// The byte range of chunk `index`.
struct chunk_range {
  uint64_t offset = 0;
  uint64_t size = 0;
};
chunk_range chunk_at(uint64_t total, uint64_t chunk_bytes, uint64_t index) noexcept;

/// The digests of the chunks of `bytes`, in order.
std::vector<std::string> chunk_digests(std::span<const uint8_t> bytes, uint64_t chunk_bytes);

/// Reassembles a payload from its chunks, which may arrive in any order. Every piece is
/// checked (size and digest) before it is copied in; a wrong one changes nothing.
class chunk_assembler {
 public:
  /// Refuses an announcement that cannot be right: a total over `max_total`, a chunk size
  /// outside [1 KiB, 64 MiB], a digest count that does not match the total, or a malformed
  /// digest. Memory for the whole payload is reserved only after these checks, and used only
  /// as chunks are put in place (held()).
  static expected<chunk_assembler> make(uint64_t total, uint64_t chunk_bytes,
                                        std::vector<std::string> digests, uint64_t max_total);

  /// Puts chunk `index` in place.
  expected<void> add(uint64_t index, std::span<const uint8_t> piece);

  bool has(uint64_t index) const noexcept { return index < have_.size() && have_[index]; }
  uint64_t missing() const noexcept { return missing_; }
  bool complete() const noexcept { return missing_ == 0; }
  uint64_t count() const noexcept { return digests_.size(); }
  /// Bytes of the buffer in use: up to the end of the furthest chunk in place (0 before any).
  uint64_t held() const noexcept { return bytes_.size(); }
  const std::vector<std::string>& digests() const noexcept { return digests_; }

  /// The payload, once complete (the assembler is empty afterwards).
  std::vector<uint8_t> take();

 private:
  chunk_assembler() = default;
  uint64_t total_ = 0;
  uint64_t chunk_bytes_ = 0;
  std::vector<std::string> digests_;
  std::vector<bool> have_;
  uint64_t missing_ = 0;
  std::vector<uint8_t> bytes_;
};

}  // namespace gflex
