/// A client's session and the front door's welcome (actors/protocol/client_session.hpp,
/// actors/core/client_door.hpp) as the client reads their errors: the core's own pass as
/// they are, and CAF's from inside the core (a request there that timed out, an actor there
/// that ended) come out as the core's "did not answer", never as CAF's own request_timeout,
/// which the client takes for its request's and then drops a live session.

#include <doctest/doctest.h>

#include <caf/all.hpp>
#include <caf/io/middleman.hpp>
#include <caf/io/network/multiplexer.hpp>

#include <chrono>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "client_door.hpp"
#include "client_session.hpp"
#include "configured_system.hpp"
#include "link_loss.hpp"
#include "message_limit.hpp"
#include "messages.hpp"

using namespace gflex;

namespace {

// A front door whose status requests time out inside it, and whose jobs requests are refused.
caf::behavior timing_out_door(caf::event_based_actor*) {
  return {
      [](status_atom, const std::string&, const std::string&) -> caf::result<job_status> {
        return caf::make_error(caf::sec::request_timeout);
      },
      [](jobs_atom, const std::string&) -> caf::result<std::vector<job_status>> {
        return to_caf(error(errc::permission_denied, "not this key"));
      },
  };
}

// A gatekeeper whose store does not answer in time.
caf::behavior timing_out_gate(caf::event_based_actor*) {
  return {[](auth_atom, const std::string&) -> caf::result<std::string> {
    return caf::make_error(caf::sec::request_timeout);
  }};
}

struct welcome_door_state {
  client_sessions sessions;
};

caf::behavior welcome_door(caf::stateful_actor<welcome_door_state>* self, caf::actor gate) {
  return {[=](auth_atom, std::string& key, caf::actor& link) {
    return open_client_session(self, gate, std::move(key), std::move(link));
  }};
}

// A front door that holds every fetch until told (put_atom, bytes) to answer them all with
// parts of that many bytes; (get_atom) says how many it holds.
struct holding_door_state {
  std::vector<caf::typed_response_promise<model_part>> held;
};

caf::behavior holding_door(caf::stateful_actor<holding_door_state>* self) {
  return {
      [=](fetch_atom, const std::string&, const std::string&, uint64_t) -> caf::result<model_part> {
        self->state.held.push_back(self->make_response_promise<model_part>());
        return self->state.held.back();
      },
      [=](caf::get_atom) { return static_cast<uint64_t>(self->state.held.size()); },
      [=](caf::put_atom, uint64_t bytes) {
        for (auto& p : self->state.held) {
          model_part part;
          part.bytes.assign(bytes, 7);
          part.total = bytes;
          p.deliver(std::move(part));
        }
        self->state.held.clear();
      },
  };
}

// What a client reaches over the network: (auth_atom, key, link) gives it a session of
// its own on `door`, as the front door does once a key is known; (get_atom) the last one.
struct entry_state {
  caf::actor last;
};

caf::behavior session_entry(caf::stateful_actor<entry_state>* self, caf::actor door) {
  return {
      [=](auth_atom, std::string& key, caf::actor& link) {
        self->state.last = caf::actor_cast<caf::actor>(
            spawn_client_session(self->system(), std::move(key), "user/alice", door, link,
                                 client_session_limits{}, self->current_sender()->node()));
        return self->state.last;
      },
      [=](caf::get_atom) { return self->state.last; },
  };
}

struct session_fixture : test::configured_system {
  const std::chrono::seconds timeout{10};
  caf::actor link =
      sys.spawn([](caf::event_based_actor*) -> caf::behavior { return {[](tick_atom) {}}; });

  ~session_fixture() { self->send_exit(link, caf::exit_reason::kill); }

  // The error a request to `to` comes back with, as the client reads it (or none).
  template <class... Ts>
  caf::error answer_of(const caf::actor& to, Ts&&... xs) {
    caf::error out;
    self->request(to, timeout, std::forward<Ts>(xs)...)
        .receive([](const caf::message&) {}, [&](caf::error& e) { out = std::move(e); });
    return out;
  }
};

}  // namespace

