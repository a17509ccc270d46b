/// What a client's session (actors/protocol/client_session.hpp) takes from its own client's
/// process, over a real connection on loopback: requests, never responses. The session asks
/// its client nothing, and CAF matches a response by message id alone (a session's requests
/// to the front door take ids 1, 2, 3 ...): a client that answered them itself lowered the
/// session's count of open requests while the real ones stayed open inside the core.

#include <doctest/doctest.h>

#include <caf/all.hpp>
#include <caf/io/middleman.hpp>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "client_session.hpp"
#include "configured_system.hpp"
#include "messages.hpp"

using namespace gflex;

namespace {

// A front door that holds every fetch and never answers; (get_atom) says how many it holds.
struct silent_door_state {
  std::vector<caf::typed_response_promise<model_part>> held;
};

caf::behavior silent_door(caf::stateful_actor<silent_door_state>* self) {
  return {
      [=](fetch_atom, const std::string&, const std::string&, uint64_t) -> caf::result<model_part> {
        self->state.held.push_back(self->make_response_promise<model_part>());
        return self->state.held.back();
      },
      [=](caf::get_atom) { return static_cast<uint64_t>(self->state.held.size()); },
  };
}

// What a client reaches over the network: (auth_atom, key, link) gives it a session of its
// own on `door`, bound to the asking process, as the front door does once a key is known.
caf::behavior session_entry(caf::event_based_actor* self, caf::actor door) {
  return {[=](auth_atom, std::string& key, caf::actor& link) {
    return caf::actor_cast<caf::actor>(
        spawn_client_session(self->system(), std::move(key), "user/alice", door, link,
                             client_session_limits{}, self->current_sender()->node()));
  }};
}

}  // namespace

TEST_SUITE("client_session") {
  TEST_CASE_FIXTURE(test::configured_system,
                    "a client's answers to its session's own requests are dropped: its requests "
                    "stay bounded") {
    const std::chrono::seconds timeout{10};
    auto door = sys.spawn(silent_door);
    auto entry = sys.spawn(session_entry, door);
    auto port = sys.middleman().publish(entry, 0, "127.0.0.1");
    REQUIRE(port);
    auto held = [&] {
      uint64_t n = 0;
      self->request(door, timeout, caf::get_atom::value)
          .receive([&](uint64_t x) { n = x; }, [&](caf::error& e) { FAIL(sys.render(e)); });
      return n;
    };
    // The client: an actor system of its own, connected over loopback.
    caf::actor_system_config client_cfg;
    caf::actor_system client_sys{test::configured_system::configured(client_cfg)};
    auto link = client_sys.spawn(
        [](caf::event_based_actor*) -> caf::behavior { return {[](tick_atom) {}}; });
    {
      caf::scoped_actor client{client_sys};
      auto remote = client_sys.middleman().remote_actor("127.0.0.1", *port);
      REQUIRE(remote);
      caf::actor session;
      client->request(*remote, timeout, auth_atom::value, std::string("alice's key"), link)
          .receive([&](caf::actor& s) { session = s; },
                   [&](caf::error& e) { FAIL(client_sys.render(e)); });
      REQUIRE(session);
      // As many fetches as the session keeps open: the door holds them all.
      const uint64_t bound = client_session_limits{}.max_in_flight;
      for (uint64_t i = 0; i < bound; ++i)
        client->send(session, fetch_atom::value, std::string("job-1"), i);
      for (int tries = 0; tries < 200 && held() < bound; ++tries)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      REQUIRE(held() == bound);
      // The client answers the session's requests to the door itself, with its own actor as
      // the sender, under every id they can have taken.
      model_part forged;
      forged.bytes.assign(16, 7);
      forged.total = 16;
      for (uint64_t id = 1; id <= 2 * bound; ++id)
        session->enqueue(client->ctrl(), caf::make_message_id(id).response_id(),
                         caf::make_message(forged), nullptr);
      // The session's requests are still open: one more is refused, and the door never sees it.
      std::string why;
      client
          ->request(session, std::chrono::seconds(5), fetch_atom::value, std::string("job-1"),
                    uint64_t{0})
          .receive([&](model_part&) { why = "answered"; },
                   [&](caf::error& e) {
                     const auto read = from_caf(e, &client_sys);
                     why = read.code() == errc::limit_exceeded ? "refused" : read.message();
                   });
      CHECK_MESSAGE(why == "refused", "a request past the bound was " << why);
      CHECK(held() == bound);
    }
    caf::anon_send_exit(link, caf::exit_reason::kill);
    for (const auto& a : {entry, door}) self->send_exit(a, caf::exit_reason::kill);
  }
}
