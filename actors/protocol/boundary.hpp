#pragma once
/// @file
/// The guard on every actor whose handle a peer holds (the core's front door and the
/// sessions). In CAF whoever holds a handle can send it system messages: an exit message
/// with exit_reason::kill stops any actor, trapped or not, and a forged down message or
/// error message reaches handlers written for the real ones. And CAF matches a response to
/// the request waiting for it by message id alone (ids count up from 1 in each actor): a
/// peer that sends a message marked as a response with the right id answers a request the
/// actor made of its own children (the gatekeeper's "whose key is this?"). `guarded<Base>`
/// looks at each message as it is enqueued, before CAF interprets it, and drops:
/// - an exit message that does not come from an actor of this process (links between the
///   core's own actors still work; a peer's `send_exit` does nothing);
/// - a down message whose sender is not the actor it reports on (the runtime sends a real
///   one from the observed actor; a forged one comes from the forger);
/// - a bare error message from another process (CAF's default handler would stop the
///   actor);
/// - a response from another process, unless from the peer the actor is bound to and asks
///   things (bind_peer with peer_responses::taken): only a node's session asks another
///   process anything (its node's uplink); a client's session asks its client nothing, and a
///   client that answered the session's requests to the front door itself (by their ids)
///   lowered its count of open requests while the real ones stayed open;
/// - once the actor is bound to a peer (bind_peer: a session to the process it serves), any
///   message from a third process, so that a peer that learns or guesses another's session
///   (actor ids count up) cannot use it.
/// "This process" is the sender's node; routed_messages.hpp keeps a peer from naming this
/// node as its message's source or its own, from linking actors, and from sending a guarded
/// actor a response without a sender (which here would pass for CAF's own bounce). Forged system
/// messages, and responses from a bound peer the actor asks nothing, are counted in
/// `refused()`, which the actor reports (`gflex nodes` shows a node's dropped messages); the
/// others in `strangers()`.

#include <caf/all.hpp>

#include <atomic>
#include <cstdint>
#include <utility>

#include "routed_messages.hpp"

namespace gflex {

/// Whether `e` is a system message that a peer forged (see the file comment). `self` is the
/// receiving actor.
inline bool is_forged_system_message(const caf::mailbox_element& e, const caf::node_id& self) {
  const auto& content = e.content();
  const bool local = e.sender && e.sender->node() == self;
  if (content.match_elements<caf::exit_msg>()) return !local;
  if (content.match_elements<caf::down_msg>())
    return !e.sender || e.sender->address() != content.get_as<caf::down_msg>(0).source;
  if (content.match_elements<caf::error>()) return !local && !e.mid.is_response();
  return false;
}

/// Whether a bound actor takes responses from its peer: only one that asks its peer things does.
enum class peer_responses { taken, dropped };

/// Whether `e` comes from where the receiving actor (of node `self`) takes messages from:
/// this process, or its bound peer (`peer`, when bound); an unbound actor takes requests and
/// plain messages from anyone, and responses only from this process (a bound peer's, where
/// the actor asks it nothing, are dropped before: is_unasked_peer_response). An error response
/// without a sender is CAF's bounce of a request to a dead local actor (a data server being
/// restarted): a peer's is dropped before it gets here (routed_messages.hpp), so every actor
/// takes it and fails that request at once.
inline bool from_admitted_sender(const caf::mailbox_element& e, const caf::node_id& self,
                                 const caf::node_id* peer) {
  if (e.sender && e.sender->node() == self) return true;
  if (!e.sender && e.mid.is_response() && e.content().match_elements<caf::error>()) return true;
  if (peer != nullptr) return e.sender && e.sender->node() == *peer;
  return !e.mid.is_response();
}

/// Whether `e` is a response from the bound peer `peer` of an actor (of node `self`) that asks
/// its peer nothing: the peer's forgery of the answer to a request the actor made of another.
/// A peer in this process (an embedded client) is this process: its actors answer.
inline bool is_unasked_peer_response(const caf::mailbox_element& e, const caf::node_id& self,
                                     const caf::node_id& peer, peer_responses responses) {
  return responses == peer_responses::dropped && e.mid.is_response() && e.sender &&
         e.sender->node() == peer && peer != self;
}

template <class Base>
class guarded : public Base {
 public:
  template <class... Ts>
  explicit guarded(caf::actor_config& cfg, Ts&&... xs) : Base(cfg, std::forward<Ts>(xs)...) {
    note_guarded_actor(this->node(), this->id());  // a peer's sender-less response to it is
                                                   // dropped in BASP
  }
  ~guarded() override { forget_guarded_actor(this->node(), this->id()); }

  void enqueue(caf::mailbox_element_ptr ptr, caf::execution_unit* host) override {
    const bool bound = bound_.load(std::memory_order_acquire);
    if (ptr && bound && is_unasked_peer_response(*ptr, this->node(), peer_, peer_responses_)) {
      refused_.fetch_add(1, std::memory_order_relaxed);  // the peer's own doing
      return;
    }
    if (ptr && !from_admitted_sender(*ptr, this->node(), bound ? &peer_ : nullptr)) {
      strangers_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (ptr && is_forged_system_message(*ptr, this->node())) {
      refused_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    Base::enqueue(std::move(ptr), host);
  }

  /// From now on, only actors of this process and of `peer` reach this actor, and `peer`'s
  /// responses only if `responses` is peer_responses::taken (the actor asks its peer things).
  /// Called once, by whoever spawned it, before its handle is given to anyone.
  void bind_peer(caf::node_id peer, peer_responses responses = peer_responses::taken) {
    peer_ = std::move(peer);
    peer_responses_ = responses;
    bound_.store(true, std::memory_order_release);
  }

  /// Forged system messages, and responses from a bound peer the actor asks nothing, dropped
  /// at the door so far.
  uint64_t refused() const { return refused_.load(std::memory_order_relaxed); }
  /// Messages dropped for where they came from (a third process, an unbound actor's peer's
  /// response). Not the peer's doing: a session does not count them against its peer.
  uint64_t strangers() const { return strangers_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> refused_{0}, strangers_{0};
  std::atomic<bool> bound_{false};
  caf::node_id peer_;
  peer_responses peer_responses_ = peer_responses::taken;
};

/// Installs a session's handlers for what the guard lets through: exit messages (the core's
/// own, from this process) are obeyed; a bare error message that is no response, and any
/// message outside the session's interface, go to `drop(self, what)`, which counts them.
template <class Self, class Drop>
void handle_outside_messages(Self* self, Drop drop) {
  self->set_exit_handler([=](caf::exit_msg& msg) { self->quit(std::move(msg.reason)); });
  self->set_error_handler([=](caf::error&) { drop(self, "a bare error message"); });
  self->set_default_handler(
      [=](caf::scheduled_actor*, caf::message_view&) -> caf::result<caf::message> {
        drop(self, "a message outside its interface");
        return caf::sec::unexpected_message;
      });
}

}  // namespace gflex
