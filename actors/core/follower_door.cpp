#include "follower_door.hpp"

#include <spdlog/spdlog.h>

#include <map>
#include <optional>

#include "access.hpp"
#include "boundary.hpp"
#include "client_door.hpp"
#include "job_record.hpp"
#include "messages.hpp"
#include "reputation.hpp"

namespace gflex {

namespace {

struct door_state {
  std::string core_id;
  caf::actor store;
  caf::actor gate;  // the gatekeeper as reading_gate passes its answers on
  std::shared_ptr<const leader_record> leader;
  client_sessions sessions;  // the clients' (client_door.hpp)
  static inline const char* name = "follower_door";
};

using door_actor = caf::stateful_actor<door_state, guarded<caf::event_based_actor>>;

// Where the caller should go instead.
error to_the_leader(const door_state& st) {
  const std::string record = st.leader->get();
  const auto space = record.find(' ');
  // Clients take both answers for a failover under way, and ride it out (link_loss.hpp
  // matches " follows and no core leads").
  if (space == std::string::npos)
    return error(errc::unavailable, "core " + st.core_id +
                                        " follows and no core leads at the moment (another "
                                        "takes over within the leader's lease); try again");
  return error(errc::not_leader, "core " + st.core_id + " follows and answers only status, jobs " +
                                     "and nodes; the leader, " + record.substr(0, space) +
                                     ", is at " + record.substr(space + 1));
}

// What a follower answers when its read of the replicated state failed (cut off from etcd,
// say, while the clients still reach it): the leader it last knew, as for a write, or "try
// another core". Passed on as it was, the store's error was final to a client, which then
// tried none of its other cores: every client that named this core first failed, a key's
// check included, while another core led.
error cannot_read(const std::string& core_id, const leader_record& leader, const caf::error& why,
                  caf::actor_system& sys) {
  const std::string reason = from_caf(why, &sys).message();
  const std::string record = leader.get();
  const auto space = record.find(' ');
  // " follows and no core leads" and " is at HOST:PORT" at the end are what clients match
  // (link_loss.hpp, leader_redirect.hpp).
  if (space == std::string::npos)
    return error(errc::unavailable, "core " + core_id +
                                        " follows and no core leads as far as it knows: it "
                                        "cannot read the replicated state (" +
                                        reason + "); try another core");
  return error(errc::not_leader, "core " + core_id + " follows and cannot read the replicated " +
                                     "state (" + reason + "); the leader it last knew, " +
                                     record.substr(0, space) + ", is at " +
                                     record.substr(space + 1));
}

// The gatekeeper as this door's sessions and keyed requests meet it. A key it refuses stays
// refused (permission_denied): a wrong key must not send a client round the cores. Any other
// failure is of its read of the replicated state, answered as cannot_read says.
caf::behavior reading_gate(caf::event_based_actor* self, caf::actor gate, std::string core_id,
                           std::shared_ptr<const leader_record> leader) {
  return {
      [=](auth_atom, std::string& key) -> caf::result<std::string> {
        auto rp = self->make_response_promise<std::string>();
        // Short of the door's 30 s: a gatekeeper whose store hangs is a failed read too,
        // rather than the door's own timeout, which sends a client nowhere else.
        self->request(gate, std::chrono::seconds(25), auth_atom::value, std::move(key))
            .then([=](std::string& who) mutable { rp.deliver(std::move(who)); },
                  [=](caf::error& e) mutable {
                    if (e.category() == error_category &&
                        static_cast<errc>(e.code()) == errc::permission_denied)
                      rp.deliver(std::move(e));
                    else
                      rp.deliver(to_caf(cannot_read(core_id, *leader, e, self->system())));
                  });
        return rp;
      },
  };
}

std::string as_text(const std::vector<uint8_t>& bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

// A job's status as its record holds it, marked as read here.
job_status as_committed(job_status s, const std::string& core_id) {
  const std::string where = "as of its last committed round, read on core " + core_id;
  s.detail = s.detail.empty() ? where : s.detail + "; " + where;
  return s;
}

caf::behavior follower_door(door_actor* self, std::string core_id, caf::actor store,
                            caf::actor gate, std::shared_ptr<const leader_record> leader) {
  auto& st = self->state;
  st.core_id = std::move(core_id);
  st.store = std::move(store);
  st.leader = std::move(leader);
  // Linked: it ends with the door, and the door with it.
  st.gate = self->spawn<caf::linked>(reading_gate, std::move(gate), st.core_id, st.leader);
  self->set_down_handler(
      [=](const caf::down_msg& down) { self->state.sessions.forget(down.source); });
  // A peer's error messages are dropped; whatever this door does not answer goes to the
  // leader (a node's hello, a client's writes relayed by its session).
  self->set_error_handler([](caf::error&) {});
  self->set_default_handler(
      [=](caf::scheduled_actor*, caf::message_view&) -> caf::result<caf::message> {
        return to_caf(to_the_leader(self->state));
      });
  // A read of the replicated state that failed, as cannot_read answers it.
  auto unreadable = [=](const caf::error& e) {
    return to_caf(cannot_read(self->state.core_id, *self->state.leader, e, self->system()));
  };
  // As on the leader (client_door.hpp).
  auto authorized = [=](const std::string& key, bool operator_only, authorized_fn then) {
    return authorize(self, self->state.gate, key, operator_only, std::move(then));
  };
  // The status a job record shows `who`, as the leader would; nothing for a record `who`
  // may not see (or that does not decode).
  auto status_for = [=](const std::string& who, const std::string& key,
                        const std::vector<uint8_t>& bytes) -> std::optional<job_status> {
    auto r = decode_job_record(bytes);
    if (!r) {
      spdlog::error("store: {}: {}", key, r.error().message());
      return std::nullopt;
    }
    if (who != operator_principal && who != r->second.owner) return std::nullopt;
    if (auto spec = parse_job_spec(r->first, r->second.job_id)) fill_from_spec(r->second, *spec);
    return as_committed(std::move(r->second), self->state.core_id);
  };
  return {
      [=](auth_atom, std::string& key, caf::actor& link) -> caf::result<client_welcome> {
        return open_client_session(self, self->state.gate, std::move(key), std::move(link));
      },
      [=](status_atom, std::string& key, std::string& id) {
        return authorized(key, false, [=](caf::response_promise& rp, const std::string& who) {
          // Whatever the id, the owner check below decides: another's record is unknown.
          auto unknown = to_caf(error(errc::invalid_argument, "unknown job '" + id + "'"));
          const auto record = job_record_key(id);
          self->request(self->state.store, std::chrono::seconds(30), read_atom::value, record)
              .then(
                  [=](bool found, std::vector<uint8_t>& bytes) mutable {
                    auto s = found ? status_for(who, record, bytes) : std::nullopt;
                    if (s) return rp.deliver(std::move(*s));
                    rp.deliver(unknown);
                  },
                  [=](caf::error& e) mutable { rp.deliver(unreadable(e)); });
        });
      },
      [=](jobs_atom, std::string& key) {
        return authorized(key, false, [=](caf::response_promise& rp, const std::string& who) {
          self->request(self->state.store, std::chrono::seconds(30), scan_atom::value,
                        std::string("job/"), std::string("/record"))
              .then(
                  [=](std::vector<std::string>& keys,
                      std::vector<std::vector<uint8_t>>& values) mutable {
                    std::vector<job_status> out;
                    for (size_t i = 0; i < keys.size(); ++i)
                      if (auto s = status_for(who, keys[i], values[i]))
                        out.push_back(list_entry(std::move(*s)));
                    rp.deliver(std::move(out));
                  },
                  [=](caf::error& e) mutable { rp.deliver(unreadable(e)); });
        });
      },
      [=](nodes_atom, std::string& key) {
        return authorized(key, true, [=](caf::response_promise& rp, const std::string&) {
          self->request(self->state.store, std::chrono::seconds(30), scan_atom::value,
                        std::string("node/"), std::string("/reputation"))
              .then(
                  [=](std::vector<std::string>& keys,
                      std::vector<std::vector<uint8_t>>& values) mutable {
                    std::vector<node_status> out;
                    for (size_t i = 0; i < keys.size(); ++i) {
                      auto r = decode_reputation(as_text(values[i]));
                      if (!r) {
                        spdlog::error("store: {}: {}", keys[i], r.error().message());
                        continue;
                      }
                      auto s = status_of(r->name, *r);
                      s.node_id = "-";
                      s.last_seen_s = -1;  // connections are the leader's to know
                      out.push_back(std::move(s));
                    }
                    rp.deliver(std::move(out));
                  },
                  [=](caf::error& e) mutable { rp.deliver(unreadable(e)); });
        });
      },
  };
}

}  // namespace

caf::actor spawn_follower_door(caf::actor_system& sys, std::string core_id, caf::actor store,
                               caf::actor gate, std::shared_ptr<const leader_record> leader) {
  return sys.spawn(follower_door, std::move(core_id), std::move(store), std::move(gate),
                   std::move(leader));
}

}  // namespace gflex
