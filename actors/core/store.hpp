#pragma once
/// @file
/// The store actor: the core's only writer to LMDB. Detached (its own thread), because a
/// write transaction blocks and must begin and end on one thread.
///
/// Protocol:
/// - (commit_atom, store_batch) -> ok_atom | error: all writes in one transaction; a key
///   given an empty value is deleted.
/// - (read_atom, key) -> (bool found, bytes): one value.
/// - (scan_atom, prefix) -> (keys, values): every key starting with prefix, in order.
/// - (scan_atom, prefix, suffix) -> (keys, values): those that also end with suffix (the
///   others' values are not read).
/// - (keys_atom, prefix) -> keys: every key starting with prefix, its value unread (one that
///   cannot be read does not fail it).

#include <caf/fwd.hpp>

#include <chrono>
#include <filesystem>
#include <memory>

#include "gflex/runtime/error.hpp"

namespace gflex {

/// Opens the store in `dir` and spawns its actor; errors (a locked or unwritable directory)
/// are returned before anything is spawned.
/// `commit_delay` (a test aid): every commit waits this long first.
expected<caf::actor> spawn_store(caf::actor_system& sys, const std::filesystem::path& dir,
                                 std::chrono::milliseconds commit_delay = {});

class key_value_store;

/// Spawns the store actor over a store its caller keeps (the replicated one); a restarted
/// actor reuses it.
caf::actor spawn_store(caf::actor_system& sys, std::shared_ptr<key_value_store> db,
                       std::chrono::milliseconds commit_delay = {});

}  // namespace gflex
