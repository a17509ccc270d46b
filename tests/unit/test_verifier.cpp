/// @file
/// The verifier's answers (actors/core/verifier.hpp) that a job reads when community nodes say
/// a round diverged: with nothing claimed, whether the core tier computes the work; and a
/// re-computation that diverges on the core tier is said at once, not tried again.

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "configured_system.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "messages.hpp"
#include "verifier.hpp"

using namespace gflex;

namespace {

// A core-tier worker that answers every assignment with `diverges` an errc::non_finite, else a
// result of `values` zeros (or `update`, where given); counts what it is asked.
caf::actor spawn_core_worker(caf::actor_system& sys, bool diverges, size_t values,
                             std::shared_ptr<std::atomic<int>> asked,
                             std::vector<float> update = {}) {
  return sys.spawn([=](caf::event_based_actor*) -> caf::behavior {
    return {
        [=](assign_atom, assignment& a) -> caf::result<assignment_result> {
          ++*asked;
          if (diverges)
            return to_caf(error(errc::non_finite, "training diverged: the loss is not finite"));
          assignment_result r;
          r.assignment_id = a.id;
          r.update = encode_update(update.empty() ? std::vector<float>(values, 0.0f) : update,
                                   compression::fp32);
          r.compute_s = 0.25;
          return r;
        },
        [](abort_atom, uint64_t) {},
    };
  });
}

// Releases after a failure a market took: those held against the worker's node, and not.
struct fault_counts {
  std::atomic<int> at_fault{0};
  std::atomic<int> not_at_fault{0};
};

// A market that offers `worker` as a core-tier slot at every acquire; with `faults`, it
// counts there the releases after a failure.
caf::actor spawn_one_slot_market(caf::actor_system& sys, caf::actor worker,
                                 std::shared_ptr<fault_counts> faults = nullptr) {
  return sys.spawn([=](caf::event_based_actor* self) -> caf::behavior {
    self->set_default_handler(caf::drop);
    return {
        [=](acquire_atom, const std::string&, const std::string&, int64_t wanted, uint8_t, int64_t,
            double, const std::vector<std::string>&) {
          acquire_reply r;
          if (wanted > 0) {
            worker_slot s;
            s.worker = worker;
            s.node_name = "core-node";
            s.tier = static_cast<uint8_t>(node_tier::core);
            r.slots.push_back(s);
          }
          return r;
        },
        // Handled, not dropped: a dropped message's error goes back to its sender, and ended
        // the verifier after its first re-computation.
        [](release_atom, const caf::actor&) {},
        [=](release_atom, const caf::actor&, bool failed) {  // the market's: the node's fault
          if (failed && faults) ++faults->at_fault;
        },
        [=](release_atom, const caf::actor&, bool failed, bool node_at_fault) {
          if (failed && faults) ++(node_at_fault ? faults->at_fault : faults->not_at_fault);
        },
    };
  });
}

// A core-tier worker whose link is lost mid-computation: it keeps every assignment it is
// given unanswered (until it goes down).
caf::actor spawn_silent_worker(caf::actor_system& sys, std::shared_ptr<std::atomic<int>> asked) {
  return sys.spawn([asked](caf::event_based_actor* self) -> caf::behavior {
    auto held = std::make_shared<std::vector<caf::response_promise>>();
    return {
        [=](assign_atom, assignment&) -> caf::response_promise {
          ++*asked;
          held->push_back(self->make_response_promise());
          return held->back();
        },
        [](abort_atom, uint64_t) {},
    };
  });
}

// A market that offers `workers[i]` as a core-tier slot at its i-th acquire (the last one
// after), and nothing after a withdrawal it is not told of.
caf::actor spawn_turn_market(caf::actor_system& sys, std::vector<caf::actor> workers) {
  auto next = std::make_shared<size_t>(0);
  return sys.spawn([workers, next](caf::event_based_actor* self) -> caf::behavior {
    self->set_default_handler(caf::drop);
    return {
        [=](acquire_atom, const std::string&, const std::string&, int64_t wanted, uint8_t, int64_t,
            double, const std::vector<std::string>&) {
          acquire_reply r;
          if (wanted > 0) {
            worker_slot s;
            s.worker = workers[std::min(*next, workers.size() - 1)];
            s.node_name = "core-node-" + std::to_string(std::min(*next, workers.size() - 1));
            s.tier = static_cast<uint8_t>(node_tier::core);
            r.slots.push_back(s);
            ++*next;
          }
          return r;
        },
        // Releases, a failed worker's too (dropped, each came back to the verifier as an
        // error message, which ended it).
        [](release_atom, const caf::actor&) {},
        [](release_atom, const caf::actor&, bool) {},
        [](release_atom, const caf::actor&, bool, bool) {},
    };
  });
}

// A core-tier worker that answers every assignment with a result of `values` zeros, `delay`
// after it came: slower than the verifier first waits.
// The waits each assignment was given (assignment::answer_within_s), in order.
struct given_waits {
  std::mutex m;
  std::vector<double> seconds;
  std::vector<double> all() {
    std::lock_guard<std::mutex> lock(m);
    return seconds;
  }
};

caf::actor spawn_slow_worker(caf::actor_system& sys, size_t values, std::chrono::milliseconds delay,
                             std::shared_ptr<given_waits> waits = nullptr) {
  return sys.spawn([=](caf::event_based_actor* self) -> caf::behavior {
    auto held =
        std::make_shared<std::map<uint64_t, caf::typed_response_promise<assignment_result>>>();
    return {
        [=](assign_atom, assignment& a) {
          if (waits) {
            std::lock_guard<std::mutex> lock(waits->m);
            waits->seconds.push_back(a.answer_within_s);
          }
          auto rp = self->make_response_promise<assignment_result>();
          (*held)[a.id] = rp;
          self->delayed_send(self, delay, caf::put_atom::value, a.id);
          return rp;
        },
        [=](caf::put_atom, uint64_t id) {
          assignment_result r;
          r.assignment_id = id;
          r.update = encode_update(std::vector<float>(values, 0.0f), compression::fp32);
          r.compute_s = 0.25;
          held->at(id).deliver(std::move(r));
          held->erase(id);
        },
        [](abort_atom, uint64_t) {},
    };
  });
}

struct verdict {
  bool answered = false;
  error err;
  double compute_s = -1.0;
};

// A verifier whose market offers one core-tier worker, which diverges or computes.
struct verifier_fixture {
  test::configured_system s;
  std::shared_ptr<std::atomic<int>> asked = std::make_shared<std::atomic<int>>(0);
  caf::actor worker, market, verifier;

