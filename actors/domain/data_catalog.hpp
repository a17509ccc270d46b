#pragma once
/// @file
/// The core's data sets: each workload's data loaded once, its training split cut into
/// content-addressed shards. Shared by the job actors (test split, shard list) and the data
/// server (chunk bytes); thread-safe, loaded lazily on first use.

#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "gflex/data_sets.hpp"
#include "gflex/kernels/workload.hpp"
#include "gflex/runtime/dataset.hpp"
#include "gflex/runtime/shard.hpp"
#include "user_data.hpp"

namespace gflex {

/// One workload's data as the core serves it.
struct served_data {
  dataset test;
  std::vector<shard_info> shards;
  int64_t train_samples = 0;
  /// Its shards' bytes: served while this is held (by the catalog, or by a job training on
  /// it), freed after.
  std::vector<std::shared_ptr<const std::vector<uint8_t>>> held_chunks;
};

/// A round hands each of its `workers` assignments a different shard, so a job needs at
/// least as many shards as workers, or its rounds could never fill: an error with the
/// numbers otherwise.
expected<void> check_workers_fit(int64_t workers, size_t shards);

class data_catalog {
 public:
  /// Samples per shard: about 2.4 MB per Fashion-MNIST chunk, below the size at which one
  /// BASP message should be split.
  explicit data_catalog(int64_t shard_samples = default_shard_samples)
      : shard_samples_(shard_samples) {}

  /// The data of workload `w`, loading and sharding it on first use (blocking: call from a
  /// detached actor). The load runs without the catalog's lock, so chunk() answers
  /// meanwhile. Errors of loading are returned, and retried on the next call. The data stay
  /// while a job holds them, and the kept_loads most recently loaded besides: each model
  /// declaration (a token model's context) or workload name loads its own, and a core kept
  /// every one it ever loaded.
  ///
  /// With `min_shards`, the training split is cut into at least that many shards (at most one
  /// per sample): a job submitted under a smaller --shard-samples than the core restarted
  /// with has more workers than this core's cut has shards, and failed for good at its
  /// resume.
  expected<std::shared_ptr<const served_data>> get(const kernels::workload& w,
                                                   int64_t min_shards = 0);

  /// Registers a user's data set (data_sets.hpp) with its shards' bytes, replacing one of
  /// the same owner and name; its test shards are decoded here, within `limits` (a set
  /// stored before the limits were checked is refused, not decoded). An error leaves it out.
  expected<void> put_user_set(
      const data_set_info& info,
      const std::map<std::string, std::shared_ptr<const std::vector<uint8_t>>>& chunks,
      const user_data_limits& limits = {});
  /// A user's data set as registered (its record and data), to put back with
  /// restore_user_set when a replacement could not be stored; none when there is none.
  struct user_set_entry {
    data_set_info info;
    std::shared_ptr<const served_data> data;
  };
  std::optional<user_set_entry> registered_user_set(const std::string& owner,
                                                    const std::string& name) const;
  void restore_user_set(user_set_entry entry);
  /// Forgets a user's data set (its shards stay while another set or a job holds them; the
  /// memory of those nobody holds is freed).
  void drop_user_set(const std::string& owner, const std::string& name);
  /// Notes that a user's stored data set cannot be loaded (a shard damaged or missing in the
  /// store), so that a job on it says so; a set put or dropped since is no longer damaged.
  void note_damaged_set(const std::string& owner, const std::string& name, std::string why);
  /// A user's data set as a job of workload `w` trains on it: errc::invalid_argument when
  /// there is none or its samples do not fit the model (values per sample, classes, kind).
  expected<std::shared_ptr<const served_data>> user_set(const std::string& owner,
                                                        const std::string& name,
                                                        const kernels::workload& w) const;

  /// The bytes of the shard with this digest, if the catalog has it.
  std::shared_ptr<const std::vector<uint8_t>> chunk(const std::string& digest) const;

 private:
  static constexpr size_t kept_loads = 2;
  int64_t shard_samples_;
  mutable std::mutex mutex_;
  std::map<std::string, std::weak_ptr<const served_data>> by_workload_;
  std::deque<std::shared_ptr<const served_data>> recent_loads_;  // at most kept_loads
  std::map<std::pair<std::string, std::string>, user_set_entry> user_sets_;
  std::map<std::pair<std::string, std::string>, std::string> damaged_sets_;  // why, by set
  // Every set's shards, held by their served_data (held_chunks).
  std::map<std::string, std::weak_ptr<const std::vector<uint8_t>>> chunks_;
  void forget_unheld();  // under the lock
};

}  // namespace gflex
