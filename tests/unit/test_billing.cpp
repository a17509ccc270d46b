/// @file
/// Billing (actors/domain/billing.hpp): what a result costs and how a round's escrow is settled.

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <numeric>

#include "billing.hpp"

using namespace gflex;

namespace {

int64_t sum_of(const std::vector<posting>& postings) {
  return std::accumulate(postings.begin(), postings.end(), int64_t{0},
                         [](int64_t acc, const posting& p) { return acc + p.amount; });
}

int64_t to(const std::vector<posting>& postings, const std::string& account) {
  int64_t total = 0;
  for (const auto& p : postings)
    if (p.account == account) total += p.amount;
  return total;
}

}  // namespace

TEST_SUITE("billing") {
  TEST_CASE("a result costs its node's price for the smaller of the reported and measured time") {
    // 3.6 credits an hour is 1000 micro-credits a second.
    const int64_t price = 3'600'000;
    CHECK(payment_for({"a", price, 2.0, 3.0}, 60.0, 0.1).cost == 2000);
    CHECK(payment_for({"a", price, 5.0, 3.0}, 60.0, 0.1).cost == 3000);  // claims more than seen
    CHECK(payment_for({"a", price, 5.0, 3.0}, 60.0, 0.1).fee == 300);
    CHECK(payment_for({"a", price, 500.0, 500.0}, 60.0, 0.1).cost == 60000);  // the deadline
    // Lies about time pay nothing: NaN, infinite and negative.
    for (double bad : {std::nan(""), std::numeric_limits<double>::infinity(), -1.0}) {
      auto p = payment_for({"a", price, bad, 3.0}, 60.0, 0.1);
      CHECK(p.cost == 0);
      CHECK(p.paid_s == 0.0);
    }
    // A free node's time still counts as device time.
    auto free = payment_for({"a", 0, 2.0, 3.0}, 60.0, 0.1);
    CHECK(free.cost == 0);
    CHECK(free.paid_s == 2.0);
  }

  TEST_CASE("a round's settlement balances: escrow out, nodes, fees, remainder back") {
    const int64_t price = 3'600'000;
    std::vector<billed_result> results{
        {"a", price, 2.0, 3.0}, {"b", price, 4.0, 4.5}, {"a", price, 1.0, 1.0}};
    auto s = settle_round("job-1", 0, 100000, "user/alice", "escrow/job-1", results, 60.0, 0.1);
    CHECK(sum_of(s.postings) == 0);
    CHECK(s.hold == 100000);
    CHECK(s.paid == 7000);
    CHECK(to(s.postings, "escrow/job-1") == -100000);
    CHECK(to(s.postings, "node/a") == 2700);
    CHECK(to(s.postings, "node/b") == 3600);
    CHECK(to(s.postings, ledger_book::platform) == 700);
    CHECK(to(s.postings, "user/alice") == 93000);
    CHECK(s.hours == doctest::Approx(7.0 / 3600.0));
    CHECK(s.memo == "job-1 round 1: 3 assignment(s) paid");
  }

  TEST_CASE("a round that would cost more than its hold pays nothing and returns the hold") {
    std::vector<billed_result> results{{"a", 3'600'000'000, 60.0, 60.0}};
    auto s = settle_round("job-1", 4, 1000, "user/alice", "escrow/job-1", results, 60.0, 0.1);
    CHECK(sum_of(s.postings) == 0);
    CHECK(s.paid == 0);
    CHECK(to(s.postings, "node/a") == 0);
    CHECK(to(s.postings, "user/alice") == 1000);
  }

  TEST_CASE("an unmetered round (no hold) books nothing") {
    auto s = settle_round("job-1", 0, 0, "user/alice", "escrow/job-1", {}, 60.0, 0.1);
    CHECK(s.postings.empty());
    CHECK(s.paid == 0);
  }
}
