/// The ledger keeper under a burst: many account openings and transfers sent at once, as when
/// thousands of new nodes join together. Each entry's sequence number and hash come from the
/// one before, so the keeper must prepare them one at a time in arrival order while their
/// writes go to the store; the chain it leaves in LMDB must verify, every request must be
/// answered, and transfers must see the accounts opened before them.

#include <doctest/doctest.h>

#include <caf/all.hpp>

#include <string>
#include <utility>
#include <vector>

#include "configured_system.hpp"
#include "gflex/accounts.hpp"
#include "ledger_book.hpp"
#include "ledger_keeper.hpp"
#include "messages.hpp"
#include "store.hpp"
#include "temp_dir.hpp"

using namespace gflex;

// An actor system with a store in a fresh directory and a keeper on it.
struct keeper_fixture : test::configured_system {
  test::temp_dir dir;
  caf::actor store;
  caf::actor keeper;
  const std::chrono::seconds timeout{60};

  keeper_fixture() {
    auto s = spawn_store(sys, dir.path());
    REQUIRE(s.has_value());
    store = *s;
    keeper = spawn_ledger_keeper(sys, store);
  }
};

// The same on a store whose commits take longer than the keeper waits for them, as on a
// loaded disk or a slow etcd: every write's request times out, and every write lands.
struct slow_keeper_fixture : test::configured_system {
  test::temp_dir dir;
  caf::actor store;
  caf::actor keeper;
  const std::chrono::seconds timeout{60};

  slow_keeper_fixture() {
    auto s = spawn_store(sys, dir.path(), std::chrono::milliseconds(600));
    REQUIRE(s.has_value());
    store = *s;
    keeper = spawn_ledger_keeper(sys, store, std::chrono::milliseconds(200));
  }
};

