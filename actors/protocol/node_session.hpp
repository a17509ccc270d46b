#pragma once
/// @file
/// A node's session: the actor the core spawns for a node once it has joined (protocol,
/// signature, join token and name checked), and the only core handle the node ever holds.
///
/// It knows who is on the other end (node id, name, key, the tier its token granted) and
/// stamps that identity on what it forwards: heartbeats go to the registry as this node's,
/// chunk requests to the data server within this node's bounds. Assignments reach the node
/// only through it: the core's jobs and verifier hold a *worker handle* per compute slot,
/// an actor inside the core that asks the session, which sends the assignment to the node's
/// uplink and checks the answer (docs/SECURITY.md, "The boundary").
///
/// The session is a `guarded` typed actor: forged system messages are dropped at the door,
/// messages outside node_session_actor are dropped and counted, internal verbs from another
/// process are refused and counted. Past `session_limits::max_dropped` dropped messages, or
/// a full chunk queue, the node is told why and disconnected. The session ends when the node
/// says bye, when its uplink goes down, or when the registry ends it (lease ran out).

#include <caf/fwd.hpp>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "messages.hpp"

namespace gflex {

/// Per-node bounds a session enforces (docs/SECURITY.md lists them with their flags).
struct session_limits {
  uint32_t chunks_in_flight = 4;  ///< Chunk requests served at once; more wait in the queue.
  uint32_t chunk_queue = 64;      ///< Waiting chunk requests; one more disconnects the node.
  /// Sustained chunk bytes per second (a burst of 8 s of it is allowed).
  uint64_t chunk_bytes_per_s = 64ull << 20;
  uint64_t max_dropped = 1000;  ///< Dropped messages before the node is disconnected.
  /// Parameters and updates larger than this cross to and from the node as chunks of it.
  uint64_t payload_chunk_bytes = 8ull << 20;
  /// How much longer than its asker (assignment::answer_within_s) the session waits for the
  /// node's answer to an assignment, before it gives up on it.
  std::chrono::milliseconds answer_slack{std::chrono::minutes(5)};
  /// How long a node waits for a chunk before it says the core did not serve it (the uplink's
  /// wait for a parameter chunk, its cache's silence for a data chunk): for as long after the
  /// data server failed, or was slow to answer, an ask of this session, a node's word that the
  /// core did not serve it stands. Otherwise it is at fault (a node's `unavailable` alone let
  /// it fail every assignment at once and never be cooled down).
  std::chrono::milliseconds node_chunk_wait{std::chrono::minutes(2)};
  /// An ask the data server holds for longer than this is one it is failing to serve: a data
  /// server that serves normally answers in milliseconds.
  std::chrono::milliseconds data_server_slow{std::chrono::seconds(10)};
};

/// Who the session speaks for.
struct session_identity {
  std::string node_id;
  std::string name;
  std::string key_hex;
  uint8_t tier = 0;
  uint32_t workers = 0;
};

struct spawned_session {
  node_session_internal session;
  /// One per compute slot: (assign_atom, assignment) -> assignment_result and
  /// (abort_atom, id), as a worker of the core's own would answer them.
  std::vector<caf::actor> workers;
};

/// Spawns the session of a node that joined with `uplink`; only actors of this process and of
/// the uplink's reach it (boundary.hpp). `registry` hears
/// (beat_atom, node id, dropped messages) for each heartbeat and monitors the session.
spawned_session spawn_node_session(caf::actor_system& sys, session_identity who,
                                   session_limits limits, caf::actor uplink, caf::actor registry,
                                   caf::actor data_server);

}  // namespace gflex
