/// A client's session and the front door's welcome (actors/protocol/client_session.hpp,
/// actors/core/client_door.hpp) as the client reads their errors: the core's own pass as
/// they are, and CAF's from inside the core (a request there that timed out, an actor there
/// that ended) come out as the core's "did not answer", never as CAF's own request_timeout,
/// which the client takes for its request's and then drops a live session.

#include <doctest/doctest.h>

#include <caf/all.hpp>

#include <chrono>
#include <string>

#include "client_door.hpp"
#include "client_session.hpp"
#include "configured_system.hpp"
#include "link_loss.hpp"
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