TEST_SUITE("ledger_keeper") {
  TEST_CASE_FIXTURE(keeper_fixture,
                    "a credit reference used again for another account or amount is refused") {
    // It was answered with the first credit's entry, as booked: the CLI said bob's 100 credits
    // were booked, and nothing was credited to him.
    for (const char* account : {"user/alice", "user/bob"})
      self->request(keeper, timeout, open_atom::value, std::string(account), false)
          .receive([&](caf::ok_atom) {}, [&](caf::error& e) { FAIL(sys.render(e)); });
    auto credit = [&](const std::string& account, int64_t micro) -> expected<uint64_t> {
      expected<uint64_t> out = error(errc::none, "");
      self->request(keeper, timeout, transfer_atom::value, std::string("credit"),
                    std::string("test"),
                    std::vector<posting>{{"external", -micro}, {account, micro}},
                    credit_operation("INV-1"))
          .receive([&](uint64_t seq) { out = seq; }, [&](caf::error& e) { out = from_caf(e); });
      return out;
    };
    auto first = credit("user/alice", 50'000'000);
    REQUIRE(first.has_value());
    // The same again is a retry: answered with the same entry, nothing booked twice.
    CHECK(credit("user/alice", 50'000'000).value() == *first);
    for (auto [account, micro] :
         {std::pair<const char*, int64_t>{"user/bob", 100'000'000}, {"user/alice", 60'000'000}}) {
      auto other = credit(account, micro);
      REQUIRE_FALSE(other.has_value());
      CHECK(other.error().code() == errc::invalid_argument);
      CHECK_MESSAGE(other.error().message().find("reference INV-1 was credited already, as "
                                                 "user/alice 50") != std::string::npos,
                    other.error().message());
    }
    int64_t bob = -1;
    self->request(keeper, timeout, account_atom::value, std::string("user/bob"))
        .receive([&](account_info& a) { bob = a.balance; },
                 [&](caf::error& e) { FAIL(sys.render(e)); });
    CHECK(bob == 0);
    self->send_exit(keeper, caf::exit_reason::user_shutdown);
    self->send_exit(store, caf::exit_reason::user_shutdown);
  }

  TEST_CASE_FIXTURE(slow_keeper_fixture,
                    "a write that lands after its request timed out is booked, and only once") {
    for (const char* account : {"user/alice", "node/n1"})
      self->request(keeper, timeout, open_atom::value, std::string(account), false)
          .receive([&](caf::ok_atom) {}, [&](caf::error& e) { FAIL(sys.render(e)); });
    uint64_t credited = 0;
    self->request(keeper, timeout, transfer_atom::value, std::string("credit"), std::string("test"),
                  std::vector<posting>{{"external", -100}, {"user/alice", 100}})
        .receive([&](uint64_t seq) { credited = seq; },
                 [&](caf::error& e) { FAIL(sys.render(e)); });
    CHECK(credited == 3);  // each write was answered once it was known to have landed
    // A sender that waits less than the write takes gets a timeout; asked after, the keeper
    // says the operation was booked, and sending it again books nothing new.
    const std::string op = "job-1/0123/hold/0";
    bool timed_out = false;
    self->request(keeper, std::chrono::milliseconds(300), transfer_atom::value, std::string("hold"),
                  std::string("job-1 round 1: escrow"),
                  std::vector<posting>{{"user/alice", -30}, {"node/n1", 30}}, op)
        .receive([&](uint64_t) {},
                 [&](caf::error& e) { timed_out = e == caf::sec::request_timeout; });
    CHECK(timed_out);
    uint64_t seq = 0;
    self->request(keeper, timeout, booked_atom::value, op)
        .receive([&](uint64_t s) { seq = s; }, [&](caf::error& e) { FAIL(sys.render(e)); });
    CHECK(seq == 4);
    uint64_t again = 0;
    self->request(keeper, timeout, transfer_atom::value, std::string("hold"),
                  std::string("job-1 round 1: escrow"),
                  std::vector<posting>{{"user/alice", -30}, {"node/n1", 30}}, op)
        .receive([&](uint64_t s) { again = s; }, [&](caf::error& e) { FAIL(sys.render(e)); });
    CHECK(again == seq);
    uint64_t unknown = 1;
    self->request(keeper, timeout, booked_atom::value, std::string("job-1/0123/hold/1"))
        .receive([&](uint64_t s) { unknown = s; }, [&](caf::error& e) { FAIL(sys.render(e)); });
    CHECK(unknown == 0);
    self->request(keeper, timeout, account_atom::value, std::string("user/alice"))
        .receive([&](account_info& a) { CHECK(a.balance == 70); },
                 [&](caf::error& e) { FAIL(sys.render(e)); });
    self->request(keeper, timeout, ledger_atom::value, std::vector<std::string>{})
        .receive(
            [&](ledger_report& r) {
              CHECK_MESSAGE(r.ok, r.problem);
              CHECK(r.entries == 4);
            },
            [&](caf::error& e) { FAIL(sys.render(e)); });
    // A keeper started on the stored chain knows the operation too.
    self->send_exit(keeper, caf::exit_reason::user_shutdown);
    self->wait_for(keeper);
    keeper = spawn_ledger_keeper(sys, store, std::chrono::milliseconds(200));
    seq = 0;
    self->request(keeper, timeout, booked_atom::value, op)
        .receive([&](uint64_t s) { seq = s; }, [&](caf::error& e) { FAIL(sys.render(e)); });
    CHECK(seq == 4);
    self->send_exit(keeper, caf::exit_reason::user_shutdown);
    self->send_exit(store, caf::exit_reason::user_shutdown);
  }

  TEST_CASE_FIXTURE(
      keeper_fixture,
      "a burst of openings and transfers is booked in order, and the chain verifies") {
    constexpr int nodes = 300;
    // Credit a user first, then send everything at once without waiting for any answer:
    // each node's account opening, then a payment to it, then the same opening again (an
    // error unless exists_ok, which the second one sets).
    bool credited = false;
    self->request(keeper, timeout, open_atom::value, std::string("user/alice"), false)
        .receive([&](caf::ok_atom) {}, [&](caf::error& e) { FAIL(sys.render(e)); });
    self->request(keeper, timeout, transfer_atom::value, std::string("credit"), std::string("test"),
                  std::vector<posting>{{"external", -nodes * 10}, {"user/alice", nodes * 10}})
        .receive([&](uint64_t) { credited = true; }, [&](caf::error& e) { FAIL(sys.render(e)); });
    REQUIRE(credited);
    std::vector<caf::response_handle<caf::blocking_actor, caf::message, true>> opened, paid, again;
    for (int i = 0; i < nodes; ++i) {
      const std::string account = "node/n" + std::to_string(i);
      opened.push_back(self->request(keeper, timeout, open_atom::value, account, false));
      paid.push_back(self->request(keeper, timeout, transfer_atom::value, std::string("pay"),
                                   std::string("test"),
                                   std::vector<posting>{{"user/alice", -10}, {account, 10}}));
      again.push_back(self->request(keeper, timeout, open_atom::value, account, true));
    }
    int ok = 0;
    uint64_t last_seq = 0;
    bool in_order = true;
    for (int i = 0; i < nodes; ++i) {
      opened[i].receive([&](caf::ok_atom) { ++ok; },
                        [&](caf::error& e) { FAIL("open: " << sys.render(e)); });
      paid[i].receive(
          [&](uint64_t seq) {
            ++ok;
            in_order = in_order && seq > last_seq;
            last_seq = seq;
          },
          [&](caf::error& e) { FAIL("transfer: " << sys.render(e)); });
      again[i].receive([&](caf::ok_atom) { ++ok; },
                       [&](caf::error& e) { FAIL("open again: " << sys.render(e)); });
    }
    CHECK(ok == 3 * nodes);
    CHECK(in_order);
    self->request(keeper, timeout, ledger_atom::value, std::vector<std::string>{})
        .receive(
            [&](ledger_report& r) {
              CHECK_MESSAGE(r.ok, r.problem);
              // alice's opening and credit, then an opening and a payment per node.
              CHECK(r.entries == static_cast<uint64_t>(2 + 2 * nodes));
              CHECK(r.issued == nodes * 10);
            },
            [&](caf::error& e) { FAIL(sys.render(e)); });
    self->request(keeper, timeout, account_atom::value, std::string("user/alice"))
        .receive([&](account_info& a) { CHECK(a.balance == 0); },
                 [&](caf::error& e) { FAIL(sys.render(e)); });
    self->send_exit(keeper, caf::exit_reason::user_shutdown);
    self->send_exit(store, caf::exit_reason::user_shutdown);
  }

  TEST_CASE_FIXTURE(keeper_fixture,
                    "a ledger whose stored chain fails its check takes no transaction") {
    self->request(keeper, timeout, open_atom::value, std::string("user/alice"), false)
        .receive([&](caf::ok_atom) {}, [&](caf::error& e) { FAIL(sys.render(e)); });
    self->send_exit(keeper, caf::exit_reason::user_shutdown);
    self->wait_for(keeper);
    // A balance changed behind the ledger's back: the chain no longer adds up to it.
    store_batch tamper;
    tamper.keys.push_back("ledger/balance/user/alice");
    const std::string forged = "5000000";
    tamper.values.emplace_back(forged.begin(), forged.end());
    self->request(store, timeout, commit_atom::value, tamper)
        .receive([&](caf::ok_atom) {}, [&](caf::error& e) { FAIL(sys.render(e)); });
    keeper = spawn_ledger_keeper(sys, store);
    std::string refusal;
    self->request(keeper, timeout, open_atom::value, std::string("user/bob"), false)
        .receive([&](caf::ok_atom) {}, [&](caf::error& e) { refusal = from_caf(e).message(); });
    CHECK(refusal.find("the ledger fails its check") != std::string::npos);
    // Nor does it say an account it cannot read is gone: alice was told "unknown account
    // user/alice", as if her account and credits had never been.
    refusal.clear();
    errc code = errc::none;
    self->request(keeper, timeout, account_atom::value, std::string("user/alice"))
        .receive([&](account_info&) { FAIL("a broken ledger showed an account"); },
                 [&](caf::error& e) {
                   refusal = from_caf(e).message();
                   code = from_caf(e).code();
                 });
    CHECK_MESSAGE(refusal.find("the ledger fails its check: ") == 0, refusal);
    CHECK(code == errc::store_error);
    // An existing account's open (a node's join) is refused too: nothing trusted says it
    // exists.
    refusal.clear();
    self->request(keeper, timeout, open_atom::value, std::string("user/alice"), true)
        .receive([&](caf::ok_atom) {}, [&](caf::error& e) { refusal = from_caf(e).message(); });
    CHECK(refusal.find("the ledger fails its check") != std::string::npos);
    self->send_exit(keeper, caf::exit_reason::user_shutdown);
    self->send_exit(store, caf::exit_reason::user_shutdown);
  }

  TEST_CASE_FIXTURE(
      keeper_fixture,
      "once fenced, a job run of an earlier epoch settles nothing and writes nothing") {
    // A job supervisor that replaced one that died read the job's record while the old job's
    // actor was still evaluating a round; that actor then settled it, and the new one trained
    // and settled it again: the nodes were paid twice and the user charged twice.
    for (const char* account : {"user/alice", "node/n1"})
      self->request(keeper, timeout, open_atom::value, std::string(account), false)
          .receive([&](caf::ok_atom) {}, [&](caf::error& e) { FAIL(sys.render(e)); });
    self->request(keeper, timeout, transfer_atom::value, std::string("credit"), std::string("test"),
                  std::vector<posting>{{"external", -10'000'000}, {"user/alice", 10'000'000}})
        .receive([](uint64_t) {}, [&](caf::error& e) { FAIL(sys.render(e)); });
    auto settle = [&](const std::string& op, const std::string& key) -> expected<bool> {
      expected<bool> out = true;
      store_batch batch;
      batch.keys.push_back(key);
      batch.values.push_back({'r'});
      self->request(keeper, timeout, settle_atom::value, std::string("settle"),
                    std::string("job-1 round 1: paid"),
                    std::vector<posting>{{"user/alice", -1'000'000}, {"node/n1", 1'000'000}},
                    std::move(batch), op)
          .receive([&](caf::ok_atom) {}, [&](caf::error& e) { out = from_caf(e); });
      return out;
    };
    auto stored = [&](const std::string& key) {
      bool found = false;
      self->request(store, timeout, read_atom::value, key)
          .receive([&](bool f, std::vector<uint8_t>&) { found = f; },
                   [&](caf::error& e) { FAIL(sys.render(e)); });
      return found;
    };
    auto balance = [&](const std::string& account) {
      int64_t out = -1;
      self->request(keeper, timeout, account_atom::value, account)
          .receive([&](account_info& a) { out = a.balance; },
                   [&](caf::error& e) { FAIL(sys.render(e)); });
      return out;
    };
    // Before the fence an old epoch's run is booked as any.
    REQUIRE(settle("job-1/a.00000000000000aa/settle/0", "job/one").has_value());
    self->request(keeper, timeout, fence_atom::value, uint64_t{0x14})
        .receive([](caf::ok_atom) {}, [&](caf::error& e) { FAIL(sys.render(e)); });
    auto stale = settle("job-1/13.00000000000000bb/settle/1", "job/stale");
    REQUIRE_FALSE(stale.has_value());
    CHECK(stale.error().code() == errc::permission_denied);
    CHECK_MESSAGE(stale.error().message().find("is of a job run that ended") != std::string::npos,
                  stale.error().message());
    CHECK_FALSE(stored("job/stale"));
    CHECK(balance("node/n1") == 1'000'000);
    // The fence's own epoch and later ones are booked, and so are operations of no epoch.
    for (const char* op : {"job-1/14.00000000000000cc/settle/1",
                           "job-1/ff.00000000000000dd/settle/2", "job-1/00000000000000ee/settle/3"})
      CHECK_MESSAGE(settle(op, std::string("job/") + op).has_value(), op);
    CHECK(balance("node/n1") == 4'000'000);
    self->send_exit(keeper, caf::exit_reason::user_shutdown);
    self->send_exit(store, caf::exit_reason::user_shutdown);
  }

  TEST_CASE_FIXTURE(keeper_fixture,
                    "a settlement writes its batch with its entry, or nothing of it") {
    // The contract a job's rounds rely on (ledger_keeper.hpp), with a real keeper and store:
    // a round's record and checkpoint are written if and only if its payments are booked.
    for (const char* account : {"user/alice", "node/n1"})
      self->request(keeper, timeout, open_atom::value, std::string(account), false)
          .receive([&](caf::ok_atom) {}, [&](caf::error& e) { FAIL(sys.render(e)); });
    self->request(keeper, timeout, transfer_atom::value, std::string("credit"), std::string("test"),
                  std::vector<posting>{{"external", -5'000'000}, {"user/alice", 5'000'000}})
        .receive([](uint64_t) {}, [&](caf::error& e) { FAIL(sys.render(e)); });
    auto settle = [&](int64_t micro, const std::string& key, const std::string& value,
                      const std::string& op) -> expected<bool> {
      expected<bool> out = true;
      store_batch batch;
      batch.keys.push_back(key);
      batch.values.emplace_back(value.begin(), value.end());
      std::vector<posting> postings;
      if (micro != 0) postings = {{"user/alice", -micro}, {"node/n1", micro}};
      self->request(keeper, timeout, settle_atom::value, std::string("settle"),
                    std::string("job-1 round 1: paid"), std::move(postings), std::move(batch), op)
          .receive([&](caf::ok_atom) {}, [&](caf::error& e) { out = from_caf(e); });
      return out;
    };
    auto stored = [&](const std::string& key) {
      std::string value;
      self->request(store, timeout, read_atom::value, key)
          .receive(
              [&](bool found, std::vector<uint8_t>& v) {
                if (found) value.assign(v.begin(), v.end());
              },
              [&](caf::error& e) { FAIL(sys.render(e)); });
      return value;
    };
    auto booked = [&](const std::string& op) {
      uint64_t seq = 0;
      self->request(keeper, timeout, booked_atom::value, op)
          .receive([&](uint64_t s) { seq = s; }, [&](caf::error& e) { FAIL(sys.render(e)); });
      return seq;
    };
    // Refused (it overdraws): nothing of its batch is written, nothing booked.
    auto over = settle(6'000'000, "job/over", "x", "job-1/0.0000000000000001/settle/0");
    REQUIRE_FALSE(over.has_value());
    CHECK(stored("job/over").empty());
    CHECK(booked("job-1/0.0000000000000001/settle/0") == 0);
    // Booked: its batch is written with it.
    REQUIRE(settle(1'000'000, "job/record", "round 1", "job-1/0.0000000000000002/settle/0"));
    CHECK(stored("job/record") == "round 1");
    CHECK(booked("job-1/0.0000000000000002/settle/0") > 0);
    // The same operation again (a retry): answered ok, its batch not written again.
    REQUIRE(settle(1'000'000, "job/record", "again", "job-1/0.0000000000000002/settle/0"));
    CHECK(stored("job/record") == "round 1");
    // No postings: the batch is written, and the operation is not recorded as booked.
    REQUIRE(settle(0, "job/free", "round 2", "job-1/0.0000000000000003/settle/1"));
    CHECK(stored("job/free") == "round 2");
    CHECK(booked("job-1/0.0000000000000003/settle/1") == 0);
    int64_t alice = -1;
    self->request(keeper, timeout, account_atom::value, std::string("user/alice"))
        .receive([&](account_info& a) { alice = a.balance; },
                 [&](caf::error& e) { FAIL(sys.render(e)); });
    CHECK(alice == 4'000'000);  // paid once
    self->send_exit(keeper, caf::exit_reason::user_shutdown);
    self->send_exit(store, caf::exit_reason::user_shutdown);
  }
}
