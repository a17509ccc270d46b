#pragma once
/// @file
/// Content addressing: names derived from bytes with BLAKE2b-256 (libsodium's
/// crypto_generichash), so that equal contents get equal names and a name can be checked
/// against what it names.

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace gflex {

/// Hex BLAKE2b-256 digest of bytes (64 lowercase hex characters).
std::string digest_hex(std::span<const uint8_t> bytes);

/// Whether text is a well-formed digest (64 lowercase hex characters). Names that come from the
/// network pass this before they touch the file system, so none can hold '/', '.' or a NUL.
bool is_digest_hex(std::string_view text) noexcept;

}  // namespace gflex
