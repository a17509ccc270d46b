#pragma once
/// @file
/// The chunk cache of a node: content-addressed data set chunks on disk under
/// DATA_DIR/chunks/<digest>, fetched from the core's data server on a miss, at most
/// --cache-limit of them (the least recently used go first). Every chunk is
/// verified against its digest when fetched and when read back, so a damaged file or a
/// misbehaving server never feeds a worker wrong data. Detached: file I/O and decoding block.
///
/// It also decodes shards for the node's workers, ahead of time when asked: a worker names
/// the shard its next assignment is likely to use, and the cache fetches and decodes it on
/// its own thread while the worker computes, so a new shard costs the next round nothing.
///
/// Protocol:
/// - (chunk_atom, digest) -> bytes (from disk or the data server), or an error.
/// - (shard_atom, digest) -> decoded_shard (prefetched, or fetched and decoded now), or an
///   error (a chunk that is not a well-formed shard is malformed_message).
/// - (prefetch_atom, digest): fetch and decode it for a later shard_atom; no reply. At most
///   `prefetched_shards` (and `prefetched_bytes`) are held; the oldest goes first.
/// - (serve_atom, source): where to fetch misses from: the node's session (set again after
///   every join). Whoever sends it is told (heard_atom) as chunks come from that source, at
///   most once a second: data arriving on a slow link is a sign of life of the core; and
///   (heard_atom, uint64_t n) when its requests out to that source become some (n > 0) or
///   none: a chunk on its way holds the core's other answers back.

#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/atom.hpp>
#include <caf/fwd.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>

#include "gflex/runtime/dataset.hpp"

namespace gflex {

/// The cache's word to whoever gave it its source that a chunk came from there.
using heard_atom = caf::atom_constant<caf::atom("heard")>;

/// A decoded shard, shared by the cache and the workers of one process; never serialized.
struct decoded_shard {
  std::shared_ptr<const dataset> data;
};

/// Decoded shards the cache holds for workers that have not asked for them yet (a hint that
/// proved wrong stays until newer ones push it out): at most this many, and at most
/// `prefetched_bytes` of them beyond the newest.
inline constexpr size_t prefetched_shards = 8;
inline constexpr size_t prefetched_bytes = size_t{256} << 20;

/// The chunk files take at most `limit_bytes` of `dir` (0: no bound): past it, the least
/// recently used go (the one just fetched stays, even alone past the bound). They leave
/// `keep_free_bytes` of its file system free (0: no bound): the least recently used go, and
/// a chunk that has no room even then is served from memory, not kept. Chunk requests out to
/// the source fail once none of them has been answered for `silence` (2 minutes; tests pass
/// less).
caf::actor spawn_cache(caf::actor_system& sys, const std::filesystem::path& dir,
                       uint64_t limit_bytes = 0,
                       std::chrono::milliseconds silence = std::chrono::minutes(2),
                       uint64_t keep_free_bytes = 0);

}  // namespace gflex

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(gflex::decoded_shard)
