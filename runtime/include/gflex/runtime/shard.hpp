#pragma once
/// @file
/// Shards: contiguous slices of a training set, encoded with schemas/dataset.capnp for the
/// core to serve to nodes as content-addressed chunks.

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "gflex/runtime/dataset.hpp"
#include "gflex/runtime/error.hpp"

namespace gflex {

/// Describes one encoded shard: its content address and size.
struct shard_info {
  std::string digest;  ///< BLAKE2b-256 of the encoded bytes, hex.
  int64_t samples = 0;
  uint64_t bytes = 0;
};

/// Where `samples` rows of `bytes_per_sample` each are cut into shards: [begin, end) ranges,
/// in order, covering every row once, of at most about `max_shard_bytes` (one row at least)
/// and at least `min_shards` where there are that many rows, their sizes differing by at
/// most one row (a last shard of one sample trained its node on one sample for a whole
/// assignment, weighed like the rest).
std::vector<std::pair<int64_t, int64_t>> shard_ranges(int64_t samples, int64_t bytes_per_sample,
                                                      int64_t min_shards,
                                                      int64_t max_shard_bytes = int64_t{8} << 20);

/// Encodes rows [begin, end) of `d` (checked by check_dataset: a dataset that fails it is
/// read out of bounds or aborts). Pixels travel as 8-bit values (round(x * 255)) when
/// every value is one (the image data sets are 8-bit to begin with, so nothing is lost);
/// other real values as f32, token ids as u8 (vocabularies up to 256) or i32, and labels
/// as u8 for up to 256 classes, else i32.
std::vector<uint8_t> encode_shard(const dataset& d, int64_t begin, int64_t end);

/// Decodes a shard into a dataset with features scaled back to [0, 1]. Malformed input,
/// inconsistent counts or labels out of range are errc::malformed_message, and so is a
/// tensor of more than `max_values` values, refused before it is decoded (a few bytes of
/// zstd can say a gigabyte of zeros).
expected<dataset> decode_shard(std::span<const uint8_t> bytes,
                               int64_t max_values = int64_t{1} << 28);

}  // namespace gflex
