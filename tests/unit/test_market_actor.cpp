/// @file
/// The market actor (actors/core/market.hpp) as the jobs and the registry talk to it: a slot
/// is freed only by the job that holds it.

#include <doctest/doctest.h>

#include <chrono>
#include <thread>
#include <vector>

#include "configured_system.hpp"
#include "market.hpp"

using namespace gflex;

namespace {

// A worker that is never asked anything here: the slot's handle.
caf::behavior idle_worker(caf::event_based_actor*) {
  return {[](int) {}};
}

}  // namespace

TEST_SUITE("market actor") {
  TEST_CASE("a slot is freed only by the job that holds it") {
    // After a restarted market re-offered the slots, a job's release of a worker another job
    // had since acquired freed it for a third: two jobs' work on one worker, one of them
    // timing out and the honest node put in cooldown.
    test::configured_system s;
    auto market = spawn_market(s.sys, 0.0);
    auto worker = s.sys.spawn(idle_worker);
    worker_slot slot;
    slot.worker = worker;
    slot.node_name = "n";
    slot.throughput = 100.0;
    s.self->send(market, offer_atom::value, std::string("n1"), std::vector<worker_slot>{slot});
    caf::scoped_actor holder{s.sys}, other{s.sys}, third{s.sys};
    auto acquire = [&](caf::scoped_actor& job) {
      acquire_reply out;
      job->request(market, std::chrono::seconds(10), acquire_atom::value, std::string("job"),
                   std::string("w"), int64_t{1}, uint8_t{2}, int64_t{-1}, 0.0)
          .receive([&](acquire_reply& r) { out = std::move(r); },
                   [&](caf::error& e) { FAIL(s.sys.render(e)); });
      return out;
    };
    REQUIRE(acquire(holder).slots.size() == 1);
    other->send(market, release_atom::value, worker);
    auto taken = acquire(third);
    CHECK(taken.slots.empty());
    CHECK(taken.busy == 1);
    other->send(market, release_atom::value, worker, true);  // nor puts it in cooldown
    holder->send(market, release_atom::value, worker);
    CHECK(acquire(third).slots.size() == 1);  // its holder's release frees it
    for (auto& a : {market, worker}) s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a restarted market learns which workers the jobs hold before or after their offers") {
    // The registry offered every slot to a restarted market as free: the workers that ran a
    // job's assignments were handed to other jobs, two assignments at once on one worker.
    test::configured_system s;
    auto market = spawn_market(s.sys, 0.0);
    auto w1 = s.sys.spawn(idle_worker), w2 = s.sys.spawn(idle_worker);
    auto slot_of = [](caf::actor w, const char* name) {
      worker_slot slot;
      slot.worker = std::move(w);
      slot.node_name = name;
      slot.throughput = 100.0;
      return slot;
    };
    caf::scoped_actor holder{s.sys}, other{s.sys};
    s.self->send(market, offer_atom::value, std::string("n1"),
                 std::vector<worker_slot>{slot_of(w1, "a")});
    // w1 was offered before the job said it holds it; w2 is offered after.
    holder->send(market, acquire_atom::value, std::vector<caf::actor>{w1, w2});
    s.self->send(market, offer_atom::value, std::string("n2"),
                 std::vector<worker_slot>{slot_of(w2, "b")});
    auto acquire = [&](caf::scoped_actor& job) {
      acquire_reply out;
      job->request(market, std::chrono::seconds(10), acquire_atom::value, std::string("job"),
                   std::string("w"), int64_t{2}, uint8_t{2}, int64_t{-1}, 0.0)
          .receive([&](acquire_reply& r) { out = std::move(r); },
                   [&](caf::error& e) { FAIL(s.sys.render(e)); });
      return out;
    };
    auto none = acquire(other);
    CHECK(none.slots.empty());
    CHECK(none.busy == 2);
    holder->send(market, release_atom::value, w1);
    holder->send(market, release_atom::value, w2);
    std::this_thread::sleep_for(std::chrono::milliseconds(600));  // `other` had both held
    CHECK(acquire(other).slots.size() == 2);
    for (auto& a : {market, w1, w2}) s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a slot a job lets go goes to a job that waits for one, not back to it") {
    // A job releases a worker and asks again in the same breath, so it got the worker back
    // every time: a second job, asking every 250 ms, waited until the first one finished.
    test::configured_system s;
    auto market = spawn_market(s.sys, 0.0);
    auto worker = s.sys.spawn(idle_worker);
    worker_slot slot;
    slot.worker = worker;
    slot.node_name = "n";
    slot.throughput = 100.0;
    s.self->send(market, offer_atom::value, std::string("n1"), std::vector<worker_slot>{slot});
    caf::scoped_actor first{s.sys}, second{s.sys};
    auto acquire = [&](caf::scoped_actor& job) {
      acquire_reply out;
      job->request(market, std::chrono::seconds(10), acquire_atom::value, std::string("job"),
                   std::string("w"), int64_t{1}, uint8_t{2}, int64_t{-1}, 0.0)
          .receive([&](acquire_reply& r) { out = std::move(r); },
                   [&](caf::error& e) { FAIL(s.sys.render(e)); });
      return out.slots.size();
    };
    REQUIRE(acquire(first) == 1);
    CHECK(acquire(second) == 0);  // it waits
    first->send(market, release_atom::value, worker);
    CHECK(acquire(first) == 0);   // not straight back to the job that let it go
    CHECK(acquire(second) == 1);  // the waiting job's turn
    // Nobody waits: a job that lets a slot go may take it again.
    second->send(market, release_atom::value, worker);
    std::this_thread::sleep_for(std::chrono::milliseconds(2100));  // `first` stopped asking
    CHECK(acquire(second) == 1);
    for (auto& a : {market, worker}) s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }
}