  explicit verifier_fixture(bool diverges) {
    worker = spawn_core_worker(s.sys, diverges, 4, asked);
    market = spawn_one_slot_market(s.sys, worker);
    verifier = spawn_verifier(s.sys, market);
  }
  ~verifier_fixture() {
    for (const auto& a : {verifier, market, worker})
      s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }
};

// A request to check job-1's work on shard "aa..." against `claimed`.
verify_request request_of(std::vector<float> claimed = {}, double deadline_s = 0.0) {
  verify_request req;
  req.work.job_id = "job-1";
  req.work.shard = std::string(64, 'a');
  req.claimed = std::move(claimed);
  req.deadline_s = deadline_s;
  return req;
}

verdict ask(test::configured_system& s, const caf::actor& verifier, std::vector<float> claimed) {
  const auto req = request_of(std::move(claimed));
  verdict out;
  s.self->request(verifier, std::chrono::seconds(10), verify_atom::value, req)
      .receive(
          [&](double, double, double compute_s) {
            out.answered = true;
            out.compute_s = compute_s;
          },
          [&](caf::error& e) { out.err = from_caf(e, &s.sys); });
  return out;
}

}  // namespace

TEST_SUITE("verifier") {
  TEST_CASE("a claimed update is measured against the core tier's re-computation") {
    // What the verifier exists for: an honest claim is at distance 0, a flipped one at 2, and
    // a scaled one at its scale's distance and norm ratio.
    test::configured_system s;
    auto asked = std::make_shared<std::atomic<int>>(0);
    const std::vector<float> recomputed = {1.0f, -2.0f, 0.5f, 4.0f};
    auto worker = spawn_core_worker(s.sys, false, 4, asked, recomputed);
    auto market = spawn_one_slot_market(s.sys, worker);
    auto verifier = spawn_verifier(s.sys, market);
    auto measure = [&](std::vector<float> claimed) {
      std::pair<double, double> out{-1.0, -1.0};
      s.self
          ->request(verifier, std::chrono::seconds(10), verify_atom::value,
                    request_of(std::move(claimed)))
          .receive(
              [&](double distance, double ratio, double) {
                out = {distance, ratio};
              },
              [&](caf::error& e) { FAIL(s.sys.render(e)); });
      return out;
    };
    auto same = measure(recomputed);
    CHECK(same.first == doctest::Approx(0.0));
    CHECK(same.second == doctest::Approx(1.0));
    std::vector<float> flipped = recomputed, doubled = recomputed;
    for (float& v : flipped) v = -v;
    for (float& v : doubled) v *= 2.0f;
    auto f = measure(flipped);
    CHECK(f.first == doctest::Approx(2.0));
    CHECK(f.second == doctest::Approx(1.0));
    auto d = measure(doubled);
    CHECK(d.first == doctest::Approx(1.0));
    CHECK(d.second == doctest::Approx(2.0));
    CHECK(*asked == 3);
    for (const auto& a : {verifier, market, worker})
      s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("with nothing claimed, the verifier says whether the core tier computes the work") {
    verifier_fixture f(false);
    auto v = ask(f.s, f.verifier, {});
    CHECK_MESSAGE(v.answered, v.err.message());
    CHECK(v.compute_s == 0.25);
    CHECK(*f.asked == 1);
  }

  TEST_CASE("a re-computation that diverges on the core tier is said at once, not tried again") {
    verifier_fixture f(true);
    auto v = ask(f.s, f.verifier, {});
    CHECK_FALSE(v.answered);
    CHECK(v.err.code() == errc::non_finite);
    CHECK(v.err.message().find("diverged too") != std::string::npos);
    CHECK(*f.asked == 1);
  }
  TEST_CASE("a re-computation whose worker goes down is tried on another") {
    // The worker's request was never answered (its promise went with it), and the market
    // tells nobody what a dead worker held: the check waited out a day-long timeout, and the
    // job's round with it.
    test::configured_system s;
    auto asked = std::make_shared<std::atomic<int>>(0);
    auto silent = spawn_silent_worker(s.sys, asked);
    auto computing = spawn_core_worker(s.sys, false, 4, asked);
    auto market = spawn_turn_market(s.sys, {silent, computing});
    auto verifier = spawn_verifier(s.sys, market);
    auto answer =
        s.self->request(verifier, std::chrono::seconds(10), verify_atom::value, request_of());
    for (int tries = 0; tries < 100 && *asked == 0; ++tries)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    REQUIRE(*asked == 1);
    s.self->send_exit(silent, caf::exit_reason::kill);  // its node's link is lost
    verdict v;
    answer.receive(
        [&](double, double, double compute_s) {
          v.answered = true;
          v.compute_s = compute_s;
        },
        [&](caf::error& e) { v.err = from_caf(e, &s.sys); });
    CHECK_MESSAGE(v.answered, v.err.message());
    CHECK(*asked == 2);
    for (const auto& a : {verifier, market, computing})
      s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a re-computation whose worker hangs is given up on and tried on another") {
    // A worker that hung with its node still beating was waited for the longest deadline a
    // spec may give, a day, and its job's round with it. It is now bounded by the job's own
    // deadline_s (here 1 s, times 2, at least 1 s).
    test::configured_system s;
    auto asked = std::make_shared<std::atomic<int>>(0);
    auto hung = spawn_silent_worker(s.sys, asked);
    auto computing = spawn_core_worker(s.sys, false, 4, asked);
    auto market = spawn_turn_market(s.sys, {hung, computing});
    verifier_limits limits;
    limits.recompute_factor = 2.0;
    limits.min_recompute_wait = std::chrono::seconds(1);
    auto verifier = spawn_verifier(s.sys, market, limits);
    const auto req = request_of({}, 1.0);
    verdict v;
    const auto asked_at = std::chrono::steady_clock::now();
    s.self->request(verifier, std::chrono::seconds(20), verify_atom::value, req)
        .receive(
            [&](double, double, double compute_s) {
              v.answered = true;
              v.compute_s = compute_s;
            },
            [&](caf::error& e) { v.err = from_caf(e, &s.sys); });
    const double took =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - asked_at).count();
    CHECK_MESSAGE(v.answered, v.err.message());
    CHECK(*asked == 2);
    CHECK_MESSAGE(took < 10.0, "answered after " << took << " s");
    for (const auto& a : {verifier, market, hung, computing})
      s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a re-computation past its wait is tried again longer, not held against its worker") {
    // A core tier slower than the node (a CPU re-computing a GPU's work on a large model)
    // timed out on every try alike, each timeout cooling the core-tier worker down as at
    // fault, and the check failed after three. Here the worker takes 3 s, the first wait is
    // 2 s (deadline_s 1, times 2), the second 4 s: a second apart either way, as the hops of a
    // loaded machine (up to a quarter of a second each) need.
    test::configured_system s;
    auto slow = spawn_slow_worker(s.sys, 4, std::chrono::milliseconds(3000));
    auto faults = std::make_shared<fault_counts>();
    auto market = spawn_one_slot_market(s.sys, slow, faults);
    verifier_limits limits;
    limits.recompute_factor = 2.0;
    limits.min_recompute_wait = std::chrono::seconds(1);
    auto verifier = spawn_verifier(s.sys, market, limits);
    verdict v;
    s.self->request(verifier, std::chrono::seconds(20), verify_atom::value, request_of({}, 1.0))
        .receive(
            [&](double, double, double compute_s) {
              v.answered = true;
              v.compute_s = compute_s;
            },
            [&](caf::error& e) { v.err = from_caf(e, &s.sys); });
    CHECK_MESSAGE(v.answered, v.err.message());
    CHECK(faults->at_fault.load() == 0);
    CHECK(faults->not_at_fault.load() == 1);
    for (const auto& a : {verifier, market, slow})
      s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("tries past a wait shorter than the longest do not count: the wait doubles on") {
    // Each timed-out try counted against the three a check gets: a core tier more than four
    // times slower than its first wait (a CPU re-computing a GPU node's work) never finished
    // a check, and a job that waits for its checks (--unverified wait) stalled for good. And
    // a check asked again began its waits afresh. The worker takes 1.5 s; the first wait is
    // 0.2 s (deadline_s 0.2, times 1), then 0.4, 0.8 and 1.6 s.
    test::configured_system s;
    auto waits = std::make_shared<given_waits>();
    auto slow = spawn_slow_worker(s.sys, 4, std::chrono::milliseconds(1500), waits);
    auto market = spawn_one_slot_market(s.sys, slow);
    verifier_limits limits;
    limits.recompute_factor = 1.0;
    limits.min_recompute_wait = std::chrono::milliseconds(200);
    auto verifier = spawn_verifier(s.sys, market, limits);
    auto check = [&] {
      verdict v;
      s.self->request(verifier, std::chrono::seconds(30), verify_atom::value, request_of({}, 0.2))
          .receive([&](double, double, double) { v.answered = true; },
                   [&](caf::error& e) { v.err = from_caf(e, &s.sys); });
      return v;
    };
    auto first = check();
    CHECK_MESSAGE(first.answered, first.err.message());
    const auto tried = waits->all().size();
    CHECK(tried >= 4);
    // The same work asked again starts at the wait that was enough.
    auto again = check();
    CHECK_MESSAGE(again.answered, again.err.message());
    const auto all = waits->all();
    REQUIRE(all.size() > tried);
    CHECK(all[tried] >= 1.5);
    for (const auto& a : {verifier, market, slow})
      s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a check asked again while it runs is answered by the one running") {
    // A job's request that timed out before a slow core tier answered, asked anew (under
    // --unverified wait), started a second re-computation beside the first: its answer went
    // nowhere, and the job waited for the copy. The worker takes 1.5 s; the first ask gives
    // up after 0.5 s.
    test::configured_system s;
    auto waits = std::make_shared<given_waits>();
    auto slow = spawn_slow_worker(s.sys, 4, std::chrono::milliseconds(1500), waits);
    auto market = spawn_turn_market(s.sys, {slow});
    verifier_limits limits;
    limits.min_recompute_wait = std::chrono::seconds(20);
    auto verifier = spawn_verifier(s.sys, market, limits);
    const auto req = request_of({0.0f, 0.0f, 0.0f, 0.0f});
    bool first_timed_out = false;
    s.self->request(verifier, std::chrono::milliseconds(500), verify_atom::value, req)
        .receive([&](double, double, double) {},
                 [&](caf::error& e) { first_timed_out = e == caf::sec::request_timeout; });
    const auto asked_again = std::chrono::steady_clock::now();
    verdict again;
    double distance = -1.0;
    s.self->request(verifier, std::chrono::seconds(10), verify_atom::value, req)
        .receive(
            [&](double d, double, double) {
              again.answered = true;
              distance = d;
            },
            [&](caf::error& e) { again.err = from_caf(e, &s.sys); });
    const double took =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - asked_again).count();
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // a copy would be out now
    const auto given = waits->all().size();
    for (const auto& a : {verifier, market, slow})
      s.self->send_exit(a, caf::exit_reason::user_shutdown);
    CHECK(first_timed_out);
    REQUIRE_MESSAGE(again.answered, again.err.message());
    CHECK(distance == 0.0);
    CHECK_MESSAGE(took < 1.4, "the second ask took " << took << " s");
    CHECK(given == 1);
  }

  TEST_CASE("claimed updates the verifier holds are bounded in bytes, not only in count") {
    // 4,096 waiting re-computations of a 25M-parameter model's fp32 updates are 400 GB: with
    // 200 new nodes on a job, the core ran out of memory.
    test::configured_system s;
    // No core-tier worker: everything waits.
    auto market = s.sys.spawn([](caf::event_based_actor* self) -> caf::behavior {
      self->set_default_handler(caf::drop);
      return {
          [](acquire_atom, const std::string&, const std::string&, int64_t, uint8_t, int64_t,
             double, const std::vector<std::string>&) { return acquire_reply{}; },
      };
    });
    verifier_limits limits;
    limits.max_claimed_bytes = 100 * sizeof(float);
    auto verifier = spawn_verifier(s.sys, market, limits);
    const auto request = request_of(std::vector<float>(80, 0.5f));
    s.self->send(verifier, verify_atom::value, request);  // held: 320 bytes
    auto other = request;  // another shard's check (the same one would wait for the first)
    other.work.shard = std::string(64, 'b');
    verdict v;
    s.self->request(verifier, std::chrono::seconds(10), verify_atom::value, other)
        .receive([&](double, double, double) { v.answered = true; },
                 [&](caf::error& e) { v.err = from_caf(e, &s.sys); });
    CHECK_FALSE(v.answered);
    CHECK(v.err.code() == errc::limit_exceeded);
    CHECK_MESSAGE(v.err.message().find("claimed updates, the most it may") != std::string::npos,
                  v.err.message());
    for (const auto& a : {verifier, market}) s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }
}
