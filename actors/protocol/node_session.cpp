#include "node_session.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <map>

#include "boundary.hpp"
#include "core_metrics.hpp"

namespace gflex {

namespace {

using clock_type = std::chrono::steady_clock;

struct chunk_request {
  std::string digest;
  caf::typed_response_promise<std::vector<uint8_t>> promise;
};

struct session_state {
  session_identity who;
  session_limits limits;
  node_uplink_actor uplink;
  caf::actor registry, data_server;
  // The node's earnings as last looked up, and when (a node asking often gets these).
  int64_t earned = 0;
  clock_type::time_point earned_at{};
  bool asking_earned = false;
  std::map<uint64_t, clock_type::time_point> in_flight;  // assignment id -> sent at
  std::deque<chunk_request> chunk_queue;
  uint32_t chunks_serving = 0;
  double chunk_budget = 0.0;  // bytes that may go out now; refilled at chunk_bytes_per_s
  clock_type::time_point budget_at;
  bool refill_pending = false;
  uint64_t dropped = 0;  // outside the interface or refused; plus forged system messages
  static inline const char* name = "node_session";
};

using session_actor = caf::stateful_actor<session_state, guarded<node_session_internal::base>>;

uint64_t dropped_total(session_actor* self) {
  return self->state.dropped + self->refused();
}

// Tells the node why it is cut off, then ends the session (its uplink sees it go and joins
// again, from scratch, through the core's front door).
void disconnect(session_actor* self, const std::string& why) {
  auto& st = self->state;
  spdlog::warn("session of node {} ({}): {}; disconnecting it", st.who.node_id, st.who.name, why);
  self->send(st.uplink, bye_atom::value, "disconnected by the core: " + why);
  self->quit(caf::make_error(caf::sec::request_receiver_down, why));
}

// Counts a message the node may not send; past the bound the node goes.
void drop(session_actor* self, const char* what) {
  auto& st = self->state;
  st.dropped += 1;
  core_metrics::dropped_messages("node").inc();
  if (st.dropped == 1 || st.dropped % 100 == 0)
    spdlog::warn("session of node {} ({}): dropped {} ({} dropped so far)", st.who.node_id,
                 st.who.name, what, dropped_total(self));
  if (dropped_total(self) > st.limits.max_dropped)
    disconnect(self, "it sent more than " + std::to_string(st.limits.max_dropped) +
                         " messages outside its interface");
}

// Whether the current message comes from this process (the core's own actors).
bool from_core(session_actor* self) {
  const auto& sender = self->current_sender();
  return sender && sender->node() == self->node();
}

void refill(session_actor* self) {
  auto& st = self->state;
  auto now = clock_type::now();
  const double rate = static_cast<double>(st.limits.chunk_bytes_per_s);
  st.chunk_budget =
      std::min(8.0 * rate,
               st.chunk_budget + rate * std::chrono::duration<double>(now - st.budget_at).count());
  st.budget_at = now;
}

// Serves waiting chunk requests while the node is within its bounds; a request that would
// pass the byte budget waits until the budget has refilled.
void pump_chunks(session_actor* self) {
  auto& st = self->state;
  refill(self);
  while (!st.chunk_queue.empty() && st.chunks_serving < st.limits.chunks_in_flight) {
    if (st.chunk_budget <= 0.0) {
      if (!st.refill_pending) {
        st.refill_pending = true;
        auto wait = std::chrono::milliseconds(
            1 + static_cast<int64_t>(-st.chunk_budget * 1000.0 /
                                     static_cast<double>(st.limits.chunk_bytes_per_s)));
        self->delayed_send(self, wait, tick_atom::value);
      }
      return;
    }
    auto next = std::move(st.chunk_queue.front());
    st.chunk_queue.pop_front();
    st.chunks_serving += 1;
    // request + deliver, never delegate: the data server must not answer the node itself
    // (a handle that crosses the network is one the peer can message).
    self->request(st.data_server, std::chrono::seconds(120), chunk_atom::value, next.digest)
        .then(
            [=](std::vector<uint8_t>& bytes) mutable {
              auto& st = self->state;
              st.chunks_serving -= 1;
              st.chunk_budget -= static_cast<double>(bytes.size());
              next.promise.deliver(std::move(bytes));
              pump_chunks(self);
            },
            [=](caf::error& e) mutable {
              self->state.chunks_serving -= 1;
              next.promise.deliver(std::move(e));
              pump_chunks(self);
            });
  }
}

// Checks a node's answer to assignment `id`, sent `sent_at`: it must name that assignment
// and carry finite figures; the compute time it claims is capped at what the session
// measured between sending and receiving (what the job pays for). An answer naming another
// assignment or with non-finite figures goes on to the job unchanged, which rejects it as
// malformed (proof of misbehaviour, held against this node). Whether the answer is well
// formed (its rate then counts for the market).
bool check_answer(session_actor* self, uint64_t id, clock_type::time_point sent_at,
                  assignment_result& r) {
  auto& st = self->state;
  const double measured = std::chrono::duration<double>(clock_type::now() - sent_at).count();
  if (r.assignment_id != id) {
    spdlog::warn("session of node {} ({}): answer to assignment {:016x} names {:016x}",
                 st.who.node_id, st.who.name, id, r.assignment_id);
    return false;
  }
  if (!std::isfinite(r.compute_s) || r.compute_s < 0.0) return false;  // the job rejects it
  if (r.compute_s > measured) {
    spdlog::warn(
        "session of node {} ({}): assignment {:016x} claims {:.3f} s of compute in {:.3f} s; "
        "paid for {:.3f} s",
        st.who.node_id, st.who.name, id, r.compute_s, measured, measured);
    r.compute_s = measured;
  }
  return true;
}

node_session_internal::behavior_type session_behavior(session_actor* self, session_identity who,
                                                      session_limits limits, caf::actor uplink,
                                                      caf::actor registry, caf::actor data_server) {
  auto& st = self->state;
  st.who = std::move(who);
  st.limits = limits;
  st.uplink = caf::actor_cast<node_uplink_actor>(std::move(uplink));
  st.registry = std::move(registry);
  st.data_server = std::move(data_server);
  st.chunk_budget = 8.0 * static_cast<double>(limits.chunk_bytes_per_s);
  st.budget_at = clock_type::now();
  // The session lives as long as its node's uplink and the registry that made it (a
  // restarted registry makes every node join again).
  self->monitor(st.uplink);
  self->monitor(st.registry);
  self->set_down_handler([=](const caf::down_msg& down) {
    auto& st = self->state;
    if (down.source == st.registry.address()) {
      self->send(st.uplink, bye_atom::value, std::string("the core restarted its registry"));
      self->quit(caf::exit_reason::user_shutdown);
    } else if (down.source == st.uplink.address()) {
      self->quit(down.reason ? down.reason : caf::error(caf::exit_reason::remote_link_unreachable));
    }
  });
  handle_outside_messages(self, drop);
  return {
      [=](beat_atom) {
        auto& st = self->state;
        caf::anon_send(st.registry, beat_atom::value, st.who.node_id, dropped_total(self));
      },
      [=](earned_atom) -> caf::result<int64_t> {
        auto& st = self->state;
        const auto now = clock_type::now();
        if (st.asking_earned || now - st.earned_at < std::chrono::seconds(2)) return st.earned;
        st.asking_earned = true;
        st.earned_at = now;
        auto rp = self->make_response_promise<int64_t>();
        self->request(st.registry, std::chrono::seconds(10), earned_atom::value, st.who.name)
            .then(
                [=](int64_t micro) mutable {
                  self->state.earned = micro;
                  self->state.asking_earned = false;
                  rp.deliver(micro);
                },
                [=](caf::error&) mutable {
                  self->state.asking_earned = false;
                  rp.deliver(self->state.earned);
                });
        return rp;
      },
      [=](bye_atom) {
        spdlog::info("node {} ({}) said bye", self->state.who.node_id, self->state.who.name);
        self->quit();
      },
      [=](chunk_atom, std::string& digest) -> caf::result<std::vector<uint8_t>> {
        auto& st = self->state;
        if (st.chunk_queue.size() >= st.limits.chunk_queue) {
          auto why =
              "more than " + std::to_string(st.limits.chunk_queue) + " chunk requests waiting";
          disconnect(self, why);
          return to_caf(error(errc::limit_exceeded, why));
        }
        auto rp = self->make_response_promise<std::vector<uint8_t>>();
        st.chunk_queue.push_back({std::move(digest), rp});
        pump_chunks(self);
        return rp;
      },
      [=](assign_atom, uint32_t worker, assignment& a) -> caf::result<assignment_result> {
        auto& st = self->state;
        if (!from_core(self)) {
          drop(self, "an assignment (only the core assigns work)");
          return to_caf(error(errc::permission_denied, "only the core assigns work"));
        }
        if (worker >= st.who.workers)
          return to_caf(error(errc::invalid_argument, "no such worker"));
        const uint64_t id = a.id;
        const auto sent_at = clock_type::now();
        // The work it stands for, known before the node answers: what the measured rate
        // counts (a node's claimed samples are not trusted).
        const double samples = static_cast<double>(std::max<int64_t>(a.local_steps, 0)) *
                               static_cast<double>(std::max<int64_t>(a.batch_size, 0));
        const std::string workload = a.workload;
        st.in_flight[id] = sent_at;
        auto rp = self->make_response_promise<assignment_result>();
        self->request(st.uplink, std::chrono::minutes(30), assign_atom::value, worker, std::move(a))
            .then(
                [=](assignment_result& r) mutable {
                  auto& st = self->state;
                  st.in_flight.erase(id);
                  if (check_answer(self, id, sent_at, r)) {
                    const double took =
                        std::chrono::duration<double>(clock_type::now() - sent_at).count();
                    if (took > 0.0 && samples > 0.0)
                      caf::anon_send(st.registry, rate_atom::value, st.who.name, workload,
                                     samples / took);
                  }
                  rp.deliver(std::move(r));
                },
                [=](caf::error& e) mutable {
                  self->state.in_flight.erase(id);
                  rp.deliver(std::move(e));
                });
        return rp;
      },
      [=](abort_atom, uint64_t id) {
        auto& st = self->state;
        if (!from_core(self)) return drop(self, "an abort (only the core withdraws work)");
        if (st.in_flight.count(id)) self->send(st.uplink, abort_atom::value, id);
      },
      [=](serve_atom, caf::actor& data_server) {
        if (!from_core(self)) return drop(self, "a data server (only the core names one)");
        self->state.data_server = std::move(data_server);
      },
      [=](tick_atom) {
        self->state.refill_pending = false;
        pump_chunks(self);
      },
  };
}

// A compute slot's handle inside the core: what jobs and the verifier send work to. It asks
// the session (request + deliver, so that the answer comes from this actor, which the job
// checks) and lives as long as the session (linked).
caf::behavior worker_handle(caf::event_based_actor* self, node_session_internal session,
                            uint32_t index) {
  return {
      [=](assign_atom, assignment& a) -> caf::result<assignment_result> {
        auto rp = self->make_response_promise<assignment_result>();
        self->request(session, caf::infinite, assign_atom::value, index, std::move(a))
            .then([=](assignment_result& r) mutable { rp.deliver(std::move(r)); },
                  [=](caf::error& e) mutable { rp.deliver(std::move(e)); });
        return rp;
      },
      [=](abort_atom, uint64_t id) { self->send(session, abort_atom::value, id); },
  };
}

}  // namespace

spawned_session spawn_node_session(caf::actor_system& sys, session_identity who,
                                   session_limits limits, caf::actor uplink, caf::actor registry,
                                   caf::actor data_server) {
  const uint32_t workers = who.workers;
  spawned_session out;
  out.session = sys.spawn(session_behavior, std::move(who), limits, std::move(uplink),
                          std::move(registry), std::move(data_server));
  for (uint32_t i = 0; i < workers; ++i)
    out.workers.push_back(sys.spawn(worker_handle, out.session, i));
  // Tied one way: the session's end is the handles' end (the market and jobs see them go
  // down); a handle has no end of its own.
  auto session = caf::actor_cast<caf::actor>(out.session);
  session->attach_functor([handles = out.workers](const caf::error&) {
    for (const auto& w : handles) caf::anon_send_exit(w, caf::exit_reason::user_shutdown);
  });
  return out;
}

}  // namespace gflex
