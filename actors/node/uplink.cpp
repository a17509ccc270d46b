#include "uplink.hpp"

#include "node_metrics.hpp"

#include <sodium.h>
#include <spdlog/spdlog.h>
#include <caf/io/middleman.hpp>
#include <caf/openssl/manager.hpp>

#include <algorithm>
#include <chrono>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include "answer_probe.hpp"
#include "cache.hpp"
#include "gflex/kernels/devices.hpp"
#include "gflex/runtime/payload_chunks.hpp"
#include "gflex/runtime/printable_text.hpp"
#include "gflex/runtime/tcp_probe.hpp"
#include "gflex/runtime/tensor_codec.hpp"
#include "leader_redirect.hpp"
#include "messages.hpp"

namespace gflex {

namespace {

/// An assignment waiting for its parameters' chunks.
struct waiting_assignment {
  uint32_t index = 0;
  assignment work;
  caf::typed_response_promise<assignment_result> promise;
};

/// Bytes of parameters that a fetch's buffer may hold, counted in the uplink's total of them
/// (uplink_state::params_reserved) until released or destroyed. The workers' buffers are
/// reserved in the kernels' host memory budget; a fetch's are not, so the uplink holds its
/// fetches to that budget's limit itself.
class params_reservation {
 public:
  params_reservation() = default;
  params_reservation(std::shared_ptr<uint64_t> total, uint64_t bytes)
      : total_(std::move(total)), bytes_(bytes) {
    *total_ += bytes_;
  }
  params_reservation(params_reservation&& other) noexcept
      : total_(std::move(other.total_)), bytes_(std::exchange(other.bytes_, 0)) {}
  params_reservation& operator=(params_reservation&& other) noexcept {
    if (this != &other) {
      release();
      total_ = std::move(other.total_);
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }
  ~params_reservation() { release(); }
  void release() noexcept {
    if (total_) *total_ -= bytes_;
    total_.reset();
    bytes_ = 0;
  }

 private:
  std::shared_ptr<uint64_t> total_;
  uint64_t bytes_ = 0;
};

/// Parameters being fetched from the session chunk by chunk, or fetched. A fetch that the
/// session's end interrupted keeps what it has: the next assignment of the same parameters
/// (from the next session, after a reconnect) asks only for the chunks still missing.
struct params_fetch {
  std::vector<std::string> chunks;
  std::optional<chunk_assembler> parts;
  std::set<uint64_t> asking;
  std::vector<waiting_assignment> waiting;
  bool complete = false;
  // Once complete, the parameters as long as an assignment holds them (a worker lets them go
  // once it has decoded them: a large model's are not kept twice).
  std::weak_ptr<const shared_params> kept;
  caf::error failure;  // a chunk request failed; set until the others are back
  // Counts the times an assignment came to wait for the fetch when none did. Asks made for
  // an earlier one that was withdrawn fail (the core let its chunks go): they do not fail
  // the assignments of these parameters that come after.
  uint64_t epoch = 0;
  std::chrono::steady_clock::time_point idle_since{};  // when its last waiting assignment left
  params_reservation reserved;                         // `parts`' bytes, while it holds them
};

/// A chunk of an answer sent with update_chunks, until the session has taken it.
struct answer_chunk {
  std::shared_ptr<const std::vector<uint8_t>> bytes;
  uint64_t chunk_bytes = 0;
  uint64_t index = 0;
  // Occurrences in each answer that holds the chunk, by assignment. Two answers can share a
  // chunk (a region of zeros: an embedding's rows no sample touched), and letting one answer
  // go took the chunk from the other, whose upload then failed.
  std::map<uint64_t, uint64_t> owners;
  // Occurrences not yet served, of all owners together. A pull names only the digest, not
  // the answer it is for: which owner a serve counts against is unknown, so an owner that
  // goes takes off no more than the others can no longer need (drop_answer).
  uint64_t unserved = 0;
};

/// Parameters fetched or being fetched that the uplink keeps (the current round's, and the
/// previous while a late assignment may still need it).
constexpr size_t kept_params = 2;

/// Chunk requests an uplink keeps out to its session while fetching parameters.
constexpr size_t params_chunks_in_flight = 4;

/// How long a chunk request (of parameters here, of data in the cache) waits for its answer.
constexpr auto chunk_wait = std::chrono::seconds(120);

/// Assignments that may wait for a busy worker (a new session's, while the worker ends the
/// old session's): each may carry 128 MiB of parameters, so more are refused.
constexpr size_t max_waiting_per_worker = 2;

// Text from the core as this node shows it (its status line, its log, the volunteer's
// terminal): a hostile core's escape sequences (a window title, a cleared screen, a fake
// prompt) or megabytes of text are not passed on.
std::string from_core(std::string_view text) {
  constexpr size_t shown = 512;
  return printable_text(text.substr(0, shown)) + (text.size() > shown ? "..." : "");
}

/// The largest parameters a node accepts (the tensor decoder's bound: a model of the 2^28
/// parameters the planner allows, with its message's header).
constexpr uint64_t max_params_bytes = max_tensor_message_bytes;

// How long an answer's chunks are kept after the session last took one of them.
constexpr auto answer_idle = std::chrono::minutes(10);

struct uplink_state {
  uplink_config config;
  caf::actor core;        // the core's front door, once connected
  caf::actor fixed_core;  // embedded mode: the core in this process
  // The leader a follower named when it refused this node's hello: the next connect goes
  // there. A node given one address (a follower's, after a failover) retried that follower
  // for ever, told each time where the leader was.
  std::optional<std::pair<std::string, uint16_t>> leader_named;
  int redirects_in_row = 0;  // followers that named another: past a few, the usual retry
  caf::actor session;        // this node's session: the only other core handle it holds
  std::vector<caf::actor> workers;
  // Assignments on workers, by id: the worker's index, and the answer to the session,
  // given here when the worker stops before it answers (a worker that dies in a
  // continuation, after fetching its shard, answers nothing).
  struct running_assignment {
    size_t index;
    caf::typed_response_promise<assignment_result> answer;
    // Aborted by its job, or of a session that ended, while it ran: a worker past its last
    // step answers all the same, and its update, kept in chunks for a session that would
    // never take them, held up to a gigabyte for 10 minutes.
    bool abandoned = false;
  };
  std::map<uint64_t, running_assignment> running;
  // Workers that have an assignment: fetching its parameters, or computing it. A worker
  // takes one assignment at a time; one that comes for a busy worker (a new session's,
  // while the worker still ends the old session's) waits here, and its parameters are not
  // fetched before the worker is free (at most max_waiting_per_worker wait; more are
  // refused): a node holds about one assignment's memory per worker.
  std::set<uint32_t> busy;
  std::map<uint32_t, std::deque<waiting_assignment>> deferred;
  caf::actor cache;
  caf::actor owner;
  std::string node_id;
  uint32_t heartbeat_ms = 1000;
  uint64_t payload_chunk_bytes = 0;                   // the session's; 0: payloads travel whole
  std::vector<std::shared_ptr<params_fetch>> params;  // newest last
  // Bytes the fetches' buffers may hold together (params_reservation); shared with them, as a
  // fetch may outlive this state in a chunk request's handler.
  std::shared_ptr<uint64_t> params_reserved = std::make_shared<uint64_t>(0);
  std::map<std::string, answer_chunk> answer_chunks;  // by digest
  // When the session last took a chunk of each answer in answer_chunks (by assignment): an
  // answer it has not touched for answer_idle goes.
  std::map<uint64_t, std::chrono::steady_clock::time_point> answer_taken;
  uint64_t generation = 0;  // bumped per connection; stale heartbeat timers carry old ones
  uint64_t ticks = 0;       // heartbeats sent
  // When the last heartbeat went: a beat much later than its interval means this actor was
  // kept from running (a long handler, or a starved process), and the core may give the node
  // up; the log says so, with the delay.
  std::chrono::steady_clock::time_point last_beat{};
  uint64_t last_beat_generation = 0;  // the session it went to
  // When the session last asked this node for something (a chunk of an answer, an
  // assignment): a core that does is alive, however long its other answers take.
  std::chrono::steady_clock::time_point last_heard{};
  // Chunk requests out to the session: the uplink's own (parameters) and the cache's (data),
  // and since when some have been. A chunk on its way (a shard, up to 8 MiB) holds the
  // session's other answers back on a slow link.
  uint64_t params_out = 0;
  uint64_t cache_out = 0;
  std::chrono::steady_clock::time_point fetching_since{};
  bool gpu_sampling_off = false;  // NVML could not serve; said once
  int attempt = 0;
  // The core whose answer to this node's hello is awaited (watched: CAF answers no request
  // over a lost link), and the hellos sent so far: an answer to one before the last is late.
  caf::actor_addr greeting;
  uint64_t greetings = 0;
  size_t core_index = 0;  // which of the cores (0: config.host) the next connect tries
  bool leaving = false;   // said bye: no more heartbeats, no rejoining
  static inline const char* name = "uplink";
};

using uplink_actor = caf::stateful_actor<uplink_state>;

void connect(uplink_actor* self);

// The GPUs' memory and utilisation into the node's metrics (NVML). Where NVML cannot serve,
// it says why once and the GPU gauges are left out rather than made up.
void sample_gpus(uplink_actor* self) {
  auto& st = self->state;
  if (st.config.gpus.empty() || st.gpu_sampling_off) return;
  std::vector<int> ordinals;
  for (const auto& g : st.config.gpus) ordinals.push_back(g.ordinal);
  auto samples = kernels::sample_gpus(ordinals);
  if (!samples) {
    spdlog::info("GPU metrics are off: {}", samples.error().message());
    st.gpu_sampling_off = true;
    return;
  }
  for (const auto& s : *samples) {
    const std::string gpu = std::to_string(s.ordinal);
    node_metrics::gpu_memory_bytes(gpu, "total").set(static_cast<double>(s.memory_total));
    node_metrics::gpu_memory_bytes(gpu, "used").set(static_cast<double>(s.memory_used));
    node_metrics::gpu_memory_bytes(gpu, "ours").set(static_cast<double>(s.memory_ours));
    node_metrics::gpu_utilization(gpu, "compute").set(s.utilization);
    node_metrics::gpu_utilization(gpu, "memory").set(s.memory_activity);
  }
}

// The address of the core the next connect tries.
std::pair<std::string, uint16_t> core_address(const uplink_state& st) {
  if (st.core_index == 0) return {st.config.host, st.config.port};
  return st.config.other_cores[st.core_index - 1];
}

void retry_later(uplink_actor* self) {
  auto& st = self->state;
  if (!st.config.other_cores.empty()) {
    // A core of several: try the next server soon; back off once every one has failed.
    st.core_index = (st.core_index + 1) % (st.config.other_cores.size() + 1);
    if (st.core_index != 0) {
      // Jittered: the nodes of a leader that went all lose it at once, and each hello makes
      // the next core do a TLS handshake and a store write.
      self->delayed_send(self, std::chrono::milliseconds(100 + randombytes_uniform(200)),
                         caf::connect_atom::value);
      return;
    }
  }
  // One core: back off exponentially from 0.5 s. Several: the cores are expected to be
  // without a leader for up to the leader's lease (5 s by default) while a follower takes
  // over, so the first 8 rounds of tries (about 7 s) wait 0.25-0.75 s each and only then
  // does the wait grow; a node that had backed off to 4-6 s was often the last to find the
  // new leader, and a round waits for its slowest worker.
  const int patient = st.config.other_cores.empty() ? 0 : 8;
  const int doublings = std::clamp(st.attempt - patient, 0, 10);
  double base = std::min(30.0, 0.5 * std::pow(2.0, doublings));
  double jitter = 0.5 + randombytes_uniform(1000) / 1000.0;
  st.attempt += 1;
  auto delay = std::chrono::milliseconds(static_cast<int64_t>(base * jitter * 1000));
  spdlog::info("uplink: retrying in {:.1f} s", delay.count() / 1000.0);
  self->delayed_send(self, delay, caf::connect_atom::value);
}

void hello(uplink_actor* self, caf::actor core) {
  auto& st = self->state;
  node_hello h;
  h.protocol = st.config.protocol;
  h.name = st.config.name;
  h.device = st.config.device;
  h.gpus = st.config.gpus;
  h.workers = static_cast<uint32_t>(st.workers.size());
  h.uplink = caf::actor_cast<caf::actor>(self);
  h.tier = st.config.tier;
  h.credential = st.config.credential;
  h.price = st.config.price;
  h.throughput = st.config.throughput;
  if (st.config.identity) {
    h.public_key = st.config.identity->public_key();
    h.proof = st.config.identity->sign(hello_message(h.protocol, h.name));
  }
  // Longer than a core holds a hello from an address where many joins failed (up to 30 s, to
  // slow guessing down): an honest node behind it (a shared NAT) is let in, only slower. A
  // node that gave up sooner asked again, to be held again, and never joined.
  const uint64_t greeting = ++st.greetings;
  st.greeting = core.address();
  self->monitor(core);
  // Answered (or failed), the hello's watch on its core ends; an answer to a hello after which
  // another went (its core went away first: the down handler) is dropped.
  auto answered = [=] {
    auto& st = self->state;
    if (st.greetings != greeting) return false;
    st.greeting = caf::actor_addr{};
    self->demonitor(core);
    return true;
  };
  self->request(core, std::chrono::seconds(60), hello_atom::value, std::move(h))
      .then(
          [=](node_welcome& w) {
            if (!answered()) return;
            auto& st = self->state;
            if (!w.session) {
              spdlog::warn("uplink: the core's welcome holds no session");
              return retry_later(self);
            }
            // Payload chunks far smaller than a real core's would have an update announced as
            // one 64-character digest per few bytes (a copy of it many times its size).
            if (w.payload_chunk_bytes != 0 && (w.payload_chunk_bytes < min_chunk_bytes ||
                                               w.payload_chunk_bytes > max_chunk_bytes)) {
              spdlog::error(
                  "uplink: the core's welcome names payload chunks of {} bytes, outside "
                  "[1 KiB, 64 MiB]; not joining",
                  w.payload_chunk_bytes);
              return retry_later(self);
            }
            st.core = core;
            st.session = caf::actor_cast<caf::actor>(w.session);
            st.node_id = from_core(w.node_id);
            st.heartbeat_ms = std::max<uint32_t>(w.heartbeat_ms, 50);
            st.payload_chunk_bytes = w.payload_chunk_bytes;
            st.attempt = 0;
            st.redirects_in_row = 0;
            st.generation += 1;
            self->monitor(core);
            self->monitor(st.session);
            // Chunks come through the session too.
            self->send(st.cache, serve_atom::value, st.session);
            spdlog::info("joined the core as {} with {} worker(s)", st.node_id, st.workers.size());
            if (st.config.on_activity) {
              node_activity n;
              n.what = node_activity::kind::joined;
              n.node_id = st.node_id;
              n.workers = static_cast<int>(st.workers.size());
              st.config.on_activity(n);
            }
            self->send(self, tick_atom::value, st.generation);
          },
          [=](caf::error& e) {
            if (!answered()) return;
            auto err = from_caf(e, &self->system());
            if (err.code() == errc::invalid_argument || err.code() == errc::permission_denied) {
              const auto why = from_core(err.message());
              spdlog::error("the core refused this node: {}", why);
              self->send(self->state.owner, stop_atom::value, 3,
                         "the core refused this node: " + why);
              self->quit();
              return;
            }
            if (err.code() == errc::not_leader && self->state.redirects_in_row < 3)
              if (auto leader = leader_named_in(err.message())) {
                // Followers that name each other (one's record is stale) are not followed
                // round and round: after three, the usual retries.
                auto& st = self->state;
                st.redirects_in_row += 1;
                spdlog::info("uplink: that core follows; joining the leader at {}:{}",
                             from_core(leader->first), leader->second);
                st.leader_named = std::move(*leader);
                self->delayed_send(self, std::chrono::milliseconds(200), caf::connect_atom::value);
                return;
              }
            self->state.redirects_in_row = 0;
            spdlog::warn("uplink: join failed: {}", from_core(err.message()));
            retry_later(self);
          });
}

// How long the uplink waits for a core that took its connection to say anything
// (probe_answer). A frozen core (SIGSTOP, a suspended machine) or another program on its port
// takes the connection in the kernel and says nothing: dialled by CAF over TLS, its handshake
// kept a network thread of the node polling, a CPU core's worth, for as long as the address
// stayed silent (for good where another program listens there).
constexpr std::chrono::seconds core_answer_wait{10};

// How long the uplink waits for core_prober: both probes' bounds (3 s and core_answer_wait),
// with room for the name lookup each of them makes.
constexpr std::chrono::seconds core_probe_wait{30};

// Probes a core's address once, on a thread of its own: reachable (probe_tcp), then answering
// (probe_answer). Both block, together for up to 13 s, which on a scheduler thread kept the
// uplink from its other messages (a worker's restart, the node's bye). Answers nothing where
// the address answered; else an error that begins with host:port and says why not.
caf::behavior core_prober(caf::event_based_actor* self) {
  return {
      [=](caf::connect_atom, const std::string& host, uint16_t port) -> caf::result<void> {
        self->quit();
        if (auto reachable = probe_tcp(host, port); !reachable) return to_caf(reachable.error());
        if (auto answers = probe_answer(host, port, core_answer_wait); !answers)
          return to_caf(answers.error());
        return caf::unit;
      },
  };
}

// Asks the middleman for the front door at host:port, an address that answered its probes,
// and says hello there.
void dial(uplink_actor* self, const std::string& host, uint16_t port) {
  auto mm = self->state.config.tls ? self->system().openssl_manager().actor_handle()
                                   : self->system().middleman().actor_handle();
  self->request(mm, std::chrono::seconds(15), caf::connect_atom::value, host, port)
      .then(
          [=](const caf::node_id&, caf::strong_actor_ptr& ptr, const std::set<std::string>&) {
            if (!ptr) {
              spdlog::warn("uplink: {}:{} published no actor", host, port);
              return retry_later(self);
            }
            hello(self, caf::actor_cast<caf::actor>(ptr));
          },
          [=](caf::error& e) {
            // A link that ends in its handshake is most often the two ends disagreeing on
            // TLS, or a core other than the one the node's certificate names: said as the
            // client says it (client::connect), not as CAF's bare code, retried for ever.
            // A TLS handshake that fails is CAF's cannot_connect_to_node, which after the
            // probes (the port answers) says the same.
            std::string why = self->system().render(e);
            if (e == caf::sec::disconnect_during_handshake ||
                (self->state.config.tls && e == caf::sec::cannot_connect_to_node)) {
              const auto& cafile = self->system().config().openssl_cafile;
              if (!self->state.config.tls)
                why += " (does the core serve TLS? then drop --insecure)";
              else if (cafile.empty())
                why += " (does the core serve TLS rather than --insecure?)";
              else
                why += " (is this the core whose certificate " + cafile +
                       " holds, and does it serve TLS rather than --insecure?)";
            }
            spdlog::warn("uplink: cannot reach the core at {}:{}: {}", host, port, why);
            retry_later(self);
          });
}

void connect(uplink_actor* self) {
  auto& st = self->state;
  if (st.fixed_core) return hello(self, st.fixed_core);
  auto address = core_address(st);
  if (st.leader_named) address = *std::exchange(st.leader_named, std::nullopt);
  const std::string host = address.first;
  const uint16_t port = address.second;
  // CAF's connect blocks its middleman: to a core machine that is off, for the kernel's SYN
  // retries (minutes), and the next core's connect waited behind it; and over TLS a core that
  // takes the connection but never answers kept a network thread busy (core_answer_wait).
  // Probed first, such a core is passed over, and CAF never dials it.
  self->request(self->spawn<caf::detached>(core_prober), core_probe_wait, caf::connect_atom::value,
                host, port)
      .then([=]() { dial(self, host, port); },
            [=](caf::error& e) {
              // The probes' own errors begin with the address; the prober's timeout does not.
              std::string why = from_caf(e, &self->system()).message();
              if (e.category() != error_category)
                why = host + ":" + std::to_string(port) + ": " + why;
              spdlog::warn("uplink: cannot reach the core at {}", why);
              retry_later(self);
            });
}

void release_worker(uplink_actor* self, uint32_t index);

// Whether this node's session lives in another process (the core's): only then do payloads
// cross the network, go in chunks, and count in the node's payload bytes, as the core counts
// them (an embedded node's move nowhere).
bool core_is_remote(uplink_actor* self) {
  const auto& session = self->state.session;
  return session && session.node() != self->node();
}

// Whether assignment `id` is on this node: waiting for its worker or its parameters, or
// running.
bool holds_assignment(const uplink_state& st, uint64_t id) {
  if (st.running.count(id) > 0) return true;
  for (const auto& [index, queue] : st.deferred)
    for (const auto& w : queue)
      if (w.work.id == id) return true;
  for (const auto& f : st.params)
    for (const auto& w : f->waiting)
      if (w.work.id == id) return true;
  return false;
}

// Runs assignment `a` on worker `index` and answers `rp`; an update larger than one payload
// chunk is kept here and announced by its chunks, which the session then asks for.
void run_on_worker(uplink_actor* self, uint32_t index, assignment a,
                   caf::typed_response_promise<assignment_result> rp) {
  auto& st = self->state;
  const uint64_t id = a.id;
  st.running[id] = {index, rp};
  st.busy.insert(index);
  self->request(st.workers[index], caf::infinite, assign_atom::value, std::move(a))
      .then(
          [=](assignment_result& r) mutable {
            auto& st = self->state;
            auto running = st.running.find(id);
            if (running == st.running.end()) return;  // answered when its worker stopped
            const bool abandoned = running->second.abandoned;
            st.running.erase(running);
            if (abandoned) {
              rp.deliver(to_caf(error(errc::invalid_argument,
                                      "assignment aborted by its job, or its session ended")));
              release_worker(self, index);
              return;
            }
            const uint64_t chunk = st.payload_chunk_bytes;
            const bool remote = core_is_remote(self);
            if (remote && chunk > 0 && r.update.size() > chunk) {
              auto bytes = std::make_shared<const std::vector<uint8_t>>(std::move(r.update));
              r.update.clear();
              r.update_bytes = bytes->size();
              r.update_chunks = chunk_digests(*bytes, chunk);
              for (uint64_t i = 0; i < r.update_chunks.size(); ++i) {
                auto& c = st.answer_chunks[r.update_chunks[i]];
                if (!c.bytes) c = answer_chunk{bytes, chunk, i, {}, 0};
                c.owners[id] += 1;
                c.unserved += 1;
              }
              // Kept while the session collects it; an answer nobody collects goes. Timed from
              // the last chunk taken: a fixed 10 minutes cut a slow uplink's upload short.
              st.answer_taken[id] = std::chrono::steady_clock::now();
              self->delayed_send(self, answer_idle, expire_atom::value, id);
            }
            // An update in chunks is counted as the session collects them.
            if (remote)
              node_metrics::bytes("out", "update").inc(static_cast<double>(r.update.size()));
            rp.deliver(std::move(r));
            release_worker(self, index);
          },
          [=](caf::error& e) mutable {
            auto& st = self->state;
            if (st.running.erase(id) == 0) return;  // answered when its worker stopped
            rp.deliver(std::move(e));
            release_worker(self, index);
          });
}

void pump_params(uplink_actor* self, std::shared_ptr<params_fetch> f);

// Lets the chunks of assignment `id`'s answer go: the session takes no more of them.
void drop_answer(uplink_actor* self, uint64_t id) {
  auto& st = self->state;
  if (st.answer_taken.erase(id) == 0) return;
  for (auto it = st.answer_chunks.begin(); it != st.answer_chunks.end();) {
    auto& c = it->second;
    if (c.owners.erase(id) > 0) {
      // The serves so far may all have been the other owners': what they still need is at
      // most their own occurrences, and never more than was still owed.
      uint64_t others = 0;
      for (const auto& owner : c.owners) others += owner.second;
      c.unserved = std::min(c.unserved, others);
    }
    it = c.unserved == 0 ? st.answer_chunks.erase(it) : std::next(it);
  }
}

// A fetch no assignment waits for any more keeps what arrived for the next assignment of
// these parameters, for uplink_config::params_idle ((expire_atom, first chunk) then).
void note_idle(uplink_actor* self, const std::shared_ptr<params_fetch>& f) {
  if (!f->waiting.empty() || f->complete || !f->parts || f->chunks.empty()) return;
  f->idle_since = std::chrono::steady_clock::now();
  self->delayed_send(self, self->state.config.params_idle, expire_atom::value, f->chunks.front());
}

// The fetch ended (done, or failed with `e`): the assignments waiting for it go on or fail.
void end_fetch(uplink_actor* self, const std::shared_ptr<params_fetch>& f, const caf::error& e,
               std::shared_ptr<const shared_params> done = nullptr) {
  auto waiting = std::move(f->waiting);
  f->waiting.clear();
  for (auto& w : waiting) {
    if (e || !done) {
      w.promise.deliver(e);
      release_worker(self, w.index);
      continue;
    }
    w.work.params_ref = done;
    run_on_worker(self, w.index, std::move(w.work), std::move(w.promise));
  }
  note_idle(self, f);
}

void pump_params(uplink_actor* self, std::shared_ptr<params_fetch> f) {
  auto& st = self->state;
  if (!st.session || f->complete || !f->parts) return;
  // A chunk that failed stops the asking; the waiting assignments fail once the requests
  // still out are back (what arrived stays, for the next assignment of these parameters).
  if (f->failure) {
    if (f->asking.empty()) {
      auto e = std::move(f->failure);
      f->failure = caf::error{};
      end_fetch(self, f, e);
    }
    return;
  }
  // Nobody waits for them any more (aborted): no more chunks are asked; the next assignment
  // of these parameters asks for the rest.
  if (f->waiting.empty()) return;
  for (uint64_t i = 0; i < f->parts->count() && f->asking.size() < params_chunks_in_flight; ++i) {
    if (f->parts->has(i) || f->asking.count(i)) continue;
    f->asking.insert(i);
    const uint64_t generation = st.generation;  // answers from an ended session are ignored
    const uint64_t epoch = f->epoch;
    if (st.params_out++ == 0 && st.cache_out == 0)
      st.fetching_since = std::chrono::steady_clock::now();
    self->request(st.session, chunk_wait, chunk_atom::value, f->chunks[i])
        .then(
            [=](std::vector<uint8_t>& bytes) {
              --self->state.params_out;
              if (generation != self->state.generation) return;
              // Data from the session is a sign of life: on a slow link, its answer to
              // `earned` waits behind these chunks.
              self->state.last_heard = std::chrono::steady_clock::now();
              f->asking.erase(i);
              if (f->complete || !f->parts) return;
              node_metrics::bytes("in", "parameter_chunk").inc(static_cast<double>(bytes.size()));
              if (auto added = f->parts->add(i, bytes); !added) {
                spdlog::warn("uplink: parameters from the core: {}", added.error().message());
                f->parts.reset();  // nothing of it is trusted any more
                f->reserved.release();
                return end_fetch(self, f, to_caf(added.error()));
              }
              if (f->parts->complete()) {
                auto p = std::make_shared<shared_params>();
                p->chunk_bytes = self->state.payload_chunk_bytes;
                p->chunks = f->chunks;
                p->bytes = f->parts->take();
                f->parts.reset();
                f->reserved.release();  // the assignments hold them now, the workers decode them
                f->complete = true;
                f->kept = p;
                return end_fetch(self, f, caf::error{}, std::move(p));
              }
              pump_params(self, f);
            },
            [=](caf::error& e) {
              --self->state.params_out;
              if (generation != self->state.generation) return;
              f->asking.erase(i);
              if (f->complete || !f->parts) return;
              // Asked before the abort of the assignments waiting reached this uplink, a chunk
              // the core has let go fails; the next assignment of these parameters asks again
              // (kept as the fetch's failure, it failed that one too).
              // The core's failure to serve it in time (CAF's timeout, a lost link) says so
              // in gflex's words: passed on as it was, the session takes any error from the
              // node as the node's own (node_words) and the job cooled the node down as at
              // fault for the core's slowness.
              if (!f->failure && !f->waiting.empty() && epoch == f->epoch)
                f->failure = e.category() == error_category
                                 ? std::move(e)
                                 : to_caf(error(errc::unavailable,
                                                "the core did not serve a parameter chunk (" +
                                                    self->system().render(e) + ")"));
              pump_params(self, f);
            });
  }
}

// Whether a fetch of `bytes` of parameters fits the node's host memory budget (--memory-limit)
// beside the fetches under way. A core could otherwise name made-up parameters of a gigabyte
// to each worker and have the node hold them all, outside the budget (to the kernel's
// out-of-memory killer). Fetches no assignment waits for, kept only for a later assignment of
// their parameters, let their buffers go first where it does not.
bool params_fit(uplink_state& st, uint64_t bytes) {
  const uint64_t limit = kernels::host_memory_limit();
  auto fits = [&] { return bytes <= limit && *st.params_reserved <= limit - bytes; };
  if (limit == 0 || fits()) return true;
  std::erase_if(st.params, [](const std::shared_ptr<params_fetch>& f) {
    if (!f->waiting.empty() || !f->parts) return false;
    f->parts.reset();  // its chunk requests still out find it gone
    f->reserved.release();
    return true;
  });
  return fits();
}

// Finds or starts the fetch of an assignment's parameters, and queues the assignment on it.
void fetch_params(uplink_actor* self, uint32_t index, assignment a,
                  caf::typed_response_promise<assignment_result> rp) {
  auto& st = self->state;
  auto it = std::find_if(st.params.begin(), st.params.end(),
                         [&](const auto& f) { return f->chunks == a.params_chunks; });
  std::shared_ptr<params_fetch> f;
  std::shared_ptr<const shared_params> kept;
  if (it != st.params.end() && (*it)->complete) kept = (*it)->kept.lock();
  if (kept) {
    a.params_ref = std::move(kept);
    a.params_chunks.clear();
    return run_on_worker(self, index, std::move(a), std::move(rp));
  }
  if (it != st.params.end() && (*it)->parts) {
    f = *it;
  } else {
    // Holds nothing any more (erased before params_fit, which may erase others).
    if (it != st.params.end()) st.params.erase(it);
    // Said as the worker says a model that does not fit (a device_error, "out of ... memory"):
    // the job leaves this node out a while, and the market does not hold it against the node.
    // As limit_exceeded, the node was cooled down for every job, and this one sent it the
    // same parameters again after each cooldown.
    if (a.params_bytes <= max_params_bytes && !params_fit(st, a.params_bytes)) {
      rp.deliver(
          to_caf(error(errc::device_error,
                       "out of host memory: parameters of " + std::to_string(a.params_bytes) +
                           " bytes do not fit beside the " + std::to_string(*st.params_reserved) +
                           " bytes of parameters this node fetches already (--memory-limit " +
                           std::to_string(kernels::host_memory_limit()) + " bytes)")));
      return release_worker(self, index);
    }
    auto parts = chunk_assembler::make(a.params_bytes, st.payload_chunk_bytes, a.params_chunks,
                                       max_params_bytes);
    if (!parts) {
      rp.deliver(to_caf(parts.error()));
      return release_worker(self, index);
    }
    f = std::make_shared<params_fetch>();
    f->chunks = a.params_chunks;
    f->parts = std::move(*parts);
    f->reserved = params_reservation(st.params_reserved, a.params_bytes);
    st.params.push_back(f);
  }
  a.params_chunks.clear();
  if (f->waiting.empty()) {
    f->epoch += 1;
    f->failure = caf::error{};  // an earlier assignment's, withdrawn
  }
  f->waiting.push_back({index, std::move(a), std::move(rp)});
  // The oldest fetches go first, but only those no assignment waits for: one that is still
  // awaited stays listed until it ends, so that a lost session ends it too (a fetch pushed
  // out while awaited kept its worker busy for good once its session ended).
  for (auto old = st.params.begin(); st.params.size() > kept_params && old != st.params.end();)
    old = (*old)->waiting.empty() ? st.params.erase(old) : std::next(old);
  pump_params(self, f);
}

// Starts assignment `a` on worker `index` (free): its parameters are fetched first when they
// come in chunks.
void dispatch(uplink_actor* self, uint32_t index, assignment a,
              caf::typed_response_promise<assignment_result> rp) {
  auto& st = self->state;
  st.busy.insert(index);
  if (a.params_chunks.empty()) return run_on_worker(self, index, std::move(a), std::move(rp));
  if (st.payload_chunk_bytes == 0) {
    rp.deliver(to_caf(error(errc::malformed_message, "parameters in chunks of size 0")));
    return release_worker(self, index);
  }
  fetch_params(self, index, std::move(a), std::move(rp));
}

// Worker `index` is free again: the next assignment that waited for it starts.
void release_worker(uplink_actor* self, uint32_t index) {
  auto& st = self->state;
  st.busy.erase(index);
  auto it = st.deferred.find(index);
  if (it == st.deferred.end()) return;
  auto next = std::move(it->second.front());
  it->second.pop_front();
  if (it->second.empty()) st.deferred.erase(it);
  dispatch(self, index, std::move(next.work), std::move(next.promise));
}

// Leaves the core and its session (gone, or not answering) and connects again.
void lose_core(uplink_actor* self) {
  auto& st = self->state;
  if (st.config.on_activity) {
    node_activity n;
    n.what = node_activity::kind::lost;
    n.node_id = st.node_id;
    st.config.on_activity(n);
  }
  if (st.core) self->demonitor(st.core);
  if (st.session) self->demonitor(st.session);
  st.core = nullptr;
  st.session = nullptr;
  st.answer_chunks.clear();  // answers to a session that is gone
  st.answer_taken.clear();
  // The core has given this session's work to other nodes: what runs stops at its next
  // step, and what waited for a worker is not started.
  for (auto& [id, a] : st.running) {
    st.config.cancelled->cancel(id);
    a.abandoned = true;
    if (a.index < st.workers.size()) self->send(st.workers[a.index], abort_atom::value, id);
  }
  for (auto& [index, queue] : st.deferred)
    for (auto& w : queue) w.promise.deliver(to_caf(error(errc::io_error, "the session ended")));
  st.deferred.clear();
  // Fetches stop asking the ended session; what they hold stays for the next one.
  for (const auto& f : std::vector(st.params)) {  // a copy: ending a fetch may start another
    f->asking.clear();
    f->failure = caf::error{};
    end_fetch(self, f, to_caf(error(errc::io_error, "the session ended")));
  }
  st.generation += 1;
  retry_later(self);
}

caf::behavior uplink_behavior(uplink_actor* self, uplink_config config, caf::actor core,
                              std::vector<caf::actor> workers, caf::actor cache, caf::actor owner) {
  auto& st = self->state;
  st.config = std::move(config);
  st.fixed_core = std::move(core);
  st.workers = std::move(workers);
  st.cache = std::move(cache);
  st.owner = std::move(owner);
  self->set_down_handler([=](const caf::down_msg& down) {
    auto& st = self->state;
    if (st.leaving) return;
    if (st.greeting && down.source == st.greeting) {
      // The core went away (killed, out of its lease, its link cut) while it held this node's
      // hello: CAF answers no request over a lost link, and the node waited out the hello's
      // 60 s, while another core may have led within seconds.
      st.greeting = caf::actor_addr{};
      st.greetings += 1;  // its answer, should one come, is dropped
      spdlog::warn("the core went away before it answered this node's hello ({})",
                   from_core(self->system().render(down.reason)));
      retry_later(self);
      return;
    }
    if (st.session && down.source == st.session.address()) {
      // The core ended this node's session (its registry restarted, the lease ran out, or
      // it disconnected the node): join again through the front door. Its reason is the
      // core's own text.
      spdlog::warn("the core ended this node's session ({}); joining again",
                   from_core(self->system().render(down.reason)));
    } else if (!st.core || down.source != st.core.address()) {
      return;
    } else {
      spdlog::warn("lost the core ({}); reconnecting",
                   from_core(self->system().render(down.reason)));
    }
    lose_core(self);
  });
  self->send(self, caf::connect_atom::value);
  return {
      [=](caf::connect_atom) {
        if (!self->state.core) connect(self);
      },
      [=](tick_atom, uint64_t generation) {
        auto& st = self->state;
        if (generation != st.generation || !st.session) return;
        self->send(st.session, beat_atom::value);
        const auto now = std::chrono::steady_clock::now();
        const auto gap =
            std::chrono::duration_cast<std::chrono::milliseconds>(now - st.last_beat).count();
        if (st.last_beat_generation == generation &&
            gap > 2 * static_cast<int64_t>(st.heartbeat_ms))
          spdlog::warn("heartbeat sent {} ms after the last one (interval {} ms)", gap,
                       st.heartbeat_ms);
        st.last_beat = now;
        st.last_beat_generation = generation;
        // About every 5 s: the GPUs' state, and what the core has paid this node so far.
        st.ticks += 1;
        const bool every_5s = (st.ticks - 1) % std::max<uint64_t>(1, 5000 / st.heartbeat_ms) == 0;
        if (every_5s) sample_gpus(self);
        if (every_5s)
          self->request(st.session, st.config.core_silence, earned_atom::value)
              .then(
                  [=](int64_t micro) {
                    node_metrics::credits_earned().set(static_cast<double>(micro) / 1e6);
                    auto& st = self->state;
                    if (st.config.on_activity) {
                      node_activity n;
                      n.what = node_activity::kind::earned;
                      n.node_id = st.node_id;
                      n.earned = micro;
                      st.config.on_activity(n);
                    }
                  },
                  [=](caf::error& e) {
                    // Asked again in 5 s. A core of several: a leader that does not answer
                    // for core_silence (15 s; frozen, its machine paused) has likely lost its
                    // lease to another core, which the nodes would otherwise not look for
                    // until it comes back or its connection drops.
                    auto& st = self->state;
                    if (e != caf::sec::request_timeout || generation != st.generation ||
                        st.config.other_cores.empty() || st.leaving)
                      return;
                    // On a slow link the answer waits behind the update chunks the session
                    // is pulling: a core that asked for one meanwhile is not lost.
                    const auto now = std::chrono::steady_clock::now();
                    if (now - st.last_heard < st.config.core_silence) return;
                    // Nor is one that has a chunk on its way to this node: one shard of
                    // 8 MiB takes 22 s at 3 Mbit/s, and the node left a busy leader, its
                    // download and its work, round after round. Such a request waits
                    // chunk_wait for its answer, and so does the node.
                    if (st.params_out + st.cache_out > 0 &&
                        now - std::max(st.last_heard, st.fetching_since) < chunk_wait)
                      return;
                    spdlog::warn("the core has not answered for {} ms; trying the next core",
                                 st.config.core_silence.count());
                    lose_core(self);
                  });
        self->delayed_send(self, std::chrono::milliseconds(st.heartbeat_ms), tick_atom::value,
                           generation);
      },
      // From the session: run an assignment on worker `index`. Work from anyone else is
      // refused.
      [=](assign_atom, uint32_t index, assignment& a) -> caf::result<assignment_result> {
        auto& st = self->state;
        if (!st.session ||
            self->current_sender() != caf::actor_cast<caf::strong_actor_ptr>(st.session))
          return to_caf(
              error(errc::permission_denied, "assignments come from this node's session"));
        st.last_heard = std::chrono::steady_clock::now();
        if (index >= st.workers.size())
          return to_caf(error(errc::invalid_argument, "no worker " + std::to_string(index)));
        // One id is one assignment: a second copy took the first's place among the running,
        // and the answer of one of them was never given, its worker busy for good.
        if (holds_assignment(st, a.id))
          return to_caf(error(errc::invalid_argument,
                              "assignment " + std::to_string(a.id) + " is here already"));
        a.job_id = from_core(a.job_id);  // shown in the node's status line and log
        // Counted where they move: parameters in chunks as those come (pump_params).
        if (core_is_remote(self))
          node_metrics::bytes("in", "parameters").inc(static_cast<double>(a.params.size()));
        if (st.busy.count(index) > 0 && st.deferred[index].size() >= max_waiting_per_worker)
          return to_caf(error(errc::limit_exceeded, "worker " + std::to_string(index) + " has " +
                                                        std::to_string(max_waiting_per_worker) +
                                                        " assignments waiting for it already"));
        auto rp = self->make_response_promise<assignment_result>();
        if (st.busy.count(index) > 0)
          st.deferred[index].push_back({index, std::move(a), rp});
        else
          dispatch(self, index, std::move(a), rp);
        return rp;
      },
      // From the cache: its chunk requests out to the session became some or none.
      [=](heard_atom, uint64_t out) {
        auto& st = self->state;
        if (self->current_sender() != caf::actor_cast<caf::strong_actor_ptr>(st.cache)) return;
        if (out > 0 && st.cache_out == 0 && st.params_out == 0)
          st.fetching_since = std::chrono::steady_clock::now();
        st.cache_out = out;
      },
      // From the cache: a chunk of a data set came from the session (a sign of life).
      [=](heard_atom) {
        auto& st = self->state;
        if (st.session &&
            self->current_sender() == caf::actor_cast<caf::strong_actor_ptr>(st.cache))
          st.last_heard = std::chrono::steady_clock::now();
      },
      // From the session: a chunk of an answer this node sent with update_chunks.
      [=](chunk_atom, const std::string& digest) -> caf::result<std::vector<uint8_t>> {
        auto& st = self->state;
        if (!st.session ||
            self->current_sender() != caf::actor_cast<caf::strong_actor_ptr>(st.session))
          return to_caf(error(errc::permission_denied, "chunks go to this node's session"));
        st.last_heard = std::chrono::steady_clock::now();
        auto it = st.answer_chunks.find(digest);
        if (it == st.answer_chunks.end())
          return to_caf(error(errc::invalid_argument, "no such answer chunk"));
        auto& c = it->second;
        const auto r = chunk_at(c.bytes->size(), c.chunk_bytes, c.index);
        std::vector<uint8_t> out(c.bytes->begin() + static_cast<std::ptrdiff_t>(r.offset),
                                 c.bytes->begin() + static_cast<std::ptrdiff_t>(r.offset + r.size));
        node_metrics::bytes("out", "update_chunk").inc(static_cast<double>(out.size()));
        // Which answer's occurrence this was, the session does not say: each owner's upload
        // is under way, and one occurrence of them all is counted off (counted off one owner,
        // the wrong one's going later took the chunk from the owner still collecting it).
        for (const auto& owner : c.owners)
          if (auto t = st.answer_taken.find(owner.first); t != st.answer_taken.end())
            t->second = std::chrono::steady_clock::now();
        if (--c.unserved == 0) st.answer_chunks.erase(it);
        return out;
      },
      [=](expire_atom, uint64_t id) {
        auto& st = self->state;
        if (self->current_sender() != caf::actor_cast<caf::strong_actor_ptr>(self)) return;
        auto taken = st.answer_taken.find(id);
        if (taken == st.answer_taken.end()) return;
        const auto idle = std::chrono::steady_clock::now() - taken->second;
        if (idle < answer_idle) {
          self->delayed_send(self, answer_idle - idle, expire_atom::value, id);
          return;
        }
        drop_answer(self, id);
      },
      // A fetch's idle timer (note_idle): gone if still nobody waits for it.
      [=](expire_atom, const std::string& first_chunk) {
        auto& st = self->state;
        if (self->current_sender() != caf::actor_cast<caf::strong_actor_ptr>(self)) return;
        const auto now = std::chrono::steady_clock::now();
        std::erase_if(st.params, [&](const std::shared_ptr<params_fetch>& f) {
          return !f->chunks.empty() && f->chunks.front() == first_chunk && f->waiting.empty() &&
                 !f->complete && now - f->idle_since >= st.config.params_idle;
        });
      },
      [=](abort_atom, uint64_t id) {
        auto& st = self->state;
        if (self->current_sender() != caf::actor_cast<caf::strong_actor_ptr>(st.session)) return;
        drop_answer(self, id);            // answered already: the core takes no more of it
        st.config.cancelled->cancel(id);  // a running assignment stops at its next step
        if (auto r = st.running.find(id); r != st.running.end()) {
          r->second.abandoned = true;
          // One whose shard is still coming is given up on by its worker now, not when the
          // shard has come (minutes on a slow link): the worker stayed busy, and the node's
          // next assignment waited behind a download nobody wanted.
          if (r->second.index < st.workers.size())
            self->send(st.workers[r->second.index], abort_atom::value, id);
        }
        for (auto& [index, queue] : st.deferred)
          for (auto w = queue.begin(); w != queue.end(); ++w)
            if (w->work.id == id) {
              w->promise.deliver(
                  to_caf(error(errc::invalid_argument, "assignment aborted by its job")));
              queue.erase(w);
              break;
            }
        std::erase_if(st.deferred, [](const auto& q) { return q.second.empty(); });
        // One whose parameters are still coming frees its worker now: it kept it busy until
        // the fetch ended, and the node's next assignment on it waited past its deadline.
        for (auto& f : st.params)
          for (auto w = f->waiting.begin(); w != f->waiting.end(); ++w)
            if (w->work.id == id) {
              auto index = w->index;
              w->promise.deliver(
                  to_caf(error(errc::invalid_argument, "assignment aborted by its job")));
              f->waiting.erase(w);
              // Held, and noted idle first: the worker's next assignment, started by
              // release_worker, may fetch other parameters, which grows or trims st.params
              // under `f`.
              const auto fetch = f;
              note_idle(self, fetch);
              release_worker(self, index);
              return;
            }
      },
      [=](offer_atom, caf::actor& replacement, caf::actor& replaced) {
        // A worker was restarted by the node supervisor: it takes the old one's index. The
        // core never held a worker's handle, so it hears nothing of this.
        auto& st = self->state;
        auto w = std::find(st.workers.begin(), st.workers.end(), replaced);
        if (w == st.workers.end()) return;
        *w = replacement;
        // What the old worker was computing fails now, and its slot is free for the next
        // assignment: the old one may have died without answering.
        const auto index = static_cast<size_t>(w - st.workers.begin());
        bool lost = false;
        for (auto it = st.running.begin(); it != st.running.end();) {
          if (it->second.index != index) {
            ++it;
            continue;
          }
          it->second.answer.deliver(
              to_caf(error(errc::unavailable, "the worker stopped and was restarted")));
          it = st.running.erase(it);
          lost = true;
        }
        if (lost) release_worker(self, static_cast<uint32_t>(index));
      },
      [=](update_atom, const std::string& role, caf::actor& replacement) {
        auto& st = self->state;
        if (role != "cache") return;
        st.cache = std::move(replacement);  // restarted by the node supervisor
        st.cache_out = 0;                   // the new one has asked nothing yet
        if (st.session) self->send(st.cache, serve_atom::value, st.session);
      },
      [=](bye_atom) {
        auto& st = self->state;
        st.leaving = true;
        st.generation += 1;  // stops the heartbeat timer
        if (st.session) self->send(st.session, bye_atom::value);
      },
      [=](bye_atom, const std::string& why) {
        // The session says why it is ending this node's session; its end (down) follows.
        auto& st = self->state;
        if (self->current_sender() != caf::actor_cast<caf::strong_actor_ptr>(st.session)) return;
        spdlog::warn("the core: {}", from_core(why));
      },
  };
}

}  // namespace

caf::actor spawn_uplink(caf::actor_system& sys, uplink_config config, caf::actor core,
                        std::vector<caf::actor> workers, caf::actor cache, caf::actor owner) {
  return sys.spawn(uplink_behavior, std::move(config), std::move(core), std::move(workers),
                   std::move(cache), std::move(owner));
}

}  // namespace gflex
