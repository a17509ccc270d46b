#pragma once
/// @file
/// The registry actor: the nodes that have joined, their workers, and their heartbeats.
///
/// Protocol:
/// - (hello_atom, node_hello) -> node_welcome, forwarded by the core supervisor after the
///   protocol check: assigns a node id, monitors the node's uplink, offers its workers to
///   the market.
/// - (beat_atom, node_id): renews the node's lease. A node whose lease runs out (a hung
///   process with its socket open) or whose uplink goes down (a killed process, a lost link)
///   is removed and its workers withdrawn from the market at once.
/// - (bye_atom, node_id): the node leaves on purpose.
/// - (offer_atom, node_id, workers): restarted workers of a node go to the market.
/// A heartbeat from a node the registry does not know (it hung past its lease, or it was
/// registered with the core before a restart) is answered with (rejoin_atom).
/// - (nodes_atom) -> vector<node_status>.
/// - (update_atom, "market" | "data_server", actor) from the core supervisor: a restarted
///   sibling. A new market is offered every known node's workers again; a new data server
///   is passed to every node's uplink.

#include <caf/fwd.hpp>

#include <cstdint>

namespace gflex {

struct registry_config {
  uint32_t heartbeat_ms = 1000;
  uint32_t lease_ms = 4000;
  /// How many registries the core has started before this one (it prefixes node ids).
  uint32_t incarnation = 0;
};

caf::actor spawn_registry(caf::actor_system& sys, caf::actor market, caf::actor data_server,
                          registry_config config);

}  // namespace gflex
