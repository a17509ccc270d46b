#pragma once
/// @file
/// The node supervisor: the root of a node's actor tree (cache, one worker per compute slot,
/// uplink). It supervises them one for one: a child that dies with an error is restarted (a
/// worker is offered to the core again, an uplink joins again, a new cache is handed to the
/// workers), at most 5 times a minute; then the node stops. Its children stop with it.
///
/// Protocol: (bye_atom): say leave to the core, then stop (a graceful shutdown).

#include <caf/fwd.hpp>

#include "gflex/gflex.hpp"
#include "gflex/test_aids.hpp"

namespace gflex {

/// Spawns a node. With `core` set the node joins that actor directly (embedded, no sockets);
/// otherwise it dials host:port. `owner` hears (stop_atom, exit code, reason) if the core
/// refuses the node.
expected<caf::actor> spawn_node(caf::actor_system& sys, const node_config& config,
                                const node_test_aids& aids, const std::string& host, uint16_t port,
                                caf::actor core, caf::actor owner);

/// The exit code of a node that could not start for `e`: 1 where starting again may work (a
/// device out of memory or failing, a file that could not be read), which a service manager
/// restarts; 2 for its settings, which it does not (every failure was 2: a GPU another
/// program held at a restart kept the node down for good).
int start_failure_exit_code(const error& e);

}  // namespace gflex
