/// @file
/// The market actor (actors/core/market.hpp) as the jobs and the registry talk to it: a slot
/// is freed only by the job that holds it, a restarted market learns which slots the jobs
/// hold, and a slot a job lets go goes first to a job that waits for one. Nodes' sessions
/// (actors/protocol/node_session.hpp) measure the rates the market prices nodes by.

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "configured_system.hpp"
#include "market.hpp"
#include "messages.hpp"
#include "node_session.hpp"

using namespace gflex;

namespace {

// A market (no newcomer share) and two workers it may be offered; jobs are scoped actors.
struct market_fixture {
  test::configured_system s;
  caf::actor market = spawn_market(s.sys, 0.0);
  caf::actor w1 = s.sys.spawn(idle_worker), w2 = s.sys.spawn(idle_worker);

  ~market_fixture() {
    for (auto& a : {market, w1, w2}) s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  // A worker that is never asked anything here: a slot's handle.
  static caf::behavior idle_worker(caf::event_based_actor*) {
    return {[](int) {}};
  }

  // The registry offers `worker` as node `node_id`'s one slot.
  void offer(const caf::actor& worker, const std::string& node_id) {
    offer_node(node_id, {worker});
  }

  // The registry offers `workers` as the slots of one node, `node_id`.
  void offer_node(const std::string& node_id, const std::vector<caf::actor>& workers) {
    std::vector<worker_slot> slots;
    for (const auto& w : workers) {
      worker_slot slot;
      slot.worker = w;
      slot.node_name = "name-" + node_id;
      slot.throughput = 100.0;
      slots.push_back(slot);
    }
    s.self->send(market, offer_atom::value, node_id, slots);
  }

  // `job` asks for `wanted` slots of any tier and price.
  acquire_reply acquire(caf::scoped_actor& job, int64_t wanted = 1) {
    acquire_reply out;
    job->request(market, std::chrono::seconds(10), acquire_atom::value, std::string("job"),
                 std::string("w"), wanted, uint8_t{2}, int64_t{-1}, 0.0, std::vector<std::string>{})
        .receive([&](acquire_reply& r) { out = std::move(r); },
                 [&](caf::error& e) { FAIL(s.sys.render(e)); });
    return out;
  }
};

// A node's uplink that computes `samples_per_s` and spends `overhead` more on each assignment
// (parameters, shard and update on the wire), whatever its size; it reports its compute time.
caf::behavior timed_uplink(caf::event_based_actor* self, double samples_per_s,
                           std::chrono::milliseconds overhead) {
  using pending_answer =
      std::pair<caf::typed_response_promise<assignment_result>, assignment_result>;
  auto pending = std::make_shared<std::map<uint64_t, pending_answer>>();
  self->set_default_handler(caf::drop);
  return {
      [=](assign_atom, uint32_t, assignment& a) {
        assignment_result r;
        r.assignment_id = a.id;
        r.samples = a.local_steps * a.batch_size;
        r.compute_s = static_cast<double>(r.samples) / samples_per_s;
        auto rp = self->make_response_promise<assignment_result>();
        (*pending)[a.id] = {rp, r};
        self->delayed_send(
            self,
            overhead + std::chrono::milliseconds(static_cast<int64_t>(r.compute_s * 1000.0 + 1.0)),
            tick_atom::value, a.id);
        return rp;
      },
      [=](tick_atom, uint64_t id) {
        auto it = pending->find(id);
        if (it == pending->end()) return;
        it->second.first.deliver(std::move(it->second.second));
        pending->erase(it);
      },
  };
}

// The registry as far as rates go: passes them on to the market, and counts them.
caf::behavior rate_relay(caf::event_based_actor* self, caf::actor market,
                         std::shared_ptr<std::atomic<int>> rates) {
  self->set_default_handler(caf::drop);
  return {[=](rate_atom, const std::string& name, const std::string& workload, double rate) {
    self->send(market, rate_atom::value, name, workload, rate);
    ++*rates;
  }};
}

}  // namespace

TEST_SUITE("market actor") {
  TEST_CASE_FIXTURE(market_fixture,
                    "identical nodes measured on assignments of different sizes cost the same") {
    // A session measured samples over the time from sending an assignment to its answer,
    // transfers included: a node that served assignments of one step of 32 samples measured
    // tens of times slower than one that served 100 steps, on the same machine, and with the
    // one calibration factor both were priced by, the first was never chosen again.
    auto rates = std::make_shared<std::atomic<int>>(0);
    auto relay = s.sys.spawn(rate_relay, market, rates);
    std::vector<caf::actor> uplinks;
    std::vector<spawned_session> sessions;
    for (const char* id : {"a", "b"}) {
      uplinks.push_back(s.sys.spawn(timed_uplink, 20000.0, std::chrono::milliseconds(100)));
      sessions.push_back(spawn_node_session(s.sys, {id, std::string("name-") + id, "", 0, 1},
                                            session_limits{}, uplinks.back(), relay, relay));
    }
    // Node a answers a short assignment, node b a long one, of the same workload.
    for (size_t i = 0; i < 2; ++i) {
      assignment a;
      a.id = 7;
      a.workload = "w";
      a.local_steps = i == 0 ? 1 : 100;
      a.batch_size = 32;
      s.self->request(sessions[i].workers.at(0), std::chrono::seconds(5), assign_atom::value, a)
          .receive([](assignment_result&) {}, [&](caf::error& e) { FAIL(s.sys.render(e)); });
    }
    for (int tries = 0; tries < 200 && *rates < 2; ++tries)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    REQUIRE(*rates == 2);
    // Their slots, at one price and one claim: equal costs, so each gets its turns.
    for (auto [worker, id] : {std::pair{w1, "a"}, std::pair{w2, "b"}}) {
      worker_slot slot;
      slot.worker = worker;
      slot.node_name = std::string("name-") + id;
      slot.price = 1000000;
      slot.throughput = 100.0;
      s.self->send(market, offer_atom::value, std::string(id), std::vector<worker_slot>{slot});
    }
    caf::scoped_actor job{s.sys};
    std::map<std::string, int> turns;
    for (int round = 0; round < 4; ++round) {
      auto got = acquire(job);
      REQUIRE(got.slots.size() == 1);
      turns[got.slots[0].node_name] += 1;
      job->send(market, release_atom::value, got.slots[0].worker);
    }
    CHECK(turns["name-a"] == 2);
    CHECK(turns["name-b"] == 2);
    for (const auto& x : sessions) {
      s.self->send_exit(x.session, caf::exit_reason::user_shutdown);
      for (const auto& w : x.workers) s.self->send_exit(w, caf::exit_reason::user_shutdown);
    }
    for (const auto& u : uplinks) s.self->send_exit(u, caf::exit_reason::user_shutdown);
    s.self->send_exit(relay, caf::exit_reason::user_shutdown);
  }

  TEST_CASE_FIXTURE(market_fixture,
                    "a restarted market hands out no worker before the jobs' claims come in") {
    // The registry offers every slot again as free at once; the jobs hear of the new market
    // a hop later. A job whose acquire came first took a worker another job was running an
    // assignment on.
    auto restarted = spawn_market(s.sys, 0.0, std::chrono::milliseconds(800));
    worker_slot slot;
    slot.worker = w1;
    slot.node_name = "name-n1";
    slot.throughput = 100.0;
    s.self->send(restarted, offer_atom::value, std::string("n1"), std::vector<worker_slot>{slot});
    caf::scoped_actor early{s.sys}, holder{s.sys};
    auto ask = [&](caf::scoped_actor& job, const caf::actor& m) {
      acquire_reply out;
      job->request(m, std::chrono::seconds(10), acquire_atom::value, std::string("job"),
                   std::string("w"), int64_t{1}, uint8_t{2}, int64_t{-1}, 0.0,
                   std::vector<std::string>{})
          .receive([&](acquire_reply& r) { out = std::move(r); },
                   [&](caf::error& e) { FAIL(s.sys.render(e)); });
      return out;
    };
    CHECK(ask(early, restarted).slots.empty());                                 // none yet
    holder->send(restarted, acquire_atom::value, std::vector<caf::actor>{w1});  // its claim
    std::this_thread::sleep_for(std::chrono::milliseconds(900));
    CHECK(ask(early, restarted).slots.empty());  // the holder's, still
    // A market that started fresh (no jobs to claim anything) hands slots out at once.
    offer(w2, "n2");
    CHECK(ask(early, market).slots.size() == 1);
    s.self->send_exit(restarted, caf::exit_reason::user_shutdown);
  }

  TEST_CASE_FIXTURE(market_fixture, "a slot is freed only by the job that holds it") {
    // After a restarted market re-offered the slots, a job's release of a worker another job
    // had since acquired freed it for a third: two jobs' work on one worker, one of them
    // timing out and the honest node put in cooldown.
    offer(w1, "n1");
    caf::scoped_actor holder{s.sys}, other{s.sys}, third{s.sys};
    REQUIRE(acquire(holder).slots.size() == 1);
    other->send(market, release_atom::value, w1);
    auto taken = acquire(third);
    CHECK(taken.slots.empty());
    CHECK(taken.busy == 1);
    other->send(market, release_atom::value, w1, true);  // nor puts it in cooldown
    holder->send(market, release_atom::value, w1);
    CHECK(acquire(third).slots.size() == 1);  // its holder's release frees it
  }

  TEST_CASE_FIXTURE(market_fixture,
                    "slots an acquire gave a job that stopped waiting for it go back to the pool") {
    // A busy market answered a job's acquire past its 10 s: the answer was dropped, and the
    // slots it made busy stayed held by the job, unused, for the job's life.
    offer(w1, "n1");
    offer(w2, "n2");
    caf::scoped_actor late{s.sys}, other{s.sys};
    // Its answer is never read: it stands for one that came after the request timed out.
    late->send(market, acquire_atom::value, std::string("job"), std::string("w"), int64_t{2},
               uint8_t{2}, int64_t{-1}, 0.0, std::vector<std::string>{});
    // The job keeps the worker of an assignment it has out, and gives back the rest.
    late->send(market, release_atom::value, std::vector<caf::actor>{w2});
    auto taken = acquire(other, 2);
    REQUIRE(taken.slots.size() == 1);
    CHECK(taken.slots.front().worker == w1);
    CHECK(taken.busy == 1);
  }

  TEST_CASE_FIXTURE(market_fixture,
                    "a restarted market learns which workers the jobs hold before or after their "
                    "offers") {
    // The registry offered every slot to a restarted market as free: the workers that ran a
    // job's assignments were handed to other jobs, two assignments at once on one worker.
    caf::scoped_actor holder{s.sys}, other{s.sys};
    offer(w1, "n1");
    // w1 was offered before the job said it holds it; w2 is offered after.
    holder->send(market, acquire_atom::value, std::vector<caf::actor>{w1, w2});
    offer(w2, "n2");
    auto none = acquire(other, 2);
    CHECK(none.slots.empty());
    CHECK(none.busy == 2);
    holder->send(market, release_atom::value, w1);
    holder->send(market, release_atom::value, w2);
    CHECK(acquire(other, 2).slots.size() == 2);
  }

  TEST_CASE_FIXTURE(market_fixture,
                    "a slot a job lets go goes to a job that waits for one, not back to it") {
    // A job releases a worker and asks again in the same breath, so it got the worker back
    // every time: a second job, asking every 250 ms, waited until the first one finished.
    offer(w1, "n1");
    caf::scoped_actor first{s.sys}, second{s.sys};
    REQUIRE(acquire(first).slots.size() == 1);
    CHECK(acquire(second).slots.empty());  // it waits
    first->send(market, release_atom::value, w1);
    CHECK(acquire(first).slots.empty());       // not straight back to the job that let it go
    CHECK(acquire(second).slots.size() == 1);  // the waiting job's turn
    // Nobody waits: a job that lets a slot go may take it again.
    second->send(market, release_atom::value, w1);
    std::this_thread::sleep_for(std::chrono::milliseconds(2100));  // `first` stopped asking
    CHECK(acquire(second).slots.size() == 1);
  }

  TEST_CASE_FIXTURE(market_fixture,
                    "slots let go are held for a waiting job only as many as it lacks") {
    // Every slot a job let go was held for a job that waited for one: a job of 50 found 49
    // of its own slots held for another at each round's acquire, and they idled.
    caf::actor w3 = s.sys.spawn(idle_worker);
    offer(w1, "n1");
    offer(w2, "n2");
    offer(w3, "n3");
    caf::scoped_actor big{s.sys}, small{s.sys};
    REQUIRE(acquire(big, 3).slots.size() == 3);
    CHECK(acquire(small, 1).slots.empty());  // it waits for one
    for (const auto& w : {w1, w2, w3}) big->send(market, release_atom::value, w);
    CHECK(acquire(big, 3).slots.size() == 2);    // one is held for the waiting job
    CHECK(acquire(small, 1).slots.size() == 1);  // which takes it
    s.self->send_exit(w3, caf::exit_reason::user_shutdown);
  }

  TEST_CASE_FIXTURE(market_fixture,
                    "a node whose assignments fail cools down whole, its slots together") {
    // Each slot cooled down on its own: a node of 1,024 slots that failed every assignment at
    // once was handed work 1,024 times before any of its slots was left out.
    caf::actor w3 = s.sys.spawn(idle_worker);
    offer_node("n1", {w1, w2, w3});
    caf::scoped_actor job{s.sys};
    auto first = acquire(job);
    REQUIRE(first.slots.size() == 1);
    job->send(market, release_atom::value, first.slots[0].worker, true);
    CHECK(acquire(job).slots.empty());  // its other two slots are left out with it
    std::this_thread::sleep_for(std::chrono::milliseconds(600));  // the first cooldown
    auto again = acquire(job);
    REQUIRE(again.slots.size() == 1);
    job->send(market, release_atom::value, again.slots[0].worker, false);  // it worked
    CHECK(acquire(job).slots.size() == 1);
    s.self->send_exit(w3, caf::exit_reason::user_shutdown);
  }

  TEST_CASE_FIXTURE(market_fixture, "work cancelled on a failing node does not end its run") {
    // A losing copy or a closed round let go with no word of the node cleared its run of
    // failures: a node failing every assignment it finished cooled down 0.5 s each time.
    offer_node("n1", {w1, w2});
    caf::scoped_actor job{s.sys};
    // Three failures, each after a cancelled assignment: cooled down 0.5, 1 and 2 s.
    for (auto wait_ms : {600, 1100}) {
      auto failing = acquire(job);
      REQUIRE(failing.slots.size() == 1);
      job->send(market, release_atom::value, failing.slots[0].worker, true);
      std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms));
      auto cancelled = acquire(job);
      REQUIRE(cancelled.slots.size() == 1);
      job->send(market, release_atom::value, cancelled.slots[0].worker);  // a losing copy
    }
    auto third = acquire(job);
    REQUIRE(third.slots.size() == 1);
    job->send(market, release_atom::value, third.slots[0].worker, true);
    std::this_thread::sleep_for(std::chrono::milliseconds(1000));
    CHECK(acquire(job).slots.empty());  // its third failure in a row: 2 s (not 0.5 s)
    std::this_thread::sleep_for(std::chrono::milliseconds(1200));
    CHECK(acquire(job).slots.size() == 1);
  }

  TEST_CASE_FIXTURE(market_fixture,
                    "a failure the job caused leaves the node free for every other job at once") {
    // Out of memory, past its deadline, diverged: counted against the node, a user's job with
    // a 1 s deadline on a heavy model kept each node it touched out of every job's reach,
    // 64 s for a node of 8 slots, round after round.
    caf::actor w3 = s.sys.spawn(idle_worker);
    offer_node("n1", {w1, w2, w3});
    caf::scoped_actor heavy{s.sys}, other{s.sys};
    auto taken = acquire(heavy, 3);
    REQUIRE(taken.slots.size() == 3);
    for (const auto& slot : taken.slots)
      heavy->send(market, release_atom::value, slot.worker, true, false);
    auto again = acquire(other, 3);
    CHECK(again.slots.size() == 3);  // none cooled down
    // The node's own failure (a malformed answer, a device error) still cools it down.
    REQUIRE_FALSE(again.slots.empty());
    other->send(market, release_atom::value, again.slots[0].worker, true, true);
    CHECK(acquire(heavy, 1).slots.empty());
    s.self->send_exit(w3, caf::exit_reason::user_shutdown);
  }

  TEST_CASE_FIXTURE(market_fixture,
                    "a node priced out by one slow answer gets work again once that rate is old") {
    // Only work measures a node: one slow answer (its owner used the machine) priced a node
    // out of the band of equal costs, the nodes in the band covered every job's demand, and
    // it never got the work that would have measured it again.
    // Its slow rate counts for 3 s: two rounds (four message hops, each up to a quarter of a
    // second on a loaded machine) fit in that with room to spare.
    const auto counts_for = std::chrono::seconds(3);
    auto aging = spawn_market(s.sys, 0.0, std::chrono::milliseconds(0), counts_for);
    std::vector<caf::actor> workers;
    for (int i = 0; i < 3; ++i) {
      const auto id = "c" + std::to_string(i);
      workers.push_back(s.sys.spawn(idle_worker));
      worker_slot slot;
      slot.worker = workers.back();
      slot.node_name = "name-" + id;
      slot.price = 1000000;
      slot.throughput = 1000.0;
      s.self->send(aging, offer_atom::value, id, std::vector<worker_slot>{slot});
      s.self->send(aging, rate_atom::value, "name-" + id, std::string("w"), 1000.0);
    }
    // c2 answers once at a hundredth of its speed: averaged, 703, 42% above the others' cost.
    // The market takes that rate after slow_at: it counts no more only from slow_at + 3 s.
    const auto slow_at = std::chrono::steady_clock::now();
    s.self->send(aging, rate_atom::value, std::string("name-c2"), std::string("w"), 10.0);
    const auto since_slow = [&] { return std::chrono::steady_clock::now() - slow_at; };
    caf::scoped_actor job{s.sys};
    // A job takes two slots a round, and the nodes that answer are measured at full speed.
    auto round = [&] {
      acquire_reply out;
      job->request(aging, std::chrono::seconds(10), acquire_atom::value, std::string("job"),
                   std::string("w"), int64_t{2}, uint8_t{2}, int64_t{-1}, 0.0,
                   std::vector<std::string>{})
          .receive([&](acquire_reply& r) { out = std::move(r); },
                   [&](caf::error& e) { FAIL(s.sys.render(e)); });
      bool c2 = false;
      for (const auto& slot : out.slots) {
        c2 = c2 || slot.node_name == "name-c2";
        job->send(aging, rate_atom::value, slot.node_name, std::string("w"), 1000.0);
        job->send(aging, release_atom::value, slot.worker);
      }
      return c2;
    };
    const bool first = round();
    const bool second = round();
    // Both acquires were answered before now, so within 3 s of the slow rate if now is.
    if (since_slow() < counts_for) {
      CHECK_FALSE(first);  // priced out, while its slow rate is new
      CHECK_FALSE(second);
    } else {
      MESSAGE("two rounds took longer than c2's slow rate counts: its pricing out is not checked");
    }
    bool served = false;
    while (!served && since_slow() < counts_for + std::chrono::seconds(7)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      served = round();
    }
    CHECK(served);
    // Not while the slow rate still counted: the acquire that chose c2 came after it was old.
    const double served_after_s = std::chrono::duration<double>(since_slow()).count();
    if (served)
      CHECK_MESSAGE(served_after_s >= 3.0,
                    "c2 served " << served_after_s << " s after its slow rate");
    // Measured afresh at full speed, not averaged with the slow answer: in the band again.
    int c2_rounds = 0;
    for (int i = 0; i < 6; ++i) c2_rounds += round() ? 1 : 0;
    CHECK(c2_rounds >= 3);
    s.self->send_exit(aging, caf::exit_reason::user_shutdown);
    for (const auto& w : workers) s.self->send_exit(w, caf::exit_reason::user_shutdown);
  }

  TEST_CASE_FIXTURE(market_fixture,
                    "a node not measured on a workload gets one slot on its claim at a time") {
    // A GPU node at 3 credits an hour claiming 30 times the work of measured CPU nodes at 1
    // was priced as the fastest of them, got work only when all of them were busy, and was
    // never measured. Now one slot per workload goes on such a claim while it is out.
    std::vector<caf::actor> cpus, gpus;
    for (int i = 0; i < 3; ++i) cpus.push_back(s.sys.spawn(idle_worker));
    for (int i = 0; i < 2; ++i) gpus.push_back(s.sys.spawn(idle_worker));
    auto offer_priced = [&](const std::string& node_id, const std::vector<caf::actor>& workers,
                            double credits, double throughput) {
      std::vector<worker_slot> slots;
      for (const auto& w : workers) {
        worker_slot slot;
        slot.worker = w;
        slot.node_name = "name-" + node_id;
        slot.price = static_cast<int64_t>(credits * 1e6);
        slot.throughput = throughput;
        slots.push_back(slot);
      }
      s.self->send(market, offer_atom::value, node_id, slots);
    };
    for (int i = 0; i < 3; ++i) {
      const auto id = "c" + std::to_string(i);
      offer_priced(id, {cpus[static_cast<size_t>(i)]}, 1.0, 1000.0);
      s.self->send(market, rate_atom::value, "name-" + id, std::string("w"), 1000.0);
    }
    offer_priced("g", gpus, 3.0, 30000.0);
    auto gpu_slots = [](const acquire_reply& r) {
      size_t n = 0;
      for (const auto& slot : r.slots) n += slot.node_name == "name-g" ? 1 : 0;
      return n;
    };
    caf::scoped_actor first{s.sys}, second{s.sys};
    auto a = acquire(first, 2);
    REQUIRE(a.slots.size() == 2);
    CHECK(a.slots[0].node_name == "name-g");  // on its claim
    CHECK(gpu_slots(a) == 1);
    auto b = acquire(second, 2);  // while that slot is out, no other goes on the claim
    CHECK(b.slots.size() == 2);
    CHECK(gpu_slots(b) == 0);
    for (const auto& slot : b.slots) second->send(market, release_atom::value, slot.worker);
    // Its answer measured it at what it claimed: its slots go first by price.
    s.self->send(market, rate_atom::value, std::string("name-g"), std::string("w"), 30000.0);
    first->send(market, release_atom::value, a.slots[0].worker);
    auto c = acquire(first, 2);
    CHECK(gpu_slots(c) == 2);
    for (const auto& w : cpus) s.self->send_exit(w, caf::exit_reason::user_shutdown);
    for (const auto& w : gpus) s.self->send_exit(w, caf::exit_reason::user_shutdown);
  }

  TEST_CASE_FIXTURE(market_fixture,
                    "a node that fails its slot on a claim is not explored again on that work") {
    // A node claiming the most that answered its exploratory slot "out of memory" (a failure
    // the job takes on itself) stayed unmeasured, the cheapest on its claim, and took every
    // job's exploratory slot for the workload: no other new node was ever measured on it.
    std::vector<caf::actor> workers;
    auto offer_priced = [&](const std::string& node_id, double credits, double throughput) {
      workers.push_back(s.sys.spawn(idle_worker));
      worker_slot slot;
      slot.worker = workers.back();
      slot.node_name = "name-" + node_id;
      slot.price = static_cast<int64_t>(credits * 1e6);
      slot.throughput = throughput;
      s.self->send(market, offer_atom::value, node_id, std::vector<worker_slot>{slot});
    };
    for (int i = 0; i < 3; ++i) {
      const auto id = "c" + std::to_string(i);
      offer_priced(id, 1.0, 1000.0);
      s.self->send(market, rate_atom::value, "name-" + id, std::string("w"), 1000.0);
    }
    offer_priced("liar", 3.0, 90000.0);
    offer_priced("gpu", 3.0, 30000.0);
    caf::scoped_actor first{s.sys}, second{s.sys};
    auto a = acquire(first, 1);
    REQUIRE(a.slots.size() == 1);
    CHECK(a.slots[0].node_name == "name-liar");  // its claim is the cheapest
    first->send(market, release_atom::value, a.slots[0].worker, true, false);  // "out of memory"
    auto b = acquire(second, 1);
    REQUIRE(b.slots.size() == 1);
    CHECK(b.slots[0].node_name == "name-gpu");
    // A cancelled slot on a claim says nothing: the node is explored again.
    second->send(market, release_atom::value, b.slots[0].worker);
    auto c = acquire(first, 1);
    REQUIRE(c.slots.size() == 1);
    CHECK(c.slots[0].node_name == "name-gpu");
    for (const auto& w : workers) s.self->send_exit(w, caf::exit_reason::user_shutdown);
  }
}
