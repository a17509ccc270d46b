#pragma once
/// @file
/// Users' data sets on a core: what `gflex data push` uploads and a job's `[data] set` names.
/// A data set belongs to the account that pushed it (the operator sees all); a job of that
/// account names it by its name.

#include <cstdint>
#include <string>
#include <vector>

namespace gflex {

/// A data set as the core keeps it: content-addressed shards of training and test samples.
struct data_set_info {
  std::string owner;  ///< The account that pushed it (user/NAME), or "operator".
  std::string name;   ///< 1-64 of A-Z a-z 0-9 . _ -; unique per owner.
  int64_t train_samples = 0;
  int64_t test_samples = 0;
  int64_t sample_values = 0;              ///< Values per sample (pixels, or tokens).
  int64_t classes = 0;                    ///< Labels are below this (the vocabulary for tokens).
  bool tokens = false;                    ///< Samples are token ids, not pixel values in [0, 1].
  uint64_t bytes = 0;                     ///< Stored shard bytes.
  std::vector<std::string> train_shards;  ///< BLAKE2b-256 hex digests, in order.
  std::vector<std::string> test_shards;
  uint32_t parts_received = 0;  ///< Of an upload in progress: parts staged so far.
  /// Why jobs cannot use it now (a shard damaged or missing, a shard the store did not answer
  /// at the last load); empty when they can. Such a set is listed all the same: left out,
  /// its owner saw "no data set" and pushed again under a name the core still held.
  std::string unusable;
};

/// client -> core: one shard of an upload. Parts arrive in order, index 0 first (which starts
/// the upload afresh); the last one (index == count - 1) stores the data set.
struct data_part {
  uint32_t index = 0;
  uint32_t count = 0;
  bool test = false;           ///< A shard of the test split (else of the training split).
  std::vector<uint8_t> shard;  ///< An encoded shard (runtime/shard.hpp).
};

}  // namespace gflex
