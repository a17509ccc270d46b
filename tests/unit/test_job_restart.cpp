/// @file
/// A job whose actor died is restarted from its checkpoint as the ledger keeper will have
/// written it: the round the dead actor sent to be settled may still wait in the keeper's
/// queue (its record and checkpoint go with its payments), and a checkpoint read before it
/// lands is the round before, which the job then trained, and paid for, a second time.

#include <doctest/doctest.h>

#include <deque>
#include <optional>

#include "gflex/runtime/identity.hpp"
#include "gflex/runtime/job_spec.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "job_fixture.hpp"
#include "ledger_book.hpp"

using namespace gflex;
using namespace gflex::test;

namespace {

struct held_ledger_state {
  std::vector<caf::typed_response_promise<uint64_t>> held;
  std::vector<caf::typed_response_promise<caf::ok_atom>> held_fences;
  int asked = 0;
};

// A ledger keeper busy with earlier writes: what it is asked (whether an operation was booked,
// or to fence off the job runs of a dead supervisor) is answered only once the test says
// (caf::put_atom); (caf::get_atom) -> how many questions it was asked.
caf::behavior held_ledger(caf::stateful_actor<held_ledger_state>* self) {
  return {
      [=](booked_atom, const std::string&) -> caf::result<uint64_t> {
        ++self->state.asked;
        self->state.held.push_back(self->make_response_promise<uint64_t>());
        return self->state.held.back();
      },
      [=](fence_atom, uint64_t) -> caf::result<caf::ok_atom> {
        ++self->state.asked;
        self->state.held_fences.push_back(self->make_response_promise<caf::ok_atom>());
        return self->state.held_fences.back();
      },
      [=](caf::put_atom) {
        for (auto& rp : self->state.held) rp.deliver(uint64_t{0});
        for (auto& rp : self->state.held_fences) rp.deliver(caf::ok_atom::value);
        self->state.held.clear();
        self->state.held_fences.clear();
      },
      [=](caf::get_atom) { return self->state.asked; },
  };
}

// A ledger keeper that cannot answer its first question (its store does not answer), then
// answers every one.
caf::behavior flaky_ledger(caf::stateful_actor<int>* self) {
  return {
      [=](booked_atom, const std::string&) -> caf::result<uint64_t> {
        if (self->state++ == 0)
          return to_caf(error(errc::unavailable, "the store does not answer"));
        return uint64_t{0};
      },
  };
}

// A ledger keeper whose first fence is not answered in time (busy with a long queue), and
// that answers every later one; (caf::get_atom) -> how many fences it was asked.
caf::behavior late_fence_ledger(caf::stateful_actor<int>* self) {
  return {
      [=](fence_atom, uint64_t) -> caf::result<caf::ok_atom> {
        if (self->state++ == 0) return caf::make_error(caf::sec::request_timeout);
        return caf::ok_atom::value;
      },
      [=](caf::get_atom) { return self->state; },
  };
}

// How often job-1's checkpoint was read from the fixture's store.
int checkpoint_reads(job_fixture& f) {
  int n = -1;
  f.self->request(f.store, f.wait, caf::get_atom::value, job_checkpoint_key("job-1"))
      .receive([&](int x) { n = x; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
  return n;
}

// How many questions the fixture's held_ledger was asked.
int questions_to(job_fixture& f) {
  int asked = -1;
  f.self->request(f.keeper, f.wait, caf::get_atom::value)
      .receive([&](int n) { asked = n; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
  return asked;
}

// Job-1's checkpoint, read `before` times so far, is not read again while the fixture's
// held_ledger holds its one question, and is read once when it answers.
void read_once_the_keeper_answers(job_fixture& f, int before) {
  // The question comes three hops after the kill (the actor's end, its down message, the
  // supervisor's request), late on a loaded machine: a put sent before it came would answer
  // nothing, and the question would be held for good.
  for (int tries = 0; tries < 1000 && questions_to(f) < 1; ++tries)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // for a read that did not wait
  CHECK(checkpoint_reads(f) == before);  // not read while the keeper has not answered
  CHECK(questions_to(f) == 1);
  f.self->send(f.keeper, caf::put_atom::value);
  for (int tries = 0; tries < 50 && checkpoint_reads(f) == before; ++tries)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(checkpoint_reads(f) == before + 1);  // read once it has
}

// Kills the fixture's job supervisor, taking its jobs' actors with it, and spawns its
// replacement as the core does.
void replace_supervisor(job_fixture& f) {
  f.self->send_exit(f.supervisor, caf::exit_reason::kill);
  job_links links;
  links.store = f.store;
  links.market = f.market;
  links.catalog = std::make_shared<data_catalog>();
  links.ledger = f.keeper;
  links.after_restart = true;
  f.supervisor = spawn_job_supervisor(f.sys, links);
}

// The job actor that last asked the market for workers, or none within 10 s.
caf::actor asking_job(job_fixture& f, const caf::actor& other_than = {}) {
  caf::actor job;
  for (int tries = 0; tries < 100 && (!job || job == other_than); ++tries) {
    f.self->request(f.market, f.wait, caf::get_atom::value)
        .receive([&](caf::actor& a) { job = a; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    if (!job || job == other_than) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return job == other_than ? caf::actor{} : job;
}

// funded_keeper behind a slow_ledger that passes holds on at once, and settlements when told.
caf::actor funded_ledger(job_fixture& f) {
  return f.sys.spawn(slow_ledger, funded_keeper(f), false);
}

// The record of job `id` as the store holds it (none where it holds none, or not one).
std::optional<job_status> stored_record(job_fixture& f, const std::string& id) {
  std::optional<job_status> record;
  f.self->request(f.store, f.wait, read_atom::value, job_record_key(id))
      .receive(
          [&](bool, std::vector<uint8_t>& v) {
            if (auto r = decode_job_record(v)) record = r->second;
          },
          [&](caf::error& e) { FAIL(f.sys.render(e)); });
  return record;
}

// A worker of node `key` that answers each assignment 200 ms after it came with a small
// signed update, claiming 0.1 s of compute: the core sees it take longer, and pays the claim.
caf::behavior paid_worker(caf::event_based_actor* self, std::shared_ptr<node_identity> key,
                          size_t parameters) {
  using answer = std::pair<caf::typed_response_promise<assignment_result>, assignment_result>;
  auto due = std::make_shared<std::deque<answer>>();
  return {
      [=](assign_atom, assignment& a) -> caf::result<assignment_result> {
        auto r = small_signed_result(*key, a, parameters, 0.5, 0.1);
        due->emplace_back(self->make_response_promise<assignment_result>(), std::move(r));
        self->delayed_send(self, std::chrono::milliseconds(200), tick_atom::value);
        return due->back().first;
      },
      [=](tick_atom) {
        auto [rp, r] = std::move(due->front());
        due->pop_front();
        rp.deliver(std::move(r));
      },
      [](abort_atom, uint64_t) {},
  };
}

// A reputation tracker that takes the job's credits and rejections.
caf::behavior taking_reputation(caf::event_based_actor*) {
  return {
      [](credit_atom, const std::string&, uint8_t, double, int64_t) {},
      [](reject_atom, const std::string&, std::string&) { return std::vector<std::string>{}; },
  };
}

}  // namespace

TEST_SUITE("job restart") {
  TEST_CASE("a round's bill is shown once its commit lands, not before") {
    // Counted as the round was settled in memory, the bill was published while the round's
    // commit (its payments with it) was on its way: a crash then showed the job's spending
    // lower after its restart, and a client that reports each rise of credits_spent never
    // reported the round's real payment.
    configured_system f;
    const std::chrono::seconds wait{30};
    auto spec_text = metered_spec;
    spec_text.replace(spec_text.find("rounds = 3"), 10, "rounds = 5");
    auto stored = stored_job(2, spec_text);
    auto spec = parse_job_spec(spec_text, "test");
    REQUIRE(spec.has_value());
    // Made before any actor: a REQUIRE that fails after would leave them running.
    auto catalog = catalog_of(stored);
    auto key = std::make_shared<node_identity>(node_identity::generate());
    worker_slot slot = node_slot(f.sys.spawn(paid_worker, key, 4 * 3 + 3), "id-paid", "paid");
    slot.tier = static_cast<uint8_t>(node_tier::core);  // trusted: no re-computation
    slot.public_key = key->public_key();
    slot.price = 1'000'000;  // a credit per device-hour
    job_links links;
    links.store = f.sys.spawn(failing_store, stored);
    auto keeper = funded_keeper(f, links.store);
    for (const char* account : {"node/paid", ledger_book::platform})  // what the round pays
      f.self->request(keeper, wait, open_atom::value, std::string(account), true)
          .receive([](caf::ok_atom) {}, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    links.ledger = f.sys.spawn(slow_ledger, keeper, false);  // settlements wait for the test
    links.market = f.sys.spawn(offering_market, std::vector<worker_slot>{slot});  // round 3's
    links.reputation = f.sys.spawn(taking_reputation);
    links.supervisor = caf::actor_cast<caf::actor>(f.self);  // the test stands for it
    links.catalog = catalog;
    auto job = spawn_job(f.sys, resumed_start(stored, spec_text, *spec, 2), links);
    auto escrow = [&] {
      int64_t out = -1;
      f.self->request(keeper, wait, account_atom::value, std::string("escrow/job-1"))
          .receive([&](account_info& i) { out = i.balance; },
                   [&](caf::error& e) { FAIL(f.sys.render(e)); });
      return out;
    };
    // Round 3 is computed and settled, its commit held by the ledger; round 4 has its escrow
    // held and waits for workers, which the job publishes.
    std::vector<job_status> before;
    auto waits = [](const job_status& s) {
      return s.detail.find("waiting for workers: 1 assignment(s) of round 4") == 0;
    };
    for (int tries = 0; tries < 200 && (before.empty() || !waits(before.back())); ++tries)
      f.self->receive([&](progress_atom, job_status& s) { before.push_back(std::move(s)); },
                      caf::after(std::chrono::milliseconds(50)) >> [] {});
    REQUIRE_MESSAGE((!before.empty() && waits(before.back())),
                    (before.empty() ? std::string("nothing published") : before.back().detail));
    int64_t held_writes = 0;
    f.self->request(links.ledger, wait, caf::get_atom::value)
        .receive([&](int64_t n) { held_writes = n; },
                 [&](caf::error& e) { FAIL(f.sys.render(e)); });
    REQUIRE(held_writes == 1);  // round 3's settlement, still on its way
    for (const auto& s : before) {
      CAPTURE(s.detail);
      CHECK(s.round == 2);
      CHECK(s.credits_spent == 0);
      CHECK(s.compute_s == 0.0);
      CHECK(s.device_hours == 0.0);
      CHECK(s.cloud_cost == 0);
    }
    // Round 3's escrow is still held, round 4's too: shown as the ledger holds them.
    CHECK(before.back().credits_held == escrow());
    CHECK(before.back().credits_held == 2 * round_escrow(*spec));
    f.self->send(links.ledger, caf::put_atom::value);  // the commit lands
    std::optional<job_status> after;
    for (int tries = 0; tries < 200 && !after; ++tries)
      f.self->receive(
          [&](progress_atom, job_status& s) {
            if (s.round == 3) after = std::move(s);
          },
          caf::after(std::chrono::milliseconds(50)) >> [] {});
    REQUIRE_MESSAGE(after.has_value(), "round 3's commit was not published");
    CHECK(after->credits_spent > 0);
    CHECK(after->compute_s == doctest::Approx(0.1));
    CHECK(after->device_hours > 0.0);
    CHECK(after->cloud_cost > 0);
    CHECK(after->credits_held == escrow());
    CHECK(after->credits_held == round_escrow(*spec));
    std::optional<job_status> record;
    f.self->request(links.store, wait, read_atom::value, job_record_key("job-1"))
        .receive(
            [&](bool, std::vector<uint8_t>& v) {
              if (auto r = decode_job_record(v)) record = r->second;
            },
            [&](caf::error& e) { FAIL(f.sys.render(e)); });
    REQUIRE(record.has_value());
    CHECK(record->round == 3);
    CHECK(record->credits_spent == after->credits_spent);
    CHECK(record->device_hours == doctest::Approx(after->device_hours));
    for (const auto& a : {job, links.market, links.reputation, links.ledger, links.store})
      f.self->send_exit(a, caf::exit_reason::user_shutdown);
    f.self->send_exit(slot.worker, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a job failed for stopping too often is never shown running again") {
    // Started once more only to end (its escrow returned, its record written), it took its
    // record's state: shown failed, then running until its escrow was back, then failed,
    // and a cancel meanwhile recorded it "cancelled by its owner".
    job_fixture f(stored_job(2, metered_spec), {}, funded_ledger);
    auto job = asking_job(f);
    REQUIRE(job);
    for (int restarts = 0; restarts < 3; ++restarts) {  // its restart budget
      f.self->send_exit(job, caf::exit_reason::kill);
      auto next = asking_job(f, job);
      REQUIRE_MESSAGE(next, "not restarted after stop " << restarts + 1);
      job = next;
    }
    // Its escrow takes a while to come back: the next two opens fail (asked again 2 s, then
    // 4 s later).
    f.self->send(f.keeper, caf::put_atom::value, open_atom::value, 2);
    f.self->send_exit(job, caf::exit_reason::kill);  // one stop too many: it is failed
    auto s = f.await([](const job_status& s) { return is_terminal(s.state); }, 1);
    REQUIRE_MESSAGE(s.state == job_state::failed, s.detail);
    CHECK_MESSAGE(s.detail.find("the job actor kept stopping") == 0, s.detail);
    std::vector<std::string> seen;
    for (int tries = 0; tries < 90; ++tries) {  // until its end is recorded, and a while after
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      f.self->send(f.keeper, caf::put_atom::value);  // the settlement of its end, once sent
      s = f.status();
      if (!is_terminal(s.state) || s.detail.find("the job actor kept stopping") != 0)
        seen.push_back(std::string(to_string(s.state)) + ": " + s.detail);
      if (tries == 10) {  // its escrow not back yet
        std::string refused;
        f.self->request(f.supervisor, f.wait, cancel_atom::value, f.alice, std::string("job-1"))
            .receive([&](caf::ok_atom) { refused = "acknowledged"; },
                     [&](caf::error& e) { refused = f.sys.render(e); });
        CHECK_MESSAGE(refused.find("has already ended (failed)") != std::string::npos, refused);
      }
    }
    CHECK_MESSAGE(seen.empty(), "after failed, shown " << seen.size() << " time(s) as "
                                                       << (seen.empty() ? "" : seen.front()));
    const auto record = stored_record(f, "job-1");
    REQUIRE(record.has_value());
    CHECK(record->state == job_state::failed);
    CHECK_MESSAGE(record->detail.find("the job actor kept stopping") == 0, record->detail);
  }

  TEST_CASE("a job whose restart cannot read its checkpoint yet tries again, and is not failed") {
    // It was shown as failed ("cannot restart") while its record said running, its escrow
    // held: a restarted core resumed it, and its owner could neither cancel it nor see why.
    job_fixture f(stored_job(), {}, [](job_fixture& f) { return f.sys.spawn(flaky_ledger); });
    auto job = asking_job(f);
    REQUIRE(job);
    f.self->send_exit(job, caf::exit_reason::kill);  // its actor dies
    auto s = f.await(
        [](const job_status& s) {
          return is_terminal(s.state) || s.detail.find("trying again") != std::string::npos;
        },
        5);
    CHECK_MESSAGE(!is_terminal(s.state), s.detail);
    CHECK_MESSAGE(s.detail.find("the store does not answer") != std::string::npos, s.detail);
    CHECK_MESSAGE(asking_job(f, job), "the job was not restarted once the keeper answered");
    CHECK(f.status().state == job_state::running);
  }

  TEST_CASE("a restarted job reads its checkpoint after the keeper's earlier writes") {
    job_fixture f(stored_job(), {}, [](job_fixture& f) { return f.sys.spawn(held_ledger); });
    // Resumed at start (nothing is queued then), it asks the market for workers.
    caf::actor job;
    for (int tries = 0; tries < 100 && !job; ++tries) {
      f.self->request(f.market, f.wait, caf::get_atom::value)
          .receive([&](caf::actor& a) { job = a; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
      if (!job) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    REQUIRE(job);
    const int before = checkpoint_reads(f);
    f.self->send_exit(job, caf::exit_reason::kill);  // its actor dies
    read_once_the_keeper_answers(f, before);
  }

  TEST_CASE(
      "a job supervisor that replaces a dead one reads its jobs after the keeper's "
      "earlier writes") {
    // Only a job's own restart waited for the keeper: a supervisor that died took its jobs'
    // actors with it, and its replacement read their checkpoints at once, a round behind the
    // settlement still in the keeper's queue, and trained and paid for that round again.
    job_fixture f(stored_job(), {}, [](job_fixture& f) { return f.sys.spawn(held_ledger); });
    auto job = asking_job(f);
    REQUIRE(job);  // resumed at start: nothing is queued then, and nothing was asked
    const int before = checkpoint_reads(f);
    replace_supervisor(f);
    read_once_the_keeper_answers(f, before);
    CHECK_MESSAGE(asking_job(f, job), "the job was not resumed once the keeper answered");
  }

  TEST_CASE("a replacing job supervisor whose fence is not answered asks again before it reads") {
    // It resumed its jobs anyway: a round still queued at the busy keeper landed after the
    // checkpoints were read, and was trained and paid for a second time.
    job_fixture f(stored_job(), {}, [](job_fixture& f) { return f.sys.spawn(late_fence_ledger); });
    auto job = asking_job(f);
    REQUIRE(job);
    const int before = checkpoint_reads(f);
    replace_supervisor(f);
    for (int tries = 0; tries < 100 && checkpoint_reads(f) == before; ++tries)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    REQUIRE(checkpoint_reads(f) == before + 1);
    CHECK_MESSAGE(questions_to(f) == 2, "read without an answered fence");
  }

  TEST_CASE("a restarted job takes its figures from its record, not from its last report") {
    // The dead actor's last report could include a round not committed, or miss one that was
    // (its record and checkpoint are written together): its spending and budget were off.
    job_fixture f(stored_job());
    auto job = asking_job(f);
    REQUIRE(job);
    // Round 2 committed elsewhere (the keeper wrote it): 1.5 credits spent, per the record.
    job_status s;
    s.job_id = "job-1";
    s.owner = "user/alice";
    s.state = job_state::running;
    s.round = 2;
    s.credits_spent = 1'500'000;
    store_batch batch;
    batch.keys.push_back(job_record_key("job-1"));
    batch.values.push_back(encode_job_record(k_spec, s));
    f.self->request(f.store, f.wait, commit_atom::value, std::move(batch))
        .receive([](caf::ok_atom) {}, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    CHECK(f.status().credits_spent == 0);            // what the actor reported
    f.self->send_exit(job, caf::exit_reason::kill);  // its actor dies
    REQUIRE(asking_job(f, job));                     // restarted
    auto after = f.await([](const job_status& st) { return st.credits_spent != 0; }, 5);
    CHECK(after.credits_spent == 1'500'000);
    CHECK(after.state == job_state::running);
  }

  TEST_CASE("a job whose actor died after its last round recorded it done keeps that record") {
    // The last round's record says done, written with its checkpoint: an actor that died before
    // it took the store's answer was started again, found every round committed and wrote its
    // end from its last report, a round behind (its accuracy, its curve, its spending).
    job_fixture f(stored_job());
    auto job = asking_job(f);
    REQUIRE(job);
    REQUIRE(f.status().round == 2);  // what the actor reported: round 2 of 3
    job_status done;
    done.job_id = "job-1";
    done.owner = "user/alice";
    done.state = job_state::done;
    done.round = 3;
    done.test_accuracy = 0.875;
    add_round(done.history, {3, 0.25, 0.5, 0.875, true, 12.0});
    const std::vector<float> theta(4 * 3 + 3, 0.25f), momentum(theta.size(), 0.0f);
    checkpoint_view c;
    c.step = 3;
    c.data_set = "c";
    c.vectors = {{"theta", theta}, {"outer_momentum", momentum}};
    store_batch batch;
    batch.keys = {job_record_key("job-1"), job_checkpoint_key("job-1")};
    batch.values.push_back(encode_job_record(k_spec, done));
    batch.values.push_back(encode_checkpoint(c));
    f.self->request(f.store, f.wait, commit_atom::value, std::move(batch))
        .receive([](caf::ok_atom) {}, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    f.self->send_exit(job, caf::exit_reason::kill);  // its actor dies before the answer
    auto s = f.await([](const job_status& s) { return is_terminal(s.state); }, 5);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // an end written again lands
    s = f.status();
    CHECK(s.state == job_state::done);
    CHECK(s.round == 3);
    CHECK(s.test_accuracy == doctest::Approx(0.875));
    CHECK_MESSAGE((!s.history.empty() && s.history.back().round == 3),
                  "history of " << s.history.size() << " point(s)");
    const auto record = stored_record(f, "job-1");
    REQUIRE(record.has_value());
    CHECK(record->state == job_state::done);
    CHECK(record->test_accuracy == doctest::Approx(0.875));
    CHECK_MESSAGE((!record->history.empty() && record->history.back().round == 3),
                  "history of " << record->history.size() << " point(s)");
  }
}
