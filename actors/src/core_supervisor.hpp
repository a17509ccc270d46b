#pragma once
/// @file
/// The core supervisor: the root of a core's actor tree (store, market, data server,
/// registry, job supervisor) and the actor that nodes and clients talk to.
///
/// Protocol:
/// - (hello_atom, node_hello) -> node_welcome, or errc::invalid_argument when the node speaks
///   another protocol version (checked before anything else in the hello is looked at).
/// - submit / status / jobs / cancel / fetch: forwarded to the job supervisor.
/// - (nodes_atom) -> vector<node_status>: forwarded to the registry.
///
/// It supervises its children one for one: each is monitored and, when it dies, restarted
/// from what it persists or can rebuild, and the siblings holding its handle are told
/// (update_atom, role, new actor). More than 5 restarts a minute stop the core.

#include <caf/fwd.hpp>

#include "gflex/gflex.hpp"

namespace gflex {

/// Spawns a core's actor tree; fails when the store cannot be opened.
expected<caf::actor> spawn_core(caf::actor_system& sys, const core_config& config);

}  // namespace gflex
