/// @file
/// What a node's session passes on of the node's answers (actors/protocol/node_session.hpp):
/// an error a node answers an assignment with is its own text, which reaches the job's
/// status, the core's log, and users' terminals and JSON. Bytes that are not UTF-8 in it made
/// `gflex status --json` abort for as long as the job existed.

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "configured_system.hpp"
#include "gflex/runtime/printable_text.hpp"
#include "messages.hpp"
#include "node_session.hpp"

using namespace gflex;

namespace {

// A registry that counts the beats it is sent, and answers that a node earned nothing.
caf::behavior beat_counting_registry(caf::event_based_actor* self,
                                     std::shared_ptr<std::atomic<int>> beats) {
  self->set_default_handler(caf::drop);
  return {[beats](beat_atom, const std::string&, uint64_t) { ++*beats; },
          [](earned_atom, const std::string&) { return int64_t{0}; }};
}

// Waits up to `limit` for `done`; whether it came.
template <class Predicate>
bool eventually(Predicate done, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

// An actor that takes whatever it is sent.
caf::behavior sink_actor(caf::event_based_actor* self) {
  self->set_default_handler(caf::drop);
  return {[](int) {}};
}

// A node's session with a data server that answers a chunk with its digest's first 4 bytes,
// and an uplink that takes no assignment; everything is stopped at the end of the scope.
struct chunk_session {
  test::configured_system s;
  caf::actor data_server = s.sys.spawn([](caf::event_based_actor* self) -> caf::behavior {
    self->set_default_handler(caf::drop);
    return {[](chunk_atom, const std::string& digest) {
      return std::vector<uint8_t>(digest.begin(), digest.begin() + 4);
    }};
  });
  caf::actor uplink = s.sys.spawn([](caf::event_based_actor* self) -> caf::behavior {
    self->set_default_handler(caf::drop);
    return {[](assign_atom, uint32_t, assignment& a) -> caf::result<assignment_result> {
      return to_caf(error(errc::io_error, "not now: " + a.shard));
    }};
  });
  caf::actor sink = s.sys.spawn(sink_actor);
  spawned_session spawned = spawn_node_session(s.sys, {"n1", "node", "", 0, 1}, session_limits{},
                                               uplink, sink, data_server);

  ~chunk_session() {
    for (const auto& x : {caf::actor_cast<caf::actor>(spawned.session), uplink, sink, data_server})
      s.self->send_exit(x, caf::exit_reason::user_shutdown);
    for (const auto& w : spawned.workers) s.self->send_exit(w, caf::exit_reason::user_shutdown);
  }

  // The core assigns the node work on `shard` (and `next`, the next round's).
  void assign(const std::string& shard, const std::string& next = {}) {
    assignment a;
    a.id = 9;
    a.shard = shard;
    a.next_shard = next;
    s.self->request(spawned.workers.at(0), std::chrono::seconds(5), assign_atom::value, a)
        .receive([](assignment_result&) {}, [](caf::error&) {});
  }

  // The node asks its session for chunk `digest` (5 s at most).
  expected<std::vector<uint8_t>> fetch(const std::string& digest) {
    expected<std::vector<uint8_t>> out = error(errc::none, "");
    s.self->request(spawned.session, std::chrono::seconds(5), chunk_atom::value, digest)
        .receive([&](std::vector<uint8_t>& b) { out = std::move(b); },
                 [&](caf::error& e) { out = from_caf(e, &s.sys); });
    return out;
  }
};

}  // namespace

TEST_SUITE("node session") {
  TEST_CASE("a node's error answer is passed on as printable text, and bounded") {
    test::configured_system s;
    const std::string said = "diverged \xff\x1b[2J\xc3" + std::string(2000, 'x');
    // The node's uplink: answers every assignment with `said`.
    auto uplink = s.sys.spawn([said](caf::event_based_actor* self) -> caf::behavior {
      self->set_default_handler(caf::drop);
      return {[said](assign_atom, uint32_t, assignment&) -> caf::result<assignment_result> {
        return to_caf(error(errc::non_finite, said));
      }};
    });
    auto sink = s.sys.spawn(sink_actor);
    auto spawned =
        spawn_node_session(s.sys, {"n1", "node", "", 0, 1}, session_limits{}, uplink, sink, sink);
    assignment a;
    a.id = 7;
    error got;
    s.self->request(spawned.workers.at(0), std::chrono::seconds(5), assign_atom::value, a)
        .receive([](assignment_result&) { FAIL("answered with a result"); },
                 [&](caf::error& e) { got = from_caf(e, &s.sys); });
    CHECK(got.code() == errc::non_finite);
    CHECK(is_printable_text(got.message()));
    CHECK(got.message().starts_with("diverged ??[2J?xxx"));
    CHECK(got.message().size() == 512);
    for (const auto& a : {caf::actor_cast<caf::actor>(spawned.session), uplink, sink})
      s.self->send_exit(a, caf::exit_reason::user_shutdown);
    for (const auto& w : spawned.workers) s.self->send_exit(w, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a node's error answer of CAF's categories is passed on as its printable text") {
    // Only errors in the gflex category were made printable; any other went on as the node
    // wrote it, taken for CAF's own: a node that answered every assignment (or its update's
    // chunk) with CAF's request_timeout passed for slow and was never cooled down, and one
    // with a context of line breaks and megabytes wrote forged lines into the core's log.
    test::configured_system s;
    const std::string forged =
        "\"\nFORGED-LOG-LINE core: all is well\n" + std::string(1 << 20, 'z');
    auto uplink = s.sys.spawn([forged](caf::event_based_actor* self) -> caf::behavior {
      self->set_default_handler(caf::drop);
      return {[forged](assign_atom, uint32_t, assignment& a) -> caf::result<caf::message> {
                if (a.id == 1) return caf::make_error(caf::sec::request_timeout);
                if (a.id == 2) return caf::error(1, caf::atom("x"), caf::make_message(forged));
                if (a.id == 3) return caf::error(200, error_category, caf::make_message(forged));
                if (a.id == 4) return caf::make_message(forged);  // no answer of the interface's
                assignment_result r;  // its update in a chunk, which it fails to send
                r.assignment_id = a.id;
                r.update_chunks = {std::string(64, 'd')};
                r.update_bytes = 100;
                return caf::make_message(std::move(r));
              },
              [](chunk_atom, const std::string&) -> caf::result<std::vector<uint8_t>> {
                return caf::make_error(caf::sec::request_timeout);
              },
              [](abort_atom, uint64_t) {}};
    });
    auto sink = s.sys.spawn(sink_actor);
    auto spawned =
        spawn_node_session(s.sys, {"n1", "node", "", 0, 1}, session_limits{}, uplink, sink, sink);
    for (uint64_t id : {1, 2, 3, 4, 5}) {
      CAPTURE(id);
      assignment a;
      a.id = id;
      caf::error caught;
      s.self->request(spawned.workers.at(0), std::chrono::seconds(5), assign_atom::value, a)
          .receive([](assignment_result&) { FAIL("answered with a result"); },
                   [&](caf::error& e) { caught = std::move(e); });
      REQUIRE(static_cast<bool>(caught));
      CHECK(caught != caf::sec::request_timeout);
      CHECK(caught.category() == error_category);
      const auto got = from_caf(caught, &s.sys);
      CHECK(got.code() == errc::io_error);
      CHECK_MESSAGE(is_printable_text(got.message()), got.message().substr(0, 200));
      CHECK(got.message().size() <= 512);
      const std::map<uint64_t, std::string> said{
          {1, "the node answered with system_error(request_timeout)"},
          {2, "the node answered with error(1, 'x'): \"?FORGED-LOG-LINE core: all is well?zzz"},
          {3, "the node answered with gflex error code 200: \"?FORGED-LOG-LINE"},
          {4, "the node answered with system_error(unexpected_response)"},
          {5, "the node answered with system_error(request_timeout)"}};
      CHECK_MESSAGE(got.message().starts_with(said.at(id)), got.message().substr(0, 200));
      CHECK(s.sys.render(caught).find('\n') == std::string::npos);
      CHECK(s.sys.render(caught).size() < 600);
    }
    for (const auto& a : {caf::actor_cast<caf::actor>(spawned.session), uplink, sink})
      s.self->send_exit(a, caf::exit_reason::user_shutdown);
    for (const auto& w : spawned.workers) s.self->send_exit(w, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a node's error answer of no code fails its assignment as the node's") {
    // An error of code 0 is CAF's "no error", which has no category: the session read one
    // through a null pointer, and the core crashed.
    test::configured_system s;
    auto uplink = s.sys.spawn([](caf::event_based_actor* self) -> caf::behavior {
      self->set_default_handler(caf::drop);
      return {[](assign_atom, uint32_t, assignment&) -> caf::result<caf::message> {
        return caf::make_message(caf::error{});
      }};
    });
    auto sink = s.sys.spawn(sink_actor);
    auto spawned =
        spawn_node_session(s.sys, {"n1", "node", "", 0, 1}, session_limits{}, uplink, sink, sink);
    assignment a;
    a.id = 5;
    caf::error caught;
    s.self->request(spawned.workers.at(0), std::chrono::seconds(5), assign_atom::value, a)
        .receive([](assignment_result&) { FAIL("answered with a result"); },
                 [&](caf::error& e) { caught = std::move(e); });
    REQUIRE(static_cast<bool>(caught));
    CHECK(caught.category() == error_category);
    const auto got = from_caf(caught, &s.sys);
    CHECK(got.code() == errc::io_error);
    CHECK_MESSAGE(got.message() == "the node answered with an error of no code", got.message());
    for (const auto& x : {caf::actor_cast<caf::actor>(spawned.session), uplink, sink})
      s.self->send_exit(x, caf::exit_reason::user_shutdown);
    for (const auto& w : spawned.workers) s.self->send_exit(w, caf::exit_reason::user_shutdown);
  }

  TEST_CASE(
      "a node's error answer to its update's chunk is passed on as printable text, and "
      "its rate counts only with its whole answer") {
    // The assignment's error was made printable, its answer's chunks' errors were passed on
    // as the node wrote them: escapes and megabytes into the core's log and the job's status.
    // And the rate the session measured went to the market before the chunks came: a node
    // that answered at once and never sent them was priced by a rate of nothing done.
    test::configured_system s;
    const std::string said = "out of memory \x1b[2J\xff" + std::string(1 << 20, 'y');
    auto uplink = s.sys.spawn([said](caf::event_based_actor* self) -> caf::behavior {
      self->set_default_handler(caf::drop);
      return {[](assign_atom, uint32_t, assignment& a) {
                assignment_result r;
                r.assignment_id = a.id;
                if (a.id == 9) return r;  // well formed, its (empty) update inline
                r.update_chunks = {std::string(64, 'd')};
                r.update_bytes = 100;
                return r;
              },
              [said](chunk_atom, const std::string&) -> caf::result<std::vector<uint8_t>> {
                return to_caf(error(errc::device_error, said));
              }};
    });
    auto sink = s.sys.spawn(sink_actor);
    auto rates = std::make_shared<std::atomic<int>>(0);
    auto registry = s.sys.spawn([rates](caf::event_based_actor* self) -> caf::behavior {
      self->set_default_handler(caf::drop);
      return {[rates](rate_atom, const std::string&, const std::string&, double) { ++*rates; }};
    });
    auto spawned = spawn_node_session(s.sys, {"n1", "node", "", 0, 1}, session_limits{}, uplink,
                                      registry, sink);
    assignment a;
    a.id = 8;
    a.local_steps = 2;
    a.batch_size = 4;
    error got;
    s.self->request(spawned.workers.at(0), std::chrono::seconds(5), assign_atom::value, a)
        .receive([](assignment_result&) { FAIL("answered with a result"); },
                 [&](caf::error& e) { got = from_caf(e, &s.sys); });
    CHECK(got.code() == errc::device_error);
    CHECK(is_printable_text(got.message()));
    CHECK(got.message().starts_with("out of memory ?[2J?yyy"));
    CHECK(got.message().size() == 512);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    CHECK(*rates == 0);
    a.id = 9;
    s.self->request(spawned.workers.at(0), std::chrono::seconds(5), assign_atom::value, a)
        .receive([](assignment_result&) {}, [&](caf::error& e) { FAIL(s.sys.render(e)); });
    for (int tries = 0; tries < 100 && *rates == 0; ++tries)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    CHECK(*rates == 1);
    for (const auto& a : {caf::actor_cast<caf::actor>(spawned.session), uplink, sink, registry})
      s.self->send_exit(a, caf::exit_reason::user_shutdown);
    for (const auto& w : spawned.workers) s.self->send_exit(w, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("an assignment the core withdraws is answered at once, whatever the node does") {
    // An abort was only passed on to the node: one that never answered (or never sent its
    // answer's chunks) kept the job's request, the round's parameters and the chunks so far
    // in the core's memory for as long as the session waits for it, a day.
    test::configured_system s;
    auto held = std::make_shared<std::vector<caf::response_promise>>();
    auto aborted = std::make_shared<std::atomic<uint64_t>>(0);  // bit `id`: the node heard
    auto uplink = s.sys.spawn([held, aborted](caf::event_based_actor* self) -> caf::behavior {
      self->set_default_handler(caf::drop);
      return {[=](abort_atom, uint64_t id) { aborted->fetch_or(uint64_t{1} << id); },
              [=](assign_atom, uint32_t, assignment& a) -> caf::result<assignment_result> {
                if (a.id == 1) {  // never answered
                  held->push_back(self->make_response_promise());
                  return caf::delegated<assignment_result>();
                }
                assignment_result r;  // answered with a chunk it never sends
                r.assignment_id = a.id;
                r.update_chunks = {std::string(64, 'e')};
                r.update_bytes = 100;
                return r;
              },
              [=](chunk_atom, const std::string&) -> caf::result<std::vector<uint8_t>> {
                held->push_back(self->make_response_promise());
                return caf::delegated<std::vector<uint8_t>>();
              }};
    });
    auto sink = s.sys.spawn(sink_actor);
    auto spawned =
        spawn_node_session(s.sys, {"n1", "node", "", 0, 1}, session_limits{}, uplink, sink, sink);
    for (uint64_t id : {uint64_t{1}, uint64_t{2}}) {
      CAPTURE(id);
      assignment a;
      a.id = id;
      auto asked =
          s.self->request(spawned.workers.at(0), std::chrono::seconds(10), assign_atom::value, a);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));  // out on the node
      const auto aborted_at = std::chrono::steady_clock::now();
      s.self->send(spawned.workers.at(0), abort_atom::value, id);
      error got;
      asked.receive([](assignment_result&) { FAIL("answered with a result"); },
                    [&](caf::error& e) { got = from_caf(e, &s.sys); });
      CHECK(std::chrono::steady_clock::now() - aborted_at < std::chrono::seconds(5));
      CHECK_MESSAGE(got.message().find("withdrew") != std::string::npos, got.message());
      // The node hears it too, computing the work or holding its answer's chunks (an update
      // of up to a gigabyte, kept 10 minutes every round the node lost a race).
      for (int tries = 0; tries < 100 && (aborted->load() & (uint64_t{1} << id)) == 0; ++tries)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      CHECK((aborted->load() & (uint64_t{1} << id)) != 0);
    }
    for (const auto& a : {caf::actor_cast<caf::actor>(spawned.session), uplink, sink})
      s.self->send_exit(a, caf::exit_reason::user_shutdown);
    for (const auto& w : spawned.workers) s.self->send_exit(w, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a node's answer is waited for as long as its asker waits, and a little more") {
    // It was waited for a day whatever the job's deadline: CAF keeps each request's timeout
    // until it fires, so every assignment's stayed in the core's memory a day.
    test::configured_system s;
    auto held = std::make_shared<std::vector<caf::response_promise>>();
    auto uplink = s.sys.spawn([held](caf::event_based_actor* self) -> caf::behavior {
      self->set_default_handler(caf::drop);
      return {[=](assign_atom, uint32_t, assignment&) -> caf::result<assignment_result> {
                held->push_back(self->make_response_promise());  // never answered
                return caf::delegated<assignment_result>();
              },
              [](abort_atom, uint64_t) {}};
    });
    auto sink = s.sys.spawn(sink_actor);
    session_limits limits;
    limits.answer_slack = std::chrono::milliseconds(500);
    auto spawned = spawn_node_session(s.sys, {"n1", "node", "", 0, 1}, limits, uplink, sink, sink);
    assignment a;
    a.id = 7;
    a.answer_within_s = 1.0;  // the job's deadline_s
    const auto asked_at = std::chrono::steady_clock::now();
    bool failed = false, timed_out = false;
    s.self->request(spawned.workers.at(0), std::chrono::seconds(10), assign_atom::value, a)
        .receive([](assignment_result&) { FAIL("answered with a result"); },
                 [&](caf::error& e) {
                   failed = true;
                   timed_out = e == caf::sec::request_timeout;
                 });
    const double took =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - asked_at).count();
    CHECK(failed);
    CHECK(timed_out);  // the session's own timeout: slow there, which the job does not hold
                       // against the node
    CHECK(took >= 1.4);
    CHECK_MESSAGE(took < 5.0, "given up on after " << took << " s");
    for (const auto& x : {caf::actor_cast<caf::actor>(spawned.session), uplink, sink})
      s.self->send_exit(x, caf::exit_reason::user_shutdown);
    for (const auto& w : spawned.workers) s.self->send_exit(w, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a node beating in a loop reaches the registry at most once per 25 ms") {
    // The registry is every node's: the flood swamped its mailbox, and honest nodes' beats
    // queued behind it until their leases ran out.
    test::configured_system s;
    auto beats = std::make_shared<std::atomic<int>>(0);
    auto registry = s.sys.spawn(beat_counting_registry, beats);
    auto sink = s.sys.spawn(sink_actor);
    auto spawned =
        spawn_node_session(s.sys, {"n1", "node", "", 0, 1}, session_limits{}, sink, registry, sink);
    const auto started = std::chrono::steady_clock::now();
    for (int i = 0; i < 20000; ++i) s.self->send(spawned.session, beat_atom::value);
    // Answered once the session has handled the whole flood, and once the registry has
    // counted every beat let through (they reach it before the session's question): on a
    // loaded machine the flood drains for longer than any fixed sleep.
    s.self->request(spawned.session, std::chrono::seconds(10), earned_atom::value)
        .receive([](int64_t) {}, [&](caf::error& e) { FAIL(s.sys.render(e)); });
    const auto took_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::steady_clock::now() - started)
                             .count();
    const int let_through = *beats;
    CHECK(let_through >= 1);
    CHECK_MESSAGE(let_through <= 1 + took_ms / 25, let_through << " beats in " << took_ms << " ms");
    // An honest beat, a heartbeat later, goes through: past the 25 ms since the last beat let
    // through, however long its two hops take.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const int before = *beats;
    s.self->send(spawned.session, beat_atom::value);
    CHECK(eventually([&] { return *beats == before + 1; }, std::chrono::seconds(5)));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    CHECK(beats->load() == before + 1);  // passed on once
    for (const auto& a : {caf::actor_cast<caf::actor>(spawned.session), registry, sink})
      s.self->send_exit(a, caf::exit_reason::user_shutdown);
    for (const auto& w : spawned.workers) s.self->send_exit(w, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a node sending its answer's chunks is kept alive while they come") {
    // Its heartbeats wait behind the chunks on its connection: one chunk of 1 MiB over a
    // 1 Mbit/s uplink takes 8 s, past the 4 s lease, and the node was dropped mid-answer.
    test::configured_system s;
    using held_chunks = std::vector<caf::typed_response_promise<std::vector<uint8_t>>>;
    auto held = std::make_shared<held_chunks>();
    auto uplink = s.sys.spawn([held](caf::event_based_actor* self) -> caf::behavior {
      self->set_default_handler(caf::drop);
      return {[](assign_atom, uint32_t, assignment& a) {
                assignment_result r;
                r.assignment_id = a.id;
                r.update_chunks = {std::string(64, 'd')};
                r.update_bytes = 100;
                return r;
              },
              // The chunk takes 4.5 s to come (then fails: what matters is the wait). The
              // session's beat timer is set again at each tick, so on a loaded machine its
              // ticks fall behind the clock: four are due in that time, three at least come.
              [=](chunk_atom, const std::string&) -> caf::result<std::vector<uint8_t>> {
                auto rp = self->make_response_promise<std::vector<uint8_t>>();
                held->push_back(rp);
                self->delayed_send(self, std::chrono::milliseconds(4500), caf::put_atom::value);
                return rp;
              },
              [=](caf::put_atom) {
                for (auto& rp : *held) rp.deliver(to_caf(error(errc::unavailable, "slow link")));
                held->clear();
              },
              [](abort_atom, uint64_t) {}};
    });
    auto beats = std::make_shared<std::atomic<int>>(0);
    auto registry = s.sys.spawn(beat_counting_registry, beats);
    auto sink = s.sys.spawn(sink_actor);
    auto spawned = spawn_node_session(s.sys, {"n1", "node", "", 0, 1}, session_limits{}, uplink,
                                      registry, sink);
    assignment a;
    a.id = 11;
    a.local_steps = 2;
    a.batch_size = 4;
    s.self->request(spawned.workers.at(0), std::chrono::seconds(10), assign_atom::value, a)
        .receive([](assignment_result&) { FAIL("answered with a result"); }, [](caf::error&) {});
    // Beaten for once a second while the chunk was on its way, none from the node itself. A
    // beat the session sent just before the pull ended may still be on its way to the
    // registry: counted once the count has stood still for a while.
    int after = *beats;
    const auto settled_by = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (auto still_since = std::chrono::steady_clock::now();
         std::chrono::steady_clock::now() - still_since < std::chrono::milliseconds(300) &&
         std::chrono::steady_clock::now() < settled_by;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      if (*beats != after) {
        after = *beats;
        still_since = std::chrono::steady_clock::now();
      }
    }
    CHECK(after >= 3);
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    CHECK(beats->load() == after);  // the pull over, the session beats no more for it
    for (const auto& x : {caf::actor_cast<caf::actor>(spawned.session), uplink, sink, registry})
      s.self->send_exit(x, caf::exit_reason::user_shutdown);
    for (const auto& w : spawned.workers) s.self->send_exit(w, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a chunk request to a data server that died fails at once") {
    // CAF bounces a request to a dead actor with an error that has no sender; a session
    // dropped it as a stranger's and its node waited out the request's 120 s.
    chunk_session c;
    const std::string mine(64, 'a');
    c.assign(mine);
    c.s.self->monitor(c.data_server);
    c.s.self->send_exit(c.data_server, caf::exit_reason::kill);
    c.s.self->receive([](caf::down_msg&) {});
    for (int i = 0; i < 2; ++i) {  // the second: the session took the first as the core's
      auto got = c.fetch(mine);
      REQUIRE_FALSE(got.has_value());
      CHECK_MESSAGE(got.error().message().find("timed out") == std::string::npos,
                    got.error().message());
    }
  }

  TEST_CASE("a node fetches only the data chunks its assignments named") {
    // Any digest was served: a node that learned one (an earlier assignment, a public set's)
    // could read other accounts' data sets.
    chunk_session c;
    const std::string mine(64, 'a'), next(64, 'b'), theirs(64, 'c');
    auto refused = c.fetch(mine);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().code() == errc::permission_denied);
    c.assign(mine, next);
    CHECK(c.fetch(mine).has_value());
    CHECK(c.fetch(next).has_value());  // the next round's, as a hint
    auto other = c.fetch(theirs);
    REQUIRE_FALSE(other.has_value());
    CHECK(other.error().code() == errc::permission_denied);
  }
}
