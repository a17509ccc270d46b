/// @file
/// A cancel is acknowledged once the job's end is recorded: told "cancelled" while the record
/// still said running, a user saw a core restarted meanwhile resume the job and bill it again.
/// A job cancelled while its round's escrow hold is on its way returns that hold too. A hold
/// the ledger could not book (its store failed, its keeper restarted) is asked for again; only
/// one it refused pauses the job for a top-up.

#include <doctest/doctest.h>

#include <algorithm>
#include <optional>

#include "gflex/runtime/identity.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "job_fixture.hpp"

using namespace gflex;
using namespace gflex::test;

namespace {

// `account`'s balance as `keeper` has it.
int64_t balance_of(job_fixture& f, const caf::actor& keeper, const std::string& account) {
  int64_t out = -1;
  f.self->request(keeper, f.wait, account_atom::value, account)
      .receive([&](account_info& i) { out = i.balance; },
               [&](caf::error& e) { FAIL(f.sys.render(e)); });
  return out;
}

// A funded keeper holding 5 credits of escrow/job-1 from an interrupted run's round 3, behind
// a slow_ledger that holds the next round's hold and fails the first open (asked again 2 s
// later, as a keeper still reading its chain is).
caf::actor interrupted_run_ledger(job_fixture& f) {
  auto keeper = funded_keeper(f);
  f.self
      ->request(keeper, f.wait, transfer_atom::value, std::string("hold"),
                std::string("job-1 round 3: escrow"),
                std::vector<posting>{{"user/alice", -5'000'000}, {"escrow/job-1", 5'000'000}},
                std::string())
      .receive([](uint64_t) {}, [&](caf::error& e) { FAIL(f.sys.render(e)); });
  auto ledger = f.sys.spawn(slow_ledger, keeper, true);
  f.self->send(ledger, caf::put_atom::value, open_atom::value, 1);  // before the job asks
  return ledger;
}

// The job's status once it waits for its ledger (or has ended), within 10 s.
job_status waiting_for_the_ledger(job_fixture& f) {
  return f.await(
      [](const job_status& s) {
        return s.detail.find("waiting for the ledger") == 0 || is_terminal(s.state);
      },
      10);
}

// job-1's state as the store's record says it; nullopt if it cannot be read or decoded.
std::optional<job_status> recorded(job_fixture& f) {
  std::optional<job_status> out;
  f.self->request(f.store, f.wait, read_atom::value, job_record_key("job-1"))
      .receive(
          [&](bool, std::vector<uint8_t>& v) {
            if (auto r = decode_job_record(v)) out = r->second;
          },
          [&](caf::error& e) { FAIL(f.sys.render(e)); });
  return out;
}

struct flaky_hold_state {
  caf::actor keeper;
  caf::error failure;  // the next hold's answer, once, unless empty
  int holds = 0;       // holds asked so far
};

// Passes everything on to `keeper`, but answers the first round escrow hold with `failure`
// (the hold not booked): a store that failed the write, or a keeper that restarted and lost
// its queue. (caf::get_atom) -> the holds asked so far; (caf::get_atom, caf::get_atom) ->
// `keeper`.
caf::behavior flaky_hold_ledger(caf::stateful_actor<flaky_hold_state>* self, caf::actor keeper,
                                caf::error failure) {
  self->state.keeper = keeper;
  self->state.failure = std::move(failure);
  self->link_to(keeper);  // it ends with this one, which the fixture ends
  return {
      [=](open_atom a, std::string& account, bool exists_ok) {
        return self->delegate(self->state.keeper, a, std::move(account), exists_ok);
      },
      [=](account_atom a, std::string& account) {
        return self->delegate(self->state.keeper, a, std::move(account));
      },
      [=](booked_atom a, std::string& op) {
        return self->delegate(self->state.keeper, a, std::move(op));
      },
      [=](settle_atom a, std::string& kind, std::string& memo, std::vector<posting>& postings,
          store_batch& batch) {
        return self->delegate(self->state.keeper, a, std::move(kind), std::move(memo),
                              std::move(postings), std::move(batch));
      },
      [=](settle_atom a, std::string& kind, std::string& memo, std::vector<posting>& postings,
          store_batch& batch, std::string& op) {
        return self->delegate(self->state.keeper, a, std::move(kind), std::move(memo),
                              std::move(postings), std::move(batch), std::move(op));
      },
      [=](transfer_atom a, std::string& kind, std::string& memo, std::vector<posting>& postings,
          std::string& op) -> caf::result<uint64_t> {
        if (kind == "hold") {
          self->state.holds += 1;
          if (auto failure = std::exchange(self->state.failure, caf::error{})) return failure;
        }
        auto rp = self->make_response_promise<uint64_t>();
        self->request(self->state.keeper, std::chrono::seconds(30), a, std::move(kind),
                      std::move(memo), std::move(postings), std::move(op))
            .then([=](uint64_t seq) mutable { rp.deliver(seq); },
                  [=](caf::error& e) mutable { rp.deliver(e); });
        return rp;
      },
      [=](caf::get_atom) { return self->state.holds; },
      [=](caf::get_atom, caf::get_atom) { return self->state.keeper; },
  };
}

// A job whose first round escrow hold fails with `failure` asks for it again and goes on,
// with no top-up: a job paused for it waited for good for a top-up its account did not need.
void holds_again_after(const caf::error& failure) {
  auto st = stored_job(2, metered_spec);
  job_fixture f(st, {}, [failure](job_fixture& f) {
    return f.sys.spawn(flaky_hold_ledger, funded_keeper(f), failure);
  });
  auto waiting = f.await(
      [](const job_status& s) {
        return s.detail.find("waiting for the ledger to hold round 3's escrow") == 0 ||
               is_terminal(s.state) || s.state == job_state::paused;
      },
      10);
  CHECK_MESSAGE(waiting.state == job_state::running, waiting.detail);
  CHECK_MESSAGE(waiting.detail.find("waiting for the ledger to hold round 3's escrow") == 0,
                waiting.detail);
  // Asked again 2 s later, the hold is booked and the round looks for its workers.
  auto s = f.await(
      [](const job_status& s) {
        return s.detail.find("waiting for workers") == 0 || is_terminal(s.state) ||
               s.state == job_state::paused;
      },
      10);
  CHECK_MESSAGE(s.state == job_state::running, s.detail);
  CHECK_MESSAGE(s.detail.find("waiting for workers") == 0, s.detail);
  CHECK(s.credits_held > 0);
  int holds = 0;
  f.self->request(f.keeper, f.wait, caf::get_atom::value)
      .receive([&](int n) { holds = n; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
  CHECK(holds == 2);
  caf::actor keeper;  // held after the fixture: a handle outliving its system hangs its end
  f.self->request(f.keeper, f.wait, caf::get_atom::value, caf::get_atom::value)
      .receive([&](caf::actor& k) { keeper = k; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
  CHECK(balance_of(f, keeper, "escrow/job-1") == s.credits_held);
  CHECK(balance_of(f, keeper, "user/alice") == 100'000'000 - s.credits_held);
}

// Alice's job-1, resumed at round 2 of its 3 with a trusted worker for its last round, whose
// commit (record and checkpoint) the store holds; a cancel is sent (by the test, standing for
// the job supervisor) while it is held, and the commit then lands (`applied`) or fails.
// Returns what the cancel was told (empty: acknowledged) and the record's state after it.
std::pair<std::string, std::optional<job_state>> cancel_during_last_commit(bool applied) {
  configured_system f;
  const std::chrono::seconds wait{30};
  auto stored = stored_job();
  stored.held_keys.insert(job_checkpoint_key("job-1"));
  auto spec = parse_job_spec(k_spec, "test");
  REQUIRE(spec.has_value());
  auto catalog = catalog_of(stored);  // made before any actor: a failed REQUIRE leaves none
  auto key = std::make_shared<node_identity>(node_identity::generate());
  worker_slot slot = node_slot(f.sys.spawn(prompt_worker, key, 4 * 3 + 3), "id-w", "w");
  slot.tier = static_cast<uint8_t>(node_tier::core);  // trusted: no re-computation
  slot.public_key = key->public_key();
  job_links links;
  links.store = f.sys.spawn(failing_store, stored);
  links.market = f.sys.spawn(offering_market, std::vector<worker_slot>{slot});
  links.supervisor = caf::actor_cast<caf::actor>(f.self);  // the test stands for it
  links.catalog = catalog;
  auto job = spawn_job(f.sys, resumed_start(stored, k_spec, *spec, 2), links);
  auto stop = [&] {
    for (const auto& a : {job, links.market, links.store, slot.worker})
      f.self->send_exit(a, caf::exit_reason::user_shutdown);
  };
  int64_t held = 0;
  for (int tries = 0; tries < 100 && held == 0; ++tries) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    f.self->request(links.store, wait, caf::get_atom::value, held_atom::value)
        .receive([&](int64_t n) { held = n; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
  }
  if (held != 1) {
    stop();
    FAIL("the last round's commit was not held");
  }
  // The commit is answered 0.5 s into the cancel.
  if (applied)
    f.self->delayed_send(links.store, std::chrono::milliseconds(500), caf::put_atom::value,
                         held_atom::value);
  else
    f.self->delayed_send(links.store, std::chrono::milliseconds(500), caf::put_atom::value,
                         held_atom::value, false);
  std::string told = "no answer";
  f.self->request(job, wait, cancel_atom::value)
      .receive([&](caf::ok_atom) { told.clear(); },
               [&](caf::error& e) { told = from_caf(e).message(); });
  std::optional<job_state> state;
  for (int tries = 0; tries < 50 && !(state && is_terminal(*state)); ++tries) {
    f.self->request(links.store, wait, read_atom::value, job_record_key("job-1"))
        .receive(
            [&](bool, std::vector<uint8_t>& v) {
              if (auto r = decode_job_record(v)) state = r->second.state;
            },
            [&](caf::error& e) { FAIL(f.sys.render(e)); });
    if (!(state && is_terminal(*state)))
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  stop();
  return {told, state};
}

// The jobs whose end the job supervisor of `f` says is recorded (what `gflex ledger verify`
// counts as ended).
std::vector<std::string> recorded_ends(job_fixture& f) {
  std::vector<std::string> out;
  f.self->request(f.supervisor, f.wait, ledger_atom::value)
      .receive([&](std::vector<std::string>& ids) { out = std::move(ids); },
               [&](caf::error& e) { FAIL(f.sys.render(e)); });
  return out;
}

bool names_job_1(const std::vector<std::string>& ids) {
  return std::find(ids.begin(), ids.end(), "job-1") != ids.end();
}

// Alice's metered job-1, resumed at round 2 over a funded keeper, once its round's escrow is
// held and it waits for workers.
job_status holding_its_round(job_fixture& f) {
  auto s = f.await(
      [](const job_status& s) {
        return (s.detail.find("waiting for workers") == 0 && s.credits_held > 0) ||
               is_terminal(s.state);
      },
      10);
  REQUIRE_MESSAGE(s.detail.find("waiting for workers") == 0, s.detail);
  REQUIRE(s.credits_held > 0);
  return s;
}

// A ledger keeper with alice's account and job-1's escrow open, alice's holding nothing.
caf::actor unfunded_keeper(job_fixture& f) {
  auto keeper = spawn_ledger_keeper(f.sys, f.store);
  for (const char* account : {"user/alice", "escrow/job-1"})
    f.self->request(keeper, f.wait, open_atom::value, std::string(account), false)
        .receive([](caf::ok_atom) {}, [&](caf::error& e) { FAIL(f.sys.render(e)); });
  return keeper;
}

}  // namespace

TEST_SUITE("job cancel") {
  TEST_CASE("a job ended is shown holding its escrow, and not counted ended, until its release") {
    // Its status said "0 in escrow" from the moment it ended, and the ledger's audit counted it
    // ended, while the release (written with its end record, again and again while the store
    // failed) had not landed: `gflex ledger verify` failed in that window.
    job_fixture f(stored_job(2, metered_spec), {}, [](job_fixture& f) { return funded_keeper(f); });
    const auto running = holding_its_round(f);
    f.self->send(f.store, caf::put_atom::value, job_record_key("job-1"), 2);  // two writes fail
    std::string answer;
    f.self->request(f.supervisor, f.wait, cancel_atom::value, f.alice, std::string("job-1"))
        .receive([&](caf::ok_atom) { answer = "acknowledged"; },
                 [&](caf::error& e) { answer = f.sys.render(e); });
    CHECK_MESSAGE(answer.find("its end is not recorded yet") != std::string::npos, answer);
    // Read in this order, each before the escrow: a release that lands in between makes
    // neither look wrong.
    int shown_empty = 0, counted_early = 0, shown_held = 0;
    int64_t escrow = -1, escrow_shown_empty = 0;
    job_status s;
    for (int tries = 0; tries < 100; ++tries) {
      s = f.status();
      const bool counted = names_job_1(recorded_ends(f));
      escrow = balance_of(f, f.keeper, "escrow/job-1");
      if (escrow != 0 && is_terminal(s.state) && s.credits_held == 0) {
        ++shown_empty;
        escrow_shown_empty = escrow;
      }
      if (escrow != 0 && counted) ++counted_early;
      if (escrow != 0 && is_terminal(s.state) && s.credits_held == escrow) ++shown_held;
      if (escrow == 0 && s.credits_held == 0 && counted) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    CHECK_MESSAGE(shown_empty == 0,
                  "shown ended with 0 in escrow while escrow held " << escrow_shown_empty);
    CHECK(counted_early == 0);
    CHECK(shown_held > 0);  // the window was seen
    CHECK(s.state == job_state::cancelled);
    CHECK(s.credits_held == 0);
    CHECK(escrow == 0);
    CHECK(balance_of(f, f.keeper, "user/alice") == 100'000'000);
    const auto ended = recorded_ends(f);
    CHECK(names_job_1(ended));
    ledger_report report;
    f.self->request(f.keeper, f.wait, ledger_atom::value, ended)
        .receive([&](ledger_report& r) { report = std::move(r); },
                 [&](caf::error& e) { FAIL(f.sys.render(e)); });
    CHECK_MESSAGE(report.ok, report.problem);
    CHECK(running.credits_held > 0);
  }

  TEST_CASE("a job whose actor dies after it ended, before its end is recorded, ends again") {
    // Shown ended, its actor gone, it was left so: its record said running and its escrow
    // stayed held until a core restarted and resumed it.
    job_fixture f(stored_job(2, metered_spec), {}, [](job_fixture& f) { return funded_keeper(f); });
    holding_its_round(f);
    caf::actor job;  // the job's actor asked the market for workers
    f.self->request(f.market, f.wait, caf::get_atom::value)
        .receive([&](caf::actor& a) { job = a; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    REQUIRE(job);
    f.self->send(f.store, caf::put_atom::value, job_record_key("job-1"), 1000);  // writes fail
    f.self->request(f.supervisor, f.wait, cancel_atom::value, f.alice, std::string("job-1"))
        .receive([](caf::ok_atom) {}, [](caf::error&) {});  // not recorded yet
    f.self->send_exit(job, caf::exit_reason::kill);
    f.self->send(f.store, caf::put_atom::value, job_record_key("job-1"), 0);  // the store heals
    std::optional<job_status> record;
    for (int tries = 0; tries < 150 && !(record && is_terminal(record->state)); ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      record = recorded(f);
    }
    REQUIRE(record.has_value());
    CHECK_MESSAGE(record->state == job_state::cancelled,
                  "the record says " << std::string(to_string(record->state)));
    CHECK_MESSAGE(record->detail == "cancelled by its owner", record->detail);
    CHECK(balance_of(f, f.keeper, "escrow/job-1") == 0);
    CHECK(balance_of(f, f.keeper, "user/alice") == 100'000'000);
  }

  TEST_CASE("a cancel while the last round's commit is on its way waits for it: done stays done") {
    // The job showed done from the moment the commit was sent: a cancel then was taken, and a
    // job whose every round committed was recorded "cancelled by its owner".
    const auto out = cancel_during_last_commit(true);
    const std::string& answer = out.first;
    const auto& state = out.second;
    CHECK_MESSAGE(answer.find("has already ended (done)") != std::string::npos, answer);
    REQUIRE(state.has_value());
    CHECK(*state == job_state::done);
  }

  TEST_CASE("a cancel while the last round's commit is on its way ends the job if it fails") {
    const auto out = cancel_during_last_commit(false);
    const std::string& answer = out.first;
    const auto& state = out.second;
    CHECK_MESSAGE(answer.empty(), answer);
    REQUIRE(state.has_value());
    CHECK(*state == job_state::cancelled);
  }

  TEST_CASE("a round's hold that the ledger's store failed is asked again, not paused") {
    holds_again_after(to_caf(error(errc::store_error, "ledger/head: the store did not answer")));
  }

  TEST_CASE("a round's hold lost with a restarted ledger keeper is asked again, not paused") {
    // Not booked (the job asks): the keeper went down with the hold in its queue.
    holds_again_after(caf::make_error(caf::sec::request_receiver_down));
  }

  TEST_CASE("a job cancelled while it waits to ask for its round's hold again ends at once") {
    auto st = stored_job(2, metered_spec);
    job_fixture f(st, {}, [](job_fixture& f) {
      return f.sys.spawn(flaky_hold_ledger, funded_keeper(f),
                         to_caf(error(errc::store_error, "the store did not answer")));
    });
    auto waiting = f.await(
        [](const job_status& s) { return s.detail.find("waiting for the ledger to hold") == 0; },
        10);
    REQUIRE_MESSAGE(waiting.detail.find("waiting for the ledger to hold") == 0, waiting.detail);
    caf::actor keeper;  // held after the fixture: a handle outliving its system hangs its end
    f.self->request(f.keeper, f.wait, caf::get_atom::value, caf::get_atom::value)
        .receive([&](caf::actor& k) { keeper = k; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    f.self
        ->request(f.supervisor, std::chrono::seconds(1), cancel_atom::value, f.alice,
                  std::string("job-1"))
        .receive([](caf::ok_atom) {}, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    auto record = recorded(f);
    REQUIRE(record.has_value());
    CHECK(record->state == job_state::cancelled);
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // past the hold's next ask
    int holds = 0;
    f.self->request(f.keeper, f.wait, caf::get_atom::value)
        .receive([&](int n) { holds = n; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    CHECK(holds == 1);
    CHECK(balance_of(f, keeper, "escrow/job-1") == 0);
    CHECK(balance_of(f, keeper, "user/alice") == 100'000'000);
  }

  TEST_CASE("a round's hold that the account cannot cover pauses the job until a top-up") {
    auto st = stored_job(2, metered_spec);
    job_fixture f(st, {}, [](job_fixture& f) { return unfunded_keeper(f); });
    auto s = f.await(
        [](const job_status& s) { return s.state == job_state::paused || is_terminal(s.state); },
        10);
    CHECK(s.state == job_state::paused);
    CHECK_MESSAGE(s.detail.find("the account user/alice cannot hold round 3's escrow") == 0,
                  s.detail);
    CHECK_MESSAGE(s.detail.find("would go below zero") != std::string::npos, s.detail);
  }

  TEST_CASE("a job at the budget's cap paused for its account resumes at a top-up of 0") {
    // Every top-up of a job whose budget is at the cap (1e12 credits) passed it and was
    // refused: paused because its account was short, the job could never resume once the
    // account was credited.
    auto st = stored_job(2, k_spec +
                                "[market]\naccount = \"user/alice\"\nbudget = 1000000000000\n"
                                "max_price = 1.0\n");
    job_fixture f(st, {}, [](job_fixture& f) { return unfunded_keeper(f); });
    auto s = f.await(
        [](const job_status& s) { return s.state == job_state::paused || is_terminal(s.state); },
        10);
    REQUIRE(s.state == job_state::paused);
    CHECK(s.budget == max_amount_micro);
    CHECK_MESSAGE(s.detail.find("the account user/alice cannot hold round 3's escrow") == 0,
                  s.detail);
    CHECK_MESSAGE(s.detail.find("an AMOUNT of 0 leaves its budget as it is") != std::string::npos,
                  s.detail);
    f.self
        ->request(f.keeper, f.wait, transfer_atom::value, std::string("credit"),
                  std::string("test"),
                  std::vector<posting>{{"external", -100'000'000}, {"user/alice", 100'000'000}})
        .receive([](uint64_t) {}, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    auto topup = [&](int64_t amount) {
      std::string answer;
      f.self
          ->request(f.supervisor, f.wait, topup_atom::value, f.alice, std::string("job-1"), amount)
          .receive([&](caf::ok_atom) { answer = "ok"; },
                   [&](caf::error& e) { answer = from_caf(e).message(); });
      return answer;
    };
    const auto past = topup(1'000'000);
    CHECK_MESSAGE(past.find("past 1e12 credits") != std::string::npos, past);
    const auto resumed = topup(0);
    CHECK_MESSAGE(resumed == "ok", resumed);
    s = f.await(
        [](const job_status& s) {
          return (s.detail.find("waiting for workers") == 0 && s.credits_held > 0) ||
                 is_terminal(s.state);
        },
        10);
    CHECK(s.state == job_state::running);
    CHECK_MESSAGE(s.detail.find("waiting for workers") == 0, s.detail);
    CHECK(s.credits_held > 0);
    CHECK(s.budget == max_amount_micro);
    CHECK(balance_of(f, f.keeper, "escrow/job-1") == s.credits_held);
    // Running, it needs no resuming: a top-up of 0 is refused, and says why.
    const auto again = topup(0);
    CHECK_MESSAGE(again.find("a top-up of 0 only resumes a job paused because its account") == 0,
                  again);
  }

  TEST_CASE("a cancel whose record cannot be written is an error, and the end is written again") {
    // The job quit when its end record could not be written: shown as cancelled, its record
    // said running, a second cancel was refused ("has ended"), and the next core to start
    // resumed it, training and billing again.
    job_fixture f(stored_job());
    auto s =
        f.await([](const job_status& s) { return s.detail.find("waiting for workers") == 0; }, 10);
    REQUIRE(s.state == job_state::running);
    f.self->send(f.store, caf::put_atom::value, job_record_key("job-1"), 2);  // two writes fail
    bool acknowledged = false;
    std::string refused;
    f.self->request(f.supervisor, f.wait, cancel_atom::value, f.alice, std::string("job-1"))
        .receive([&](caf::ok_atom) { acknowledged = true; },
                 [&](caf::error& e) { refused = f.sys.render(e); });
    CHECK_FALSE(acknowledged);
    CHECK_MESSAGE(refused.find("its end is not recorded yet") != std::string::npos, refused);
    // Written again after 1 s (failing), then after 2 s more.
    std::optional<job_status> recorded;
    for (int tries = 0; tries < 100 && !(recorded && recorded->state == job_state::cancelled);
         ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      f.self->request(f.store, f.wait, read_atom::value, job_record_key("job-1"))
          .receive(
              [&](bool, std::vector<uint8_t>& v) {
                if (auto r = decode_job_record(v)) recorded = r->second;
              },
              [&](caf::error& e) { FAIL(f.sys.render(e)); });
    }
    REQUIRE(recorded.has_value());
    CHECK(recorded->state == job_state::cancelled);
  }

  TEST_CASE("a cancel is acknowledged with its end recorded") {
    job_fixture f(stored_job());
    f.await([](const job_status& s) { return s.detail.find("waiting for workers") == 0; }, 10);
    f.self->request(f.supervisor, f.wait, cancel_atom::value, f.alice, std::string("job-1"))
        .receive([](caf::ok_atom) {}, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    CHECK(f.status().state == job_state::cancelled);
  }

  TEST_CASE("a job cancelled while its round's hold is on its way returns the hold too") {
    // Its end returned what escrow held before the hold was booked, and the job quit: the
    // hold, booked after, stayed in escrow for good ("ended jobs still hold credits").
    auto st = stored_job(2, metered_spec);
    job_fixture f(st, {}, [](job_fixture& f) {
      auto keeper = funded_keeper(f);
      return f.sys.spawn(slow_ledger, keeper, true);
    });
    await_held_request(f);  // the round's hold is on its way
    caf::actor keeper;      // held after the fixture: a handle outliving its system hangs its end
    f.self->request(f.keeper, f.wait, caf::get_atom::value, caf::get_atom::value)
        .receive([&](caf::actor& k) { keeper = k; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    auto cancel =
        f.self->request(f.supervisor, f.wait, cancel_atom::value, f.alice, std::string("job-1"));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    f.self->send(f.keeper, caf::put_atom::value);  // the hold is booked
    cancel.receive([](caf::ok_atom) {}, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    CHECK(f.status().state == job_state::cancelled);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // a hold booked after the end
    auto balance = [&](const std::string& account) { return balance_of(f, keeper, account); };
    CHECK(balance("escrow/job-1") == 0);
    CHECK(balance("user/alice") == 100'000'000);
  }

  TEST_CASE("a second cancel while the end waits for its round is acknowledged once recorded") {
    // The job ended at the first, and waited for its round's hold before writing its end: the
    // second was answered "ok" at once, its record still saying running, and a core stopped
    // then resumed the job.
    auto st = stored_job(2, metered_spec);
    job_fixture f(st, {}, [](job_fixture& f) {
      auto keeper = funded_keeper(f);
      return f.sys.spawn(slow_ledger, keeper, true);
    });
    await_held_request(f);  // the round's hold is on its way
    auto first =
        f.self->request(f.supervisor, f.wait, cancel_atom::value, f.alice, std::string("job-1"));
    auto second =
        f.self->request(f.supervisor, f.wait, cancel_atom::value, f.alice, std::string("job-1"));
    // The hold is booked in 0.5 s; the end is written after it.
    f.self->delayed_send(f.keeper, std::chrono::milliseconds(500), caf::put_atom::value);
    second.receive([](caf::ok_atom) {}, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    auto record = recorded(f);
    REQUIRE(record.has_value());
    CHECK_MESSAGE(record->state == job_state::cancelled,
                  "acknowledged while the record said " << std::string(to_string(record->state)));
    first.receive([](caf::ok_atom) {}, [&](caf::error& e) { FAIL(f.sys.render(e)); });
  }

  TEST_CASE("a job cancelled while it waits for its checkpoint is acknowledged once recorded") {
    // Started only to end, it was acknowledged at once: its end record not written yet (or
    // failing), a core stopped meanwhile resumed it.
    auto st = stored_job();
    st.unreadable.insert(job_checkpoint_key("job-1"));
    job_fixture f(st);
    auto s = await_checkpoint_wait(f);
    REQUIRE_MESSAGE(s.detail.find("waiting: its checkpoint cannot be read: ") == 0, s.detail);
    f.self->send(f.store, caf::put_atom::value, job_record_key("job-1"), 2);  // two writes fail
    std::string refused;
    f.self->request(f.supervisor, f.wait, cancel_atom::value, f.alice, std::string("job-1"))
        .receive([&](caf::ok_atom) { refused = "acknowledged"; },
                 [&](caf::error& e) { refused = f.sys.render(e); });
    CHECK_MESSAGE(refused.find("its end is not recorded yet") != std::string::npos, refused);
    // Written again after 1 s (failing), then after 2 s more.
    std::optional<job_status> record;
    for (int tries = 0; tries < 100 && !(record && record->state == job_state::cancelled);
         ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      record = recorded(f);
    }
    REQUIRE(record.has_value());
    CHECK(record->state == job_state::cancelled);
    CHECK_MESSAGE(record->detail.find("cancelled while it waited: waiting: its checkpoint") == 0,
                  record->detail);
  }

  TEST_CASE("a metered job cancelled while it waits for its checkpoint returns its escrow first") {
    // Its interrupted run's escrow is asked back before its end is written (the ledger fails
    // the first ask): the cancel is acknowledged after both, with the words of why it waited.
    auto st = stored_job(2, metered_spec);
    st.unreadable.insert(job_checkpoint_key("job-1"));
    job_fixture f(st, {}, interrupted_run_ledger);
    auto s = await_checkpoint_wait(f);
    REQUIRE_MESSAGE(s.detail.find("waiting: its checkpoint cannot be read: ") == 0, s.detail);
    caf::actor keeper;  // held after the fixture: a handle outliving its system hangs its end
    f.self->request(f.keeper, f.wait, caf::get_atom::value, caf::get_atom::value)
        .receive([&](caf::actor& k) { keeper = k; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    f.self->request(f.supervisor, f.wait, cancel_atom::value, f.alice, std::string("job-1"))
        .receive([](caf::ok_atom) {}, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    auto record = recorded(f);
    REQUIRE(record.has_value());
    CHECK_MESSAGE(record->state == job_state::cancelled,
                  "acknowledged while the record said " << std::string(to_string(record->state)));
    CHECK_MESSAGE(record->detail.find("cancelled while it waited: waiting: its checkpoint") == 0,
                  record->detail);
    CHECK(balance_of(f, keeper, "escrow/job-1") == 0);
    CHECK(balance_of(f, keeper, "user/alice") == 100'000'000);
  }

  TEST_CASE("a job that cannot resume, cancelled while its escrow comes back, ends failed") {
    // Its checkpoint damaged, it waited for its interrupted run's escrow before it failed: a
    // cancel then recorded "cancelled by its owner", and why it could not go on was lost.
    auto st = stored_job(2, metered_spec);
    st.kept[job_checkpoint_key("job-1")] = {1, 2, 3, 4};
    job_fixture f(st, {}, interrupted_run_ledger);
    // It says why it ends while it waits for the ledger (the first open fails).
    auto waiting = f.await(
        [](const job_status& s) {
          return s.detail.find("waiting for the ledger") != std::string::npos ||
                 is_terminal(s.state);
        },
        10);
    REQUIRE_MESSAGE(!is_terminal(waiting.state), waiting.detail);
    CHECK_MESSAGE(waiting.detail.find("its checkpoint is damaged (") == 0, waiting.detail);
    CHECK_MESSAGE(waiting.detail.find(": the job cannot resume from it; waiting for the ledger") !=
                      std::string::npos,
                  waiting.detail);
    caf::actor keeper;  // held after the fixture: a handle outliving its system hangs its end
    f.self->request(f.keeper, f.wait, caf::get_atom::value, caf::get_atom::value)
        .receive([&](caf::actor& k) { keeper = k; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    std::string answer;
    f.self->request(f.supervisor, f.wait, cancel_atom::value, f.alice, std::string("job-1"))
        .receive([&](caf::ok_atom) { answer = "acknowledged"; },
                 [&](caf::error& e) { answer = f.sys.render(e); });
    CHECK_MESSAGE(answer.find("'job-1' has already ended (failed: its checkpoint is damaged (") !=
                      std::string::npos,
                  answer);
    // Its end is written once the escrow is back (the open is asked again 2 s later).
    auto s = f.await([](const job_status& s) { return is_terminal(s.state); }, 10);
    CHECK(s.state == job_state::failed);
    std::optional<job_status> record;
    for (int tries = 0; tries < 50 && !(record && is_terminal(record->state)); ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      record = recorded(f);
    }
    REQUIRE(record.has_value());
    CHECK(record->state == job_state::failed);
    CHECK(record->round == 2);
    CHECK_MESSAGE(record->detail.find("its checkpoint is damaged (") == 0, record->detail);
    CHECK(balance_of(f, keeper, "escrow/job-1") == 0);
    CHECK(balance_of(f, keeper, "user/alice") == 100'000'000);
  }

  TEST_CASE("a job cancelled while its interrupted run's escrow is not back yet returns it") {
    // Its end returned only what this run held: the escrow of the interrupted run, still
    // being asked back, stayed held for good.
    auto st = stored_job(2, metered_spec);
    job_fixture f(st, {}, interrupted_run_ledger);
    auto waiting = waiting_for_the_ledger(f);
    REQUIRE_MESSAGE(waiting.detail.find("waiting for the ledger") == 0, waiting.detail);
    caf::actor keeper;  // held after the fixture: a handle outliving its system hangs its end
    f.self->request(f.keeper, f.wait, caf::get_atom::value, caf::get_atom::value)
        .receive([&](caf::actor& k) { keeper = k; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    f.self->request(f.supervisor, f.wait, cancel_atom::value, f.alice, std::string("job-1"))
        .receive([](caf::ok_atom) {}, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    CHECK(f.status().state == job_state::cancelled);
    auto balance = [&](const std::string& account) { return balance_of(f, keeper, account); };
    CHECK(balance("escrow/job-1") == 0);
    CHECK(balance("user/alice") == 100'000'000);
  }

  TEST_CASE(
      "a resumed job whose ledger does not answer at once waits for it, then returns its "
      "interrupted run's escrow") {
    // A core starting has its ledger keeper read (and hash) the whole chain first: a job
    // resumed meanwhile failed for good ("cannot open escrow: request timed out"), and the
    // escrow its interrupted run held stayed held.
    auto st = stored_job(2, metered_spec);
    job_fixture f(st, {}, interrupted_run_ledger);
    auto waiting = waiting_for_the_ledger(f);
    CHECK_MESSAGE(waiting.state == job_state::running, waiting.detail);
    CHECK_MESSAGE(waiting.detail.find("waiting for the ledger") == 0, waiting.detail);
    caf::actor keeper;  // held after the fixture: a handle outliving its system hangs its end
    f.self->request(f.keeper, f.wait, caf::get_atom::value, caf::get_atom::value)
        .receive([&](caf::actor& k) { keeper = k; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    auto balance = [&](const std::string& account) { return balance_of(f, keeper, account); };
    int64_t escrow = -1;
    for (int tries = 0; tries < 100 && escrow != 0; ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      escrow = balance("escrow/job-1");
    }
    CHECK(escrow == 0);
    CHECK(balance("user/alice") == 100'000'000);
    CHECK(f.status().state == job_state::running);
  }
}
