#include "client_session.hpp"

#include <spdlog/spdlog.h>

#include "boundary.hpp"
#include "core_metrics.hpp"
#include "link_loss.hpp"

namespace gflex {

namespace {

struct client_session_state {
  std::string key, principal;
  caf::actor door, link;
  client_session_limits limits;
  uint32_t in_flight = 0;
  uint64_t dropped = 0;
  static inline const char* name = "client_session";
};

using session_actor =
    caf::stateful_actor<client_session_state, guarded<client_session_actor::base>>;

void drop(session_actor* self, const char* what) {
  auto& st = self->state;
  st.dropped += 1;
  core_metrics::dropped_messages("client").inc();
  if (st.dropped == 1 || st.dropped % 100 == 0)
    spdlog::warn("session of client {}: dropped {} ({} dropped so far)", st.principal, what,
                 st.dropped + self->refused());
  if (st.dropped + self->refused() > st.limits.max_dropped) {
    spdlog::warn("session of client {}: more than {} messages dropped; ending it", st.principal,
                 st.limits.max_dropped);
    self->quit(caf::exit_reason::user_shutdown);
  }
}

// Relays one request to the front door with the session's key, and its answer back.
template <class T, class... Ts>
caf::result<T> relay(session_actor* self, Ts&&... xs) {
  auto& st = self->state;
  if (st.in_flight >= st.limits.max_in_flight)
    return to_caf(
        error(errc::limit_exceeded, "more than " + std::to_string(st.limits.max_in_flight) +
                                        " requests open on this session; wait for their answers"));
  st.in_flight += 1;
  auto rp = self->template make_response_promise<T>();
  self->request(st.door, std::chrono::minutes(10), std::forward<Ts>(xs)...)
      .then(
          [=](T& answer) mutable {
            self->state.in_flight -= 1;
            rp.deliver(std::move(answer));
          },
          [=](caf::error& e) mutable {
            self->state.in_flight -= 1;
            rp.deliver(for_client(std::move(e), self->system()));
          });
  return rp;
}

client_session_actor::behavior_type client_session(session_actor* self, std::string key,
                                                   std::string principal, caf::actor door,
                                                   caf::actor link, client_session_limits limits) {
  auto& st = self->state;
  st.key = std::move(key);
  st.principal = std::move(principal);
  st.door = std::move(door);
  st.link = std::move(link);
  st.limits = limits;
  self->monitor(st.link);
  self->monitor(st.door);
  self->set_down_handler([=](const caf::down_msg& down) {
    auto& st = self->state;
    if (down.source == st.link.address() || down.source == st.door.address())
      self->quit(caf::exit_reason::user_shutdown);
  });
  handle_outside_messages(self, drop);
  auto key_of = [=] { return self->state.key; };
  return {
      [=](submit_atom a, std::string& text) { return relay<std::string>(self, a, key_of(), text); },
      [=](submit_atom a, std::string& text, std::string& submission) {
        return relay<std::string>(self, a, key_of(), text, submission);
      },
      [=](status_atom a, std::string& id) { return relay<job_status>(self, a, key_of(), id); },
      [=](jobs_atom a) { return relay<std::vector<job_status>>(self, a, key_of()); },
      [=](nodes_atom a) { return relay<std::vector<node_status>>(self, a, key_of()); },
      [=](cancel_atom a, std::string& id) { return relay<caf::ok_atom>(self, a, key_of(), id); },
      [=](dpush_atom a, std::string& name, data_part& part) {
        return relay<data_set_info>(self, a, key_of(), name, std::move(part));
      },
      [=](dlist_atom a) { return relay<std::vector<data_set_info>>(self, a, key_of()); },
      [=](drm_atom a, std::string& name) { return relay<caf::ok_atom>(self, a, key_of(), name); },
      [=](fetch_atom a, std::string& id, uint64_t offset) {
        return relay<model_part>(self, a, key_of(), id, offset);
      },
      [=](topup_atom a, std::string& id, int64_t amount) {
        return relay<caf::ok_atom>(self, a, key_of(), id, amount);
      },
      [=](account_atom a, std::string& account) {
        return relay<account_info>(self, a, key_of(), account);
      },
      [=](open_atom a, std::string& account) {
        return relay<std::string>(self, a, key_of(), account);
      },
      [=](update_atom a, api_key_atom k, std::string& account) {
        return relay<std::string>(self, a, key_of(), k, account);
      },
      [=](revoke_atom a, api_key_atom k, std::string& account) {
        return relay<caf::ok_atom>(self, a, key_of(), k, account);
      },
      [=](credit_in_atom a, std::string& account, int64_t amount, std::string& reference) {
        return relay<uint64_t>(self, a, key_of(), account, amount, reference);
      },
      [=](ledger_atom a) { return relay<ledger_report>(self, a, key_of()); },
      [=](token_atom a, std::string& tier, int64_t lifetime_s, int64_t uses) {
        return relay<std::string>(self, a, key_of(), tier, lifetime_s, uses);
      },
      [=](token_atom a) { return relay<std::vector<join_token_record>>(self, a, key_of()); },
      [=](revoke_atom a, std::string& id) { return relay<caf::ok_atom>(self, a, key_of(), id); },
  };
}

}  // namespace

caf::error for_client(caf::error e, const caf::actor_system& sys) {
  if (!e || e.category() == error_category) return e;
  return to_caf(error(errc::unavailable, std::string(detail::no_answer) + " (" + sys.render(e) +
                                             " inside the core); try again"));
}

client_session_actor spawn_client_session(caf::actor_system& sys, std::string key,
                                          std::string principal, caf::actor door, caf::actor link,
                                          client_session_limits limits, caf::node_id peer) {
  auto session = sys.spawn(client_session, std::move(key), std::move(principal), std::move(door),
                           std::move(link), limits);
  // Bound before its handle leaves this function: nothing reaches it from elsewhere first. It
  // asks its client nothing, so a response from there is a forgery: CAF matches one by its id
  // alone, and the client's answer to a request relayed to the door lowered in_flight while
  // the real request stayed open inside the core.
  static_cast<session_actor*>(caf::actor_cast<caf::abstract_actor*>(session))
      ->bind_peer(std::move(peer), peer_responses::dropped);
  return session;
}

}  // namespace gflex
