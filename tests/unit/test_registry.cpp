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

  TEST_CASE("a node key joins once at a time: a second hello on it waits for the first to end") {
    test::configured_system s;
    auto sink = s.sys.spawn([](caf::event_based_actor* self) -> caf::behavior {
      self->set_default_handler(caf::drop);
      return {[](int) {}};
    });
    registry_config config;
    config.heartbeat_ms = 100;
    config.lease_ms = 400;
    auto registry = spawn_registry(s.sys, sink, sink, config);
    struct ender {
      caf::scoped_actor& self;
      std::vector<caf::actor> actors;
      ~ender() {
        for (auto& a : actors) self->send_exit(a, caf::exit_reason::user_shutdown);
      }
    } end{s.self, {registry, sink}};
    auto hello = [&](const std::string& name, uint8_t key_byte, const std::string& address) {
      node_hello h;
      h.protocol = protocol_version;
      h.name = name;
      h.workers = 1;
      h.uplink = sink;
      h.public_key.assign(32, key_byte);
      expected<node_welcome> out = error(errc::none, "");
      s.self->request(registry, std::chrono::seconds(5), hello_atom::value, h, address)
          .receive([&](node_welcome& w) { out = std::move(w); },
                   [&](caf::error& e) { out = from_caf(e, &s.sys); });
      return out;
    };
    auto listed = [&] {
      std::vector<node_status> nodes;
      s.self->request(registry, std::chrono::seconds(5), nodes_atom::value)
          .receive([&](std::vector<node_status>& n) { nodes = std::move(n); },
                   [&](caf::error& e) { FAIL(s.sys.render(e)); });
      return nodes;
    };
    auto first = hello("a", 7, "10.0.0.1");
    REQUIRE(first);
    // The same key again, from elsewhere and under another name: refused, and nothing added.
    auto again = hello("b", 7, "10.0.0.2");
    REQUIRE_FALSE(again);
    CHECK(again.error().code() == errc::limit_exceeded);
    CHECK(again.error().message().find("already joined as " + first->node_id) != std::string::npos);
    CHECK(listed().size() == 1);
    // Another key joins as usual.
    REQUIRE(hello("c", 8, "10.0.0.2"));
    CHECK(listed().size() == 2);
    // Once the first node's lease has run out (it never beats), its key joins again.
    std::this_thread::sleep_for(std::chrono::milliseconds(900));
    auto later = hello("a", 7, "10.0.0.3");
    REQUIRE(later);
    CHECK(later->node_id != first->node_id);
  }
}
