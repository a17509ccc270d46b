#pragma once
/// @file
/// A peer may not name this process as its message's source.
///
/// CAF 0.17's BASP takes a routed message's source from the message itself (a node id and an
/// actor id), and when that node is this process, it makes the message come from the local
/// actor of that id: any peer that completes the handshake (with TLS, anyone holding a core's
/// bundle) could send as the core's own actors, past every check of "sent from this process"
/// (boundary.hpp's guard, a session's `from_core`), and kill the front door with an exit
/// message that seems the core's own. CAF has no setting for it, so routed_messages.cpp
/// interposes on the function through which the broker hands BASP each message it read
/// (caf::io::basp::instance::handle, called through the PLT) and closes a connection that
/// sends such a message. Messages routed between other processes (a pipeline's workers) are
/// let through.

#include <cstdint>

#include "gflex/runtime/error.hpp"

namespace gflex {

/// Connections closed for a message that named this process as its source, since the
/// process started.
uint64_t forged_sources_refused();

/// Whether the check is in effect in this process (interposition.hpp). run_core, run_node and
/// client::connect refuse to start without it.
expected<void> routed_message_check_in_effect();

}  // namespace gflex
