/// @file
/// A backup copy of a straggler's shard goes to another node. Nodes offer a slot per worker,
/// and the backup went to the cheapest free slot, often another of the straggling node's own:
/// it ran as slowly there, and the shard, counted as backed up, got no other copy.

#include <doctest/doctest.h>

#include <cmath>
#include <optional>

#include "gflex/runtime/identity.hpp"
#include "gflex/runtime/job_spec.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "job_fixture.hpp"

using namespace gflex;
using namespace gflex::test;

namespace {

struct ordered_market_state {
  std::vector<worker_slot> slots;  // cheapest first
  std::set<caf::actor_addr> busy;
  std::vector<std::string> measured;  // the nodes a rate was reported of, in order
};

// A market that hands out its free slots cheapest first (the order given), leaving out those
// of the nodes an acquire avoids, as the core's market does. (caf::get_atom, rate_atom) -> the
// nodes measured (rate_atom) so far.
caf::behavior ordered_market(caf::stateful_actor<ordered_market_state>* self,
                             std::vector<worker_slot> slots) {
  self->state.slots = std::move(slots);
  auto free = [=](const caf::actor& w) { self->state.busy.erase(w.address()); };
  return {
      [=](acquire_atom, const std::string&, const std::string&, int64_t wanted, uint8_t, int64_t,
          double, const std::vector<std::string>& avoided) {
        acquire_reply r;
        for (const auto& s : self->state.slots) {
          if (static_cast<int64_t>(r.slots.size()) >= wanted) break;
          if (std::find(avoided.begin(), avoided.end(), s.node_id) != avoided.end()) {
            r.avoided += 1;
            continue;
          }
          if (!self->state.busy.insert(s.worker.address()).second) {
            r.busy += 1;
            continue;
          }
          r.slots.push_back(s);
        }
        return r;
      },
      [=](release_atom, const caf::actor& w) { free(w); },
      [=](release_atom, const caf::actor& w, bool) { free(w); },
      [=](release_atom, const caf::actor& w, bool, bool) { free(w); },
      [=](release_atom, const std::vector<caf::actor>&) {},
      [=](rate_atom, const std::string& node, const std::string&, double rate) {
        if (std::isfinite(rate) && rate > 0.0) self->state.measured.push_back(node);
      },
      [=](caf::get_atom, rate_atom) { return self->state.measured; },
  };
}

// A worker whose training diverges, as a faulty GPU's does: it answers every assignment
// errc::non_finite at once.
caf::behavior diverging_worker(caf::event_based_actor*) {
  return {
      [](assign_atom, assignment&) -> caf::result<assignment_result> {
        return to_caf(error(errc::non_finite, "training diverged: the loss is not finite"));
      },
      [](abort_atom, uint64_t) {},
  };
}

}  // namespace

