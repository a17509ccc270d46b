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

// A node's uplink that fails its first assignment at once, and each later one once it asked
// its session (`*session`) for the first one's shard (granted to it, needed by no work out
// now) and heard back, saying that the core did not serve it.
caf::behavior stale_asking_uplink(caf::event_based_actor* self,
                                  std::shared_ptr<caf::actor> session) {
  self->set_default_handler(caf::drop);
  auto first_shard = std::make_shared<std::string>();
  return {
      [=](assign_atom, uint32_t, assignment& a) -> caf::result<assignment_result> {
        if (first_shard->empty()) {
          *first_shard = a.shard;
          return to_caf(error(errc::io_error, "out of memory"));
        }
        auto rp = self->make_response_promise();
        auto fail = [rp]() mutable {
          rp.deliver(
              to_caf(error(errc::unavailable, "the core did not serve data chunk (timeout)")));
        };
        self->request(*session, std::chrono::seconds(10), chunk_atom::value, *first_shard)
            .then([=](std::vector<uint8_t>&) mutable { fail(); },
                  [=](caf::error&) mutable { fail(); });
        return caf::delegated<assignment_result>();
      },
      [](abort_atom, uint64_t) {},
  };
}

// The error the job hears of an assignment `id` of shard `shard` to the first worker of
// `spawned` (an answer fails the test).
error assign_to(configured_system& s, const spawned_session& spawned, uint64_t id,
                const std::string& shard) {
  assignment a;
  a.id = id;
  a.shard = shard;
  error got;
  s.self->request(spawned.workers.at(0), std::chrono::seconds(10), assign_atom::value, a)
      .receive([](assignment_result&) { FAIL("answered with a result"); },
               [&](caf::error& e) { got = from_caf(e, &s.sys); });
  return got;
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

  error assign(uint64_t id, const std::string& shard) { return assign_to(s, spawned, id, shard); }
};

// A data server that holds each ask for chunk `hung` unanswered, and serves any other at once.
caf::behavior hanging_data_server(caf::event_based_actor* self, std::string hung) {
  self->set_default_handler(caf::drop);
  auto held = std::make_shared<std::vector<caf::response_promise>>();
  return {[=](chunk_atom, const std::string& digest) -> caf::result<std::vector<uint8_t>> {
    if (digest != hung) return std::vector<uint8_t>(16, uint8_t{1});
    held->push_back(self->make_response_promise());
    return caf::delegated<std::vector<uint8_t>>();
  }};
}

// A node's uplink whose cache, as a node's does, fails every request it has out once nothing
// came for its wait: it asks its session (`*session`) for the first assignment's shard, and for
// a later one's when `asks_later` (otherwise prefetched during the one before), and fails every
// assignment it holds `silence` after the first arrived, saying that the core did not serve it.
caf::behavior silent_cache_uplink(caf::event_based_actor* self, std::shared_ptr<caf::actor> session,
                                  bool asks_later, std::chrono::milliseconds silence) {
  self->set_default_handler(caf::drop);
  auto pending = std::make_shared<std::vector<caf::response_promise>>();
  return {
      [=](assign_atom, uint32_t, assignment& a) -> caf::result<assignment_result> {
        if (pending->empty()) self->delayed_send(self, silence, tick_atom::value);
        if (pending->empty() || asks_later)
          self->request(*session, std::chrono::seconds(10), chunk_atom::value, a.shard)
              .then([](std::vector<uint8_t>&) {}, [](caf::error&) {});
        pending->push_back(self->make_response_promise());
        return caf::delegated<assignment_result>();
      },
      [=](tick_atom) {
        for (auto& rp : *pending)
          rp.deliver(
              to_caf(error(errc::unavailable, "the core did not serve data chunk (timeout)")));
        pending->clear();
      },
      [](abort_atom, uint64_t) {},
  };
}

