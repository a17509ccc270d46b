#include "core_supervisor.hpp"

#include <spdlog/spdlog.h>

#include <deque>

#include "data_catalog.hpp"
#include "data_server.hpp"
#include "job_supervisor.hpp"
#include "market.hpp"
#include "messages.hpp"
#include "registry.hpp"
#include "store.hpp"

namespace gflex {

namespace {

struct core_children {
  caf::actor store, market, data_server, registry, jobs;
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
    return c.store;
  } else if (who == c.market.address()) {
    c.market = spawn_market(sys);
    tell(c.registry, "market", c.market);
    tell(c.jobs, "market", c.market);
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
    c.jobs = spawn_job_supervisor(sys, c.store, c.market, st.catalog);
    return c.jobs;
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
  for (const auto& child :
       {children.store, children.market, children.data_server, children.registry, children.jobs})
    self->monitor(child);
  self->set_down_handler([=](const caf::down_msg& down) {
    auto& st = self->state;
    auto& c = *st.children;
    const char* role = down.source == c.store.address()         ? "store"
                       : down.source == c.market.address()      ? "market"
                       : down.source == c.registry.address()    ? "registry"
                       : down.source == c.data_server.address() ? "data server"
                       : down.source == c.jobs.address()        ? "job supervisor"
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
    for (const auto& child :
         {kids->store, kids->market, kids->data_server, kids->registry, kids->jobs})
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
            hello.name.empty() || hello.name.size() > 128)
          return to_caf(error(errc::invalid_argument,
                              "a node must name itself (1-128 characters) and bring 1-1024 "
                              "workers and an uplink"));
        auto rp = self->make_response_promise<node_welcome>();
        self->request(self->state.children->registry, std::chrono::seconds(10), hello_atom::value,
                      std::move(hello))
            .then([=](node_welcome& w) mutable { rp.deliver(std::move(w)); },
                  [=](caf::error& e) mutable { rp.deliver(e); });
        return rp;
      },
      [=](submit_atom a, std::string& text) { return self->delegate(jobs(), a, std::move(text)); },
      [=](status_atom a, std::string& id) { return self->delegate(jobs(), a, std::move(id)); },
      [=](jobs_atom a) { return self->delegate(jobs(), a); },
      [=](cancel_atom a, std::string& id) { return self->delegate(jobs(), a, std::move(id)); },
      [=](fetch_atom a, std::string& id) { return self->delegate(jobs(), a, std::move(id)); },
      [=](nodes_atom a) { return self->delegate(self->state.children->registry, a); },
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
  c.jobs = spawn_job_supervisor(sys, c.store, c.market, catalog);
  return sys.spawn(core_actor, c, config, catalog);
}

}  // namespace gflex
