#include "access.hpp"

#include <sodium.h>

#include <algorithm>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "json_fields.hpp"

namespace gflex {

namespace {

std::string random_secret(std::string_view prefix) {
  if (sodium_init() < 0) std::abort();
  uint8_t bytes[32];
  randombytes_buf(bytes, sizeof bytes);
  char hex[65];
  sodium_bin2hex(hex, sizeof hex, bytes, sizeof bytes);
  std::string out(prefix);
  out.append(hex, 64);
  return out;
}

bool has_secret_shape(std::string_view text, std::string_view prefix) {
  if (text.size() != prefix.size() + 64 || !text.starts_with(prefix)) return false;
  return std::all_of(text.begin() + static_cast<std::ptrdiff_t>(prefix.size()), text.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// Addresses remembered at most; past it the oldest-looking entries are dropped, so that a
// flood of addresses cannot grow the core's memory without bound.
constexpr size_t max_addresses = 65536;

}  // namespace

std::string new_api_key() {
  return random_secret("gfk_");
}

std::string new_join_token() {
  return random_secret("gft_");
}

std::string secret_digest(std::string_view secret) {
  if (sodium_init() < 0) std::abort();
  uint8_t digest[32];
  crypto_generichash(digest, sizeof digest, reinterpret_cast<const uint8_t*>(secret.data()),
                     secret.size(), nullptr, 0);
  char hex[65];
  sodium_bin2hex(hex, sizeof hex, digest, sizeof digest);
  return std::string(hex, 64);
}

bool looks_like_api_key(std::string_view text) {
  return has_secret_shape(text, "gfk_");
}

bool looks_like_join_token(std::string_view text) {
  return has_secret_shape(text, "gft_");
}

bool same_secret(std::string_view a, std::string_view b) {
  return a.size() == b.size() && sodium_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string api_key_store_key(std::string_view digest) {
  std::string k = "apikey/";
  k.append(digest);
  return k;
}

std::string token_store_key(std::string_view digest) {
  std::string k = "token/";
  k.append(digest);
  return k;
}

std::string banned_key_store_key(std::string_view key_hex) {
  std::string k = "banned/";
  k.append(key_hex);
  return k;
}

std::vector<uint8_t> encode_token_record(const join_token_record& r) {
  nlohmann::json j{{"id", r.id},
                   {"tier", to_string(r.tier)},
                   {"created", r.created_unix},
                   {"expires", r.expires_unix},
                   {"revoked", r.revoked},
                   {"joins", r.joins},
                   {"uses", r.uses},
                   {"keys", r.keys},
                   {"closed", r.closed}};
  auto text = j.dump();
  return {text.begin(), text.end()};
}

expected<join_token_record> decode_token_record(std::span<const uint8_t> bytes) {
  try {
    auto j = nlohmann::json::parse(bytes.begin(), bytes.end());
    join_token_record r;
    r.id = j.at("id").get<std::string>();
    const auto tier = j.at("tier").get<std::string>();
    const auto known = parse_node_tier(tier);
    if (!known) return error(errc::malformed_message, "token record: unknown tier '" + tier + "'");
    r.tier = *known;
    r.created_unix = integer_at<int64_t>(j, "created");
    r.expires_unix = integer_at<int64_t>(j, "expires");
    r.revoked = j.at("revoked").get<bool>();
    r.joins = integer_at<uint64_t>(j, "joins");
    // Records written before tokens had use limits admit any number of keys.
    if (j.contains("uses")) r.uses = integer_at<uint64_t>(j, "uses");
    if (j.contains("keys")) r.keys = j.at("keys").get<std::vector<std::string>>();
    if (j.contains("closed")) r.closed = j.at("closed").get<std::string>();
    return r;
  } catch (const std::exception& e) {
    return error(errc::malformed_message, std::string("token record: ") + e.what());
  }
}

expected<void> admits(const join_token_record& r, std::string_view tier, std::string_view key,
                      int64_t now_unix) {
  if (r.revoked) return error(errc::permission_denied, "join token " + r.id + " was revoked");
  if (tier != to_string(r.tier)) {
    std::string m = "join token ";
    m.append(r.id).append(" admits the ").append(to_string(r.tier)).append(" tier, not the ");
    m.append(tier).append(" tier");
    return error(errc::permission_denied, m);
  }
  const bool bound = std::find(r.keys.begin(), r.keys.end(), key) != r.keys.end();
  if (!bound && r.expires_unix != 0 && now_unix >= r.expires_unix)
    return error(errc::permission_denied, "join token " + r.id +
                                              " has expired (it admits only the node keys it bound "
                                              "before)");
  if (!bound && !r.closed.empty())
    return error(errc::permission_denied,
                 "join token " + r.id + " admits no new node keys: " + r.closed);
  if (!bound && r.uses != 0 && r.keys.size() >= r.uses)
    return error(errc::permission_denied, "join token " + r.id + " is used up: it admits " +
                                              std::to_string(r.uses) +
                                              " node key(s), and other keys have used it");
  return {};
}

void join_failures::age(const std::string& address, clock::time_point now) {
  auto it = failures_.find(address);
  if (it == failures_.end()) return;
  auto& times = it->second;
  times.erase(std::remove_if(times.begin(), times.end(),
                             [&](clock::time_point t) { return now - t > window; }),
              times.end());
  if (times.empty()) failures_.erase(it);
}

void join_failures::record(const std::string& address, clock::time_point now) {
  ++total_;
  if (failures_.size() >= max_addresses && failures_.find(address) == failures_.end()) {
    // Full: age everything out of the window, then, if that freed too little, forget an
    // eighth of the addresses, so that the sweep (linear) runs once per many failures.
    for (auto it = failures_.begin(); it != failures_.end();) {
      auto next = std::next(it);
      age(it->first, now);
      it = next;
    }
    while (failures_.size() > max_addresses - max_addresses / 8) failures_.erase(failures_.begin());
  }
  failures_[address].push_back(now);
}

int join_failures::count(const std::string& address, clock::time_point now) {
  age(address, now);
  auto it = failures_.find(address);
  return it == failures_.end() ? 0 : static_cast<int>(it->second.size());
}

std::chrono::milliseconds join_failures::delay(const std::string& address, clock::time_point now) {
  int over = count(address, now) - free_failures;
  if (over < 0) return std::chrono::milliseconds(0);
  auto d = std::chrono::milliseconds(250) * (int64_t{1} << std::min(over, 16));
  return std::min<std::chrono::milliseconds>(d, max_delay);
}

}  // namespace gflex
