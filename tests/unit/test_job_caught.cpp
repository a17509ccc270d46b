/// @file
/// A node caught in another job while this job's last round is applied but not yet
/// confirmed. When none of that round's results could still be re-computed, the job kept
/// nothing to roll back to (copying a large model's parameters every round would double the
/// core's memory), and discarding the caught node's result then rolled back anyway: a
/// GFLEX_CHECK aborted the whole core, with every job and session in it. Now the round stays
/// applied, and the caught node's result in it is neither paid nor credited.

#include <doctest/doctest.h>

#include <algorithm>

#include "gflex/runtime/identity.hpp"
#include "gflex/runtime/job_spec.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "job_fixture.hpp"

using namespace gflex;
using namespace gflex::test;

namespace {

// A result that claims `compute_s` seconds of compute.
assignment_result signed_result(const node_identity& key, uint64_t id, size_t parameters,
                                double compute_s) {
  assignment_result r;
  r.assignment_id = id;
  const std::vector<float> delta(parameters, 0.001f);
  r.update = encode_update(delta, compression::fp32);
  r.loss = 1.0;
  r.samples = 12;
  r.compute_s = compute_s;
  r.signature = key.sign(result_message(id, r.update));
  return r;
}

struct held_results {
  std::map<uint64_t, caf::typed_response_promise<assignment_result>> held;
  int64_t answered = 0;
};

// A worker of node `key` that answers every assignment with a small signed update, `delay`
// after it came, claiming `compute_s` seconds of compute.
caf::behavior signing_worker(caf::stateful_actor<held_results>* self,
                             std::shared_ptr<node_identity> key, size_t parameters,
                             std::chrono::milliseconds delay, double compute_s) {
  return {
      [=](assign_atom, assignment& a) -> caf::result<assignment_result> {
        auto rp = self->make_response_promise<assignment_result>();
        self->state.held[a.id] = rp;
        self->delayed_send(self, delay, caf::put_atom::value, a.id);
        return rp;
      },
      [=](caf::put_atom, uint64_t id) {
        auto it = self->state.held.find(id);
        if (it == self->state.held.end()) return;
        it->second.deliver(signed_result(*key, id, parameters, compute_s));
        self->state.held.erase(it);
        ++self->state.answered;
      },
      [=](caf::get_atom) { return self->state.answered; },
      [](abort_atom, uint64_t) {},
  };
}

struct holding_market_state {
  std::vector<worker_slot> offered;
  std::vector<caf::typed_response_promise<acquire_reply>> held;
};

// A market that offers its slots at the first acquire, then holds every later one unanswered
// until (caf::put_atom) answers them with no worker: the job meanwhile waits for workers, and
// the round it applied last waits to be confirmed.
caf::behavior holding_market(caf::stateful_actor<holding_market_state>* self,
                             std::vector<worker_slot> slots) {
  self->state.offered = std::move(slots);
  return {
      [=](acquire_atom, const std::string&, const std::string&, int64_t, uint8_t, int64_t,
          double) -> caf::result<acquire_reply> {
        if (!self->state.offered.empty()) {
          acquire_reply r;
          r.slots = std::move(self->state.offered);
          self->state.offered.clear();
          return r;
        }
        auto rp = self->make_response_promise<acquire_reply>();
        self->state.held.push_back(rp);
        return rp;
      },
      [=](caf::get_atom) { return static_cast<int64_t>(self->state.held.size()); },
      [=](caf::put_atom) {
        for (auto& rp : self->state.held) rp.deliver(acquire_reply{});
        self->state.held.clear();
      },
      [](release_atom, const caf::actor&) {},
      [](release_atom, const caf::actor&, bool) {},
  };
}

struct credits_state {
  std::vector<std::string> credited;
  std::vector<double> compute_s;
};

// A reputation tracker that samples nothing for re-computation and notes whom it credits,
// and with how many compute seconds.
caf::behavior noting_reputation(caf::stateful_actor<credits_state>* self) {
  return {
      [](sample_atom, const std::string&) { return false; },
      [=](credit_atom, const std::string& name, uint8_t, double compute_s, int64_t) {
        self->state.credited.push_back(name);
        self->state.compute_s.push_back(compute_s);
      },
      [](reject_atom, const std::string&, std::string&) {},
      [=](caf::get_atom) -> caf::result<std::vector<std::string>, std::vector<double>> {
        return {self->state.credited, self->state.compute_s};
      },
  };
}

// The user's data set "c" of stored_job(), registered as the job supervisor would.
std::shared_ptr<data_catalog> catalog_of(const failing_store_state& st) {
  auto catalog = std::make_shared<data_catalog>();
  auto info = decode_data_set(st.kept.at(data_set_key("user/alice", "c")));
  REQUIRE(info.has_value());
  std::map<std::string, std::shared_ptr<const std::vector<uint8_t>>> chunks;
  for (const auto& [k, v] : st.kept)
    if (k.starts_with(data_chunk_prefix))
      chunks[k.substr(std::string(data_chunk_prefix).size())] =
          std::make_shared<const std::vector<uint8_t>>(v);
  REQUIRE(catalog->put_user_set(*info, chunks).has_value());
  return catalog;
}

}  // namespace

