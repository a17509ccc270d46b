#include "gflex/runtime/digest.hpp"

#include <sodium.h>

#include "gflex/runtime/check.hpp"

namespace gflex {

namespace {

constexpr size_t digest_bytes = 32;
static_assert(digest_bytes >= crypto_generichash_BYTES_MIN &&
              digest_bytes <= crypto_generichash_BYTES_MAX);

/// Initialises libsodium once. A function-local static is initialised exactly once even when
/// several threads get here first, which is all sodium_init needs.
void ensure_sodium() {
  static const int status = sodium_init();
  // sodium_init returns 1 when already initialised (by another library), -1 on failure; after
  // a failure no libsodium function may be used, and nothing here can recover from that.
  GFLEX_CHECK(status >= 0, "sodium_init failed");
}

}  // namespace

std::string digest_hex(std::span<const uint8_t> bytes) {
  ensure_sodium();
  unsigned char hash[digest_bytes];
  // An empty span may have a null data(); hand libsodium a valid pointer regardless.
  static const unsigned char empty = 0;
  const unsigned char* in = bytes.empty() ? &empty : bytes.data();
  int rc = crypto_generichash(hash, sizeof hash, in, bytes.size(), nullptr, 0);
  GFLEX_CHECK(rc == 0, "crypto_generichash failed");
  char hex[2 * digest_bytes + 1];
  sodium_bin2hex(hex, sizeof hex, hash, sizeof hash);
  return std::string(hex, 2 * digest_bytes);
}

bool is_digest_hex(std::string_view text) noexcept {
  if (text.size() != 2 * digest_bytes) return false;
  for (char ch : text)
    if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f'))) return false;
  return true;
}

}  // namespace gflex
