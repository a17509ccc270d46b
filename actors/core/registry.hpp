#pragma once
/// @file
/// The registry actor: the nodes that have joined, their workers, and their heartbeats.
///
/// Protocol:
/// - (hello_atom, node_hello, address, token id) -> node_welcome, forwarded by the core
///   supervisor once the node is admitted (with the id of the join token that admitted it, or
///   none): assigns a node id, spawns the node's session (node_session.hpp)
///   and offers the session's worker handles to the market. The welcome carries only the
///   session. At most `max_per_address` nodes from one address at once, and one session per
///   node key: a hello whose key is joined already is refused (limit_exceeded) until that
///   node's session ends.
/// - (beat_atom, node_id, dropped) from a session: renews the node's lease. A node whose
///   lease runs out (a hung process with its socket open) has its session ended; a session
///   that ends (the node said bye, its uplink went down, it was disconnected) takes the node
///   out of the registry and its workers out of the market at once.
/// - (nodes_atom) -> vector<node_status>.
/// - (revoke_atom, token id) -> int64_t from the core supervisor: a join token was revoked;
///   the nodes admitted with it are taken out as a lost node is, their sessions ended, and a
///   hello admitted with it that comes after is refused. Answers how many were taken out.
/// - (update_atom, "market" | "data_server", actor) from the core supervisor: a restarted
///   sibling. A new market is offered every known node's workers again; a new data server
///   is passed to every session.
/// No node ever holds the registry's handle: sessions hold it and stamp their node's id.

#include <caf/fwd.hpp>

#include <cstdint>

#include "node_session.hpp"

namespace gflex {

struct registry_config {
  uint32_t heartbeat_ms = 1000;
  uint32_t lease_ms = 4000;
  /// How many registries the core has started before this one (it prefixes node ids).
  uint32_t incarnation = 0;
  /// Nodes connected from one address at once (a NAT can hide several honest ones).
  uint32_t max_per_address = 64;
  session_limits limits;  ///< What each node's session allows.
};

caf::actor spawn_registry(caf::actor_system& sys, caf::actor market, caf::actor data_server,
                          registry_config config);

}  // namespace gflex
