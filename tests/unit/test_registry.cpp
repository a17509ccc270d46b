/// @file
/// The registry's leases (actors/core/registry.hpp): each heartbeat a node sends its session
/// renews the node's lease, which the registry's lease check reads; a node that beats stays,
/// one that falls silent is taken out once its lease has run out.

#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "configured_system.hpp"
#include "gflex/job_status.hpp"
#include "messages.hpp"
#include "registry.hpp"

using namespace gflex;

TEST_SUITE("registry") {
  TEST_CASE("a node that beats keeps its lease; one that falls silent loses it") {
    test::configured_system s;
    // The market, the data server and the nodes' uplinks: nothing they are told matters here.
    auto sink = s.sys.spawn([](caf::event_based_actor* self) -> caf::behavior {
      self->set_default_handler(caf::drop);
      return {[](int) {}};
    });
    registry_config config;
    config.heartbeat_ms = 100;
    config.lease_ms = 600;
    auto registry = spawn_registry(s.sys, sink, sink, config);
    // Ended however the test ends (the sessions end with the registry), or the system would
    // wait for them for ever.
    struct ender {
      caf::scoped_actor& self;
      std::vector<caf::actor> actors;
      ~ender() {
        for (auto& a : actors) self->send_exit(a, caf::exit_reason::user_shutdown);
      }
    } end{s.self, {registry, sink}};
    auto join = [&](const std::string& name) {
      node_hello hello;
      hello.protocol = protocol_version;
      hello.name = name;
      hello.workers = 1;
      hello.uplink = sink;
      node_welcome welcome;
      s.self
          ->request(registry, std::chrono::seconds(5), hello_atom::value, hello,
                    std::string("local"))
          .receive([&](node_welcome& w) { welcome = std::move(w); },
                   [&](caf::error& e) { FAIL(s.sys.render(e)); });
      return welcome;
    };
    auto listed = [&] {
      std::vector<node_status> nodes;
      s.self->request(registry, std::chrono::seconds(5), nodes_atom::value)
          .receive([&](std::vector<node_status>& n) { nodes = std::move(n); },
                   [&](caf::error& e) { FAIL(s.sys.render(e)); });
      return nodes;
    };
    const auto beating = join("beating");
    const auto silent = join("silent");
    REQUIRE(listed().size() == 2);
    // Three leases long, only one of the two beats (every 100 ms, as told in its welcome).
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(1800);
    while (std::chrono::steady_clock::now() < until) {
      s.self->send(beating.session, beat_atom::value);
      std::this_thread::sleep_for(std::chrono::milliseconds(beating.heartbeat_ms));
    }
    const auto nodes = listed();
    REQUIRE(nodes.size() == 1);
    CHECK(nodes[0].name == "beating");
    CHECK(nodes[0].node_id == beating.node_id);
    CHECK(nodes[0].last_seen_s < 0.3);
    // Silent from now on, it goes too.
    std::this_thread::sleep_for(std::chrono::milliseconds(1200));
    CHECK(listed().empty());
    (void)silent;
  }
}