TEST_SUITE("job backups") {
  TEST_CASE("a straggler's backup goes to another node, not to the straggler's other slot") {
    // Node "slow" offers two slots, the cheapest; node "other" one. The round's two shards go
    // to slow's slots; the first takes 5 s, the second answers at once, so the first is backed
    // up. Slow's second slot is free again and the cheapest: the backup went there.
    configured_system f;
    std::string spec_text = k_spec;
    spec_text.replace(spec_text.find("workers = 1"), 11, "workers = 2");
    const resumable_job resumed(spec_text, 2);
    const size_t parameters = 4 * 3 + 3;
    auto slow_key = std::make_shared<node_identity>(node_identity::generate());
    auto other_key = std::make_shared<node_identity>(node_identity::generate());
    auto slot_of = [&](std::shared_ptr<node_identity> key, std::string node,
                       std::chrono::milliseconds delay) {
      return core_slot(f.sys.spawn(delayed_worker, key, parameters, delay), *key, node);
    };
    const std::vector<worker_slot> slots = {
        slot_of(slow_key, "slow", std::chrono::seconds(5)),
        slot_of(slow_key, "slow", std::chrono::milliseconds(0)),
        slot_of(other_key, "other", std::chrono::milliseconds(0))};
    job_links links;
    links.market = f.sys.spawn(ordered_market, slots);
    links.reputation = f.sys.spawn(crediting_reputation);
    auto job = resumed.spawn(f, links);

    // Its one round, 3, ends once the backup is answered (well before the straggler's 5 s).
    const auto end = job_end(f, std::chrono::seconds(4));
    auto given = [&](const worker_slot& s) {
      int64_t n = -1;
      f.self->request(s.worker, std::chrono::seconds(10), caf::get_atom::value)
          .receive([&](int64_t x) { n = x; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
      return n;
    };
    const auto on_slow = given(slots[1]), on_other = given(slots[2]);
    // The straggler lost the race to a copy sent after it: its node is measured by it (its
    // samples over the time it ran unanswered). Cancelled with no word, a node that never
    // answered kept its claimed rate, and the first copies of every round.
    std::vector<std::string> measured;
    f.self->request(links.market, std::chrono::seconds(10), caf::get_atom::value, rate_atom::value)
        .receive([&](std::vector<std::string>& m) { measured = std::move(m); },
                 [&](caf::error& e) { FAIL(f.sys.render(e)); });
    for (const auto& a : {job, links.market, links.reputation, links.store})
      f.self->send_exit(a, caf::exit_reason::user_shutdown);
    for (const auto& s : slots) f.self->send_exit(s.worker, caf::exit_reason::user_shutdown);
    REQUIRE_MESSAGE(end.has_value(), "the round did not end within 4 s");
    CHECK(end->state == job_state::done);
    CHECK_MESSAGE(on_other == 1, "the backup went to slow's other slot, not to node other");
    CHECK(on_slow == 1);
    CHECK(measured == std::vector<std::string>{"slow"});
  }

  TEST_CASE("a straggler's backup left out with the node that said the round diverged waits") {
    // Node "faulty" (core tier, a GPU that gives NaN) offers the cheapest slot; node "slow"
    // two, one slow and one fast. The round's first shard goes to faulty, which says it
    // diverged and is left out; the second to slow's slow slot. The first goes again to
    // slow's fast slot, which answers at once, so the second is backed up: the acquire leaves
    // out faulty (it said the round diverged) and slow (it computes the shard), and the
    // market has no slot busy. Read as "no node left but the one that said it diverged",
    // faulty's word ended the job while slow computed the shard. The straggler's tier plays
    // no part (a community node's results would need a verifier in this fixture).
    configured_system f;
    std::string spec_text = k_spec;
    spec_text.replace(spec_text.find("workers = 1"), 11, "workers = 2");
    const resumable_job resumed(spec_text, 2);
    const size_t parameters = 4 * 3 + 3;
    const auto faulty_key = node_identity::generate();
    auto slow_key = std::make_shared<node_identity>(node_identity::generate());
    const std::vector<worker_slot> slots = {
        core_slot(f.sys.spawn(diverging_worker), faulty_key, "faulty"),
        core_slot(f.sys.spawn(delayed_worker, slow_key, parameters, std::chrono::seconds(2)),
                  *slow_key, "slow"),
        core_slot(f.sys.spawn(delayed_worker, slow_key, parameters, std::chrono::milliseconds(0)),
                  *slow_key, "slow")};
    job_links links;
    links.market = f.sys.spawn(ordered_market, slots);
    links.reputation = f.sys.spawn(crediting_reputation);
    auto job = resumed.spawn(f, links);

    // Its one round, 3, ends once the straggler answers, 2 s after it was given the shard.
    const auto end = job_end(f, std::chrono::seconds(6));
    for (const auto& a : {job, links.market, links.reputation, links.store})
      f.self->send_exit(a, caf::exit_reason::user_shutdown);
    for (const auto& s : slots) f.self->send_exit(s.worker, caf::exit_reason::user_shutdown);
    REQUIRE_MESSAGE(end.has_value(), "the round did not end within 6 s");
    CHECK_MESSAGE(end->state == job_state::done, ("the job ended: " + end->detail));
  }
}
