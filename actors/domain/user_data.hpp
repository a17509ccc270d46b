#pragma once
/// @file
/// The rules of users' data sets (data_sets.hpp): checking an upload part by part, the
/// stored manifest, and the store's keys. CAF-free: the job supervisor applies them.

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "gflex/data_sets.hpp"
#include "gflex/runtime/dataset.hpp"
#include "gflex/runtime/error.hpp"

namespace gflex {

/// Bounds on what one account may upload.
struct user_data_limits {
  uint32_t max_parts = 4096;                     ///< Shards per data set.
  uint64_t max_bytes = uint64_t{1} << 30;        ///< Shard bytes per data set.
  uint64_t max_part_bytes = uint64_t{32} << 20;  ///< One shard.
  int64_t max_sets_per_owner = 64;
  /// Values one shard may hold once decoded (as many as an unpacked 8-bit shard of
  /// max_part_bytes): a packed shard of a few bytes can say a gigabyte of zeros, which every
  /// node and the core would decode as f32.
  int64_t max_part_values = int64_t{32} << 20;
  /// Values the test split may hold: the core keeps it decoded (f32) to evaluate on.
  int64_t max_test_values = int64_t{64} << 20;
};

/// The core's memory a data set takes: its shards as stored, and its test split decoded
/// (f32 values and i32 labels), which the core keeps to evaluate on. Counted against the
/// account's quota: a test split packed 32 to 1 took 256 MiB of memory for 2 MiB of quota.
uint64_t core_memory_bytes(const data_set_info& info);

/// Whether `name` may name a data set: 1-64 of A-Z a-z 0-9 . _ -.
bool valid_data_set_name(const std::string& name);

/// Training samples per shard where nothing asks for more shards: the core cuts its built-in
/// data sets so (`--shard-samples`), and a client its uploads, so that the same data makes
/// about as many shards whichever way it came (a round gives each worker its own shard).
inline constexpr int64_t default_shard_samples = 3000;

/// What every sample of one data set is, in both of its splits: the values it holds, the
/// classes its labels (and token ids) range over, and whether its values are token ids.
struct sample_kind {
  int64_t values = 0;
  int64_t classes = 0;
  bool tokens = false;
  bool operator==(const sample_kind&) const = default;
};

/// Why a data set of `train` training and `test` test samples cannot be stored ("needs
/// training and test samples, has 10 and 0"); none where it has both. The core says so once
/// the last part is in (data_upload::finish), a client before it sends the first
/// (plan_data_parts): one wording for both.
std::optional<std::string> missing_samples(int64_t train, int64_t test);

/// Why samples of kind `got` cannot join a data set whose samples are `first`, which
/// `first_what` names ("the first part", "the training split"): "has 5 values per sample and
/// 3 classes, the first part 4 and 3"; none where they agree. The core refuses such a part
/// (data_upload::add), a client such a test split before it sends any (plan_data_parts).
std::optional<std::string> sample_kind_mismatch(const sample_kind& got, const sample_kind& first,
                                                const std::string& first_what);

/// One part of an upload: rows [begin, end) of the training or the test split.
struct data_part_rows {
  bool test = false;
  int64_t begin = 0, end = 0;
};

/// How a client cuts `data` into the parts it sends, before it sends any: the training split
/// into at least `min_train_shards` shards (0: one per default_shard_samples samples), each
/// of at most about 8 MiB, then the test split. A set the core would refuse (an empty split,
/// a test split whose samples are not of the training split's kind, more parts than
/// limits.max_parts, a test split over limits.max_test_values) is an errc::invalid_argument
/// that says what to change, in the core's words, rather than a refusal after every training
/// part was uploaded.
expected<std::vector<data_part_rows>> plan_data_parts(const dataset_splits& data,
                                                      int64_t min_train_shards,
                                                      const user_data_limits& limits = {});

/// The store key of a data set's manifest, and the prefix of all of them.
std::string data_set_key(const std::string& owner, const std::string& name);
inline constexpr const char* data_set_prefix = "dataset/";
/// The owner and name a manifest's store key names (data_set_key's inverse); none for a key
/// of another form.
std::optional<std::pair<std::string, std::string>> data_set_of_key(const std::string& key);
/// The store key of a shard's bytes (shared by every data set that has the shard).
std::string data_chunk_key(const std::string& digest);
inline constexpr const char* data_chunk_prefix = "datachunk/";

/// One upload in progress: each part is decoded (which checks its dtype, shape, labels and
/// tokens) and must agree with the first on values per sample, classes and kind.
class data_upload {
 public:
  data_upload(std::string owner, std::string name, uint32_t count, user_data_limits limits);

  /// Adds part `p`; an error leaves the upload as it was.
  expected<void> add(const data_part& p);
  bool complete() const { return info_.parts_received == count_; }
  /// The data set, with a training split of at least one sample and a test split of at least
  /// one, once complete.
  expected<data_set_info> finish() const;
  /// The shards' bytes by digest.
  const std::map<std::string, std::shared_ptr<const std::vector<uint8_t>>>& chunks() const {
    return chunks_;
  }
  const data_set_info& info() const { return info_; }

 private:
  data_set_info info_;
  uint32_t count_;
  user_data_limits limits_;
  std::map<std::string, std::shared_ptr<const std::vector<uint8_t>>> chunks_;
  int64_t test_values_ = 0;
};

/// The manifest (JSON) a data set is stored as, and back; a damaged one is an error.
std::vector<uint8_t> encode_data_set(const data_set_info& info);
expected<data_set_info> decode_data_set(std::span<const uint8_t> bytes);

}  // namespace gflex
