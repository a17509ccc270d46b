#pragma once
/// @file
/// The chunk cache of a node: content-addressed data set chunks on disk under
/// DATA_DIR/chunks/<digest>, fetched from the core's data server on a miss. Every chunk is
/// verified against its digest when fetched and when read back, so a damaged file or a
/// misbehaving server never feeds a worker wrong data. Detached: file I/O blocks.
///
/// Protocol:
/// - (chunk_atom, digest) -> bytes (from disk or the data server), or an error.
/// - (serve_atom, source): where to fetch misses from: the node's session (set again after
///   every join).

#include <caf/fwd.hpp>

#include <filesystem>

namespace gflex {

caf::actor spawn_cache(caf::actor_system& sys, const std::filesystem::path& dir);

}  // namespace gflex