// How a test node's uplink does an assignment: waits `before_fetch` (a slow link), asks its
// session for the parameter chunks, computes `compute` once they came, asks for the first
// again when `ask_again`, and answers, reporting `reported_s` of compute (< 0: the time it
// computed). With `withholds_update`, it answers at once instead, naming an update chunk it
// never sends.
struct uplink_script {
  std::chrono::milliseconds before_fetch{0};
  std::chrono::milliseconds compute{200};
  bool ask_again = false;
  double reported_s = -1.0;
  bool withholds_update = false;
};

// A node's uplink in another process that does each assignment as `script` says, asking its
// session (`*session`) for the parameter chunks.
caf::behavior scripted_uplink(caf::event_based_actor* self, std::shared_ptr<caf::actor> session,
                              uplink_script script) {
  struct work {
    caf::response_promise promise;
    assignment_result result;
    std::vector<std::string> chunks;
    size_t waiting = 0;
  };
  auto works = std::make_shared<std::map<uint64_t, work>>();
  auto held = std::make_shared<std::vector<caf::response_promise>>();
  self->set_default_handler(caf::drop);
  auto answer = [=](uint64_t id) {
    auto it = works->find(id);
    if (it == works->end()) return;
    it->second.promise.deliver(std::move(it->second.result));
    works->erase(it);
  };
  return {
      [=](assign_atom, uint32_t, assignment& a) -> caf::result<assignment_result> {
        if (script.withholds_update) {
          assignment_result r;
          r.assignment_id = a.id;
          r.samples = a.local_steps * a.batch_size;
          r.update_chunks = {std::string(64, 'e')};
          r.update_bytes = 100;
          return r;
        }
        auto& w = (*works)[a.id];
        w.promise = self->make_response_promise();
        w.result.assignment_id = a.id;
        w.result.samples = a.local_steps * a.batch_size;
        w.result.compute_s = script.reported_s >= 0.0
                                 ? script.reported_s
                                 : std::chrono::duration<double>(script.compute).count();
        w.chunks = a.params_chunks;
        self->delayed_send(self, script.before_fetch, caf::get_atom::value, a.id);
        return caf::delegated<assignment_result>();
      },
      // Fetches the parameters' chunks, then computes.
      [=](caf::get_atom, uint64_t id) {
        auto& w = works->at(id);
        w.waiting = w.chunks.size();
        if (w.waiting == 0) self->delayed_send(self, script.compute, caf::ok_atom::value, id);
        for (const auto& digest : w.chunks)
          self->request(*session, std::chrono::seconds(10), chunk_atom::value, digest)
              .then(
                  [=](std::vector<uint8_t>&) {
                    if (--works->at(id).waiting == 0)
                      self->delayed_send(self, script.compute, caf::ok_atom::value, id);
                  },
                  [](caf::error&) {});
      },
      // Computed: answers, maybe after asking for its first chunk again.
      [=](caf::ok_atom, uint64_t id) {
        const auto& w = works->at(id);
        if (!script.ask_again || w.chunks.empty()) return answer(id);
        self->request(*session, std::chrono::seconds(10), chunk_atom::value, w.chunks.front())
            .then([=](std::vector<uint8_t>&) { answer(id); }, [](caf::error&) {});
      },
      // Its session asks for its answer's update chunks: never sent.
      [=](chunk_atom, const std::string&) -> caf::result<std::vector<uint8_t>> {
        held->push_back(self->make_response_promise());
        return caf::delegated<std::vector<uint8_t>>();
      },
      [](abort_atom, uint64_t) {},
  };
}

// The registry as far as rates go: keeps the last each node's session measured.
caf::behavior rate_keeper(caf::event_based_actor* self) {
  auto rates = std::make_shared<std::map<std::string, double>>();
  self->set_default_handler(caf::drop);
  return {
      [=](rate_atom, const std::string& name, const std::string&, double rate) {
        (*rates)[name] = rate;
      },
      [=](caf::get_atom, const std::string& name) {
        auto it = rates->find(name);
        return it == rates->end() ? 0.0 : it->second;
      },
  };
}

