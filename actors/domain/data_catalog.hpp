#pragma once
/// @file
/// The core's data sets: each workload's data loaded once, its training split cut into
/// content-addressed shards. Shared by the job actors (test split, shard list) and the data
/// server (chunk bytes); thread-safe, loaded lazily on first use.

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "gflex/kernels/workload.hpp"
#include "gflex/runtime/dataset.hpp"
#include "gflex/runtime/shard.hpp"

namespace gflex {

/// One workload's data as the core serves it.
struct served_data {
  dataset test;
  std::vector<shard_info> shards;
  int64_t train_samples = 0;
};

class data_catalog {
 public:
  /// Samples per shard: about 2.4 MB per Fashion-MNIST chunk, below the size at which one
  /// BASP message should be split.
  explicit data_catalog(int64_t shard_samples = 3000) : shard_samples_(shard_samples) {}

  /// The data of workload `w`, loading and sharding it on first use (blocking: call from a
  /// detached actor). Errors of loading are returned, and retried on the next call.
  expected<std::shared_ptr<const served_data>> get(const kernels::workload& w);

  /// The bytes of the shard with this digest, if the catalog has it.
  std::shared_ptr<const std::vector<uint8_t>> chunk(const std::string& digest) const;

 private:
  int64_t shard_samples_;
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<const served_data>> by_workload_;
  std::map<std::string, std::shared_ptr<const std::vector<uint8_t>>> chunks_;
};

}  // namespace gflex
