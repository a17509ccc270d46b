#pragma once
/// @file
/// A client's session: the actor the front door spawns for a client once its API key is
/// known (auth_atom), and the only core handle the client uses from then on. It holds the
/// key and its principal (an account, or the operator) and relays each request to the front
/// door with the key, which authorizes it as before and answers; the session delivers the
/// answer itself. Like a node's session it is a `guarded` typed actor (client_session_actor):
/// forged system messages are dropped at the door, anything outside its interface dropped
/// and counted, and past `max_dropped` the session ends. At most `max_in_flight` requests
/// are open at once; one more is refused (limit_exceeded). It ends when the client's link
/// actor goes down (the client went away) or when the front door stops.

#include <caf/fwd.hpp>

#include <cstdint>
#include <string>

#include "messages.hpp"

namespace gflex {

struct client_session_limits {
  uint32_t max_in_flight = 32;  ///< Requests open at once.
  uint64_t max_dropped = 1000;  ///< Dropped messages before the session ends.
};

/// Spawns the session of a client with `key` (authenticated as `principal`), relaying to
/// `door`; it lives while `link` (an actor of the client's) does. Only actors of this process
/// and of `peer` (the client's process) reach it: another peer that learns or guesses its
/// handle cannot use the key it carries. It asks `peer` nothing and drops every response from
/// there, so the client cannot answer the session's requests to the door in the door's place.
client_session_actor spawn_client_session(caf::actor_system& sys, std::string key,
                                          std::string principal, caf::actor door, caf::actor link,
                                          client_session_limits limits, caf::node_id peer);

/// An error as a client is answered it: the core's own (its category) as it is, and CAF's
/// (a request inside the core that timed out, an actor inside it that ended) as the core's
/// errc::unavailable, "the core did not answer ... inside the core", which a client following
/// a job rides out (link_loss.hpp). Passed on as they were, a client took CAF's
/// request_timeout or request_receiver_down for its own request's, dropped a live session
/// and dialled the other cores first.
caf::error for_client(caf::error e, const caf::actor_system& sys);

}  // namespace gflex
