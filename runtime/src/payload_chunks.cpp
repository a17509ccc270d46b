#include "gflex/runtime/payload_chunks.hpp"

#include <algorithm>
#include <cstring>

#include "gflex/runtime/digest.hpp"

namespace gflex {

uint64_t chunk_count(uint64_t total, uint64_t chunk_bytes) noexcept {
  if (chunk_bytes == 0) return 0;
  return std::max<uint64_t>(1, (total + chunk_bytes - 1) / chunk_bytes);
}

chunk_range chunk_at(uint64_t total, uint64_t chunk_bytes, uint64_t index) noexcept {
  const uint64_t offset = std::min(total, index * chunk_bytes);
  return {offset, std::min(chunk_bytes, total - offset)};
}

std::vector<std::string> chunk_digests(std::span<const uint8_t> bytes, uint64_t chunk_bytes) {
  std::vector<std::string> out;
  const uint64_t n = chunk_count(bytes.size(), chunk_bytes);
  out.reserve(n);
  for (uint64_t i = 0; i < n; ++i) {
    auto r = chunk_at(bytes.size(), chunk_bytes, i);
    out.push_back(digest_hex(bytes.subspan(r.offset, r.size)));
  }
  return out;
}

expected<chunk_assembler> chunk_assembler::make(uint64_t total, uint64_t chunk_bytes,
                                                std::vector<std::string> digests,
                                                uint64_t max_total) {
  auto bad = [](const std::string& what) {
    return error(errc::malformed_message, "chunked payload: " + what);
  };
  if (total > max_total)
    return bad(std::to_string(total) + " bytes announced, at most " + std::to_string(max_total) +
               " expected");
  if (chunk_bytes < min_chunk_bytes || chunk_bytes > max_chunk_bytes)
    return bad("chunk size " + std::to_string(chunk_bytes) + " is outside [1 KiB, 64 MiB]");
  if (digests.size() != chunk_count(total, chunk_bytes))
    return bad(std::to_string(digests.size()) + " chunks named for " + std::to_string(total) +
               " bytes in chunks of " + std::to_string(chunk_bytes) + " (" +
               std::to_string(chunk_count(total, chunk_bytes)) + " expected)");
  for (const auto& d : digests)
    if (!is_digest_hex(d)) return bad("a chunk name is not a digest");
  chunk_assembler a;
  a.total_ = total;
  a.chunk_bytes_ = chunk_bytes;
  a.digests_ = std::move(digests);
  a.have_.assign(a.digests_.size(), false);
  a.missing_ = a.digests_.size();
  // Reserved, not filled: the buffer is used as chunks come. Zero-filled up front, an
  // announcement of a gigabyte that no chunk followed held a gigabyte of the node's memory
  // (per fetch), and the fill ran on the receiving actor's thread.
  a.bytes_.reserve(total);
  return a;
}

expected<void> chunk_assembler::add(uint64_t index, std::span<const uint8_t> piece) {
  if (index >= digests_.size())
    return error(errc::malformed_message, "chunked payload: no chunk " + std::to_string(index));
  const auto r = chunk_at(total_, chunk_bytes_, index);
  if (piece.size() != r.size)
    return error(errc::malformed_message, "chunked payload: chunk " + std::to_string(index) +
                                              " has " + std::to_string(piece.size()) + " bytes, " +
                                              std::to_string(r.size) + " expected");
  if (digest_hex(piece) != digests_[index])
    return error(errc::malformed_message,
                 "chunked payload: chunk " + std::to_string(index) + " does not match its digest");
  if (!have_[index]) {
    if (bytes_.size() < r.offset + r.size) bytes_.resize(r.offset + r.size);  // reserved: no move
    if (r.size > 0) std::memcpy(bytes_.data() + r.offset, piece.data(), r.size);
    have_[index] = true;
    missing_ -= 1;
  }
  return {};
}

std::vector<uint8_t> chunk_assembler::take() {
  have_.clear();
  digests_.clear();
  return std::move(bytes_);
}

}  // namespace gflex