// Nodes in another process (`node`, an actor system of their own) with their sessions in the
// core's (`core`), each uplink following its script; their rates go to one rate_keeper.
struct remote_nodes {
  configured_system& core;
  configured_system& node;
  caf::actor rates, sink;
  std::vector<caf::actor> uplinks;
  std::vector<spawned_session> sessions;

  remote_nodes(configured_system& core, configured_system& node, std::vector<uplink_script> scripts,
               session_limits limits = {})
      : core(core),
        node(node),
        rates(core.sys.spawn(rate_keeper)),
        sink(core.sys.spawn(sink_actor)) {
    for (size_t i = 0; i < scripts.size(); ++i) {
      auto handle = std::make_shared<caf::actor>();
      uplinks.push_back(node.sys.spawn(scripted_uplink, handle, scripts[i]));
      const std::string id = "n" + std::to_string(i);
      sessions.push_back(spawn_node_session(core.sys, {id, "node-" + std::to_string(i), "", 0, 1},
                                            limits, uplinks.back(), rates, sink));
      *handle = caf::actor_cast<caf::actor>(sessions.back().session);
    }
  }
  ~remote_nodes() {
    for (const auto& x : sessions) {
      core.self->send_exit(x.session, caf::exit_reason::user_shutdown);
      for (const auto& w : x.workers) core.self->send_exit(w, caf::exit_reason::user_shutdown);
    }
    for (const auto& u : uplinks) node.self->send_exit(u, caf::exit_reason::user_shutdown);
    core.self->send_exit(rates, caf::exit_reason::user_shutdown);
    core.self->send_exit(sink, caf::exit_reason::user_shutdown);
  }

  // Work `id` of `samples` samples, its parameters in `chunks` chunks (none: inline).
  static assignment work(uint64_t id, int64_t samples, size_t chunks) {
    assignment a;
    a.id = id;
    a.workload = "w";
    a.local_steps = samples / 32;
    a.batch_size = 32;
    auto p = std::make_shared<shared_params>();
    p->bytes.assign(1024 * std::max<size_t>(chunks, 1), uint8_t{7});
    p->chunk_bytes = 1024;
    for (size_t c = 0; c < chunks; ++c) p->chunks.push_back(std::string(63, 'c') + char('0' + c));
    a.params_ref = std::move(p);
    return a;
  }

  // Gives each node `i` work(i + 1, ...), one after another, and waits for its answer (a
  // node that failed to answer fails the test).
  void run(int64_t samples, size_t chunks) {
    for (size_t i = 0; i < sessions.size(); ++i)
      core.self
          ->request(sessions[i].workers.at(0), std::chrono::seconds(10), assign_atom::value,
                    work(i + 1, samples, chunks))
          .receive([](assignment_result&) {}, [&](caf::error& e) { FAIL(core.sys.render(e)); });
  }

  // Asks node `i` for work(id, samples, chunks) as a job of deadline `deadline_s` does, giving up
  // after `wait` (the job's deadline, or less); whether it gave up with no answer.
  bool ask(size_t i, uint64_t id, int64_t samples, size_t chunks, double deadline_s,
           std::chrono::milliseconds wait) {
    auto a = work(id, samples, chunks);
    a.answer_within_s = deadline_s;
    bool timed_out = false;
    core.self->request(sessions[i].workers.at(0), wait, assign_atom::value, std::move(a))
        .receive([](assignment_result&) { FAIL("answered with a result"); },
                 [&](caf::error& e) { timed_out = e == caf::sec::request_timeout; });
    return timed_out;
  }

  // Withdraws work `id` from node `i`, as a job does once it gave up on it (fail_assignment).
  void withdraw(size_t i, uint64_t id) {
    core.self->send(sessions[i].workers.at(0), abort_atom::value, id);
  }

