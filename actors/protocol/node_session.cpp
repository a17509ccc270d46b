#include "node_session.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <map>
#include <optional>
#include <set>

#include "boundary.hpp"
#include "core_metrics.hpp"
#include "gflex/runtime/job_spec.hpp"
#include "gflex/runtime/payload_chunks.hpp"
#include "gflex/runtime/printable_text.hpp"

namespace gflex {

namespace {

/// How long the asker of assignment `a` (a job, the verifier) waits for its answer, in
/// seconds: its own bound, or the longest deadline a spec may give.
double asker_wait_s(const assignment& a) {
  return a.answer_within_s > 0.0 && std::isfinite(a.answer_within_s)
             ? std::min(a.answer_within_s, max_deadline_s)
             : max_deadline_s;
}

/// How long a session waits for its node's answer to an assignment `a`: past its asker's own
/// wait (the job withdraws one past its deadline before), or past the longest deadline a spec
/// may give. CAF 0.17 keeps a request's timeout in its clock until it fires, answered or not
/// (with a hold on the session): every assignment's day-long one stayed a day, tens of
/// millions of them on a busy core.
std::chrono::milliseconds answer_wait(const assignment& a, const session_limits& limits) {
  return std::chrono::milliseconds(static_cast<int64_t>(asker_wait_s(a) * 1000.0)) +
         limits.answer_slack;
}

/// The share of its asker's wait past which an assignment withdrawn unanswered counts as one
/// that ran out of time. The job starts its deadline a hop before the session sends the work,
/// and its abort comes a hop after the deadline, so a withdrawal at the deadline may come a
/// little short of it here; one well before it (a round closed by a quorum, a backup that
/// won) says nothing of the node's speed.
constexpr double deadline_share = 0.9;

using clock_type = std::chrono::steady_clock;

struct chunk_request {
  std::string digest;
  caf::typed_response_promise<std::vector<uint8_t>> promise;
};

/// A chunk of the parameters of assignments out on this node, which it may ask for.
struct param_chunk {
  std::shared_ptr<const shared_params> params;
  uint64_t index = 0;
  uint32_t users = 0;    // occurrences in assignments still out
  uint32_t allowed = 0;  // times it may be served: a few per occurrence (retries, resumption)
  uint32_t served = 0;
};

/// How often one chunk of parameters may be served per assignment that needs it: once, and
/// again after a lost answer or a reconnect. Past it a node is asking to waste the core's
/// bandwidth.
constexpr uint32_t serves_per_assignment = 3;

/// Chunk requests a session keeps out to its node's uplink while collecting an answer.
constexpr int answer_chunks_in_flight = 4;

struct answer_pull;

/// An assignment the node has and has not answered yet: what its session saw of it, by which
/// it judges whose fault the node's failure is, and how fast the node computed it.
struct assignment_watch {
  clock_type::time_point sent_at;
  /// Since when the node has held its parameters: the first serve of the last of their
  /// chunks it could not have held before, or sent_at (parameters inline, or held). Its
  /// compute time counts from here.
  clock_type::time_point params_at;
  /// Its parameter chunks and shard, which the node may ask for; true for a parameter chunk
  /// whose first serve, to come, moves params_at.
  std::map<std::string, bool> chunks;
  bool core_failed = false;  // the core (its data server) failed an ask for one of them
};

/// An assignment out on the node, until the job has its answer: the job's promise, and once
/// the node answered with chunks, their collection. What it is kept with measures a node that
/// lets it run out of time (measure_unanswered).
struct assignment_out {
  caf::typed_response_promise<assignment_result> promise;
  std::shared_ptr<answer_pull> pull;
  clock_type::time_point sent_at;
  double asker_s = 0.0;  // how long its asker waits (asker_wait_s)
  double samples = 0.0;  // the work it stands for, by the assignment
  std::string workload;  // market_workload of it
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
  std::map<uint64_t, assignment_watch> in_flight;                        // by assignment id
  std::map<uint64_t, assignment_out> out;                                // by assignment id
  std::map<std::string, param_chunk> param_chunks;                       // by digest
  std::map<uint64_t, std::shared_ptr<const shared_params>> chunked_out;  // by assignment
  std::deque<chunk_request> chunk_queue;
  uint32_t chunks_serving = 0;
  // The asks of the data server out for this node (at most chunks_in_flight), by the order
  // they went, with when each went; and when the data server last failed one, or answered one
  // it held for longer than data_server_slow. What the session believes of a node's word that
  // the core did not serve it (core_may_have_failed): evidence a node cannot make up.
  std::map<uint64_t, clock_type::time_point> data_asks;
  uint64_t data_asks_sent = 0;
  std::optional<clock_type::time_point> core_lapsed_at;
  double chunk_budget = 0.0;  // bytes that may go out now; refilled at chunk_bytes_per_s
  clock_type::time_point budget_at;
  bool refill_pending = false;
  uint64_t dropped = 0;  // outside the interface or refused; plus forged system messages
  clock_type::time_point beat_forwarded{};  // when a heartbeat last went to the registry
  // The data chunks its assignments named (their shards, and next rounds' as hints), the
  // newest last: the only ones it may fetch. Any other was served, and a node that learned
  // digests could read other accounts' data sets.
  std::set<std::string> granted;
  std::deque<std::string> granted_order;
  // Parameter chunks of withdrawn assignments, the newest last, with the asks left that are
  // answered without counting as dropped: the node's uplink keeps a few asks out and asks
  // again on each answer until the abort reaches it, and an honest node was cut off as an
  // attacker after some 250 aborts.
  std::map<std::string, uint32_t> withdrawn;
  std::deque<std::string> withdrawn_order;
  static inline const char* name = "node_session";
};

using session_actor = caf::stateful_actor<session_state, guarded<node_session_internal::base>>;

/// The least time between two heartbeats a session passes to the registry: half of the
/// shortest --heartbeat-ms a core takes.
constexpr auto min_beat_gap = std::chrono::milliseconds(25);

/// The data chunks a session remembers its node was assigned (the newest): far more than the
/// shards of the rounds a node's workers have in hand.
constexpr size_t max_granted_chunks = 4096;

/// The asks of a withdrawn assignment's parameter chunk answered as late rather than dropped,
/// and how many such chunks a session remembers.
constexpr uint32_t late_asks_per_chunk = 2;
constexpr size_t max_withdrawn_chunks = 4096;

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

// Whether an answer to a request the session made of the core's own actors (the data server,
// the registry) comes from this process. CAF matches a response by its id alone, and the
// guard lets the node's responses through (the session asks its uplink things): a node that
// read the ids off the session's requests answered its chunk requests itself, and the
// session counted them as served, past the bounds on what it may fetch. Such a node is cut
// off: the real answer is lost with the request its forgery answered.
bool answered_by_core(session_actor* self) {
  if (from_core(self)) return true;
  // An error without a sender is CAF's bounce of a request to a dead local actor (the data
  // server being restarted); a peer's is dropped before it reaches a session
  // (routed_messages.hpp).
  if (!self->current_sender()) return true;
  disconnect(self, "it answered a request the session made of the core");
  return false;
}

// Chunk `digest` was served to the node: each assignment that could not be computed without
// it, nor its chunk held before, counts its compute time from now. Only a first serve counts:
// a node that asked for a chunk again once done would shrink its compute time to nothing.
void note_served(session_actor* self, const std::string& digest) {
  const auto now = clock_type::now();
  for (auto& [id, w] : self->state.in_flight)
    if (auto c = w.chunks.find(digest); c != w.chunks.end() && c->second) {
      c->second = false;
      w.params_at = std::max(w.params_at, now);
    }
}

// The core failed the node's ask for chunk `digest`: each assignment that needs it notes it.
void note_not_served(session_actor* self, const std::string& digest) {
  for (auto& [id, w] : self->state.in_flight)
    if (w.chunks.count(digest) != 0) w.core_failed = true;
}

// The data server answered ask `ask` of this session, `failed` or not: a failure, or an answer
// it held for longer than one that serves normally takes, is a lapse of the core's.
void note_data_answer(session_actor* self, uint64_t ask, bool failed) {
  auto& st = self->state;
  const auto now = clock_type::now();
  const auto it = st.data_asks.find(ask);
  if (it == st.data_asks.end()) return;
  if (failed || now - it->second > st.limits.data_server_slow) st.core_lapsed_at = now;
  st.data_asks.erase(it);
}

// Whether the node can say, without lying, that the core failed to serve its work: the data
// server failed an ask of this session, or held one for longer than data_server_slow, within
// the last node_chunk_wait, or holds one that long now. Judged by the session's asks, not the
// assignment's: a node's cache fails every request it has out once nothing came for as long
// as a node waits, whichever ask the data server held (an assignment sent a minute after the
// held one was failed with it, its own wait not run out), and an assignment whose shard was
// prefetched during the one before, or whose parameters were fetched for an earlier one,
// asks for nothing of its own. Parameter chunks are served by the session at once, from
// memory. A node that says so while the data server answers promptly speaks for itself.
bool core_may_have_failed(const session_state& st) {
  const auto now = clock_type::now();
  if (st.core_lapsed_at && now - *st.core_lapsed_at <= st.limits.node_chunk_wait) return true;
  return !st.data_asks.empty() && now - st.data_asks.begin()->second > st.limits.data_server_slow;
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
    const uint64_t ask = st.data_asks_sent++;
    st.data_asks.emplace(ask, clock_type::now());
    // request + deliver, never delegate: the data server must not answer the node itself
    // (a handle that crosses the network is one the peer can message).
    self->request(st.data_server, std::chrono::seconds(120), chunk_atom::value, next.digest)
        .then(
            [=](std::vector<uint8_t>& bytes) mutable {
              if (!answered_by_core(self)) return;
              auto& st = self->state;
              st.chunks_serving -= 1;
              note_data_answer(self, ask, false);
              st.chunk_budget -= static_cast<double>(bytes.size());
              next.promise.deliver(std::move(bytes));
              pump_chunks(self);
            },
            [=](caf::error& e) mutable {
              if (!answered_by_core(self)) return;
              self->state.chunks_serving -= 1;
              // The data server's own word that it holds no such chunk comes at once and is
              // no lapse of the core's: a node that asked for a granted shard of a job that
              // had ended (its set removed) was then believed, for node_chunk_wait, that the
              // core failed every assignment it gave back at once. An assignment out that
              // needs the chunk notes the failure (note_not_served).
              const bool absent =
                  e.category() == error_category && static_cast<errc>(e.code()) == errc::io_error;
              note_data_answer(self, ask, !absent);
              note_not_served(self, next.digest);
              next.promise.deliver(std::move(e));
              pump_chunks(self);
            });
  }
}

// Whether the node's uplink lives in another process: only then do payloads go as chunks.
bool node_is_remote(session_actor* self) {
  return self->state.uplink.node() != self->node();
}

// Makes the chunks of an assignment's parameters available to the node until it answers.
void offer_params(session_actor* self, uint64_t id, std::shared_ptr<const shared_params> p) {
  auto& st = self->state;
  for (uint64_t i = 0; i < p->chunks.size(); ++i) {
    auto& c = st.param_chunks[p->chunks[i]];
    if (!c.params) {
      c.params = p;
      c.index = i;
    }
    c.users += 1;
    c.allowed += serves_per_assignment;
  }
  st.chunked_out[id] = std::move(p);
}

void withdraw_params(session_actor* self, uint64_t id) {
  auto& st = self->state;
  auto it = st.chunked_out.find(id);
  if (it == st.chunked_out.end()) return;
  for (const auto& digest : it->second->chunks) {
    auto c = st.param_chunks.find(digest);
    if (c == st.param_chunks.end() || --c->second.users > 0) continue;
    st.param_chunks.erase(c);
    if (st.withdrawn.insert_or_assign(digest, late_asks_per_chunk).second)
      st.withdrawn_order.push_back(digest);
    if (st.withdrawn_order.size() > max_withdrawn_chunks) {
      st.withdrawn.erase(st.withdrawn_order.front());
      st.withdrawn_order.pop_front();
    }
  }
  st.chunked_out.erase(it);
}

// The rate a node's well-formed answer showed (samples per second the session measured), for
// the registry (and the market) once the whole answer is in; nothing when `to` is unset.
struct rate_report {
  caf::actor to;
  std::string node, workload;
  double samples_per_s = 0.0;
  void send() const {
    if (to) caf::anon_send(to, rate_atom::value, node, workload, samples_per_s);
  }
};

// Assignment `out` ended with no whole answer from the node: withdrawn by its asker, or given
// up on by the session. Where its asker's deadline had passed, the node's rate goes to the
// market as it would for an answer: the samples over the time since the session sent the work,
// which the node did not finish them in (a true bound, however it spent that time). Measured by
// answers alone, a node that took work and never answered kept its claimed rate for good (a
// timeout is not held against a node): one that claimed 9e11 samples/s at the lowest price was
// the cheapest, took every job's slots first, and held each round for its whole deadline. Not
// where the core failed to serve the work's chunks (`core_failed`), nor for a withdrawal well
// before the deadline (deadline_share).
void measure_unanswered(session_actor* self, uint64_t id, const assignment_out& out,
                        bool core_failed) {
  auto& st = self->state;
  const double ran = std::chrono::duration<double>(clock_type::now() - out.sent_at).count();
  if (core_failed || out.samples <= 0.0 || ran <= 0.0 || ran < deadline_share * out.asker_s) return;
  spdlog::info(
      "session of node {} ({}): assignment {:016x} unanswered after {:.1f} s; measured "
      "at {:.3g} samples/s",
      st.who.node_id, st.who.name, id, ran, out.samples / ran);
  rate_report{st.registry, st.who.name, out.workload, out.samples / ran}.send();
}

// Whether error `e`, as the session's request to its node's uplink ended, is the session's own
// timeout: CAF sends it from the session itself, never from the node.
bool own_timeout(session_actor* self, const caf::error& e) {
  return e == caf::sec::request_timeout && self->current_sender() == self->ctrl();
}

// An answer whose update the node sent as chunks, being collected from its uplink.
struct answer_pull {
  uint64_t id = 0;  // the assignment's (the answer's own may be a lie)
  rate_report rate;
  std::optional<chunk_assembler> parts;
  assignment_result result;
  caf::typed_response_promise<assignment_result> promise;
  uint64_t next = 0;
  int in_flight = 0;
  bool ended = false;
  clock_type::time_point last_chunk = clock_type::now();  // or the pull's start
};

/// While a node sends its answer's chunks, the session beats for it once a second, for as
/// long as a chunk came within pull_quiet_limit: the node's own heartbeats wait behind the
/// chunks on its connection, and one chunk of 1 MiB over a volunteer's 1 Mbit/s uplink takes
/// 8 s, past the 4 s lease, so the node was dropped mid-answer, round after round. A node
/// gone silent is still let go: 30 s after its last chunk, not 4 s.
constexpr auto pull_beat_every = std::chrono::seconds(1);
constexpr auto pull_quiet_limit = std::chrono::seconds(30);

// An error the node answered with, as the core passes it on: the node's own words reach the
// job's status, the core's log and users' terminals and JSON, so printable text only (bytes
// that are not UTF-8 made `gflex status --json` abort), and no more of them than a status
// line shows. Only errors of the session's own making keep CAF's category: its request's
// timeout (which CAF sends it from itself) and CAF's bounce of a request to a link that is
// gone (no sender: a peer's response without one is dropped in BASP, routed_messages.hpp).
// Any other comes from the node's process, whatever category it names: a node that answered
// with CAF's timeout passed for slow and was never cooled down, one with a context of
// megabytes and line breaks wrote forged lines into the core's log (the job logs an error
// rendered in full), and one with no error at all (code 0, which has no category) crashed
// the core. Its `unavailable` says that the core failed to serve it, which the job does not
// hold against the node (job.cpp, core_too_slow): it keeps that code only where the session
// saw cause for it (`believed`: the core failed one of the assignment's chunks, or
// core_may_have_failed), and is otherwise the node's io_error, which cools the node down.
// Passed on as the node named it, a node that answered every assignment so at once got the
// same shard back in a tight loop, never cooled down, and stalled its job.
caf::error node_words(session_actor* self, caf::error e, bool believed = false) {
  const auto& sender = self->current_sender();
  if (!e) return to_caf(error(errc::io_error, "the node answered with an error of no code"));
  if (!sender || sender == self->ctrl()) return e;
  constexpr size_t shown = 512;
  const auto& context = e.context();
  const std::string_view said =
      context.match_elements<std::string>() ? context.get_as<std::string>(0) : std::string_view{};
  if (e.category() == error_category && static_cast<errc>(e.code()) == errc::unavailable &&
      !believed) {
    std::string text =
        "the node said the core did not serve it, yet the core's data server failed or held "
        "none of its chunk asks: ";
    text.append(said.substr(0, shown));
    return to_caf(error(errc::io_error, printable_text(std::string_view(text).substr(0, shown))));
  }
  if (e.category() == error_category && is_named(static_cast<errc>(e.code())))
    return to_caf(error(static_cast<errc>(e.code()), printable_text(said.substr(0, shown))));
  // Named by code and category only: CAF renders a context whole, escaping little.
  std::string text =
      "the node answered with " +
      (e.category() == error_category ? "gflex error code " + std::to_string(e.code())
                                      : self->system().render(caf::error(e.code(), e.category()))) +
      (said.empty() ? "" : ": ");
  text.append(said.substr(0, shown));
  return to_caf(error(errc::io_error, printable_text(std::string_view(text).substr(0, shown))));
}

// Asks the uplink for the answer's chunks, a few at a time; delivers the whole answer. A chunk
// that does not match its name makes the answer malformed: it goes on to the job without its
// update, which the job rejects as the node's misbehaviour. A chunk the node does not send in
// time fails the assignment (the job gives it to another worker).
void pull_answer(session_actor* self, std::shared_ptr<answer_pull> p) {
  auto& st = self->state;
  while (!p->ended && p->in_flight < answer_chunks_in_flight && p->next < p->parts->count()) {
    const uint64_t i = p->next++;
    p->in_flight += 1;
    self->request(st.uplink, std::chrono::seconds(120), chunk_atom::value, p->parts->digests()[i])
        .then(
            [=](std::vector<uint8_t>& bytes) {
              p->in_flight -= 1;
              if (p->ended) return;
              core_metrics::bytes("in", "update_chunk").inc(static_cast<double>(bytes.size()));
              p->last_chunk = clock_type::now();
              // A chunk that arrives is a sign of life: the node's heartbeats travel behind the
              // chunks already on its connection, and over a slow uplink would reach the core
              // after its lease (a 16 Mbit/s uplink takes 16 s to send four chunks of 8 MiB).
              caf::anon_send(self->state.registry, beat_atom::value, self->state.who.node_id,
                             dropped_total(self));
              if (auto added = p->parts->add(i, bytes); !added) {
                auto& st = self->state;
                spdlog::warn("session of node {} ({}): answer {:016x}: {}", st.who.node_id,
                             st.who.name, p->result.assignment_id, added.error().message());
                p->ended = true;
                p->result.update.clear();
                p->promise.deliver(std::move(p->result));
                st.out.erase(p->id);
                self->send(st.uplink, abort_atom::value, p->id);  // the rest is not wanted
                return;
              }
              if (p->parts->complete()) {
                p->ended = true;
                p->rate.send();
                p->result.update = p->parts->take();
                p->promise.deliver(std::move(p->result));
                self->state.out.erase(p->id);
                return;
              }
              pull_answer(self, p);
            },
            [=](caf::error& e) {
              p->in_flight -= 1;
              if (p->ended) return;
              p->ended = true;
              // Its update not in by its deadline: a whole answer is what the market measures.
              if (auto out = self->state.out.find(p->id);
                  out != self->state.out.end() && own_timeout(self, e))
                measure_unanswered(self, p->id, out->second, false);
              p->promise.deliver(node_words(self, std::move(e)));
              self->state.out.erase(p->id);
              self->send(self->state.uplink, abort_atom::value, p->id);  // the rest is not wanted
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
        // The registry is every node's: one node beating in a loop swamped its mailbox, and
        // honest nodes' beats queued behind the flood until their leases ran out. Beats come
        // every --heartbeat-ms (50 ms at the least); more often, they renew nothing more.
        const auto now = clock_type::now();
        if (now - st.beat_forwarded < min_beat_gap) return;
        st.beat_forwarded = now;
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
                  if (!answered_by_core(self)) return;
                  self->state.earned = micro;
                  self->state.asking_earned = false;
                  rp.deliver(micro);
                },
                [=](caf::error&) mutable {
                  if (!answered_by_core(self)) return;
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
        // A chunk of parameters it was assigned comes from memory, outside the data budget
        // (which is for data sets), a bounded number of times.
        if (auto c = st.param_chunks.find(digest); c != st.param_chunks.end()) {
          auto& chunk = c->second;
          if (chunk.served >= chunk.allowed) {
            drop(self, "a parameter chunk asked for again past its allowance");
            return to_caf(error(errc::limit_exceeded, "parameter chunk served too often"));
          }
          chunk.served += 1;
          note_served(self, digest);
          const auto& p = *chunk.params;
          const auto r = chunk_at(p.bytes.size(), p.chunk_bytes, chunk.index);
          core_metrics::bytes("out", "parameter_chunk").inc(static_cast<double>(r.size));
          return std::vector<uint8_t>(
              p.bytes.begin() + static_cast<std::ptrdiff_t>(r.offset),
              p.bytes.begin() + static_cast<std::ptrdiff_t>(r.offset + r.size));
        }
        if (auto w = st.withdrawn.find(digest); w != st.withdrawn.end() && w->second > 0) {
          w->second -= 1;
          return to_caf(error(errc::unavailable, "parameter chunk " + digest.substr(0, 16) +
                                                     " is of an assignment withdrawn"));
        }
        if (st.granted.count(digest) == 0) {
          drop(self, "a data chunk that none of its assignments named");
          return to_caf(error(errc::permission_denied,
                              "chunk " + digest.substr(0, 16) + " is not one of this node's"));
        }
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
        assignment_watch watch;
        watch.sent_at = watch.params_at = sent_at;
        // Not a chunk that times its compute: a node may hold its shard from before (its
        // cache keeps shards on disk across sessions), and ask for it once done.
        if (!a.shard.empty()) watch.chunks.emplace(a.shard, false);
        for (const auto* digest : {&a.shard, &a.next_shard})
          if (!digest->empty() && st.granted.insert(*digest).second) {
            st.granted_order.push_back(*digest);
            if (st.granted_order.size() > max_granted_chunks) {
              st.granted.erase(st.granted_order.front());
              st.granted_order.pop_front();
            }
          }
        // The work it stands for, known before the node answers: what the measured rate
        // counts (a node's claimed samples are not trusted).
        const double samples = static_cast<double>(std::max<int64_t>(a.local_steps, 0)) *
                               static_cast<double>(std::max<int64_t>(a.batch_size, 0));
        const std::string workload = market_workload(a.workload, a.model);
        // An answer's update is at most as large as fp32 parameters (plus its header).
        const uint64_t max_update = params_of(a).size() + (uint64_t{64} << 10);
        if (a.params_ref && node_is_remote(self)) {
          auto p = std::move(a.params_ref);
          if (p->chunks.empty()) {
            // Packed once per round, by the first session that sends them: parameters are
            // most of what a node downloads.
            a.params = p->wire_bytes();
            core_metrics::bytes("out", "parameters").inc(static_cast<double>(a.params.size()));
          } else {
            a.params_chunks = p->chunks;
            a.params_bytes = p->bytes.size();
            // A chunk the node was served, or offered for work withdrawn since, it may hold.
            for (const auto& digest : p->chunks) {
              const auto c = st.param_chunks.find(digest);
              watch.chunks.emplace(digest, (c == st.param_chunks.end() || c->second.served == 0) &&
                                               st.withdrawn.count(digest) == 0);
            }
            offer_params(self, id, std::move(p));
          }
        }
        st.in_flight[id] = std::move(watch);
        auto rp = self->make_response_promise<assignment_result>();
        auto& sent = st.out[id];
        sent.promise = rp;
        sent.sent_at = sent_at;
        sent.asker_s = asker_wait_s(a);
        sent.samples = samples;
        sent.workload = workload;
        // The job withdraws an assignment past its deadline (an abort); this bound is only
        // for a job that is gone, and may not cut short a deadline a spec may give.
        const auto wait = answer_wait(a, st.limits);
        self->request(st.uplink, wait, assign_atom::value, worker, std::move(a))
            .then(
                [=](assignment_result& r) mutable {
                  auto& st = self->state;
                  // Payload bytes are counted where they cross the network, as the node
                  // counts them: an update inline here, withdrawn or not; one in chunks as
                  // they are pulled. An in-process node's moved nowhere.
                  if (node_is_remote(self))
                    core_metrics::bytes("in", "update").inc(static_cast<double>(r.update.size()));
                  if (!st.out.count(id)) return;  // withdrawn by the core (an abort)
                  const auto w = st.in_flight.find(id);
                  const auto params_at = w != st.in_flight.end() ? w->second.params_at : sent_at;
                  st.in_flight.erase(id);
                  withdraw_params(self, id);
                  // The rate it measured counts for the market once the whole answer is in:
                  // a node that answered at once, then failed to send its update's chunks,
                  // was priced by a rate of nothing done.
                  rate_report rate;
                  if (check_answer(self, id, sent_at, r)) {
                    // Per second of compute, not of the wall time, which also counts sending
                    // the parameters, fetching the shard and sending the update back, a cost
                    // that does not grow with the work: assignments of one step measured tens
                    // of times slower than long ones on identical nodes, and the one
                    // calibration factor for all nodes carried that into their prices. A node
                    // in another process is timed by the session, from when it had its
                    // parameters (the first serve of their last chunk it could not hold
                    // before; the assignment's, when they went inline) to its answer (an
                    // update in chunks comes after): a time it cannot shrink. A shard it
                    // fetches meanwhile counts (it may hold one and ask for it once done).
                    // Its own figure is not taken: one that reported next to none was priced
                    // at next to no cost, given most of every job's work, and raised the
                    // fastest measured rate, which caps the claims of nodes not measured yet.
                    // A node in the core's own process (embedded, the operator's: the
                    // registry bounds none of them either) is taken at its word, capped at
                    // the wall time (its parameters cross no link to be timed by); with none,
                    // the wall time.
                    const auto now = clock_type::now();
                    const double took = std::chrono::duration<double>(now - sent_at).count();
                    double busy = took;
                    if (node_is_remote(self))
                      busy = std::chrono::duration<double>(now - params_at).count();
                    else if (r.compute_s > 0.0)
                      busy = std::min(r.compute_s, took);
                    if (busy > 0.0 && samples > 0.0)
                      rate = {st.registry, st.who.name, workload, samples / busy};
                  }
                  if (r.update_chunks.empty()) {
                    st.out.erase(id);
                    rate.send();
                    rp.deliver(std::move(r));
                    return;
                  }
                  auto p = std::make_shared<answer_pull>();
                  p->id = id;
                  p->rate = std::move(rate);
                  p->promise = rp;
                  auto parts = chunk_assembler::make(r.update_bytes, st.limits.payload_chunk_bytes,
                                                     std::move(r.update_chunks), max_update);
                  r.update.clear();
                  r.update_chunks.clear();
                  if (!parts) {
                    spdlog::warn("session of node {} ({}): answer {:016x}: {}", st.who.node_id,
                                 st.who.name, id, parts.error().message());
                    st.out.erase(id);
                    rp.deliver(std::move(r));  // malformed: the job rejects it
                    return;
                  }
                  p->parts = std::move(*parts);
                  p->result = std::move(r);
                  st.out[id].pull = p;
                  self->delayed_send(self, pull_beat_every, tick_atom::value, id);
                  pull_answer(self, std::move(p));
                },
                [=](caf::error& e) mutable {
                  auto& st = self->state;
                  const auto out = st.out.find(id);
                  if (out == st.out.end()) return;  // withdrawn by the core (an abort)
                  const auto w = st.in_flight.find(id);
                  const bool believed = (w != st.in_flight.end() && w->second.core_failed) ||
                                        core_may_have_failed(st);
                  // Given up on past its asker's deadline (its asker gone, or its abort lost).
                  if (own_timeout(self, e))
                    measure_unanswered(self, id, out->second,
                                       w != st.in_flight.end() && w->second.core_failed);
                  st.out.erase(id);
                  st.in_flight.erase(id);
                  withdraw_params(self, id);
                  rp.deliver(node_words(self, std::move(e), believed));
                });
        return rp;
      },
      [=](abort_atom, uint64_t id) {
        auto& st = self->state;
        if (!from_core(self)) return drop(self, "an abort (only the core withdraws work)");
        auto it = st.out.find(id);
        if (it == st.out.end()) return;
        // A job withdraws work at its deadline (fail_assignment): a node that lets it run out
        // of time, answering nothing, is measured by it (measure_unanswered).
        const auto w = st.in_flight.find(id);
        measure_unanswered(self, id, it->second, w != st.in_flight.end() && w->second.core_failed);
        // The node hears of it while it computes the work or still holds its answer's chunks
        // (it kept an update of up to a gigabyte for 10 minutes, every round it lost a race).
        if (st.in_flight.count(id) || (it->second.pull && !it->second.pull->ended))
          self->send(st.uplink, abort_atom::value, id);
        // Withdrawn here, not only at the node: a node that never answers kept the round's
        // parameters (and an answer's chunks collected so far) in the core's memory for as
        // long as the session waits, a day, every round it was given work.
        auto out = std::move(it->second);
        st.out.erase(it);
        st.in_flight.erase(id);
        withdraw_params(self, id);
        if (out.pull) {
          out.pull->ended = true;
          out.pull->parts.reset();
        }
        out.promise.deliver(to_caf(error(errc::unavailable, "the core withdrew the assignment")));
      },
      [=](serve_atom, caf::actor& data_server) {
        if (!from_core(self)) return drop(self, "a data server (only the core names one)");
        self->state.data_server = std::move(data_server);
      },
      [=](tick_atom, uint64_t id) {
        // The session's own timer only: a node's would keep it alive however silent it is.
        if (self->current_sender() != self->ctrl())
          return drop(self, "a timer's tick (only the session times itself)");
        auto& st = self->state;
        auto it = st.out.find(id);
        if (it == st.out.end() || !it->second.pull || it->second.pull->ended) return;
        const auto now = clock_type::now();
        if (now - it->second.pull->last_chunk > pull_quiet_limit) return;
        st.beat_forwarded = now;
        caf::anon_send(st.registry, beat_atom::value, st.who.node_id, dropped_total(self));
        self->delayed_send(self, pull_beat_every, tick_atom::value, id);
      },
      [=](tick_atom) {
        // The session's own timer only: a node's tick would pump chunks past the byte rate.
        if (self->current_sender() != self->ctrl())
          return drop(self, "a timer's tick (only the session times itself)");
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
  const auto peer = uplink->node();
  spawned_session out;
  out.session = sys.spawn(session_behavior, std::move(who), limits, std::move(uplink),
                          std::move(registry), std::move(data_server));
  // Only this process and the node's own reach the session (bound before its handle leaves
  // here): another node that learns or guesses it cannot say bye for it, nor answer for it.
  static_cast<session_actor*>(caf::actor_cast<caf::abstract_actor*>(out.session))->bind_peer(peer);
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
