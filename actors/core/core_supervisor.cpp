#include "core_supervisor.hpp"

#include <spdlog/spdlog.h>

#include <caf/io/middleman.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <functional>
#include <map>

#include "access.hpp"
#include "boundary.hpp"
#include "client_door.hpp"
#include "client_session.hpp"
#include "core_metrics.hpp"
#include "data_catalog.hpp"
#include "data_server.hpp"
#include "gatekeeper.hpp"
#include "gflex/runtime/identity.hpp"
#include "gflex/runtime/log_throttle.hpp"
#include "gflex/runtime/printable_text.hpp"
#include "job.hpp"
#include "job_supervisor.hpp"
#include "ledger_keeper.hpp"
#include "market.hpp"
#include "messages.hpp"
#include "registry.hpp"
#include "reputation_tracker.hpp"
#include "store.hpp"
#include "verifier.hpp"

namespace gflex {

namespace {

/// What is wrong with the GPUs a node advertises (empty: nothing). They are shown to users
/// and priced by the market, so they are bounded like every other field of a hello.
std::string check_gpus(const std::vector<gpu_status>& gpus) {
  if (gpus.size() > 64) return "more than 64 GPUs";
  for (const auto& g : gpus) {
    if (g.ordinal < 0 || g.ordinal > 1023) return "ordinal out of [0, 1023]";
    if (g.name.size() > 128 || g.compute_capability.size() > 16) return "name too long";
    if (!is_printable_text(g.name) || !is_printable_text(g.compute_capability))
      return "a name that is not printable UTF-8";
    if (g.sm_count < 0 || !(g.gemm_tflops >= 0.0 && g.gemm_tflops < 1e6) ||
        !(g.h2d_gbps >= 0.0 && g.h2d_gbps < 1e6))
      return "negative or non-finite figures";
  }
  return {};
}

/// A type as a value, to name the answer a relayed request expects.
template <class T>
struct as {
  using type = T;
};

struct core_children {
  caf::actor store, market, data_server, registry, jobs, reputation, verifier, ledger, gate;
  std::vector<caf::actor> all() const {
    return {store, market, data_server, registry, jobs, reputation, verifier, ledger, gate};
  }
};

/// Child restarts allowed within `restart_window` before the core gives up (escalates).
constexpr int restart_budget = 5;
constexpr auto restart_window = std::chrono::seconds(60);

struct core_state {
  // Shared with the functor that stops the children when the core stops.
  std::shared_ptr<core_children> children;
  core_config config;
  std::shared_ptr<data_catalog> catalog;
  uint32_t registry_incarnation = 0;
  std::deque<std::chrono::steady_clock::time_point> restarts;
  client_sessions sessions;  // the clients' (client_door.hpp)
  // Refused hellos are logged at most 20 in 10 s: a peer sends as many as it likes.
  log_throttle refusal_log{20, std::chrono::seconds(10)};
  static inline const char* name = "core_supervisor";
};

// The front door: every peer holds this handle, so it is guarded (boundary.hpp).
using core_actor_type = caf::stateful_actor<core_state, guarded<caf::event_based_actor>>;

// A refused hello, logged within core_state::refusal_log's bound.
void log_refusal(core_actor_type* self, const std::string& line) {
  uint64_t held_back = 0;
  if (!self->state.refusal_log.allow(log_throttle::clock::now(), held_back)) return;
  if (held_back > 0)
    spdlog::warn(
        "{} more refused hellos were not logged (a log line each would let a peer "
        "fill the disk)",
        held_back);
  spdlog::warn("{}", line);
}

// A hello refused for `why`, said of `who` ("refused node NAME"): counted by its kind and
// logged within the bound. Every refusal a hello gets passes here once, the gatekeeper's,
// the reputation tracker's and the registry's included: gflex_core_join_refusals_total
// counted the gatekeeper's alone, so a peer's flood of hellos of another protocol, or of
// malformed ones, showed in no metric, and the registry's refusals not even in the log.
void note_refusal(core_actor_type* self, const std::string& who, const error& why) {
  core_metrics::join_refusals(to_string(why.code())).inc();
  log_refusal(self, who + ": " + why.message());
}

// A join token is gft_ and 64 hex digits; a longer one is refused before the gatekeeper
// (which says what a token looks like to one of any length up to this).
constexpr size_t max_credential_chars = 256;
// The most a node may ask, in micro-credits per hour: a million credits, as gflex-node's
// --price says (a thousand times that was let in).
constexpr int64_t max_node_price_micro = int64_t{1'000'000} * micro_per_credit;

registry_config registry_config_of(const core_config& config, uint32_t incarnation) {
  registry_config r;
  r.heartbeat_ms = config.heartbeat_ms;
  r.lease_ms = config.lease_ms;
  r.incarnation = incarnation;
  r.max_per_address = config.max_nodes_per_address;
  r.limits.chunk_bytes_per_s = uint64_t{config.chunk_mib_per_s} << 20;
  r.limits.chunk_queue = config.chunk_queue;
  r.limits.payload_chunk_bytes = uint64_t{config.payload_chunk_kib} << 10;
  return r;
}

verifier_limits verifier_limits_of(const core_config& config) {
  verifier_limits limits;
  limits.max_wait = std::chrono::milliseconds(static_cast<int64_t>(config.verify_wait_s * 1000.0));
  return limits;
}

// The operator's bounds on the jobs' models in the core's memory; a core-wide 0 is half of
// this machine's memory (default_job_memory_budget).
job_memory_budget job_memory_of(const core_config& config) {
  auto budget = default_job_memory_budget();
  budget.per_account = config.max_job_memory_per_account;
  if (config.max_job_memory > 0) budget.core = config.max_job_memory;
  return budget;
}

job_links links_of(const core_children& c, std::shared_ptr<data_catalog> catalog,
                   const core_config& config) {
  job_links links;
  links.fee = config.fee;
  links.cloud_price = config.cloud_price;
  links.payload_chunk_bytes = uint64_t{config.payload_chunk_kib} << 10;
  links.store = c.store;
  links.market = c.market;
  links.catalog = std::move(catalog);
  links.reputation = c.reputation;
  links.verifier = c.verifier;
  links.ledger = c.ledger;
  links.max_jobs_per_account = config.max_jobs_per_account;
  links.max_data_bytes_per_account = config.max_data_bytes_per_account;
  links.accept_unverified = config.unverified == "accept";
  links.crash_at_round = config.crash_job_at_round;
  links.ledger_wait = std::chrono::milliseconds(config.ledger_wait_ms);
  return links;
}

// Merges the registry's connected nodes with the tracker's records of them.
std::vector<node_status> merge_reputation(std::vector<node_status> nodes,
                                          const std::vector<node_status>& records) {
  std::map<std::string, const node_status*> by_name;
  for (const auto& r : records) by_name[r.name] = &r;
  for (auto& n : nodes) {
    auto it = by_name.find(n.name);
    if (it == by_name.end()) continue;
    // The record has every reputation field; the registry knows the connection.
    node_status merged = *it->second;
    merged.node_id = std::move(n.node_id);
    merged.device = std::move(n.device);
    merged.workers = n.workers;
    merged.last_seen_s = n.last_seen_s;
    merged.gpus = std::move(n.gpus);
    merged.dropped = n.dropped;
    n = std::move(merged);
  }
  return nodes;
}

// The core's store actor: over the store the caller opened (the replicated one, kept across
// restarts of the actor), or over LMDB in the data directory (reopened).
expected<caf::actor> open_core_store(caf::actor_system& sys, const core_config& config) {
  const std::chrono::milliseconds delay(config.store_commit_delay_ms);
  if (config.shared_store) return spawn_store(sys, config.shared_store, delay);
  return spawn_store(sys, config.data_dir, delay);
}

// Replaces the child that went down with a fresh one and tells the siblings that hold its
// handle. Each child restarts from what it persists or can rebuild: the store reopens LMDB,
// the market is offered every node's workers again by the registry, a new registry makes
// every node join again, the data server serves the same catalog, and the job supervisor
// resumes every unfinished job from its last committed round.
caf::actor restart_child(core_actor_type* self, const caf::actor_addr& who) {
  auto& st = self->state;
  auto& c = *st.children;
  auto& sys = self->system();
  auto tell = [&](const caf::actor& dest, const char* role, const caf::actor& replacement) {
    self->send(dest, update_atom::value, std::string(role), replacement);
  };
  if (who == c.store.address()) {
    auto store = open_core_store(sys, st.config);
    if (!store) return {};
    c.store = *store;
    tell(c.jobs, "store", c.store);
    tell(c.reputation, "store", c.store);
    tell(c.ledger, "store", c.store);
    tell(c.gate, "store", c.store);
    return c.store;
  } else if (who == c.market.address()) {
    // Two seconds for the jobs to claim the workers they hold before any slot goes out.
    c.market = spawn_market(sys, st.config.newcomer_share, std::chrono::seconds(2));
    tell(c.reputation, "market", c.market);
    tell(c.registry, "market", c.market);
    tell(c.jobs, "market", c.market);
    tell(c.verifier, "market", c.market);
    return c.market;
  } else if (who == c.registry.address()) {
    self->send(c.market, withdraw_atom::value);
    c.registry = spawn_registry(sys, c.market, c.data_server,
                                registry_config_of(st.config, ++st.registry_incarnation));
    tell(c.registry, "reputation", c.reputation);
    return c.registry;
  } else if (who == c.data_server.address()) {
    c.data_server = spawn_data_server(sys, st.catalog);
    tell(c.registry, "data_server", c.data_server);
    return c.data_server;
  } else if (who == c.jobs.address()) {
    auto links = links_of(c, st.catalog, st.config);
    links.after_restart = true;
    c.jobs = spawn_job_supervisor(sys, std::move(links), job_memory_of(st.config));
    return c.jobs;
  } else if (who == c.reputation.address()) {
    c.reputation = spawn_reputation_tracker(sys, c.store, c.market, c.gate, reputation_policy{});
    tell(c.jobs, "reputation", c.reputation);
    tell(c.registry, "reputation", c.reputation);
    return c.reputation;
  } else if (who == c.ledger.address()) {
    c.ledger =
        spawn_ledger_keeper(sys, c.store, std::chrono::milliseconds(st.config.ledger_wait_ms));
    tell(c.jobs, "ledger", c.ledger);
    return c.ledger;
  } else if (who == c.gate.address()) {
    c.gate = spawn_gatekeeper(sys, c.store, st.config.operator_key);
    tell(c.reputation, "gate", c.gate);
    return c.gate;
  } else if (who == c.verifier.address()) {
    c.verifier = spawn_verifier(sys, c.market, verifier_limits_of(st.config));
    tell(c.jobs, "verifier", c.verifier);
    return c.verifier;
  }
  return {};
}

// Join token `id` (or the prefix of its id that named it) is revoked: the nodes it admitted
// are taken out by the registry now, and `rp` is answered once they are. A token
// revoked because it leaked must not leave the nodes it let in taking and being paid for work
// until their connection next drops. Should that fail, the revocation stands (it is stored,
// and their rejoin is refused): the answer is still ok, and the failure logged.
void shut_out_token_nodes(core_actor_type* self, const std::string& id, caf::response_promise rp) {
  auto gave_up = [=](caf::error& e) mutable {
    spdlog::error(
        "join token {} is revoked, but the nodes it admitted could not be taken out "
        "now (they are refused when they join again): {}",
        id, self->system().render(e));
    rp.deliver(caf::ok_atom::value);
  };
  self->request(self->state.children->gate, std::chrono::minutes(1), token_atom::value)
      .then(
          [=](std::vector<join_token_record>& tokens) mutable {
            for (const auto& t : tokens)
              if (t.revoked && t.id.compare(0, id.size(), id) == 0) {
                self->request(self->state.children->registry, std::chrono::minutes(1),
                              revoke_atom::value, t.id)
                    .then(
                        [=](int64_t ended) mutable {
                          if (ended > 0)
                            spdlog::info("join token {} revoked: {} node(s) it admitted taken out",
                                         t.id, ended);
                          rp.deliver(caf::ok_atom::value);
                        },
                        gave_up);
                return;
              }
            rp.deliver(caf::ok_atom::value);  // revoked, and gone since
          },
          gave_up);
}

caf::behavior core_actor(core_actor_type* self, core_children children, core_config config,
                         std::shared_ptr<data_catalog> catalog) {
  self->state.children = std::make_shared<core_children>(children);
  self->state.config = std::move(config);
  self->state.catalog = std::move(catalog);
  // Children are supervised one for one: monitored, restarted when they die, with a budget
  // (5 restarts a minute) after which the core stops and recovers like a crashed core.
  for (const auto& child : children.all()) self->monitor(child);
  self->set_down_handler([=](const caf::down_msg& down) {
    auto& st = self->state;
    if (st.sessions.forget(down.source)) return;
    auto& c = *st.children;
    const char* role = down.source == c.store.address()         ? "store"
                       : down.source == c.market.address()      ? "market"
                       : down.source == c.registry.address()    ? "registry"
                       : down.source == c.data_server.address() ? "data server"
                       : down.source == c.jobs.address()        ? "job supervisor"
                       : down.source == c.reputation.address()  ? "reputation tracker"
                       : down.source == c.verifier.address()    ? "verifier"
                       : down.source == c.ledger.address()      ? "ledger keeper"
                       : down.source == c.gate.address()        ? "gatekeeper"
                                                                : nullptr;
    if (role == nullptr) return;
    auto now = std::chrono::steady_clock::now();
    while (!st.restarts.empty() && now - st.restarts.front() > restart_window)
      st.restarts.pop_front();
    if (static_cast<int>(st.restarts.size()) >= restart_budget) {
      // The last word names the child that kept failing, for the operator and the service
      // manager (which restarts the core).
      auto why = std::string("the core gave up: its children stopped ") +
                 std::to_string(restart_budget + 1) + " times within " +
                 std::to_string(restart_window.count()) + " s, the last one the " + role + " (" +
                 self->system().render(down.reason) + ")";
      spdlog::error("{}", why);
      self->quit(to_caf(error(errc::io_error, why)));
      return;
    }
    st.restarts.push_back(now);
    core_metrics::child_restarts(role).inc();
    spdlog::warn("core: the {} stopped ({}); restarting it", role,
                 self->system().render(down.reason));
    auto replacement = restart_child(self, down.source);
    if (!replacement) {
      auto why = std::string("the core gave up: it cannot restart the ") + role;
      spdlog::error("{}", why);
      self->quit(to_caf(error(errc::io_error, why)));
      return;
    }
    self->monitor(replacement);
  });
  // However the core stops, its children stop with it.
  auto kids = self->state.children;
  self->attach_functor([=](const caf::error&) {
    for (const auto& child : kids->all())
      caf::anon_send_exit(child, caf::exit_reason::user_shutdown);
  });
  // A peer's error messages and messages outside the protocol are dropped, never fatal.
  self->set_error_handler([](caf::error&) {});
  self->set_default_handler(caf::drop);
  auto jobs = [=] { return self->state.children->jobs; };
  // Hands a request to an internal actor and its answer back to the peer. Never delegate:
  // the internal actor would answer the peer itself, and a handle that crosses the network
  // is one the peer can message and kill.
  auto relay = [=](auto answer_type, caf::response_promise& rp, const caf::actor& dest,
                   auto&&... xs) {
    using answer = typename decltype(answer_type)::type;
    self->request(dest, std::chrono::minutes(5), std::forward<decltype(xs)>(xs)...)
        .then([=](answer& a) mutable { rp.deliver(std::move(a)); },
              [=](caf::error& e) mutable { rp.deliver(std::move(e)); });
  };
  // Answers a client's request once its API key is known (client_door.hpp).
  auto authorized = [=](const std::string& key, bool operator_only, authorized_fn then) {
    return authorize(self, self->state.children->gate, key, operator_only, std::move(then));
  };
  // Calls `then` once `account` is known to be a user account the ledger holds; else `rp` is
  // answered why not. The gatekeeper knows keys, not accounts: without this, an unknown or
  // mistyped account was given a key (no ledger account behind it), or "revoked" with nothing
  // said.
  auto with_user_account = [=](caf::response_promise& rp, const std::string& account,
                               std::function<void()> then) {
    if (!account.starts_with("user/")) {
      rp.deliver(to_caf(error(errc::invalid_argument,
                              "'" + account + "': only user accounts (user/NAME) have API keys")));
      return;
    }
    self->request(self->state.children->ledger, std::chrono::seconds(30), account_atom::value,
                  account)
        .then([=](account_info&) mutable { then(); },
              [=](caf::error& e) mutable { rp.deliver(std::move(e)); });
  };
  return {
      // A client's API key, and an actor of its own whose end ends the session: its session.
      [=](auth_atom, std::string& key, caf::actor& link) -> caf::result<client_welcome> {
        return open_client_session(self, self->state.children->gate, std::move(key),
                                   std::move(link));
      },
      [=](hello_atom, node_hello& hello) -> caf::result<node_welcome> {
        // The name is logged before it is checked: at most 64 bytes of it, printable (a hello
        // of megabytes of name, new lines in it, wrote them all, and forged lines, to the
        // log). Within the refusals' bound: any peer with the core's bundle can send such
        // hellos in a loop, and a line each filled the disk.
        const auto who =
            "refused node " + printable_text(std::string_view(hello.name).substr(0, 64));
        auto refuse = [=](const error& why) {
          note_refusal(self, who, why);
          return to_caf(why);
        };
        if (hello.protocol != protocol_version)
          return refuse(
              error(errc::invalid_argument, "protocol version " + std::to_string(hello.protocol) +
                                                " is not supported (this core speaks version " +
                                                std::to_string(protocol_version) + ")"));
        if (hello.workers == 0 || hello.workers > 1024 || !hello.uplink ||
            !is_account_id("node/" + hello.name))
          return refuse(error(errc::invalid_argument,
                              "a node must name itself (1-128 of A-Z a-z 0-9 . _ -) and bring "
                              "1-1024 workers and an uplink"));
        // Before anything is made of them: a hello with a key of megabytes was held (hex
        // encoded, copied) for the 30 s of a failure delay before its proof was checked.
        if (hello.public_key.size() != public_key_bytes || hello.proof.size() != signature_bytes ||
            hello.credential.size() > max_credential_chars)
          return refuse(error(errc::invalid_argument,
                              "a node's hello brings a " + std::to_string(public_key_bytes) +
                                  "-byte public key, a " + std::to_string(signature_bytes) +
                                  "-byte proof and a join token (gft_ and 64 hex digits)"));
        if (hello.device.size() > max_device_description_chars)
          return refuse(error(errc::invalid_argument,
                              "a node's device description has at most " +
                                  std::to_string(max_device_description_chars) +
                                  " characters, not " + std::to_string(hello.device.size())));
        if (!is_printable_text(hello.device))
          return refuse(error(errc::invalid_argument,
                              "a node's device description must be printable UTF-8 (no control "
                              "characters)"));
        if (hello.price < 0 || hello.price > max_node_price_micro ||
            !(hello.throughput >= 0.0 && hello.throughput < 1e12))
          return refuse(error(errc::invalid_argument,
                              "a node's price must be in [0, 1000000] credits per hour and its "
                              "throughput finite and not negative"));
        if (auto bad = check_gpus(hello.gpus); !bad.empty())
          return refuse(error(errc::invalid_argument, "a node's GPU list: " + bad));
        if (hello.tier > static_cast<uint8_t>(node_tier::core))
          return refuse(error(errc::invalid_argument, "unknown tier " + std::to_string(hello.tier) +
                                                          " (community is 0, core is 1)"));
        // The node proves it holds the key it presents (its identity from here on), and
        // brings a join token for its tier; the gatekeeper counts failures per address.
        bool proof_ok = verify_signature(hello.public_key,
                                         hello_message(hello.protocol, hello.name), hello.proof);
        auto token = std::move(hello.credential);
        hello.credential.clear();
        // The record of the token that admits it (access.hpp): the registry takes the node out
        // if that token is revoked while it is joined.
        const std::string token_id =
            token.empty() ? std::string() : secret_digest(token).substr(0, 12);
        // Taken before the promise: making one moves the sender out of the message.
        auto sender = self->current_sender();
        // Its session serves the process that says hello, and only it (node_session.hpp): a
        // hello without a sender, or naming another process's uplink, would join nodes that
        // answer to nobody, past --max-per-address.
        if (!sender || sender->node() != hello.uplink->node())
          return refuse(error(errc::invalid_argument,
                              "a node says hello from the process of the uplink it names"));
        auto rp = self->make_response_promise<node_welcome>();
        const auto name = hello.name;
        const auto tier = hello.tier;
        const auto key = key_hex(hello.public_key);
        // Its payout account first (opened at its first join): a node that joined without one
        // had every paid round it worked on refused by the ledger ("unknown account"), and
        // those jobs failed. A node whose account cannot be opened now is refused, and says
        // hello again later.
        auto join = [=](node_hello hello, std::string address) mutable {
          self->request(self->state.children->ledger, std::chrono::seconds(30), open_atom::value,
                        "node/" + name, true)
              .then(
                  [=](caf::ok_atom) mutable {
                    // The registry refuses past --max-per-address and a key joined already.
                    self->request(self->state.children->registry, std::chrono::seconds(10),
                                  hello_atom::value, std::move(hello), address, token_id)
                        .then([=](node_welcome& w) mutable { rp.deliver(std::move(w)); },
                              [=](caf::error& e) mutable {
                                note_refusal(self, "refused node " + name + " from " + address,
                                             from_caf(e, &self->system()));
                                rp.deliver(e);
                              });
                  },
                  [=](caf::error& e) mutable {
                    // The core's own failure, not the node's: logged in full, for the operator.
                    spdlog::error("cannot open the payout account of node {}: {}", name,
                                  self->system().render(e));
                    auto why = error(errc::unavailable,
                                     "the core cannot open this node's payout account now: " +
                                         self->system().render(e));
                    core_metrics::join_refusals(to_string(why.code())).inc();
                    rp.deliver(to_caf(why));
                  });
        };
        auto bind = [=](node_hello hello, std::string address) mutable {
          self->request(self->state.children->reputation, std::chrono::seconds(10),
                        hello_atom::value, name, tier, key)
              .then([=](caf::ok_atom) mutable { join(std::move(hello), address); },
                    [=](caf::error& e) mutable {
                      note_refusal(self, "refused node " + name, from_caf(e, &self->system()));
                      rp.deliver(e);
                    });
        };
        auto admit = [=](std::string address) mutable {
          self->request(self->state.children->gate, std::chrono::seconds(60), admit_atom::value,
                        token, std::string(to_string(static_cast<node_tier>(tier))), address,
                        proof_ok, key)
              .then([=](caf::ok_atom) mutable { bind(std::move(hello), address); },
                    [=](caf::error& e) mutable {
                      note_refusal(self, "refused node " + name + " from " + address,
                                   from_caf(e, &self->system()));
                      rp.deliver(e);
                    });
        };
        // Failures are counted by the address the hello came from, as the middleman knows
        // it (the TCP peer); an embedded node is "local".
        if (sender->node() == self->node()) {
          admit("local");
        } else {
          self->request(self->system().middleman().actor_handle(), std::chrono::seconds(10),
                        caf::get_atom::value, sender->node())
              .then([=](const caf::node_id&, std::string& host,
                        uint16_t) mutable { admit(host.empty() ? "unknown" : host); },
                    [=](caf::error&) mutable { admit("unknown"); });
        }
        return rp;
      },
      // Clients: every request carries an API key; the gatekeeper says whose it is. The job
      // supervisor shows and changes only the principal's own jobs; operator requests need
      // the operator's key.
      [=](submit_atom a, std::string& key, std::string& text) {
        return authorized(key, false, [=](caf::response_promise& rp, const std::string& who) {
          relay(as<std::string>{}, rp, jobs(), a, who, text);
        });
      },
      // With the id the client gave the submission: asked again with it, the same job.
      [=](submit_atom a, std::string& key, std::string& text, std::string& submission) {
        return authorized(key, false, [=](caf::response_promise& rp, const std::string& who) {
          relay(as<std::string>{}, rp, jobs(), a, who, text, submission);
        });
      },
      [=](status_atom a, std::string& key, std::string& id) {
        return authorized(key, false, [=](caf::response_promise& rp, const std::string& who) {
          relay(as<job_status>{}, rp, jobs(), a, who, id);
        });
      },
      [=](jobs_atom a, std::string& key) {
        return authorized(key, false, [=](caf::response_promise& rp, const std::string& who) {
          relay(as<std::vector<job_status>>{}, rp, jobs(), a, who);
        });
      },
      [=](cancel_atom a, std::string& key, std::string& id) {
        return authorized(key, false, [=](caf::response_promise& rp, const std::string& who) {
          relay(as<caf::ok_atom>{}, rp, jobs(), a, who, id);
        });
      },
      [=](dpush_atom a, std::string& key, std::string& name, data_part& part) {
        return authorized(key, false, [=](caf::response_promise& rp, const std::string& who) {
          relay(as<data_set_info>{}, rp, jobs(), a, who, name, part);
        });
      },
      [=](dlist_atom a, std::string& key) {
        return authorized(key, false, [=](caf::response_promise& rp, const std::string& who) {
          relay(as<std::vector<data_set_info>>{}, rp, jobs(), a, who);
        });
      },
      [=](drm_atom a, std::string& key, std::string& name) {
        return authorized(key, false, [=](caf::response_promise& rp, const std::string& who) {
          relay(as<caf::ok_atom>{}, rp, jobs(), a, who, name);
        });
      },
      [=](fetch_atom a, std::string& key, std::string& id, uint64_t offset) {
        return authorized(key, false, [=](caf::response_promise& rp, const std::string& who) {
          relay(as<model_part>{}, rp, jobs(), a, who, id, offset);
        });
      },
      [=](topup_atom a, std::string& key, std::string& job, int64_t amount) {
        return authorized(key, false, [=](caf::response_promise& rp, const std::string& who) {
          relay(as<caf::ok_atom>{}, rp, jobs(), a, who, job, amount);
        });
      },
      [=](account_atom a, std::string& key, std::string& account) {
        return authorized(key, false, [=](caf::response_promise& rp, const std::string& who) {
          if (who != operator_principal && who != account) {
            rp.deliver(to_caf(error(errc::permission_denied,
                                    "this API key belongs to " + who + ", not to " + account)));
            return;
          }
          relay(as<account_info>{}, rp, self->state.children->ledger, a, account);
        });
      },
      // Operator: open an account and hand out its API key.
      [=](open_atom, std::string& key, std::string& account) {
        return authorized(key, true, [=](caf::response_promise& rp, const std::string&) {
          // Node and escrow accounts are the core's to open.
          if (!account.starts_with("user/")) {
            rp.deliver(
                to_caf(error(errc::invalid_argument, "'" + account +
                                                         "': clients open user accounts only "
                                                         "(user/NAME)")));
            return;
          }
          // An account open without a key (its first creation failed between the two
          // writes) gets its key now; the gatekeeper refuses one that has a key.
          self->request(self->state.children->ledger, std::chrono::seconds(30), open_atom::value,
                        account, true)
              .then(
                  [=](caf::ok_atom) mutable {
                    relay(as<std::string>{}, rp, self->state.children->gate, api_key_atom::value,
                          account);
                  },
                  [=](caf::error& e) mutable { rp.deliver(e); });
        });
      },
      // Operator: replace an account's API key (update), or take it away (revoke; the account
      // keeps its credits and jobs). A leaked key opened its account for good. Each request
      // of a client is authorized anew (authorized), so the old key is refused from its next
      // request on, in a session opened with it too.
      [=](update_atom, std::string& key, api_key_atom k, std::string& account) {
        return authorized(key, true, [=](caf::response_promise& rp, const std::string&) {
          with_user_account(rp, account, [=]() mutable {
            relay(as<std::string>{}, rp, self->state.children->gate, update_atom::value, k,
                  account);
          });
        });
      },
      [=](revoke_atom, std::string& key, api_key_atom k, std::string& account) {
        return authorized(key, true, [=](caf::response_promise& rp, const std::string&) {
          with_user_account(rp, account, [=]() mutable {
            relay(as<caf::ok_atom>{}, rp, self->state.children->gate, revoke_atom::value, k,
                  account);
          });
        });
      },
      [=](credit_in_atom, std::string& key, std::string& account, int64_t amount,
          std::string& reference) {
        return authorized(key, true, [=](caf::response_promise& rp, const std::string&) {
          if (!is_credit_reference(reference)) {
            rp.deliver(to_caf(error(errc::invalid_argument,
                                    "a credit's reference must be 1-128 characters of "
                                    "A-Z a-z 0-9 . _ -")));
            return;
          }
          if (amount <= 0 || amount > max_amount_micro) {
            rp.deliver(
                to_caf(error(errc::invalid_argument, "a credit must be in (0, 1e12] credits")));
            return;
          }
          if (!account.starts_with("user/")) {
            rp.deliver(
                to_caf(error(errc::invalid_argument,
                             "only user accounts are credited from outside, not " + account)));
            return;
          }
          std::vector<posting> postings{{account, amount}, {ledger_book::external, -amount}};
          // Booked as an operation named by the reference: the same credit sent again (its
          // answer was lost, the operator ran the command twice) is answered with the entry
          // that booked it, and nothing is credited twice.
          relay(as<uint64_t>{}, rp, self->state.children->ledger, transfer_atom::value,
                std::string("credit"), "operator credit to " + account + ", reference " + reference,
                std::move(postings), credit_operation(reference));
        });
      },
      [=](token_atom a, std::string& key, std::string& tier, int64_t lifetime_s, int64_t uses) {
        return authorized(key, true, [=](caf::response_promise& rp, const std::string&) {
          relay(as<std::string>{}, rp, self->state.children->gate, a, tier, lifetime_s, uses);
        });
      },
      [=](token_atom a, std::string& key) {
        return authorized(key, true, [=](caf::response_promise& rp, const std::string&) {
          relay(as<std::vector<join_token_record>>{}, rp, self->state.children->gate, a);
        });
      },
      [=](revoke_atom a, std::string& key, std::string& id) {
        return authorized(key, true, [=](caf::response_promise& rp, const std::string&) {
          self->request(self->state.children->gate, std::chrono::minutes(5), a, id)
              .then([=](caf::ok_atom) mutable { shut_out_token_nodes(self, id, rp); },
                    [=](caf::error& e) mutable { rp.deliver(std::move(e)); });
        });
      },
      [=](ledger_atom a, std::string& key) {
        return authorized(key, true, [=](caf::response_promise& rp, const std::string&) {
          // Ended jobs must hold nothing in escrow; the job supervisor knows which ended, and
          // names only those whose end (which returns their escrow) is recorded.
          self->request(self->state.children->jobs, std::chrono::seconds(30), a)
              .then(
                  [=](std::vector<std::string>& ended) mutable {
                    relay(as<ledger_report>{}, rp, self->state.children->ledger, a, ended);
                  },
                  [=](caf::error& e) mutable { rp.deliver(e); });
        });
      },
      [=](nodes_atom a, std::string& key) {
        return authorized(key, true, [=](caf::response_promise& rp, const std::string&) {
          self->request(self->state.children->registry, std::chrono::seconds(10), a)
              .then(
                  [=](std::vector<node_status>& nodes) mutable {
                    self->request(self->state.children->reputation, std::chrono::seconds(10), a)
                        .then(
                            [=](std::vector<node_status>& records) mutable {
                              rp.deliver(merge_reputation(std::move(nodes), records));
                            },
                            [=](caf::error& e) mutable { rp.deliver(e); });
                  },
                  [=](caf::error& e) mutable { rp.deliver(e); });
        });
      },
  };
}

}  // namespace

expected<void> check_core_config(const core_config& config) {
  // Past 1, a node's share of a payment is negative: the settlement does not balance, and the
  // keeper refused every metered round. (gflex-core's --fee says so; an embedding program's
  // core_config did not.)
  if (!(config.fee >= 0.0 && config.fee <= 0.99))
    return error(
        errc::invalid_argument,
        "the platform's fee must be in [0, 0.99] of a payment, not " + std::to_string(config.fee));
  // A core of several's own settings without its store: each core ran alone on its own copy
  // of the data directory, with the same keys, leading and billing on its own (split brain).
  // Its --chunk-advertise is read by the replicated store alone: without one, nothing serves
  // chunks at that address, and the setting was dropped without a word.
  if (config.store_url.empty() && (!config.core_id.empty() || !config.advertise.empty() ||
                                   !config.chunk_listen.empty() || !config.chunk_advertise.empty()))
    return error(errc::invalid_argument,
                 std::string(!config.core_id.empty()        ? "--core-id"
                             : !config.advertise.empty()    ? "--advertise"
                             : !config.chunk_listen.empty() ? "--chunk-listen"
                                                            : "--chunk-advertise") +
                     " is for one of a core of several, which needs --store etcd://...: without "
                     "it this core would run alone on its own store");
  // The bounds of gflex-core's flags, which an embedding program's core_config passed
  // unchecked: a shard of 0 samples divided by zero (SIGFPE, the core gone) at the first job
  // on a built-in data set; a chunk rate of 0 never refilled a node's byte budget, and every
  // data fetch stalled; a chunk queue of 0 disconnected every node at its first chunk
  // request; payload chunks past 64 MiB were refused by every node's uplink (none joined),
  // and chunks of 0 KiB are not the whole payloads a node takes a 0 in its welcome for. A
  // heartbeat under 50 ms is raised to 50 by every node, so a lease under 100 ms dropped
  // them all at once; 0 nodes per address or jobs per account refused every one.
  auto out_of = [](const char* flag, int64_t value, int64_t low, int64_t high,
                   const char* unit) -> expected<void> {
    if (value >= low && value <= high) return {};
    return error(errc::invalid_argument, std::string(flag) + " must be in [" + std::to_string(low) +
                                             ", " + std::to_string(high) + "] " + unit + ", not " +
                                             std::to_string(value));
  };
  // Byte quotas are MiB on the command line (1 MiB to 2^30 MiB).
  constexpr int64_t mib = int64_t{1} << 20, most_bytes = int64_t{1} << 50;
  auto bytes = [](uint64_t value) {
    return static_cast<int64_t>(std::min<uint64_t>(value, uint64_t{INT64_MAX}));
  };
  for (auto checked :
       {out_of("--heartbeat-ms", config.heartbeat_ms, 50, 600'000, "ms"),
        out_of("--lease-ms", config.lease_ms, 100, 3'600'000, "ms"),
        out_of("--max-per-address", config.max_nodes_per_address, 1, 1'000'000,
               "nodes connected from one address"),
        out_of("--max-jobs-per-account", config.max_jobs_per_account, 1, 100'000,
               "unfinished jobs per account"),
        out_of("--shard-samples", config.shard_samples, 1, 1'000'000,
               "training samples per data shard"),
        out_of("--chunk-rate", config.chunk_mib_per_s, 1, 1'000'000,
               "MiB per second of data chunks per node"),
        out_of("--chunk-queue", config.chunk_queue, 1, 100'000, "chunk requests waiting per node"),
        out_of("--payload-chunk-kib", config.payload_chunk_kib, 16, 65'536, "KiB per chunk"),
        out_of("max_data_bytes_per_account", bytes(config.max_data_bytes_per_account), mib,
               most_bytes, "bytes (--max-data-per-account-mib)"),
        out_of("max_job_memory_per_account", bytes(config.max_job_memory_per_account), mib,
               most_bytes, "bytes (--max-job-memory-per-account-mib)"),
        // 0 is half of this machine's memory.
        config.max_job_memory == 0 ? expected<void>{}
                                   : out_of("max_job_memory", bytes(config.max_job_memory), mib,
                                            most_bytes, "bytes, or 0 (--max-job-memory-mib)"),
        out_of("--crash-job-at-round", config.crash_job_at_round, 0, 1'000'000, "rounds"),
        out_of("--store-commit-delay-ms", config.store_commit_delay_ms, 0, 600'000, "ms"),
        out_of("--ledger-wait-ms", config.ledger_wait_ms, 100, 3'600'000, "ms")})
    if (!checked) return checked;
  // A lease is read only by a core of several.
  if (!config.store_url.empty())
    if (auto checked = out_of("--leader-lease-s", config.leader_lease_s, 2, 600, "s"); !checked)
      return checked;
  // A NaN share reached an integer cast of the market's newcomer quota (undefined behaviour),
  // and a NaN wait one of the verifier's deadline: the comparisons below are false for NaN.
  auto outside = [](const char* flag, double value, double low, double high,
                    const char* unit) -> expected<void> {
    if (value >= low && value <= high) return {};
    char text[160];
    std::snprintf(text, sizeof text, "%s must be in [%g, %g] %s, not %g", flag, low, high, unit,
                  value);
    return error(errc::invalid_argument, std::string(text));
  };
  for (auto checked :
       {outside("--newcomer-share", config.newcomer_share, 0.0, 1.0, "of each round's assignments"),
        outside("--verify-wait-s", config.verify_wait_s, 0.1, 86'400.0, "s"),
        outside("--cloud-price", config.cloud_price, 0.0, 1e6, "credits per device-hour")})
    if (!checked) return checked;
  // Anything but "accept" waited, so "Accept" or "acept" waited without a word.
  if (config.unverified != "wait" && config.unverified != "accept")
    return error(errc::invalid_argument,
                 "--unverified must be wait or accept, not \"" + config.unverified + "\"");
  // A lease shorter than two heartbeats drops healthy nodes every lease, with their work in
  // flight, and they join again for ever.
  if (uint64_t{config.lease_ms} < 2 * uint64_t{config.heartbeat_ms})
    return error(errc::invalid_argument,
                 "--lease-ms " + std::to_string(config.lease_ms) +
                     " must be at least twice --heartbeat-ms " +
                     std::to_string(config.heartbeat_ms) +
                     ": a node beats once per heartbeat and is lost after a lease of silence");
  return {};
}

expected<caf::actor> spawn_core(caf::actor_system& sys, const core_config& config) {
  if (auto ok = check_core_config(config); !ok) return ok.error();
  auto store = open_core_store(sys, config);
  if (!store) return store.error();
  core_children c;
  c.store = *store;
  c.market = spawn_market(sys, config.newcomer_share);
  auto catalog = std::make_shared<data_catalog>(config.shard_samples);
  c.data_server = spawn_data_server(sys, catalog);
  c.registry = spawn_registry(sys, c.market, c.data_server, registry_config_of(config, 0));
  c.gate = spawn_gatekeeper(sys, c.store, config.operator_key);
  c.reputation = spawn_reputation_tracker(sys, c.store, c.market, c.gate, reputation_policy{});
  caf::anon_send(c.registry, update_atom::value, std::string("reputation"), c.reputation);
  c.verifier = spawn_verifier(sys, c.market, verifier_limits_of(config));
  c.ledger = spawn_ledger_keeper(sys, c.store, std::chrono::milliseconds(config.ledger_wait_ms));
  c.jobs = spawn_job_supervisor(sys, links_of(c, catalog, config), job_memory_of(config));
  return sys.spawn(core_actor, c, config, catalog);
}

}  // namespace gflex
