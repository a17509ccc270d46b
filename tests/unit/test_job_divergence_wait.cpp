/// @file
/// A round that only community nodes said diverged, whose check on the core tier waits for a
/// core-tier worker (the verifier answers errc::unavailable, the core runs with --unverified
/// wait). The check is asked again for as long as it takes: the job's status says why it
/// waits, and no node is held at fault for a report the core tier has not disproved. Before,
/// the job waited in silence, and each node that said it again was cooled down in the market
/// for every job.

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <optional>

#include "gflex/runtime/identity.hpp"
#include "gflex/runtime/job_spec.hpp"
#include "job_fixture.hpp"

using namespace gflex;
using namespace gflex::test;

namespace {

// A worker whose training diverges: it answers every assignment errc::non_finite, `delay`
// after it came.
caf::behavior diverging_worker(caf::event_based_actor* self, std::chrono::milliseconds delay) {
  auto held =
      std::make_shared<std::map<uint64_t, caf::typed_response_promise<assignment_result>>>();
  return {
      [=](assign_atom, assignment& a) -> caf::result<assignment_result> {
        auto rp = self->make_response_promise<assignment_result>();
        (*held)[a.id] = rp;
        self->delayed_send(self, delay, caf::put_atom::value, a.id);
        return rp;
      },
      [=](caf::put_atom, uint64_t id) {
        auto it = held->find(id);
        if (it == held->end()) return;
        it->second.deliver(
            to_caf(error(errc::non_finite, "training diverged: the loss is not finite")));
        held->erase(it);
      },
      [](abort_atom, uint64_t) {},
  };
}

// A market that offers its slots at the first acquire, and each slot released again at the
// next; an acquire with nothing to offer waits for a release. Notes each release after a
// failure: (caf::get_atom, release_atom) -> "<node>: the node's fault" or "<node>: not the
// node's fault", in order.
struct reoffering_market_state {
  std::vector<worker_slot> all, offered;
  std::vector<caf::typed_response_promise<acquire_reply>> waiting;
  std::vector<std::string> failed;
};

caf::behavior reoffering_market(caf::stateful_actor<reoffering_market_state>* self,
                                std::vector<worker_slot> slots) {
  self->state.all = slots;
  self->state.offered = std::move(slots);
  auto offer = [=](const caf::actor& w) {
    auto& st = self->state;
    for (const auto& s : st.all)
      if (s.worker == w) st.offered.push_back(s);
    if (st.waiting.empty() || st.offered.empty()) return;
    acquire_reply r;
    r.slots = std::move(st.offered);
    st.offered.clear();
    st.waiting.front().deliver(std::move(r));
    st.waiting.erase(st.waiting.begin());
  };
  return {
      [=](acquire_atom, const std::string&, const std::string&, int64_t, uint8_t, int64_t, double,
          const std::vector<std::string>&) -> caf::result<acquire_reply> {
        auto& st = self->state;
        if (!st.offered.empty()) {
          acquire_reply r;
          r.slots = std::move(st.offered);
          st.offered.clear();
          return r;
        }
        st.waiting.push_back(self->make_response_promise<acquire_reply>());
        return st.waiting.back();
      },
      [=](release_atom, const caf::actor& w) { offer(w); },
      [](release_atom, const std::vector<caf::actor>&) {},
      [=](release_atom, const caf::actor& w, bool) { offer(w); },
      [=](release_atom, const caf::actor& w, bool failed, bool node_at_fault) {
        if (failed)
          for (const auto& s : self->state.all)
            if (s.worker == w)
              self->state.failed.push_back(
                  s.node_name + (node_at_fault ? ": the node's fault" : ": not the node's fault"));
        offer(w);
      },
      [=](caf::get_atom, release_atom) { return self->state.failed; },
  };
}

// A verifier that answers its first `unavailable` checks errc::unavailable at once, as one that
// held them for --verify-wait-s with no core-tier worker free does, and confirms every later
// one (the core tier computes the work). Counts the checks in `asked`.
caf::behavior busy_core_verifier(caf::event_based_actor*, int unavailable,
                                 std::shared_ptr<std::atomic<int>> asked) {
  return {
      [=](verify_atom, verify_request&) -> caf::result<double, double, double> {
        if (++*asked <= unavailable)
          return to_caf(error(errc::unavailable,
                              "no core-tier worker was free to re-compute "
                              "it for 60 s (1 re-computations waiting)"));
        return {0.0, 1.0, 0.01};
      },
  };
}

// Alice's job-1 of 6 rounds, resumed at round 2 and spawned directly, its supervisor played by
// the test: two community nodes, a and b, whose training diverges (100 ms an assignment), in a
// reoffering_market; a busy_core_verifier whose first `unavailable` checks find no core-tier
// worker; the core runs with --unverified wait.
struct diverging_job {
  configured_system f;
  std::vector<worker_slot> slots;
  job_links links;
  caf::actor job;
  std::shared_ptr<std::atomic<int>> checks = std::make_shared<std::atomic<int>>(0);

