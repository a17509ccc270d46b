#pragma once
/// @file
/// gflex::store: the embedded key-value store (LMDB) that keeps what must survive a restart.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gflex/runtime/error.hpp"

namespace gflex {

/// One write in a batch: a put, or an erase when `value` is empty.
struct store_write {
  std::string key;
  std::optional<std::vector<uint8_t>> value;
};

/// What the core keeps its state in: one key space of byte values with atomic batches. LMDB
/// in the data directory (`store`) is the one-machine default; a core of several servers
/// keeps it in etcd (`replicated_store`).
class key_value_store {
 public:
  virtual ~key_value_store() = default;

  /// Applies all writes atomically.
  virtual expected<void> commit(std::span<const store_write> writes) = 0;

  /// Writes one key.
  expected<void> put(std::string_view key, std::span<const uint8_t> value);

  /// The value under `key`, or nullopt if there is none.
  virtual expected<std::optional<std::vector<uint8_t>>> get(std::string_view key) const = 0;

  /// Calls `fn` for each key starting with `prefix`, in key order, from one consistent view;
  /// `fn` returns false to stop early.
  virtual expected<void> scan(
      std::string_view prefix,
      const std::function<bool(std::string_view key, std::span<const uint8_t> value)>& fn)
      const = 0;

  /// As `scan`, for the keys that also end with `suffix`: a reader of job records need not
  /// read every checkpoint beside them (neither a replicated store nor LMDB's reads the
  /// others' values).
  virtual expected<void> scan_ending(
      std::string_view prefix, std::string_view suffix,
      const std::function<bool(std::string_view key, std::span<const uint8_t> value)>& fn) const;

  /// The keys starting with `prefix`, in key order, their values unread: a value that
  /// cannot be read (a damaged file) does not fail it, as it fails `scan`.
  virtual expected<std::vector<std::string>> keys(std::string_view prefix) const = 0;

  /// The bytes the store uses (its high-water mark where it has one).
  virtual int64_t used_bytes() const = 0;
};

/// An LMDB environment in a directory, with one key space. Every `commit` is one LMDB write
/// transaction: all of its writes become durable together or none does, across crashes.
/// LMDB requires a write transaction to stay on the thread that began it; each call here
/// begins and ends its transaction, so a store may be used from any one thread at a time.
class store final : public key_value_store {
 public:
  store(store&&) noexcept;
  store& operator=(store&&) noexcept;
  ~store();

  /// Opens (creating if needed) the store in `dir`; `map_bytes` bounds its size. The bound is
  /// address space, not disk: the file grows with what is written. 64 GiB leaves room for the
  /// checkpoints of large models (a 150-million-parameter job's is 1.2 GB, and LMDB keeps the
  /// old copy until the new one is committed). errc::store_error, naming data.mdb, where a page
  /// its records use lies past its end (cut short: LMDB would fault on it; found by reading
  /// every such page, as the file's size alone cannot tell), or where it is empty or missing
  /// while its lock.mdb or blobs/ show that a store was there (LMDB would start it empty).
  static expected<store> open(const std::filesystem::path& dir, size_t map_bytes = size_t{1} << 36);

  /// Applies all writes in one LMDB write transaction.
  expected<void> commit(std::span<const store_write> writes) override;

  expected<std::optional<std::vector<uint8_t>>> get(std::string_view key) const override;

  /// Scans within one read transaction.
  expected<void> scan(std::string_view prefix,
                      const std::function<bool(std::string_view key,
                                               std::span<const uint8_t> value)>& fn) const override;

  /// As `scan`, skipping the other keys before their values are read (a large value lives in
  /// a file under blobs/: a scan of job records reads no checkpoint's).
  expected<void> scan_ending(
      std::string_view prefix, std::string_view suffix,
      const std::function<bool(std::string_view key, std::span<const uint8_t> value)>& fn)
      const override;

  expected<std::vector<std::string>> keys(std::string_view prefix) const override;

  /// The bytes the store uses on disk: its pages in data.mdb (their high-water mark) and the
  /// large values' files under blobs/ (a checkpoint's, a data set's: most of it, where jobs
  /// are large).
  int64_t used_bytes() const override;

 private:
  struct impl;
  explicit store(std::unique_ptr<impl> p);
  /// Removes files under blobs/ that no key names (left by a crash); called by open(). Fails
  /// only where data.mdb is cut short (see scan_raw).
  expected<void> sweep_blobs();
  /// Calls `fn` with every stored value as LMDB holds it (references unresolved), reading
  /// every page of both of LMDB's trees (the records' and the free pages'); false when the
  /// store could not be read to its end, errc::store_error where a page lies past the end of
  /// data.mdb (the fault is caught: SIGBUS is handled for the walk only, on this thread only).
  expected<bool> scan_raw(const std::function<void(std::span<const uint8_t>)>& fn) const;
  std::unique_ptr<impl> impl_;
};

}  // namespace gflex
