#pragma once
/// @file
/// gflex::etcd_client: the few calls of etcd's v3 API a replicated core needs (leases, ranges,
/// transactions), spoken through etcd's JSON gateway (POST /v3/..., keys and values in
/// base64). Debian has no C++ etcd client, and the gateway is part of every etcd server, so
/// this needs nothing beyond cpp-httplib. Not thread-safe: each thread keeps its own client.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gflex/runtime/error.hpp"

namespace gflex {

/// One key as etcd holds it.
struct etcd_kv {
  std::string key;
  std::vector<uint8_t> value;
  int64_t create_revision = 0;
  int64_t mod_revision = 0;
  int64_t lease = 0;
};

/// A comparison of a transaction; etcd's EQUAL only (all a fence or a campaign needs).
struct etcd_compare {
  enum class target { create_revision, mod_revision, value, lease };
  std::string key;
  target what = target::mod_revision;
  int64_t revision = 0;  ///< for create_revision and mod_revision
  std::string value;     ///< for value
  int64_t lease = 0;     ///< for lease: the key's lease (0: a key with none, or no key)
};

/// A write of a transaction: a put (with `lease`, 0 for none), or a delete when `value` is
/// empty.
struct etcd_op {
  std::string key;
  std::optional<std::vector<uint8_t>> value;
  int64_t lease = 0;
};

struct etcd_txn_result {
  bool succeeded = false;
  int64_t revision = 0;  ///< the store's revision after the transaction
};

/// The client's requests fail with
/// - errc::store_error where etcd refused the request outright (an HTTP 4xx answer other
///   than 408, as "mvcc: database space exceeded" while its space quota is full), and no
///   member asked before may have applied it: nothing of it was applied, and it never will be;
/// - errc::unavailable where no member answered, or where one that may have applied it did
///   not answer in time or answered 5xx or 408: a write may have been applied, or may be
///   later;
/// - errc::malformed_message where an answer could not be read.
class etcd_client {
 public:
  /// A client of the members at `endpoints` ("host:port,host:port,..."); nothing is
  /// contacted yet. A request that cannot reach one member, or that one does not answer
  /// within `read_timeout`, is sent to the next.
  static expected<etcd_client> make(
      std::string_view endpoints, std::chrono::milliseconds read_timeout = std::chrono::seconds(5));

  etcd_client(etcd_client&&) noexcept;
  etcd_client& operator=(etcd_client&&) noexcept;
  ~etcd_client();

  /// A new lease of `ttl_s` seconds; its id.
  expected<int64_t> grant_lease(int64_t ttl_s);
  /// Renews a lease; the seconds it has left, 0 when etcd no longer knows it (expired).
  expected<int64_t> keep_alive(int64_t lease);
  /// Ends a lease now, deleting every key attached to it.
  expected<void> revoke(int64_t lease);
  /// The seconds a lease has left unless renewed; 0 when etcd no longer knows it (expired).
  expected<int64_t> time_to_live(int64_t lease);

  /// If every comparison holds, applies `success` (else `failure`), atomically.
  expected<etcd_txn_result> txn(std::span<const etcd_compare> compare,
                                std::span<const etcd_op> success,
                                std::span<const etcd_op> failure = {});

  /// The key `key` (or every key starting with it when `prefix`), as of `revision` (0: now),
  /// in key order.
  expected<std::vector<etcd_kv>> range(std::string_view key, bool prefix, int64_t revision = 0);

  /// The store's current revision.
  expected<int64_t> revision();

  /// Forgets the values that were replaced or deleted before `revision` (etcd keeps every
  /// revision until told so, and refuses writes once its space quota is full).
  expected<void> compact(int64_t revision);

 private:
  struct impl;
  explicit etcd_client(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

/// The first key after every key that starts with `prefix` (etcd's range_end for a prefix).
std::string etcd_prefix_end(std::string_view prefix);

}  // namespace gflex