  explicit diverging_job(int unavailable) {
    std::string spec_text = k_spec;
    spec_text.replace(spec_text.find("rounds = 3\nworkers = 1"), 22, "rounds = 6\nworkers = 2");
    auto stored = stored_job(2, spec_text, 2);
    auto spec = parse_job_spec(spec_text, "test");
    REQUIRE(spec.has_value());
    for (const char* name : {"a", "b"}) {
      auto key = node_identity::generate();
      worker_slot slot;
      slot.worker = f.sys.spawn(diverging_worker, std::chrono::milliseconds(100));
      slot.node_id = std::string("id-") + name;
      slot.node_name = name;
      slot.tier = static_cast<uint8_t>(node_tier::community);
      slot.public_key = key.public_key();
      slots.push_back(slot);
    }
    links.store = f.sys.spawn(failing_store, stored);
    links.market = f.sys.spawn(reoffering_market, slots);
    links.reputation = f.sys.spawn([]() -> caf::behavior {
      return {
          [](sample_atom, const std::string&) { return false; },
          [](credit_atom, const std::string&, uint8_t, double, int64_t) {},
          [](reject_atom, const std::string&, std::string&) { return std::vector<std::string>{}; },
      };
    });
    links.verifier = f.sys.spawn(busy_core_verifier, unavailable, checks);
    links.accept_unverified = false;
    links.supervisor = caf::actor_cast<caf::actor>(f.self);  // the test stands for it
    links.catalog = catalog_of(stored);
    auto start = resumed_start(stored, spec_text, *spec, 2);
    job = spawn_job(f.sys, std::move(start), links);
    f.self->monitor(job);
  }
  ~diverging_job() {
    for (const auto& a : {job, links.market, links.reputation, links.store, links.verifier})
      if (a) f.self->send_exit(a, caf::exit_reason::user_shutdown);
    for (const auto& s : slots) f.self->send_exit(s.worker, caf::exit_reason::user_shutdown);
  }

  // The first status the job publishes for which `wanted` holds, within `seconds`; nullopt if
  // none did, or the job ended first.
  template <class Predicate>
  std::optional<job_status> status_where(Predicate wanted, int seconds) {
    std::optional<job_status> out;
    bool ended = false;
    for (int tries = 0; tries < seconds * 20 && !out && !ended; ++tries)
      f.self->receive(
          [&](progress_atom, job_status& s) {
            if (wanted(s)) out = std::move(s);
            ended = ended || is_terminal(s.state);
          },
          [&](const caf::down_msg&) { ended = true; },
          caf::after(std::chrono::milliseconds(50)) >> [] {});
    return out;
  }

  // The market's releases after a failure so far.
  std::vector<std::string> failures() {
    std::vector<std::string> out;
    f.self
        ->request(links.market, std::chrono::seconds(10), caf::get_atom::value, release_atom::value)
        .receive([&](std::vector<std::string>& v) { out = std::move(v); },
                 [&](caf::error& e) { FAIL(f.sys.render(e)); });
    return out;
  }
};

const std::string waiting_said =
    "waiting for the core tier to check whether round 3 diverges, as 2 nodes said: no "
    "core-tier worker was free to re-compute it for 60 s";

bool shows_wait(const job_status& s) {
  return s.detail.find("waiting for the core tier to check") != std::string::npos;
}

}  // namespace

TEST_SUITE("job divergence wait") {
  TEST_CASE("a divergence check that waits for the core tier says so in the job's status") {
    // The job waited for good, its escrow held, its status giving no reason.
    // Asked again every 5 s, it says how many nodes said it by then: both, on a loaded machine
    // perhaps only at the second ask.
    diverging_job r(1'000'000);
    std::string last;
    auto s = r.status_where(
        [&](const job_status& s) {
          if (shows_wait(s)) last = s.detail;
          return s.detail.find(waiting_said) != std::string::npos;
        },
        12);
    REQUIRE_MESSAGE(s.has_value(), "no status said why the job waits: ", last);
    CHECK(s->state == job_state::running);
  }

  TEST_CASE("no node is held at fault for its divergence report while the check waits") {
    // Each report after a node's first cooled the node down in the market for every job,
    // though the core tier had disproved nothing.
    diverging_job r(1'000'000);
    for (int tries = 0; tries < 100 && r.checks->load() == 0; ++tries)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    REQUIRE_MESSAGE(r.checks->load() > 0, "the divergence was never checked");
    // Reports while the check waits: each node is given the work again every 100 ms or so.
    std::this_thread::sleep_for(std::chrono::seconds(1));
    const auto failed = r.failures();
    CHECK(failed.size() >= 6);
    for (const auto& f : failed) CHECK_MESSAGE(f.ends_with(": not the node's fault"), f);
  }

  TEST_CASE("the status's wait ends once the core tier has checked the divergence") {
    // The first check finds no core-tier worker, the next (5 s later) computes the work.
    diverging_job r(1);
    auto waiting = r.status_where(shows_wait, 10);
    REQUIRE_MESSAGE(waiting.has_value(), "no status said that the divergence check waits");
    auto answered = r.status_where([](const job_status& s) { return !shows_wait(s); }, 15);
    REQUIRE_MESSAGE(answered.has_value(), "the status still says the check waits");
    CHECK(r.checks->load() >= 2);
    CHECK(answered->state == job_state::running);
  }
}
