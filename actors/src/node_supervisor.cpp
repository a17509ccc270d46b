#include "node_supervisor.hpp"

#include <unistd.h>

#include <spdlog/spdlog.h>

#include <deque>

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
  worker_config config;
};

/// Worker restarts allowed within `restart_window` before the node gives up (escalates).
constexpr int restart_budget = 5;
constexpr auto restart_window = std::chrono::seconds(60);

struct node_state {
  node_children children;
  std::deque<std::chrono::steady_clock::time_point> restarts;
  static inline const char* name = "node_supervisor";
};

caf::behavior node_actor(caf::stateful_actor<node_state>* self, node_children children) {
  // Cache and uplink share the node's fate; workers are supervised one for one: a worker
  // that crashes is replaced, and the uplink offers the replacement to the core (the job
  // that lost the assignment has already been told by its monitor).
  self->link_to(children.cache);
  self->link_to(children.uplink);
  for (auto& w : children.workers) self->monitor(w);
  children.config.crash_at_assignment = 0;  // the test aid applies to the first workers only
  self->state.children = children;
  auto uplink = children.uplink;
  // However the node stops, its workers (monitored, not linked) stop with it. The list is
  // shared because the actor's state is gone by the time attached functors run.
  auto workers = std::make_shared<std::vector<caf::actor>>(children.workers);
  self->attach_functor([workers](const caf::error&) {
    for (auto& w : *workers) caf::anon_send_exit(w, caf::exit_reason::user_shutdown);
  });
  self->set_down_handler([=](const caf::down_msg& down) {
    auto& st = self->state;
    auto it = std::find_if(workers->begin(), workers->end(),
                           [&](const caf::actor& w) { return w.address() == down.source; });
    if (it == workers->end()) return;
    auto now = std::chrono::steady_clock::now();
    while (!st.restarts.empty() && now - st.restarts.front() > restart_window)
      st.restarts.pop_front();
    if (static_cast<int>(st.restarts.size()) >= restart_budget) {
      spdlog::error("workers crashed {} times within {} s; stopping the node", restart_budget,
                    restart_window.count());
      self->quit(down.reason);
      return;
    }
    st.restarts.push_back(now);
    spdlog::warn("worker crashed ({}); restarting it", self->system().render(down.reason));
    auto old = *it;
    *it = spawn_worker(self->system(), st.children.config, st.children.cache);
    self->monitor(*it);
    self->send(uplink, offer_atom::value, *it, old);
  });
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
  c.config = worker_config{config.backend, config.threads_per_worker, config.crash_worker_at};
  for (int i = 0; i < config.workers; ++i)
    c.workers.push_back(spawn_worker(sys, c.config, c.cache));
  uplink_config up{name, device,
                   config.announce_protocol != 0 ? config.announce_protocol : protocol_version,
                   host, port};
  c.uplink = spawn_uplink(sys, up, std::move(core), c.workers, c.cache, std::move(owner));
  return sys.spawn(node_actor, std::move(c));
}

}  // namespace gflex
