#pragma once
/// @file
/// What every front door does for clients, the leader's (core_supervisor.cpp) and a
/// follower's (follower_door.cpp) alike: it gives a session to each client whose API key the
/// gatekeeper knows, at most `max_sessions_per_principal` per principal, and it takes keyed
/// requests only from actors of its own process (the sessions it gave), each checked against
/// the gatekeeper before it is answered. A door's state holds a `client_sessions` named
/// `sessions`.

#include <caf/all.hpp>

#include <chrono>
#include <functional>
#include <map>
#include <string>

#include "access.hpp"
#include "client_session.hpp"
#include "messages.hpp"

namespace gflex {

/// Sessions one principal may have open at once.
inline constexpr int max_sessions_per_principal = 64;

/// The client sessions a door gave out, and how many each principal has open.
struct client_sessions {
  std::map<caf::actor_addr, std::string> principal_of;
  std::map<std::string, int> open;

  /// Forgets `session` (it went down); false when it is none of these.
  bool forget(const caf::actor_addr& session) {
    auto it = principal_of.find(session);
    if (it == principal_of.end()) return false;
    if (--open[it->second] <= 0) open.erase(it->second);
    principal_of.erase(it);
    return true;
  }
};

/// Answers a client's (auth_atom, key, link) at `self`: `gate` names the key's principal, and
/// a session that relays to `self` and lives while `link` does is spawned and monitored.
template <class Self>
caf::result<client_welcome> open_client_session(Self* self, const caf::actor& gate, std::string key,
                                                caf::actor link) {
  // The process that asks is the one its session will serve (taken before the promise:
  // making one moves the sender out of the message).
  const auto& sender = self->current_sender();
  if (!link || !sender || link->node() != sender->node())
    return to_caf(error(errc::invalid_argument, "a client names an actor of its own"));
  const auto peer = sender->node();
  auto rp = self->template make_response_promise<client_welcome>();
  self->request(gate, std::chrono::seconds(30), auth_atom::value, key)
      .then(
          [=](std::string& who) mutable {
            auto& book = self->state.sessions;
            if (book.open[who] >= max_sessions_per_principal) {
              rp.deliver(to_caf(error(errc::limit_exceeded,
                                      who + " has " + std::to_string(max_sessions_per_principal) +
                                          " sessions open already")));
              return;
            }
            auto session = spawn_client_session(self->system(), key, who,
                                                caf::actor_cast<caf::actor>(self), link, {}, peer);
            self->monitor(session);
            book.principal_of[session.address()] = who;
            book.open[who] += 1;
            rp.deliver(client_welcome{who, session});
          },
          [=](caf::error& e) mutable { rp.deliver(for_client(std::move(e), self->system())); });
  return rp;
}

/// What a door does with a request once its key is known: the promise to answer and the
/// principal (an account, or the operator).
using authorized_fn = std::function<void(caf::response_promise&, const std::string& principal)>;

/// Answers the keyed request being handled by `self` through `then` once `gate` knows `key`;
/// with `operator_only`, other keys are refused. Keyed requests come from sessions (and
/// embedded clients) of this process: from another, a client asks for a session first.
template <class Self>
caf::response_promise authorize(Self* self, const caf::actor& gate, const std::string& key,
                                bool operator_only, authorized_fn then) {
  const auto& sender = self->current_sender();
  const bool local = sender && sender->node() == self->node();
  auto rp = self->make_response_promise();
  if (!local) {
    rp.deliver(to_caf(error(errc::permission_denied,
                            "a client sends (auth, API key) first and its requests to the "
                            "session it gets (protocol version " +
                                std::to_string(protocol_version) + ")")));
    return rp;
  }
  self->request(gate, std::chrono::seconds(30), auth_atom::value, key)
      .then(
          [=](std::string& who) mutable {
            if (operator_only && who != operator_principal) {
              rp.deliver(to_caf(
                  error(errc::permission_denied,
                        "only the operator's key may do this (this key belongs to " + who + ")")));
              return;
            }
            then(rp, who);
          },
          [=](caf::error& e) mutable { rp.deliver(e); });
  return rp;
}

}  // namespace gflex
