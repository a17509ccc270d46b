#include "core_supervisor.hpp"

#include <spdlog/spdlog.h>

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

struct core_state {
  core_children children;
  static inline const char* name = "core_supervisor";
};

caf::behavior core_actor(caf::stateful_actor<core_state>* self, core_children children) {
  self->state.children = children;
  // Children share the core's fate: if one dies, the core stops rather than serve half a
  // tree (per-child restart from persisted state is the supervision tree's next step).
  for (auto* child : {&children.store, &children.market, &children.data_server, &children.registry,
                      &children.jobs})
    self->link_to(*child);
  auto jobs = children.jobs;
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
        self->request(self->state.children.registry, std::chrono::seconds(10), hello_atom::value,
                      std::move(hello))
            .then([=](node_welcome& w) mutable { rp.deliver(std::move(w)); },
                  [=](caf::error& e) mutable { rp.deliver(e); });
        return rp;
      },
      [=](submit_atom a, std::string& text) { return self->delegate(jobs, a, std::move(text)); },
      [=](status_atom a, std::string& id) { return self->delegate(jobs, a, std::move(id)); },
      [=](jobs_atom a) { return self->delegate(jobs, a); },
      [=](cancel_atom a, std::string& id) { return self->delegate(jobs, a, std::move(id)); },
      [=](fetch_atom a, std::string& id) { return self->delegate(jobs, a, std::move(id)); },
      [=](nodes_atom a) { return self->delegate(self->state.children.registry, a); },
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
  c.jobs = spawn_job_supervisor(sys, c.store, c.market, catalog, config.assignment_timeout_ms);
  return sys.spawn(core_actor, c);
}

}  // namespace gflex