TEST_SUITE("client_session") {
  TEST_CASE_FIXTURE(session_fixture,
                    "a request that timed out inside the core is the core's "
                    "answer, one a client following a job rides out") {
    auto door = sys.spawn(timing_out_door);
    auto session = caf::actor_cast<caf::actor>(spawn_client_session(
        sys, "alice's key", "user/alice", door, link, client_session_limits{}, sys.node()));
    const auto e = answer_of(session, status_atom::value, std::string("job-1"));
    REQUIRE(e);
    CHECK(e.category() == error_category);
    CHECK(e != caf::sec::request_timeout);
    const auto read = from_caf(e, &sys);
    CHECK(read.code() == errc::unavailable);
    CHECK(detail::is_link_loss(read));
    CHECK_MESSAGE(read.message().find("inside the core") != std::string::npos, read.message());
    // The core's own refusals pass as they are.
    const auto refused = answer_of(session, jobs_atom::value);
    REQUIRE(refused);
    CHECK(from_caf(refused, &sys).code() == errc::permission_denied);
    CHECK(from_caf(refused, &sys).message() == "not this key");
    for (const auto& a : {session, door}) self->send_exit(a, caf::exit_reason::kill);
  }

  TEST_CASE_FIXTURE(session_fixture,
                    "a client that stops reading its socket has its connection closed once "
                    "more than 256 MiB of answers wait for it") {
    // Its open requests were bounded, but each answer left them as it went into the
    // connection's write buffer, which CAF grows without bound: a client that kept 32
    // fetches open and never read grew the core's memory by a megabyte a fetch, for good.
    auto door = sys.spawn(holding_door);
    auto entry = sys.spawn(session_entry, door);
    auto port = sys.middleman().publish(entry, 0, "127.0.0.1");
    REQUIRE(port);
    const auto closed_before = stalled_connections_closed();
    std::promise<void> frozen;  // outlives the client's I/O thread, which sets it
    // The client: an actor system of its own, connected over loopback.
    caf::actor_system_config client_cfg;
    caf::actor_system client_sys{test::configured_system::configured(client_cfg)};
    // Its I/O thread held up below stops it reading its socket: let go, and its link actor
    // ended (its system waits for it), however the test ends.
    std::promise<void> thaw;
    auto client_link = client_sys.spawn(
        [](caf::event_based_actor*) -> caf::behavior { return {[](tick_atom) {}}; });
    struct client_end {
      std::promise<void>& thaw;
      caf::actor link;
      ~client_end() {
        thaw.set_value();
        caf::anon_send_exit(link, caf::exit_reason::kill);
      }
    } end_client{thaw, client_link};
    caf::actor session;
    {
      caf::scoped_actor client{client_sys};
      auto remote = client_sys.middleman().remote_actor("127.0.0.1", *port);
      REQUIRE(remote);
      caf::actor remote_session;
      client->request(*remote, timeout, auth_atom::value, std::string("alice's key"), client_link)
          .receive([&](caf::actor& s) { remote_session = s; },
                   [&](caf::error& e) { FAIL(sys.render(e)); });
      const uint64_t fetches = client_session_limits{}.max_in_flight;
      for (uint64_t i = 0; i < fetches; ++i)
        client->send(remote_session, fetch_atom::value, std::string("job-1"), i);
      uint64_t held = 0;
      for (int tries = 0; tries < 600 && held < fetches; ++tries) {
        self->request(door, timeout, caf::get_atom::value)
            .receive([&](uint64_t n) { held = n; }, [&](caf::error& e) { FAIL(sys.render(e)); });
        if (held < fetches) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      REQUIRE(held == fetches);
      client_sys.middleman().backend().post([&frozen, thawed = thaw.get_future().share()] {
        frozen.set_value();
        thawed.wait();
      });
      frozen.get_future().wait();
    }
    self->request(entry, timeout, caf::get_atom::value)
        .receive([&](caf::actor& s) { session = s; }, [&](caf::error& e) { FAIL(sys.render(e)); });
    REQUIRE(session);
    self->monitor(session);
    // 32 answers of 12 MiB: 384 MiB, past what the sockets' buffers take and the bound.
    self->send(door, caf::put_atom::value, uint64_t{12} << 20);
    bool ended = false;
    self->receive([&](caf::down_msg&) { ended = true; },
                  caf::after(std::chrono::seconds(60)) >> [] {});
    CHECK_MESSAGE(ended, "the session of a client that does not read stayed open");
    CHECK(stalled_connections_closed() == closed_before + 1);
    for (const auto& a : {entry, door}) self->send_exit(a, caf::exit_reason::kill);
  }

  TEST_CASE_FIXTURE(session_fixture,
                    "a welcome whose key check timed out inside the core is the core's answer") {
    auto gate = sys.spawn(timing_out_gate);
    auto door = sys.spawn(welcome_door, gate);
    const auto e = answer_of(door, auth_atom::value, std::string("alice's key"), link);
    REQUIRE(e);
    CHECK(e.category() == error_category);
    CHECK(e != caf::sec::request_timeout);
    CHECK(detail::is_link_loss(from_caf(e, &sys)));
    for (const auto& a : {door, gate}) self->send_exit(a, caf::exit_reason::kill);
  }
}
