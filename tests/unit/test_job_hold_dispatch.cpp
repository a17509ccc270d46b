/// @file
/// A metered job hands out a round's work only once that round's escrow is held. A market's
/// answer to an acquire made for the round before (a straggler's backup) came back after that
/// round had closed and the next one's hold had gone out: its slots got the next round's work
/// at once, while the hold was on its way (or refused, the job paused), and a round so
/// collected was paid from no escrow.

#include <doctest/doctest.h>

#include <optional>

#include "gflex/runtime/identity.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "job_fixture.hpp"

using namespace gflex;
using namespace gflex::test;

namespace {

struct held_market_state {
  std::vector<worker_slot> first;  // the first acquire's answer
  worker_slot later;               // the held second acquire's, once the test says
  std::optional<caf::typed_response_promise<acquire_reply>> held;
  int64_t acquires = 0;
  int64_t later_released = 0;  // releases of `later`'s slot
};

// A market that answers the first acquire with `first`, holds the second until
// (caf::put_atom) answers it with `later`, and answers the rest with nothing.
// (caf::get_atom) -> acquires so far; (caf::get_atom, release_atom) -> releases of `later`.
caf::behavior held_market(caf::stateful_actor<held_market_state>* self,
                          std::vector<worker_slot> first, worker_slot later) {
  self->state.first = std::move(first);
  self->state.later = std::move(later);
  auto released = [=](const caf::actor& w) {
    if (w == self->state.later.worker) self->state.later_released += 1;
  };
  return {
      [=](acquire_atom, const std::string&, const std::string&, int64_t, uint8_t, int64_t, double,
          const std::vector<std::string>&) -> caf::result<acquire_reply> {
        auto& st = self->state;
        st.acquires += 1;
        acquire_reply r;
        if (st.acquires == 1) r.slots = st.first;
        if (st.acquires != 2) return r;
        st.held = self->make_response_promise<acquire_reply>();
        return *st.held;
      },
      [=](caf::put_atom) {
        auto& st = self->state;
        if (!st.held) return;
        acquire_reply r;
        r.slots = {st.later};
        st.held->deliver(std::move(r));
        st.held.reset();
      },
      [=](caf::get_atom) { return self->state.acquires; },
      [=](caf::get_atom, release_atom) { return self->state.later_released; },
      [=](release_atom, const caf::actor& w) { released(w); },
      [=](release_atom, const caf::actor& w, bool) { released(w); },
      [=](release_atom, const caf::actor& w, bool, bool) { released(w); },
      [=](release_atom, const std::vector<caf::actor>&) {},
  };
}

}  // namespace

TEST_SUITE("job hold dispatch") {
  TEST_CASE("a backup's late slot gets no work of the next round while its hold is on its way") {
    // Round 3 (of 4) goes to nodes "fast" and "slow"; slow takes 2 s, so its shard is backed
    // up, and the market holds that acquire. Slow answers: round 3 closes, round 4's hold goes
    // to a ledger that holds it. Then the market answers the backup's acquire with node
    // "late"'s slot: it must go back, not get round 4's work before its escrow is held.
    configured_system f;
    std::string spec_text = metered_spec;
    spec_text.replace(spec_text.find("workers = 1"), 11, "workers = 2");
    spec_text.replace(spec_text.find("rounds = 3"), 10, "rounds = 4");
    const resumable_job resumed(spec_text, 2);
    const size_t parameters = 4 * 3 + 3;
    auto slot_of = [&](std::string node, std::chrono::milliseconds delay) {
      auto key = std::make_shared<node_identity>(node_identity::generate());
      worker_slot slot = core_slot(f.sys.spawn(delayed_worker, key, parameters, delay), *key, node);
      slot.price = 1'000'000;
      return slot;
    };
    const auto fast = slot_of("fast", std::chrono::milliseconds(0));
    const auto slow = slot_of("slow", std::chrono::seconds(2));
    const auto late = slot_of("late", std::chrono::milliseconds(0));
    job_links links;
    links.store = f.sys.spawn(failing_store, resumed.stored);
    links.market = f.sys.spawn(held_market, std::vector<worker_slot>{fast, slow}, late);
    links.reputation = f.sys.spawn(crediting_reputation);
    links.ledger = f.sys.spawn(slow_ledger, funded_keeper(f, links.store), true);
    auto job = resumed.spawn(f, links);
    auto ask = [&](const caf::actor& whom, auto... xs) {
      int64_t n = -1;
      f.self->request(whom, std::chrono::seconds(10), xs...)
          .receive([&](int64_t x) { n = x; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
      return n;
    };
    auto await = [&](auto done) {
      for (int tries = 0; tries < 100 && !done(); ++tries)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      return done();
    };
    // Round 3's hold is held by the ledger: passed on, the round goes out.
    const bool first_hold = await([&] { return ask(links.ledger, caf::get_atom::value) == 1; });
    if (first_hold) f.self->send(links.ledger, caf::put_atom::value);
    // Slow's shard is backed up: the market holds that acquire. Then slow answers, round 3
    // closes, and round 4's hold is held.
    const bool backup_asked = await([&] { return ask(links.market, caf::get_atom::value) == 2; });
    const bool next_hold = await([&] { return ask(links.ledger, caf::get_atom::value) == 1; });
    // The backup's acquire answered now: late's slot.
    f.self->send(links.market, caf::put_atom::value);
    const bool released =
        await([&] { return ask(links.market, caf::get_atom::value, release_atom::value) >= 1; });
    const auto on_late = ask(late.worker, caf::get_atom::value);
    for (const auto& a : {job, links.market, links.reputation, links.store, links.ledger})
      f.self->send_exit(a, caf::exit_reason::user_shutdown);
    for (const auto& s : {fast, slow, late})
      f.self->send_exit(s.worker, caf::exit_reason::user_shutdown);
    REQUIRE(first_hold);
    REQUIRE(backup_asked);
    REQUIRE(next_hold);
    CHECK_MESSAGE(on_late == 0, "late's slot got round 4's work before its escrow was held");
    CHECK(released);
  }
}
