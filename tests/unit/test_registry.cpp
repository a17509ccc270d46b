/// @file
/// The registry's leases (actors/core/registry.hpp): each heartbeat a node sends its session
/// renews the node's lease, which the registry's lease check reads; a node that beats stays,
/// one that falls silent is taken out once its lease has run out.

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "configured_system.hpp"
#include "core_metrics.hpp"
#include "gflex/job_status.hpp"
#include "messages.hpp"
#include "registry.hpp"

using namespace gflex;

namespace {

// A registry of `lease_ms` leases (heartbeats every 100 ms) whose market, data server and
// nodes' uplinks are one sink: nothing they are told matters here.
struct registry_fixture {
  test::configured_system s;
  caf::actor sink, registry;

  explicit registry_fixture(uint32_t lease_ms) {
    sink = s.sys.spawn([](caf::event_based_actor* self) -> caf::behavior {
      self->set_default_handler(caf::drop);
      return {[](int) {}};
    });
    registry_config config;
    config.heartbeat_ms = 100;
    config.lease_ms = lease_ms;
    registry = spawn_registry(s.sys, sink, sink, config);
  }
  // Ended however the test ends (the sessions end with the registry), or the system would
  // wait for them for ever.
  ~registry_fixture() {
    for (auto& a : {registry, sink}) s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  // A hello from `address`; its welcome, or the registry's refusal.
  // `token_id`: the join token that admitted it.
  expected<node_welcome> hello(node_hello h, const std::string& address = "local",
                               const std::string& token_id = "") {
    h.protocol = protocol_version;
    h.workers = 1;
    h.uplink = sink;
    expected<node_welcome> out = error(errc::none, "");
    s.self->request(registry, std::chrono::seconds(5), hello_atom::value, h, address, token_id)
        .receive([&](node_welcome& w) { out = std::move(w); },
                 [&](caf::error& e) { out = from_caf(e, &s.sys); });
    return out;
  }

  std::vector<node_status> listed() {
    std::vector<node_status> nodes;
    s.self->request(registry, std::chrono::seconds(5), nodes_atom::value)
        .receive([&](std::vector<node_status>& n) { nodes = std::move(n); },
                 [&](caf::error& e) { FAIL(s.sys.render(e)); });
    return nodes;
  }
};

}  // namespace

TEST_SUITE("registry") {
  TEST_CASE("a node that beats keeps its lease; one that falls silent loses it") {
    registry_fixture r(600);
    auto& s = r.s;
    auto join = [&](const std::string& name) {
      node_hello hello;
      hello.name = name;
      auto welcome = r.hello(hello);
      REQUIRE_MESSAGE(welcome.has_value(), welcome.error().message());
      return *welcome;
    };
    auto listed = [&] { return r.listed(); };
    const auto beating = join("beating");
    const auto silent = join("silent");
    REQUIRE(listed().size() == 2);
    // Three leases long, only one of the two beats (every 100 ms, as told in its welcome).
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(1800);
    auto last_beat = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() < until) {
      last_beat = std::chrono::steady_clock::now();
      s.self->send(beating.session, beat_atom::value);
      std::this_thread::sleep_for(std::chrono::milliseconds(beating.heartbeat_ms));
    }
    const auto nodes = listed();
    REQUIRE(nodes.size() == 1);
    CHECK(nodes[0].name == "beating");
    CHECK(nodes[0].node_id == beating.node_id);
    // Its last beat, within its 600 ms lease: 0.1 s ago and a hop or two of a loaded machine
    // (a node seen only when it joined would show 1.8 s).
    CHECK(nodes[0].last_seen_s < 0.6);
    // Silent from now on, it goes too: not before its lease ran out, polled for up to 10 s.
    auto left = listed();
    while (!left.empty() &&
           std::chrono::steady_clock::now() - last_beat < std::chrono::seconds(10)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      left = listed();
    }
    CHECK(left.empty());
    CHECK(std::chrono::steady_clock::now() - last_beat > std::chrono::milliseconds(600));
    (void)silent;
  }

  TEST_CASE(
      "a revoked token's nodes are taken out; nodes it admitted that joined with another stay") {
    // A leaked token is revoked: the nodes it let in must not go on working until their
    // connection drops. Honest nodes moved to a new token (their keys bound to both) stay.
    registry_fixture r(60000);
    auto join = [&](const std::string& name, const std::string& token_id) {
      node_hello h;
      h.name = name;
      return r.hello(h, "local", token_id);
    };
    REQUIRE(join("leaked", "aaaaaaaaaaaa"));
    REQUIRE(join("rotated", "bbbbbbbbbbbb"));
    REQUIRE(join("operator's", ""));
    int64_t taken = -1;
    r.s.self
        ->request(r.registry, std::chrono::seconds(5), revoke_atom::value,
                  std::string("aaaaaaaaaaaa"))
        .receive([&](int64_t n) { taken = n; }, [&](caf::error& e) { FAIL(r.s.sys.render(e)); });
    CHECK(taken == 1);
    std::vector<std::string> names;
    for (const auto& n : r.listed()) names.push_back(n.name);
    std::sort(names.begin(), names.end());
    CHECK(names == std::vector<std::string>{"operator's", "rotated"});
    // A join the gatekeeper admitted with it just before the revocation, whose hello comes
    // after, is refused.
    auto late = join("late", "aaaaaaaaaaaa");
    REQUIRE_FALSE(late.has_value());
    CHECK(late.error().code() == errc::permission_denied);
    CHECK(late.error().message() == "join token aaaaaaaaaaaa was revoked");
    CHECK(r.listed().size() == 2);
  }

  TEST_CASE("a registry that stops takes its nodes off the count of connected nodes") {
    // Restarted, its nodes joined the new registry and were counted again: gflex_core_nodes
    // read twice the nodes connected.
    auto connected = [] { return core_metrics::nodes(false).value(); };
    const double before = connected();
    {
      registry_fixture r(60000);
      node_hello h;
      h.name = "a";
      REQUIRE(r.hello(h));
      CHECK(connected() == before + 1);
      r.s.self->send_exit(r.registry, caf::exit_reason::kill);  // it dies with its node
      for (int i = 0; i < 100 && connected() != before; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    CHECK(connected() == before);
  }

  TEST_CASE("a node key joins once at a time: a second hello on it waits for the first to end") {
    registry_fixture r(400);
    auto hello = [&](const std::string& name, uint8_t key_byte, const std::string& address) {
      node_hello h;
      h.name = name;
      h.public_key.assign(32, key_byte);
      return r.hello(h, address);
    };
    auto listed = [&] { return r.listed(); };
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
