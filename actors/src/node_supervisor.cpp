#include "node_supervisor.hpp"

#include <unistd.h>

#include "cache.hpp"
#include "gflex/kernels/backend.hpp"
#include "messages.hpp"
#include "uplink.hpp"
#include "worker.hpp"

namespace gflex {

namespace {

struct node_children {
  caf::actor cache, uplink;
  std::vector<caf::actor> workers;
};

caf::behavior node_actor(caf::event_based_actor* self, node_children children) {
  self->link_to(children.cache);
  self->link_to(children.uplink);
  for (auto& w : children.workers) self->link_to(w);
  auto uplink = children.uplink;
  return {
      [=](bye_atom) {
        self->send(uplink, bye_atom::value);
        // Let the bye leave before the links take everything down.
        self->delayed_send(self, std::chrono::milliseconds(200), stop_atom::value);
      },
      [=](stop_atom) { self->quit(caf::exit_reason::user_shutdown); },
  };
}

}  // namespace

expected<caf::actor> spawn_node(caf::actor_system& sys, const node_config& config,
                                const std::string& host, uint16_t port, caf::actor core,
                                caf::actor owner) {
  if (config.workers < 1 || config.workers > 256)
    return error(errc::invalid_argument, "--workers must be in [1, 256]");
  // Check the backend here, so that a node without the device fails at start with the
  // reason rather than with workers that die one by one.
  auto probe = kernels::make_backend(config.backend, config.threads_per_worker);
  if (!probe) return probe.error();
  std::string device = (*probe)->describe();
  probe->reset();

  std::string name = config.name;
  if (name.empty()) {
    char buf[256] = {};
    gethostname(buf, sizeof buf - 1);
    name = buf;
  }
  node_children c;
  c.cache = spawn_cache(sys, config.data_dir / "chunks");
  for (int i = 0; i < config.workers; ++i)
    c.workers.push_back(
        spawn_worker(sys, worker_config{config.backend, config.threads_per_worker}, c.cache));
  uplink_config up{name, device,
                   config.announce_protocol != 0 ? config.announce_protocol : protocol_version,
                   host, port};
  c.uplink = spawn_uplink(sys, up, std::move(core), c.workers, c.cache, std::move(owner));
  return sys.spawn(node_actor, c);
}

}  // namespace gflex
