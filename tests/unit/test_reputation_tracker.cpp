/// @file
/// The reputation tracker's bindings of names to node keys: a key joins under a bounded
/// number of names, and a key caught as one of them is caught as all of them. Before, one key
/// could take thousands of names (squatting the host names honest nodes use, a stored record
/// each), and when one was caught the others, already joined, kept getting work. A flag
/// whose write failed is written again.

#include <doctest/doctest.h>

#include <caf/all.hpp>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "job_fixture.hpp"
#include "reputation_tracker.hpp"

using namespace gflex;
using namespace gflex::test;

namespace {

struct barred_state {
  std::set<std::string> names;
};

// A market that notes the names it is told to bar; (caf::get_atom) -> them.
caf::behavior noting_market(caf::stateful_actor<barred_state>* self) {
  return {
      [=](bar_atom, const std::string& name) { self->state.names.insert(name); },
      [](score_atom, const std::string&, double) {},
      [=](caf::get_atom) {
        return std::vector<std::string>(self->state.names.begin(), self->state.names.end());
      },
  };
}

caf::behavior silent_gate(caf::event_based_actor*) {
  return {[](bar_atom, const std::string&, const std::string&) {}};
}

// A gatekeeper that notes the keys it is told to ban; (caf::get_atom) -> them.
caf::behavior noting_gate(caf::stateful_actor<barred_state>* self) {
  return {
      [=](bar_atom, const std::string& key, const std::string&) { self->state.names.insert(key); },
      [=](caf::get_atom) {
        return std::vector<std::string>(self->state.names.begin(), self->state.names.end());
      },
  };
}

struct tracker_fixture : configured_system {
  caf::actor store = sys.spawn(failing_store, failing_store_state{});
  caf::actor market = sys.spawn(noting_market);
  caf::actor gate = sys.spawn(silent_gate);
  caf::actor tracker = spawn_reputation_tracker(sys, store, market, gate, reputation_policy{});
  ~tracker_fixture() {
    for (const auto& a : {tracker, gate, market, store})
      self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  // "" when the hello is taken, else the refusal.
  std::string hello(const std::string& name, const std::string& key) {
    std::string refusal;
    self->request(tracker, std::chrono::seconds(10), hello_atom::value, name, uint8_t{0}, key)
        .receive([](caf::ok_atom) {}, [&](caf::error& e) { refusal = sys.render(e); });
    return refusal;
  }
  std::vector<std::string> barred() {
    std::vector<std::string> out;
    self->request(market, std::chrono::seconds(10), caf::get_atom::value)
        .receive([&](std::vector<std::string>& names) { out = std::move(names); },
                 [&](caf::error& e) { FAIL(sys.render(e)); });
    return out;
  }
};

const std::string key_k(64, 'a'), key_l(64, 'b');

}  // namespace

TEST_SUITE("reputation tracker") {
  TEST_CASE("a node key joins under at most max_names_per_key names") {
    tracker_fixture f;
    for (size_t i = 0; i < max_names_per_key; ++i)
      CHECK(f.hello("host-" + std::to_string(i), key_k).empty());
    auto refused = f.hello("ubuntu", key_k);
    CHECK_MESSAGE(refused.find("names already") != std::string::npos, refused);
    CHECK(f.hello("host-0", key_k).empty());  // its own names still come back
    CHECK(f.hello("ubuntu", key_l).empty());  // the name is free for another key
  }

  TEST_CASE("a key caught as one name is caught as every name it joined under") {
    tracker_fixture f;
    for (const auto* name : {"k1", "k2", "k3"}) REQUIRE(f.hello(name, key_k).empty());
    REQUIRE(f.hello("honest", key_l).empty());
    f.self->send(f.tracker, reject_atom::value, std::string("k2"), std::string("a forged result"));
    std::vector<std::string> barred;
    for (int tries = 0; tries < 50 && barred.size() < 3; ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      barred = f.barred();
    }
    CHECK(barred == std::vector<std::string>{"k1", "k2", "k3"});
    std::vector<node_status> nodes;
    f.self->request(f.tracker, std::chrono::seconds(10), nodes_atom::value)
        .receive([&](std::vector<node_status>& n) { nodes = std::move(n); },
                 [&](caf::error& e) { FAIL(f.sys.render(e)); });
    for (const auto& n : nodes) {
      CHECK_MESSAGE(n.flagged == (n.name != "honest"), n.name);
      if (n.name == "k1") CHECK(n.last_rejection == "its node key was caught as k2");
    }
  }

  TEST_CASE("every telling of a rejection is answered with the other names of the key") {
    // Only the first was: a job whose request timed out (a restarted tracker still reading
    // its records) told it again, got no names, and the siblings' open work was committed
    // and paid.
    tracker_fixture f;
    for (const auto* name : {"k1", "k2", "k3"}) REQUIRE(f.hello(name, key_k).empty());
    REQUIRE(f.hello("honest", key_l).empty());
    // The names answered, sorted and joined with commas (readable in a failed check).
    auto reject = [&](const std::string& name) {
      std::vector<std::string> siblings;
      f.self
          ->request(f.tracker, std::chrono::seconds(10), reject_atom::value, name,
                    std::string("a forged result"))
          .receive([&](std::vector<std::string>& names) { siblings = std::move(names); },
                   [&](caf::error& e) { FAIL(f.sys.render(e)); });
      std::sort(siblings.begin(), siblings.end());
      std::string joined;
      for (const auto& s : siblings) joined += (joined.empty() ? "" : ",") + s;
      return joined;
    };
    CHECK(reject("k2") == "k1,k3");
    CHECK(reject("k2") == "k1,k3");  // the telling again
    CHECK(reject("k1") == "k2,k3");  // flagged before, as a sibling
    CHECK(reject("honest") == "");   // its key has no other name
  }

  TEST_CASE("a flag whose write failed is written again, and a restarted tracker keeps it") {
    // A failed write of the records was only logged: a flagged node's record never changes
    // again, so nothing rewrote it, and after a restart the node was unflagged and got work.
    tracker_fixture f;
    REQUIRE(f.hello("cheat", key_k).empty());
    REQUIRE(f.hello("honest", key_l).empty());
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // their records written
    f.self->send(f.store, caf::put_atom::value, reputation_key("cheat"), 1);
    f.self->send(f.tracker, reject_atom::value, std::string("cheat"), std::string("forged"));
    std::this_thread::sleep_for(std::chrono::milliseconds(1800));  // failed, then again
    auto market = f.sys.spawn(noting_market);
    auto restarted = spawn_reputation_tracker(f.sys, f.store, market, f.gate, reputation_policy{});
    std::vector<node_status> nodes;
    f.self->request(restarted, std::chrono::seconds(10), nodes_atom::value)
        .receive([&](std::vector<node_status>& n) { nodes = std::move(n); },
                 [&](caf::error& e) { FAIL(f.sys.render(e)); });
    REQUIRE(nodes.size() == 2);
    for (const auto& n : nodes) CHECK_MESSAGE(n.flagged == (n.name == "cheat"), n.name);
    std::vector<std::string> barred;
    f.self->request(market, std::chrono::seconds(10), caf::get_atom::value)
        .receive([&](std::vector<std::string>& names) { barred = std::move(names); },
                 [&](caf::error& e) { FAIL(f.sys.render(e)); });
    CHECK(barred == std::vector<std::string>{"cheat"});
    for (const auto& a : {restarted, market}) f.self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a restarted gatekeeper is told every caught key again") {
    // It knows the bans its store holds; one it could not write was held only by the
    // gatekeeper that ended, and the caught key joined again under a new name.
    tracker_fixture f;
    REQUIRE(f.hello("cheat", key_k).empty());
    REQUIRE(f.hello("honest", key_l).empty());
    f.self->send(f.tracker, reject_atom::value, std::string("cheat"), std::string("forged"));
    auto gate = f.sys.spawn(noting_gate);
    f.self->send(f.tracker, update_atom::value, std::string("gate"), gate);
    std::vector<std::string> banned;
    for (int tries = 0; tries < 50 && banned.empty(); ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      f.self->request(gate, std::chrono::seconds(10), caf::get_atom::value)
          .receive([&](std::vector<std::string>& keys) { banned = std::move(keys); },
                   [&](caf::error& e) { FAIL(f.sys.render(e)); });
    }
    CHECK(banned == std::vector<std::string>{key_k});
    f.self->send_exit(gate, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("records changed at once are stored in batches a replicated store takes") {
    // Every changed record went in one batch: etcd refuses a transaction of more than 128
    // operations by default, so 130 nodes credited (or scored) together were never stored,
    // the batch growing at each retry, and their flags were lost at the next failover.
    tracker_fixture f;
    failing_store_state limited;
    limited.max_batch_keys = 100;
    auto store = f.sys.spawn(failing_store, limited);
    auto tracker = spawn_reputation_tracker(f.sys, store, f.market, f.gate, reputation_policy{});
    // Credits come in a burst (a round of 250 workers confirmed): their records are stored
    // together, 100 ms after the first.
    for (int i = 0; i < 250; ++i)
      f.self->send(tracker, credit_atom::value, "n" + std::to_string(i), uint8_t{0}, 1.0,
                   int64_t{0});
    size_t stored = 0;
    for (int tries = 0; tries < 40 && stored < 250; ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      f.self->request(store, std::chrono::seconds(10), keys_atom::value, std::string("node/"))
          .receive([&](std::vector<std::string>& keys) { stored = keys.size(); },
                   [&](caf::error& e) { FAIL(f.sys.render(e)); });
    }
    CHECK(stored == 250);
    for (const auto& a : {tracker, store}) f.self->send_exit(a, caf::exit_reason::user_shutdown);
  }
}
