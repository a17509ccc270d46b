#pragma once
/// @file
/// The guard on every actor whose handle a peer holds (the core's front door and the
/// sessions). In CAF whoever holds a handle can send it system messages: an exit message
/// with exit_reason::kill stops any actor, trapped or not, and a forged down message or
/// error message reaches handlers written for the real ones. `guarded<Base>` looks at each
/// message as it is enqueued, before CAF interprets it, and drops:
/// - an exit message that does not come from an actor of this process (links between the
///   core's own actors still work; a peer's `send_exit` does nothing);
/// - a down message whose sender is not the actor it reports on (the runtime sends a real
///   one from the observed actor; a forged one comes from the forger);
/// - a bare error message from another process (CAF's default handler would stop the
///   actor).
/// Each drop is counted in `refused()`, which the actor reports (`gflex nodes` shows a
/// node's dropped messages).

#include <caf/all.hpp>

#include <atomic>
#include <cstdint>

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

template <class Base>
class guarded : public Base {
 public:
  using Base::Base;

  void enqueue(caf::mailbox_element_ptr ptr, caf::execution_unit* host) override {
    if (ptr && is_forged_system_message(*ptr, this->node())) {
      refused_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    Base::enqueue(std::move(ptr), host);
  }

  /// System messages dropped at the door so far.
  uint64_t refused() const { return refused_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> refused_{0};
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
