/// @file
/// What a node's session (actors/protocol/node_session.hpp) takes of a node's word about its
/// work, and what it judges for itself: whether the core failed to serve an assignment's
/// chunks, which a job does not hold against the node.

#include <doctest/doctest.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "job_fixture.hpp"
#include "node_session.hpp"

using namespace gflex;
using namespace gflex::test;

namespace {

// An actor that takes whatever it is sent.
caf::behavior sink_actor(caf::event_based_actor* self) {
  self->set_default_handler(caf::drop);
  return {[](int) {}};
}

// A data server that fails every chunk asked of it (`fails`), or holds each ask unanswered.
caf::behavior test_data_server(caf::event_based_actor* self, bool fails) {
  self->set_default_handler(caf::drop);
  auto held = std::make_shared<std::vector<caf::response_promise>>();
  return {[=](chunk_atom, const std::string&) -> caf::result<std::vector<uint8_t>> {
    if (fails) return to_caf(error(errc::io_error, "no such chunk here"));
    held->push_back(self->make_response_promise());
    return caf::delegated<std::vector<uint8_t>>();
  }};
}

// A node's uplink that fails each assignment saying that the core did not serve it: at once,
// or, with `ask`, once it asked its session (`*session`) for the assignment's shard, when the
// session answers that ask (`after` zero) or `after` the ask.
caf::behavior unserved_uplink(caf::event_based_actor* self, std::shared_ptr<caf::actor> session,
                              bool ask, std::chrono::milliseconds after) {
  self->set_default_handler(caf::drop);
  auto pending = std::make_shared<std::map<uint64_t, caf::response_promise>>();
  auto fail = [](caf::response_promise& rp) {
    rp.deliver(to_caf(error(errc::unavailable, "the core did not serve data chunk (timeout)")));
  };
  return {
      [=](assign_atom, uint32_t, assignment& a) -> caf::result<assignment_result> {
        auto rp = self->make_response_promise();
        if (!ask) {
          fail(rp);
        } else if (after.count() == 0) {
          self->request(*session, std::chrono::seconds(10), chunk_atom::value, a.shard)
              .then([=](std::vector<uint8_t>&) mutable { fail(rp); },
                    [=](caf::error&) mutable { fail(rp); });
        } else {
          self->request(*session, std::chrono::seconds(10), chunk_atom::value, a.shard)
              .then([](std::vector<uint8_t>&) {}, [](caf::error&) {});
          (*pending)[a.id] = rp;
          self->delayed_send(self, after, tick_atom::value, a.id);
        }
        return caf::delegated<assignment_result>();
      },
      [=](tick_atom, uint64_t id) {
        if (auto it = pending->find(id); it != pending->end()) {
          fail(it->second);
          pending->erase(it);
        }
      },
      [](abort_atom, uint64_t) {},
  };
}

// A node's session in `s` over an unserved_uplink(ask, after) and a test_data_server(fails),
// with `limits`; everything is stopped at the end of the scope.
struct unserved_session {
  configured_system& s;
  std::shared_ptr<caf::actor> session_handle = std::make_shared<caf::actor>();
  caf::actor sink, data_server, uplink;
  spawned_session spawned;

  unserved_session(configured_system& s, bool ask, std::chrono::milliseconds after, bool fails,
                   session_limits limits = {})
      : s(s),
        sink(s.sys.spawn(sink_actor)),
        data_server(s.sys.spawn(test_data_server, fails)),
        uplink(s.sys.spawn(unserved_uplink, session_handle, ask, after)),
        spawned(spawn_node_session(s.sys, {"n1", "node", "", 0, 1}, limits, uplink, sink,
                                   data_server)) {
    *session_handle = caf::actor_cast<caf::actor>(spawned.session);
  }
  ~unserved_session() {
    for (const auto& x : {caf::actor_cast<caf::actor>(spawned.session), uplink, sink, data_server})
      s.self->send_exit(x, caf::exit_reason::user_shutdown);
    for (const auto& w : spawned.workers) s.self->send_exit(w, caf::exit_reason::user_shutdown);
  }

  // The error the job hears of an assignment of shard `shard`.
  error assign(uint64_t id, const std::string& shard) {
    assignment a;
    a.id = id;
    a.shard = shard;
    error got;
    s.self->request(spawned.workers.at(0), std::chrono::seconds(10), assign_atom::value, a)
        .receive([](assignment_result&) { FAIL("answered with a result"); },
                 [&](caf::error& e) { got = from_caf(e, &s.sys); });
    return got;
  }
};

// Each release the job fixture's market was sent so far, as it notes them.
std::vector<std::string> releases(job_fixture& f) {
  std::vector<std::string> released;
  f.self->request(f.market, f.wait, caf::get_atom::value, release_atom::value)
      .receive([&](std::vector<std::string>& r) { released = std::move(r); },
               [&](caf::error& e) { FAIL(f.sys.render(e)); });
  return released;
}

}  // namespace

TEST_SUITE("session claims") {
  TEST_CASE("a node that says at once that the core did not serve it is cooled down") {
    // The job takes `unavailable` for the core's failure to serve the work's parameters or
    // shard, not the node's: passed on as the node named it, a node that answered every
    // assignment so at once got the same shard back (the cheapest node, free again at once)
    // in a tight loop, and was never cooled down.
    configured_system side;  // the node's session and uplink
    unserved_session node(side, false, std::chrono::milliseconds(0), false);
    job_fixture f(stored_job(), {node_slot(node.spawned.workers.at(0), "n-liar", "liar")});
    std::vector<std::string> released;
    for (int i = 0; i < 100 && released.empty(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      released = releases(f);
    }
    REQUIRE_FALSE(released.empty());
    for (const auto& r : released) CHECK(r == "failed: the node's fault");
  }

  TEST_CASE("a node's word that the core did not serve it stands where the core failed a chunk") {
    configured_system s;
    const std::string shard(64, 'a');
    SUBCASE("the data server failed the shard it asked for") {
      unserved_session node(s, true, std::chrono::milliseconds(0), true);
      const auto got = node.assign(1, shard);
      CHECK_MESSAGE(got.code() == errc::unavailable, got.message());
      CHECK(got.message() == "the core did not serve data chunk (timeout)");
    }
    SUBCASE("it asked for the shard and waited as long as a node waits") {
      session_limits limits;
      limits.node_chunk_wait = std::chrono::milliseconds(300);
      unserved_session node(s, true, std::chrono::milliseconds(500), false, limits);
      const auto got = node.assign(1, shard);
      CHECK_MESSAGE(got.code() == errc::unavailable, got.message());
    }
  }

  TEST_CASE("a node's word that the core did not serve it is its own where nothing failed") {
    configured_system s;
    const std::string shard(64, 'b');
    session_limits limits;
    limits.node_chunk_wait = std::chrono::milliseconds(300);
    SUBCASE("it asked for nothing") {
      unserved_session node(s, false, std::chrono::milliseconds(0), false, limits);
      const auto got = node.assign(1, shard);
      CHECK_MESSAGE(got.code() == errc::io_error, got.message());
      CHECK(got.message().find("the core did not serve data chunk (timeout)") != std::string::npos);
    }
    SUBCASE("it asked for the shard and gave up sooner than a node waits") {
      unserved_session node(s, true, std::chrono::milliseconds(20), false, limits);
      const auto got = node.assign(1, shard);
      CHECK_MESSAGE(got.code() == errc::io_error, got.message());
    }
  }
}
