#pragma once
/// @file
/// What a peer may not do below CAF's mailboxes, in BASP itself.
///
/// CAF 0.17's BASP believes what a peer says of itself and acts on some messages before any
/// actor sees them. Any peer that completes the handshake (with TLS, anyone holding a core's
/// bundle) could so get past every check of "sent from this process" (boundary.hpp's guard, a
/// session's `from_core`) and kill the front door. CAF has no setting for any of it, so
/// routed_messages.cpp interposes on the function through which the broker hands BASP each
/// message it read (caf::io::basp::instance::handle, called through the PLT) and closes the
/// connection of a peer that:
/// - sends a routed message naming this process as its source: BASP makes it come from the
///   local actor of that id;
/// - names this process's node in its client handshake: BASP then takes every direct message
///   on that connection as sent by a local actor (the core sends its node id in its own
///   handshake, so this needs no guessing);
/// - sends a link or unlink message: BASP links the two actors it names at once, bypassing
///   every mailbox, and a peer's session linked to the door took the door down with it;
/// - sends a message with a forwarding stack: its entries, which may name local actors, get
///   the answer in the sender's place. Nothing in this program sends one;
/// - sends a message before its handshake, or a routed one from no node: BASP takes it from
///   node `none`, and its sender is null whatever actor it names.
/// And it drops (without closing) a response without a sender that a peer sends to a guarded
/// actor (boundary.hpp): in a guarded actor's mailbox it looks like CAF's own bounce of a
/// request to a dead local actor, and so failed a request that actor had made of its own
/// children (a client's submit, a node's hello answered "permission denied"); and every message
/// a peer sends to a named actor of this process (CAF's spawn and config servers, which serve
/// no peer here): the config server keeps whatever it is given, for good, so a peer with no
/// token could fill the core's memory. CAF's peers ask the spawn server one question on
/// connecting, so these drops do not close the connection. Messages routed between other
/// processes (a pipeline's workers) are let through.

#include <caf/actor_addr.hpp>
#include <caf/node_id.hpp>

#include <cstdint>

#include "gflex/runtime/error.hpp"

namespace gflex {

/// Connections closed for one of the messages above, since the process started.
uint64_t forged_sources_refused();

/// Sender-less responses from peers dropped at a guarded actor, since the process started.
uint64_t anonymous_responses_dropped();

/// Peers' messages to a named actor of this process dropped, since the process started.
uint64_t named_receiver_messages_dropped();

/// Marks the actor of id `id` of the actor system whose node is `node` as guarded: a peer's
/// sender-less response to it is dropped in BASP. guarded<> calls these from its constructor
/// and destructor.
void note_guarded_actor(const caf::node_id& node, caf::actor_id id);
void forget_guarded_actor(const caf::node_id& node, caf::actor_id id);

/// From now on this process speaks only with its own peers and routes for no one (a
/// standalone core: every node, client and other core connects to it directly). A peer's
/// routed, monitor or down message naming another node as its source, or one for another
/// node, closes its connection, and an actor handle on a node this process has no
/// connection to reads as none: each such made-up node id had BASP keep a route, a proxy
/// and a helper actor for good (a peer could grow the core's memory without bound).
void refuse_third_party_nodes();

/// Actors of one peer node this process keeps proxies of, at most: past it, every other handle
/// of that node reads as one stand-in actor of that node (overflow_actor_id). A node's are its
/// uplink, its cache and up to 1,024 workers; a peer that named new actor ids of its own in
/// message after message, with no token or key, had a proxy kept for each for its connection's
/// life. Read as none, a message from such an actor came with no sender, and a sender-less
/// error response passed for CAF's own bounce of a request to a dead local actor: a guarded
/// actor took it, and one of no code crashed the core's door.
inline constexpr size_t max_proxies_per_node = 8192;

/// The actor id every handle of a peer node past max_proxies_per_node reads as.
inline constexpr uint64_t overflow_actor_id = ~uint64_t{0};

/// How many handles were read as the stand-in for the bound above.
uint64_t proxies_refused();

/// Whether the checks are in effect in this process (interposition.hpp). run_core, run_node
/// and client::connect refuse to start without them.
expected<void> routed_message_check_in_effect();

}  // namespace gflex
