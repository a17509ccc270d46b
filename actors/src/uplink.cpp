#include "uplink.hpp"

#include <sodium.h>
#include <spdlog/spdlog.h>
#include <caf/io/middleman.hpp>
#include <caf/openssl/manager.hpp>

#include "messages.hpp"

namespace gflex {

namespace {

struct uplink_state {
  uplink_config config;
  caf::actor core;        // the core supervisor, once connected
  caf::actor fixed_core;  // embedded mode: the core in this process
  caf::actor registry;
  std::vector<caf::actor> workers;
  caf::actor cache;
  caf::actor data_server;
  caf::actor owner;
  std::string node_id;
  uint32_t heartbeat_ms = 1000;
  uint64_t generation = 0;  // bumped per connection; stale heartbeat timers carry old ones
  int attempt = 0;
  bool leaving = false;  // said bye: no more heartbeats, no rejoining
  static inline const char* name = "uplink";
};

using uplink_actor = caf::stateful_actor<uplink_state>;

void connect(uplink_actor* self);

void retry_later(uplink_actor* self) {
  auto& st = self->state;
  double base = std::min(30.0, 0.5 * std::pow(2.0, std::min(st.attempt, 10)));
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
  h.workers = st.workers;
  h.uplink = caf::actor_cast<caf::actor>(self);
  h.tier = st.config.tier;
  h.credential = st.config.credential;
  h.price = st.config.price;
  h.throughput = st.config.throughput;
  if (st.config.identity) {
    h.public_key = st.config.identity->public_key();
    h.proof = st.config.identity->sign(hello_message(h.protocol, h.name));
  }
  self->request(core, std::chrono::seconds(15), hello_atom::value, std::move(h))
      .then(
          [=](node_welcome& w) {
            auto& st = self->state;
            st.core = core;
            st.registry = w.registry;
            st.node_id = w.node_id;
            st.heartbeat_ms = std::max<uint32_t>(w.heartbeat_ms, 50);
            st.attempt = 0;
            st.generation += 1;
            self->monitor(core);
            self->monitor(w.registry);
            st.data_server = w.data_server;
            self->send(st.cache, update_atom::value, w.data_server);
            spdlog::info("joined the core as {} with {} worker(s)", w.node_id, st.workers.size());
            self->send(self, tick_atom::value, st.generation);
          },
          [=](caf::error& e) {
            auto err = from_caf(e, &self->system());
            if (err.code() == errc::invalid_argument || err.code() == errc::permission_denied) {
              spdlog::error("the core refused this node: {}", err.message());
              self->send(self->state.owner, stop_atom::value, 3,
                         "the core refused this node: " + err.message());
              self->quit();
              return;
            }
            spdlog::warn("uplink: join failed: {}", err.message());
            retry_later(self);
          });
}

void connect(uplink_actor* self) {
  auto& st = self->state;
  if (st.fixed_core) return hello(self, st.fixed_core);
  auto mm = st.config.tls ? self->system().openssl_manager().actor_handle()
                          : self->system().middleman().actor_handle();
  self->request(mm, std::chrono::seconds(15), caf::connect_atom::value, st.config.host,
                st.config.port)
      .then(
          [=](const caf::node_id&, caf::strong_actor_ptr& ptr, const std::set<std::string>&) {
            if (!ptr) {
              spdlog::warn("uplink: {}:{} published no actor", self->state.config.host,
                           self->state.config.port);
              return retry_later(self);
            }
            hello(self, caf::actor_cast<caf::actor>(ptr));
          },
          [=](caf::error& e) {
            spdlog::warn("uplink: cannot reach the core at {}:{}: {}", self->state.config.host,
                         self->state.config.port, self->system().render(e));
            retry_later(self);
          });
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
    if (st.core && st.registry && down.source == st.registry.address()) {
      // The core restarted its registry: join the new one through the core.
      self->send(self, rejoin_atom::value);
      return;
    }
    if (!st.core || down.source != st.core.address()) return;
    spdlog::warn("lost the core ({}); reconnecting", self->system().render(down.reason));
    st.core = nullptr;
    st.registry = nullptr;
    st.generation += 1;
    retry_later(self);
  });
  self->send(self, caf::connect_atom::value);
  return {
      [=](caf::connect_atom) {
        if (!self->state.core) connect(self);
      },
      [=](tick_atom, uint64_t generation) {
        auto& st = self->state;
        if (generation != st.generation || !st.registry) return;
        self->send(st.registry, beat_atom::value, st.node_id);
        self->delayed_send(self, std::chrono::milliseconds(st.heartbeat_ms), tick_atom::value,
                           generation);
      },
      [=](rejoin_atom) {
        auto& st = self->state;
        if (!st.core || st.leaving) return;
        spdlog::warn("the core no longer knows node {}; joining again", st.node_id);
        self->demonitor(st.core);
        if (st.registry) self->demonitor(st.registry);
        auto core = st.core;
        st.core = nullptr;
        st.registry = nullptr;
        st.generation += 1;
        hello(self, core);
      },
      [=](offer_atom, caf::actor& replacement, caf::actor& replaced) {
        // A worker was restarted: future hellos name the new one, and the core gets it now.
        auto& st = self->state;
        std::replace(st.workers.begin(), st.workers.end(), replaced, replacement);
        if (st.registry)
          self->send(st.registry, offer_atom::value, st.node_id,
                     std::vector<caf::actor>{replacement});
      },
      [=](update_atom, caf::actor& data_server) {
        self->state.data_server = data_server;
        self->send(self->state.cache, update_atom::value, std::move(data_server));
      },
      [=](update_atom, const std::string& role, caf::actor& replacement) {
        auto& st = self->state;
        if (role != "cache") return;
        st.cache = std::move(replacement);  // restarted by the node supervisor
        if (st.data_server) self->send(st.cache, update_atom::value, st.data_server);
      },
      [=](bye_atom) {
        auto& st = self->state;
        st.leaving = true;
        st.generation += 1;  // stops the heartbeat timer
        if (st.registry) self->send(st.registry, bye_atom::value, st.node_id);
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
