#pragma once
/// @file
/// Who may do what on a core, free of CAF: API keys of accounts and of the operator, join
/// tokens of nodes, and the count of failed joins per address that slows guessing down.
/// The gatekeeper actor keeps these in LMDB; this file holds the rules and the encodings.
///
/// Secrets (API keys, tokens) are 256-bit random strings; the core stores only their
/// BLAKE2b-256 digests, so a copy of its LMDB file lets nobody in.

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gflex/accounts.hpp"
#include "gflex/runtime/error.hpp"

namespace gflex {

/// The principal a valid operator key authenticates as.
inline constexpr std::string_view operator_principal = "operator";

/// A fresh API key: "gfk_" and 64 hex digits.
std::string new_api_key();
/// A fresh join token: "gft_" and 64 hex digits.
std::string new_join_token();

/// The BLAKE2b-256 digest of a secret, in hex: what the store keeps.
std::string secret_digest(std::string_view secret);

/// Whether `text` has the shape of an API key ("gfk_" + 64 hex digits) or a join token
/// ("gft_" + 64 hex digits); checked before anything is looked up.
bool looks_like_api_key(std::string_view text);
bool looks_like_join_token(std::string_view text);

/// Constant-time equality of two secrets.
bool same_secret(std::string_view a, std::string_view b);

/// Store keys: the account of an API key, and a join token's record.
std::string api_key_store_key(std::string_view digest);
std::string token_store_key(std::string_view digest);

std::vector<uint8_t> encode_token_record(const join_token_record& r);
/// Refuses malformed records (bad JSON, missing or mistyped fields, an unknown tier).
expected<join_token_record> decode_token_record(std::span<const uint8_t> bytes);

/// Whether a token with record `r` admits a node with key `key` (hex) asking for `tier` at
/// `now_unix`: unrevoked, of that tier, and either already bound to `key` or unexpired and
/// open with a use left. Expiry ends the token's window for new keys: the nodes it admitted
/// rejoin with it after (a core restart or a lost link makes every node rejoin at once, and
/// an expired token turned the whole tier away then, each node exiting); revoking a token
/// shuts them out. The error says why not, in words a node's operator can act on.
expected<void> admits(const join_token_record& r, std::string_view tier, std::string_view key,
                      int64_t now_unix);

/// Store key of a banned node key (its value: the name it was flagged under).
std::string banned_key_store_key(std::string_view key_hex);

/// Failed joins per address, to slow guessing down: after `free_failures` failures within
/// `window`, every further hello from that address is answered only after a delay that
/// doubles with each failure (from 250 ms, at most `max_delay`). A success does not clear
/// the count (a guesser could interleave a valid token); old failures age out of the window.
/// The gatekeeper counts the failures of a node key that joined before the same way, in a
/// record of its own, and slows that key's hellos by them instead of their address's.
class join_failures {
 public:
  using clock = std::chrono::steady_clock;
  static constexpr int free_failures = 5;
  static constexpr auto window = std::chrono::minutes(10);
  static constexpr auto max_delay = std::chrono::seconds(30);

  /// Records a failed join from `address`.
  void record(const std::string& address, clock::time_point now);
  /// How long to hold the answer to the next hello from `address`.
  std::chrono::milliseconds delay(const std::string& address, clock::time_point now);
  /// Failures from `address` within the window (after ageing out old ones).
  int count(const std::string& address, clock::time_point now);
  /// All failures recorded since the core started.
  uint64_t total() const { return total_; }

 private:
  void age(const std::string& address, clock::time_point now);
  std::map<std::string, std::vector<clock::time_point>> failures_;
  uint64_t total_ = 0;
};

}  // namespace gflex
