/// @file
/// A cancel is acknowledged once the job's end is recorded: told "cancelled" while the record
/// still said running, a user saw a core restarted meanwhile resume the job and bill it again.
/// A job cancelled while its round's escrow hold is on its way returns that hold too.

#include <doctest/doctest.h>

#include <optional>

#include "job_fixture.hpp"

using namespace gflex;
using namespace gflex::test;

namespace {

const std::string metered_spec =
    k_spec + "[market]\naccount = \"user/alice\"\nbudget = 100.0\nmax_price = 1.0\n";

// A ledger keeper over the fixture's store: alice's account, holding 100 credits, and job-1's
// escrow open.
caf::actor funded_keeper(job_fixture& f) {
  auto keeper = spawn_ledger_keeper(f.sys, f.store);
  for (const char* account : {"user/alice", "escrow/job-1"})
    f.self->request(keeper, f.wait, open_atom::value, std::string(account), false)
        .receive([](caf::ok_atom) {}, [&](caf::error& e) { FAIL(f.sys.render(e)); });
  f.self
      ->request(keeper, f.wait, transfer_atom::value, std::string("credit"), std::string("test"),
                std::vector<posting>{{"external", -100'000'000}, {"user/alice", 100'000'000}})
      .receive([](uint64_t) {}, [&](caf::error& e) { FAIL(f.sys.render(e)); });
  return keeper;
}

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

// The job's status once its checkpoint is known to be unreadable, within 5 s.
job_status waiting_for_its_checkpoint(job_fixture& f) {
  // Awaited by its words: a slow machine shows the data sets' loading first.
  return f.await(
      [](const job_status& s) {
        return s.detail.find("waiting: its checkpoint cannot be read: ") == 0;
      },
      5);
}

}  // namespace

TEST_SUITE("job cancel") {
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
    int64_t waiting = 0;
    for (int tries = 0; tries < 100 && waiting == 0; ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      f.self->request(f.keeper, f.wait, caf::get_atom::value)
          .receive([&](int64_t n) { waiting = n; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    }
    REQUIRE(waiting == 1);  // the round's hold is on its way
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
    int64_t waiting = 0;
    for (int tries = 0; tries < 100 && waiting == 0; ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      f.self->request(f.keeper, f.wait, caf::get_atom::value)
          .receive([&](int64_t n) { waiting = n; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    }
    REQUIRE(waiting == 1);  // the round's hold is on its way
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
    auto s = waiting_for_its_checkpoint(f);
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
    auto s = waiting_for_its_checkpoint(f);
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
