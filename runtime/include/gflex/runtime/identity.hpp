#pragma once
/// @file
/// A node's identity: an Ed25519 key pair (libsodium), made at the node's first start and
/// kept in its data directory with mode 0600. The core knows a node by its public key: the
/// hello is signed with it, and so is every result, over (assignment id, BLAKE2b-256 of the
/// update), so that nobody can claim another node's name or work.

#include <array>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gflex/runtime/error.hpp"

namespace gflex {

inline constexpr size_t public_key_bytes = 32;
inline constexpr size_t signature_bytes = 64;

class node_identity {
 public:
  /// Reads the key in `file`, or makes one and writes it (mode 0600) if there is none. A key
  /// file that others may read, or that is not a key, is an error naming the file:
  /// errc::io_error only where trying again may work (a failed read, a descriptor limit);
  /// a file of the wrong kind, owner or mode is errc::invalid_argument, and one of the wrong
  /// size errc::bad_format, which stay until someone fixes the file.
  static expected<node_identity> load_or_create(const std::filesystem::path& file);

  /// A fresh key pair held in memory only (embedded nodes, tests).
  static node_identity generate();

  const std::vector<uint8_t>& public_key() const { return public_; }

  /// The detached signature of `message`.
  std::vector<uint8_t> sign(std::span<const uint8_t> message) const;

 private:
  std::vector<uint8_t> public_;
  std::array<uint8_t, 64> secret_{};
};

/// Whether `signature` is `public_key`'s signature of `message` (false for malformed sizes).
bool verify_signature(std::span<const uint8_t> public_key, std::span<const uint8_t> message,
                      std::span<const uint8_t> signature);

/// What a node signs when it joins: "gflex-hello", the protocol version and its name.
std::vector<uint8_t> hello_message(uint32_t protocol, std::string_view name);

/// What a worker signs for a result: "gflex-result", the assignment id and the update's
/// BLAKE2b-256 digest.
std::vector<uint8_t> result_message(uint64_t assignment_id, std::span<const uint8_t> update);

/// A public key in hex (64 characters).
std::string key_hex(std::span<const uint8_t> public_key);

}  // namespace gflex
