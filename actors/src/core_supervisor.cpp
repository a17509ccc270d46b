#include "core_supervisor.hpp"

#include <spdlog/spdlog.h>

#include <sodium.h>

#include <deque>
#include <map>

#include "data_catalog.hpp"
#include "data_server.hpp"
#include "gflex/runtime/identity.hpp"
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

struct core_children {
  caf::actor store, market, data_server, registry, jobs, reputation, verifier, ledger;
  std::vector<caf::actor> all() const {
    return {store, market, data_server, registry, jobs, reputation, verifier, ledger};
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
  static inline const char* name = "core_supervisor";
};

using core_actor_type = caf::stateful_actor<core_state>;

job_links links_of(const core_children& c, std::shared_ptr<data_catalog> catalog,
                   const core_config& config) {
  job_links links;
  links.fee = config.fee;
  links.cloud_price = config.cloud_price;
  links.store = c.store;
  links.market = c.market;
  links.catalog = std::move(catalog);
  links.reputation = c.reputation;
  links.verifier = c.verifier;
  links.ledger = c.ledger;
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
    n = std::move(merged);
  }
  return nodes;
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
    auto store = spawn_store(sys, st.config.data_dir);
    if (!store) return {};
    c.store = *store;
    tell(c.jobs, "store", c.store);
    tell(c.reputation, "store", c.store);
    tell(c.ledger, "store", c.store);
    return c.store;
  } else if (who == c.market.address()) {
    c.market = spawn_market(sys);
    tell(c.reputation, "market", c.market);
    tell(c.registry, "market", c.market);
    tell(c.jobs, "market", c.market);
    tell(c.verifier, "market", c.market);
    return c.market;
  } else if (who == c.registry.address()) {
    self->send(c.market, withdraw_atom::value);
    c.registry = spawn_registry(
        sys, c.market, c.data_server,
        registry_config{st.config.heartbeat_ms, st.config.lease_ms, ++st.registry_incarnation});
    return c.registry;
  } else if (who == c.data_server.address()) {
    c.data_server = spawn_data_server(sys, st.catalog);
    tell(c.registry, "data_server", c.data_server);
    return c.data_server;
  } else if (who == c.jobs.address()) {
    c.jobs = spawn_job_supervisor(sys, links_of(c, st.catalog, st.config));
    return c.jobs;
  } else if (who == c.reputation.address()) {
    c.reputation = spawn_reputation_tracker(sys, c.store, c.market, reputation_policy{});
    tell(c.jobs, "reputation", c.reputation);
    return c.reputation;
  } else if (who == c.ledger.address()) {
    c.ledger = spawn_ledger_keeper(sys, c.store);
    tell(c.jobs, "ledger", c.ledger);
    return c.ledger;
  } else if (who == c.verifier.address()) {
    c.verifier = spawn_verifier(sys, c.market);
    tell(c.jobs, "verifier", c.verifier);
    return c.verifier;
  }
  return {};
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
    auto& c = *st.children;
    const char* role = down.source == c.store.address()         ? "store"
                       : down.source == c.market.address()      ? "market"
                       : down.source == c.registry.address()    ? "registry"
                       : down.source == c.data_server.address() ? "data server"
                       : down.source == c.jobs.address()        ? "job supervisor"
                       : down.source == c.reputation.address()  ? "reputation tracker"
                       : down.source == c.verifier.address()    ? "verifier"
                       : down.source == c.ledger.address()      ? "ledger keeper"
                                                                : nullptr;
    if (role == nullptr) return;
    auto now = std::chrono::steady_clock::now();
    while (!st.restarts.empty() && now - st.restarts.front() > restart_window)
      st.restarts.pop_front();
    if (static_cast<int>(st.restarts.size()) >= restart_budget) {
      spdlog::error("core: children stopped {} times within {} s; stopping the core",
                    restart_budget + 1, restart_window.count());
      self->quit(down.reason);
      return;
    }
    st.restarts.push_back(now);
    spdlog::warn("core: the {} stopped ({}); restarting it", role,
                 self->system().render(down.reason));
    auto replacement = restart_child(self, down.source);
    if (!replacement) {
      spdlog::error("core: cannot restart the {}; stopping the core", role);
      self->quit(down.reason);
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
  auto jobs = [=] { return self->state.children->jobs; };
  return {
      [=](hello_atom, node_hello& hello) -> caf::result<node_welcome> {
        if (hello.protocol != protocol_version) {
          spdlog::warn("refused node {}: protocol version {}", hello.name, hello.protocol);
          return to_caf(
              error(errc::invalid_argument, "protocol version " + std::to_string(hello.protocol) +
                                                " is not supported (this core speaks version " +
                                                std::to_string(protocol_version) + ")"));
        }
        if (hello.workers.empty() || hello.workers.size() > 1024 || !hello.uplink ||
            !is_account_id("node/" + hello.name))
          return to_caf(error(errc::invalid_argument,
                              "a node must name itself (1-128 of A-Z a-z 0-9 . _ -) and bring "
                              "1-1024 workers and an uplink"));
        if (hello.price < 0 || hello.price > max_amount_micro / 1000 ||
            !(hello.throughput >= 0.0 && hello.throughput < 1e12))
          return to_caf(error(errc::invalid_argument,
                              "a node's price must be in [0, 1000000] credits per hour and its "
                              "throughput finite and not negative"));
        if (hello.tier > static_cast<uint8_t>(node_tier::core))
          return to_caf(error(errc::invalid_argument, "unknown tier " + std::to_string(hello.tier) +
                                                          " (community is 0, core is 1)"));
        if (hello.tier == static_cast<uint8_t>(node_tier::core)) {
          const auto& secret = self->state.config.core_secret;
          bool match = !secret.empty() && hello.credential.size() == secret.size() &&
                       sodium_memcmp(hello.credential.data(), secret.data(), secret.size()) == 0;
          if (!match) {
            spdlog::warn("refused node {}: wrong core-tier credential", hello.name);
            return to_caf(error(errc::permission_denied,
                                secret.empty() ? "this core accepts no core-tier nodes (it was "
                                                 "started without a core secret)"
                                               : "the core tier needs the core's secret, and "
                                                 "this one does not match"));
          }
        }
        hello.credential.clear();
        // The node proves it holds the key it presents: its identity from here on.
        if (!verify_signature(hello.public_key, hello_message(hello.protocol, hello.name),
                              hello.proof)) {
          spdlog::warn("refused node {}: its hello is not signed by the key it presents",
                       hello.name);
          return to_caf(error(errc::permission_denied,
                              "the hello's signature does not match the node key it presents"));
        }
        auto rp = self->make_response_promise<node_welcome>();
        const auto name = hello.name;
        const auto tier = hello.tier;
        const auto key = key_hex(hello.public_key);
        auto join = [=](node_hello hello) mutable {
          self->request(self->state.children->registry, std::chrono::seconds(10), hello_atom::value,
                        std::move(hello))
              .then(
                  [=](node_welcome& w) mutable {
                    // Its payout account, opened at its first join.
                    self->request(self->state.children->ledger, std::chrono::seconds(30),
                                  open_atom::value, "node/" + name, true)
                        .then([](caf::ok_atom) {},
                              [=](caf::error& e) {
                                spdlog::error("cannot open the payout account of node {}: {}", name,
                                              self->system().render(e));
                              });
                    rp.deliver(std::move(w));
                  },
                  [=](caf::error& e) mutable { rp.deliver(e); });
        };
        self->request(self->state.children->reputation, std::chrono::seconds(10), hello_atom::value,
                      name, tier, key)
            .then([=](caf::ok_atom) mutable { join(std::move(hello)); },
                  [=](caf::error& e) mutable {
                    spdlog::warn("refused node {}: {}", name, from_caf(e).message());
                    rp.deliver(e);
                  });
        return rp;
      },
      [=](submit_atom a, std::string& text) { return self->delegate(jobs(), a, std::move(text)); },
      [=](status_atom a, std::string& id) { return self->delegate(jobs(), a, std::move(id)); },
      [=](jobs_atom a) { return self->delegate(jobs(), a); },
      [=](cancel_atom a, std::string& id) { return self->delegate(jobs(), a, std::move(id)); },
      [=](fetch_atom a, std::string& id) { return self->delegate(jobs(), a, std::move(id)); },
      [=](open_atom a, std::string& account) -> caf::result<caf::message> {
        // Node and escrow accounts are the core's to open.
        if (!account.starts_with("user/"))
          return to_caf(error(errc::invalid_argument, "'" + account +
                                                          "': clients open user accounts only "
                                                          "(user/NAME)"));
        return self->delegate(self->state.children->ledger, a, std::move(account), false);
      },
      [=](credit_in_atom, std::string& account, int64_t amount) -> caf::result<caf::message> {
        if (amount <= 0 || amount > max_amount_micro)
          return to_caf(error(errc::invalid_argument, "a credit must be in (0, 1e12] credits"));
        if (!account.starts_with("user/"))
          return to_caf(error(errc::invalid_argument,
                              "only user accounts are credited from outside, not " + account));
        std::vector<posting> postings{{account, amount}, {ledger_book::external, -amount}};
        return self->delegate(self->state.children->ledger, transfer_atom::value,
                              std::string("credit"), "operator credit to " + account,
                              std::move(postings));
      },
      [=](account_atom a, std::string& account) {
        return self->delegate(self->state.children->ledger, a, std::move(account));
      },
      [=](topup_atom a, std::string& job, int64_t amount) {
        return self->delegate(self->state.children->jobs, a, std::move(job), amount);
      },
      [=](ledger_atom a) -> caf::result<ledger_report> {
        // Ended jobs must hold nothing in escrow; the job supervisor knows which ended.
        auto rp = self->make_response_promise<ledger_report>();
        self->request(self->state.children->jobs, std::chrono::seconds(30), jobs_atom::value)
            .then(
                [=](std::vector<job_status>& jobs) mutable {
                  std::vector<std::string> ended;
                  for (const auto& j : jobs)
                    if (is_terminal(j.state)) ended.push_back(j.job_id);
                  self->request(self->state.children->ledger, std::chrono::seconds(120), a, ended)
                      .then([=](ledger_report& r) mutable { rp.deliver(std::move(r)); },
                            [=](caf::error& e) mutable { rp.deliver(e); });
                },
                [=](caf::error& e) mutable { rp.deliver(e); });
        return rp;
      },
      [=](nodes_atom a) -> caf::result<std::vector<node_status>> {
        auto rp = self->make_response_promise<std::vector<node_status>>();
        auto& c = *self->state.children;
        self->request(c.registry, std::chrono::seconds(10), a)
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
        return rp;
      },
  };
}

}  // namespace

expected<caf::actor> spawn_core(caf::actor_system& sys, const core_config& config) {
  auto store = spawn_store(sys, config.data_dir);
  if (!store) return store.error();
  core_children c;
  c.store = *store;
  c.market = spawn_market(sys);
  auto catalog = std::make_shared<data_catalog>();
  c.data_server = spawn_data_server(sys, catalog);
  c.registry = spawn_registry(sys, c.market, c.data_server,
                              registry_config{config.heartbeat_ms, config.lease_ms});
  c.reputation = spawn_reputation_tracker(sys, c.store, c.market, reputation_policy{});
  c.verifier = spawn_verifier(sys, c.market);
  c.ledger = spawn_ledger_keeper(sys, c.store);
  c.jobs = spawn_job_supervisor(sys, links_of(c, catalog, config));
  return sys.spawn(core_actor, c, config, catalog);
}

}  // namespace gflex