  // The rate node `i`'s session measured (0 until it has one).
  double rate(size_t i) {
    double out = 0.0;
    for (int tries = 0; tries < 200 && out == 0.0; ++tries) {
      core.self
          ->request(rates, std::chrono::seconds(5), caf::get_atom::value,
                    "node-" + std::to_string(i))
          .receive([&](double r) { out = r; }, [&](caf::error& e) { FAIL(core.sys.render(e)); });
      if (out == 0.0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return out;
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
    SUBCASE("the data server held the shard it asked for longer than it answers in") {
      // A node's waiting alone (asked, and gave up no sooner than a node waits) is evidence
      // it can make up: the data server holding its ask past data_server_slow is not.
      session_limits limits;
      limits.node_chunk_wait = std::chrono::milliseconds(300);
      limits.data_server_slow = std::chrono::milliseconds(100);
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
    SUBCASE("it asked for the shard and gave up before the data server was slow") {
      unserved_session node(s, true, std::chrono::milliseconds(20), false, limits);
      const auto got = node.assign(1, shard);
      CHECK_MESSAGE(got.code() == errc::io_error, got.message());
    }
  }

  TEST_CASE("a node's word that the core did not serve it is its own after asking for old work") {
    // The data server's answer that it holds no such chunk (a granted shard of a job that
    // ended, its set removed) was taken for a lapse of the core's: for node_chunk_wait, the
    // node was believed that the core failed every assignment it then gave back at once.
    configured_system s;
    auto handle = std::make_shared<caf::actor>();
    auto sink = s.sys.spawn(sink_actor);
    auto data_server = s.sys.spawn(test_data_server, true);  // holds no chunk
    auto uplink = s.sys.spawn(stale_asking_uplink, handle);
    auto spawned =
        spawn_node_session(s.sys, {"n1", "node", "", 0, 1}, {}, uplink, sink, data_server);
    *handle = caf::actor_cast<caf::actor>(spawned.session);
    assign_to(s, spawned, 1, std::string(64, 'c'));
    const auto got = assign_to(s, spawned, 2, std::string(64, 'd'));
    CHECK_MESSAGE(got.code() == errc::io_error, got.message());
    for (const auto& x : {caf::actor_cast<caf::actor>(spawned.session), uplink, sink, data_server})
      s.self->send_exit(x, caf::exit_reason::user_shutdown);
    for (const auto& w : spawned.workers) s.self->send_exit(w, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a node's word that the core did not serve it stands while the core holds any ask") {
    // A node's cache fails every request it has out once nothing came for as long as a node
    // waits (2 minutes), not each ask's own wait: with the data server hung on the first
    // assignment's shard, a second one sent a minute later is failed with it. Judged by its own
    // asks, the second was the honest node's fault (61 s, not 2 minutes, since it was sent), and
    // so was one whose shard was prefetched, asking for nothing of its own. Scaled down: 1 s is
    // 100 ms here.
    configured_system s;
    const std::string held(64, 'h'), second(64, 'i');
    session_limits limits;
    limits.node_chunk_wait = std::chrono::milliseconds(1200);
    limits.data_server_slow = std::chrono::milliseconds(100);
    bool asks_later = true;
    SUBCASE("the second assignment asked for its shard at once") {
      asks_later = true;
    }
    SUBCASE("the second assignment's shard was prefetched") {
      asks_later = false;
    }
    auto handle = std::make_shared<caf::actor>();
    auto sink = s.sys.spawn(sink_actor);
    auto data_server = s.sys.spawn(hanging_data_server, held);
    auto uplink =
        s.sys.spawn(silent_cache_uplink, handle, asks_later, std::chrono::milliseconds(1210));
    auto spawned =
        spawn_node_session(s.sys, {"n1", "node", "", 0, 1}, limits, uplink, sink, data_server);
    *handle = caf::actor_cast<caf::actor>(spawned.session);
    assignment first, later;
    first.id = 1;
    first.shard = held;
    first.next_shard = second;
    later.id = 2;
    later.shard = second;
    auto first_answer =
        s.self->request(spawned.workers.at(0), std::chrono::seconds(10), assign_atom::value, first);
    std::this_thread::sleep_for(std::chrono::milliseconds(600));
    error got;
    s.self->request(spawned.workers.at(0), std::chrono::seconds(10), assign_atom::value, later)
        .receive([](assignment_result&) { FAIL("answered with a result"); },
                 [&](caf::error& e) { got = from_caf(e, &s.sys); });
    CHECK_MESSAGE(got.code() == errc::unavailable, got.message());
    first_answer.receive([](assignment_result&) { FAIL("answered with a result"); },
                         [&](caf::error& e) {
                           const auto first_got = from_caf(e, &s.sys);
                           CHECK_MESSAGE(first_got.code() == errc::unavailable,
                                         first_got.message());
                         });
    for (const auto& x : {caf::actor_cast<caf::actor>(spawned.session), uplink, sink, data_server})
      s.self->send_exit(x, caf::exit_reason::user_shutdown);
    for (const auto& w : spawned.workers) s.self->send_exit(w, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a node's word that the core did not serve it is its own where every ask was served") {
    // Asking for its shard and waiting as long as a node waits proves nothing of the core: a
    // node that does so with every assignment would get its shard back, never cooled down.
    configured_system s;
    session_limits limits;
    limits.node_chunk_wait = std::chrono::milliseconds(300);
    limits.data_server_slow = std::chrono::milliseconds(100);
    auto handle = std::make_shared<caf::actor>();
    auto sink = s.sys.spawn(sink_actor);
    auto data_server = s.sys.spawn(hanging_data_server, std::string());
    auto uplink = s.sys.spawn(unserved_uplink, handle, true, std::chrono::milliseconds(400));
    auto spawned =
        spawn_node_session(s.sys, {"n1", "node", "", 0, 1}, limits, uplink, sink, data_server);
    *handle = caf::actor_cast<caf::actor>(spawned.session);
    assignment a;
    a.id = 1;
    a.shard = std::string(64, 'j');
    error got;
    s.self->request(spawned.workers.at(0), std::chrono::seconds(10), assign_atom::value, a)
        .receive([](assignment_result&) { FAIL("answered with a result"); },
                 [&](caf::error& e) { got = from_caf(e, &s.sys); });
    CHECK_MESSAGE(got.code() == errc::io_error, got.message());
    for (const auto& x : {caf::actor_cast<caf::actor>(spawned.session), uplink, sink, data_server})
      s.self->send_exit(x, caf::exit_reason::user_shutdown);
    for (const auto& w : spawned.workers) s.self->send_exit(w, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a node that reports a compute time far below its own is not rated above its twin") {
    // The rate the market prices a node by was its samples over the compute time it reported
    // (capped at the wall time): one that reported next to none was measured at 1e11 samples/s,
    // priced at next to no cost, given most of every job's work, and raised the fastest rate,
    // which caps the claims of nodes not measured yet.
    configured_system core, node;
    REQUIRE(node.sys.node() != core.sys.node());  // its uplinks are of another process
    const int64_t samples = 320;
    uplink_script honest, liar;
    liar.reported_s = static_cast<double>(samples) / 1e11;
    remote_nodes nodes(core, node, {honest, liar});
    nodes.run(samples, 0);
    const double honest_rate = nodes.rate(0), liar_rate = nodes.rate(1);
    REQUIRE(honest_rate > 0.0);
    REQUIRE(liar_rate > 0.0);
    // Both computed 200 ms: the session's clock, not the liar's word, so neither is rated
    // above the samples over that time (a loaded machine only makes the measured time longer:
    // a bound against the honest twin's rate failed when its turn came late).
    MESSAGE("liar " << liar_rate << " honest " << honest_rate);
    CHECK(liar_rate <= static_cast<double>(samples) / 0.2);
    CHECK(honest_rate <= static_cast<double>(samples) / 0.2);
  }

  TEST_CASE("a node's rate leaves out its parameters' download, and asking again shrinks nothing") {
    // Timed from sending the assignment, a node on a slow link measured slower than an
    // identical one on a fast link, and one step's work slower than many (the download does
    // not grow with the work). Timed from the last serve of a chunk, a node that asked for one
    // again once done measured as fast as it liked.
    configured_system core, node;
    const int64_t samples = 320;
    uplink_script slow_link, asks_again;
    slow_link.before_fetch = std::chrono::milliseconds(500);
    slow_link.compute = std::chrono::milliseconds(100);
    asks_again.compute = std::chrono::milliseconds(300);
    asks_again.ask_again = true;
    asks_again.reported_s = 1e-9;
    remote_nodes nodes(core, node, {slow_link, asks_again});
    nodes.run(samples, 2);
    const double slow_rate = nodes.rate(0), again_rate = nodes.rate(1);
    // 100 ms of compute after 500 ms of download: rated by the compute, give or take a loaded
    // machine's delays, not by the 600 ms.
    CHECK_MESSAGE(slow_rate > static_cast<double>(samples) / 0.4, slow_rate);
    // 300 ms from its chunks to its answer.
    CHECK_MESSAGE(again_rate > 0.0, again_rate);
    CHECK_MESSAGE(again_rate <= static_cast<double>(samples) / 0.25, again_rate);
  }

  TEST_CASE("a node that takes work and lets it run out of time is measured by it") {
    // Only an answer measured a node, and running out of time is not held against one: a node
    // that claimed 9e11 samples/s at the lowest price and never answered kept its claim for
    // good, the cheapest node, given every job's work first, each round held for its whole
    // deadline. The samples over the time the session saw it hold them is a true bound.
    configured_system core, node;
    const int64_t samples = 320;
    const double deadline_s = 1.0;
    const auto deadline = std::chrono::milliseconds(1000);
    uplink_script silent, withholds;
    silent.compute = std::chrono::minutes(10);
    withholds.withholds_update = true;
    session_limits limits;
    limits.answer_slack = std::chrono::milliseconds(300);
    remote_nodes nodes(core, node, {silent, withholds}, limits);
    SUBCASE("its job withdraws it at its deadline") {
      REQUIRE(nodes.ask(0, 1, samples, 2, deadline_s, deadline));
      std::this_thread::sleep_for(std::chrono::milliseconds(50));  // a busy job's abort
      nodes.withdraw(0, 1);
      const double rate = nodes.rate(0);
      REQUIRE_MESSAGE(rate > 0.0, "no rate measured");
      CHECK_MESSAGE(rate <= static_cast<double>(samples) / deadline_s, rate);
    }
    SUBCASE("its job is gone, and its session gives up on it") {
      REQUIRE(nodes.ask(0, 1, samples, 0, deadline_s, deadline));
      const double rate = nodes.rate(0);
      REQUIRE_MESSAGE(rate > 0.0, "no rate measured");
      CHECK_MESSAGE(rate <= static_cast<double>(samples) / deadline_s, rate);
    }
    SUBCASE("it answers at once, and never sends its update") {
      REQUIRE(nodes.ask(1, 1, samples, 0, deadline_s, deadline));
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      nodes.withdraw(1, 1);
      const double rate = nodes.rate(1);
      REQUIRE_MESSAGE(rate > 0.0, "no rate measured");
      CHECK_MESSAGE(rate <= static_cast<double>(samples) / deadline_s, rate);
    }
    SUBCASE("withdrawn well before its deadline, it is not measured") {
      // A round a quorum closed, a backup that won: the node may have been nearly done.
      REQUIRE(nodes.ask(0, 1, samples, 2, 10.0, std::chrono::milliseconds(200)));
      nodes.withdraw(0, 1);
      CHECK(nodes.rate(0) == 0.0);
    }
  }
}