TEST_SUITE("job caught nodes") {
  TEST_CASE("a node caught elsewhere while a round is applied past rollback: the core stays up") {
    configured_system f;
    std::string spec_text = k_spec;
    spec_text.replace(spec_text.find("rounds = 3\nworkers = 1"), 22, "rounds = 6\nworkers = 2");
    auto stored = stored_job(2, spec_text, 2);
    auto spec = parse_job_spec(spec_text, "test");
    REQUIRE(spec.has_value());

    // A hybrid round: a volunteer's result, cleared at once (not sampled), then a core-tier
    // node's, trusted. The round is applied at the second: nothing in it can still be
    // re-computed, so nothing to roll back to is kept.
    const size_t parameters = 4 * 3 + 3;
    std::vector<worker_slot> slots(2);
    const char* names[] = {"volunteer", "core-node"};
    for (int i = 0; i < 2; ++i) {
      auto key = std::make_shared<node_identity>(node_identity::generate());
      // The core-tier node claims an absurd compute time: it is credited the time the core
      // saw its assignment take, as it is paid.
      slots[i].worker =
          f.sys.spawn(signing_worker, key, parameters, std::chrono::milliseconds(i == 0 ? 0 : 500),
                      i == 0 ? 0.01 : 1e300);
      slots[i].node_id = "n" + std::to_string(i);
      slots[i].node_name = names[i];
      slots[i].tier = static_cast<uint8_t>(i == 0 ? node_tier::community : node_tier::core);
      slots[i].public_key = key->public_key();
    }

    job_links links;
    links.store = f.sys.spawn(failing_store, stored);
    links.market = f.sys.spawn(holding_market, slots);
    links.reputation = f.sys.spawn(noting_reputation);
    links.supervisor = caf::actor_cast<caf::actor>(f.self);  // the test stands for it
    links.catalog = catalog_of(stored);
    job_start start;
    start.id = "job-1";
    start.spec_text = spec_text;
    start.spec = *spec;
    start.status.job_id = "job-1";
    start.status.owner = "user/alice";
    start.status.state = job_state::running;
    start.status.round = 2;
    start.status.rounds = spec->rounds;
    start.checkpoint = stored.kept.at(job_checkpoint_key("job-1"));
    start.from = job_start::origin::resumed;
    auto job = spawn_job(f.sys, std::move(start), links);
    f.self->monitor(job);

    // Round 3 is applied once the core-tier node answers; the job then waits for workers (a
    // backup of that node's slow shard, then round 4's), the round unconfirmed.
    bool asked_again = false;
    for (int tries = 0; tries < 100 && !asked_again; ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      int64_t held = 0, answered = 0;
      f.self->request(links.market, std::chrono::seconds(10), caf::get_atom::value)
          .receive([&](int64_t n) { held = n; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
      f.self->request(slots[1].worker, std::chrono::seconds(10), caf::get_atom::value)
          .receive([&](int64_t n) { answered = n; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
      asked_again = held > 0 && answered > 0;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the result reaches the job
    REQUIRE(asked_again);
    // Another job caught the volunteer: its supervisor tells this one.
    f.self->send(job, bar_atom::value, std::string("volunteer"), std::string("a forged result"));
    f.self->send(links.market, caf::put_atom::value);

    // The job lives on, and confirms round 3 without crediting the caught node.
    bool down = false, committed = false;
    for (int tries = 0; tries < 100 && !down && !committed; ++tries) {
      f.self->receive([&](const caf::down_msg&) { down = true; },
                      [&](progress_atom, job_status& s) { committed = s.round >= 3; },
                      caf::after(std::chrono::milliseconds(50)) >> [] {});
    }
    CHECK_FALSE(down);
    CHECK(committed);
    std::vector<std::string> credited;
    std::vector<double> compute_s;
    f.self->request(links.reputation, std::chrono::seconds(10), caf::get_atom::value)
        .receive(
            [&](std::vector<std::string>& c, std::vector<double>& s) {
              credited = std::move(c);
              compute_s = std::move(s);
            },
            [&](caf::error& e) { FAIL(f.sys.render(e)); });
    CHECK(std::count(credited.begin(), credited.end(), "volunteer") == 0);
    REQUIRE(credited.size() == 1);
    CHECK(compute_s[0] < 10.0);

    for (const auto& a :
         {job, links.market, links.reputation, links.store, slots[0].worker, slots[1].worker})
      f.self->send_exit(a, caf::exit_reason::user_shutdown);
  }
}
