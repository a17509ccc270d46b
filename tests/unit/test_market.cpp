#include <doctest/doctest.h>

#include <limits>

#include <cmath>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "ledger_book.hpp"
#include "matcher.hpp"
#include "reputation.hpp"

using namespace gflex;

namespace {

int64_t cr(const char* text) {
  return parse_credits(text).value();
}

// A book with user/alice holding 100 credits and node/n1 open.
ledger_book funded_book(std::vector<ledger_entry>* log = nullptr) {
  ledger_book book;
  auto book_it = [&](expected<ledger_entry> e) {
    REQUIRE_MESSAGE(e.has_value(), e.error().message());
    book.apply(*e);
    if (log) log->push_back(*e);
  };
  book_it(book.prepare_open("user/alice", 1));
  book_it(book.prepare_open("node/n1", 2));
  book_it(
      book.prepare("credit", "operator", {{"user/alice", cr("100")}, {"external", -cr("100")}}, 3));
  return book;
}

}  // namespace

TEST_SUITE("ledger") {
  TEST_CASE("the credits issued stay within int64: the external account never reaches its floor") {
    // Its balance could reach INT64_MIN exactly, and the credits issued (that balance
    // negated, in the keeper and in the audit) then overflowed.
    ledger_book book;
    auto book_it = [&](expected<ledger_entry> e) {
      REQUIRE_MESSAGE(e.has_value(), e.error().message());
      book.apply(*e);
    };
    book_it(book.prepare_open("user/alice", 1));
    book_it(book.prepare_open("user/bob", 2));
    for (int i = 0; i < 9; ++i)  // 9e18 micro-credits issued, at most 1e18 a posting
      book_it(book.prepare(
          "credit", "operator",
          {{i % 2 ? "user/alice" : "user/bob", max_amount_micro}, {"external", -max_amount_micro}},
          3 + i));
    const int64_t to_floor = book.balance("external") - std::numeric_limits<int64_t>::min();
    auto at_floor =
        book.prepare("credit", "operator", {{"user/alice", to_floor}, {"external", -to_floor}}, 20);
    REQUIRE_FALSE(at_floor.has_value());
    CHECK(at_floor.error().message().find("range") != std::string::npos);
    book_it(book.prepare("credit", "operator",
                         {{"user/alice", to_floor - 1}, {"external", -(to_floor - 1)}}, 21));
  }

  TEST_CASE("amounts parse exactly and refuse what is not an amount") {
    CHECK(parse_credits("12").value() == 12'000'000);
    CHECK(parse_credits("0.25").value() == 250'000);
    CHECK(parse_credits("0.000001").value() == 1);
    CHECK(parse_credits("1000000000000").value() == max_amount_micro);
    for (const char* bad : {"", "-1", "1.", ".5", "1e3", "0.0000001", "abc", "1,5",
                            "10000000000000", "1000000000000.5", " 1"}) {
      CAPTURE(bad);
      auto r = parse_credits(bad);
      REQUIRE_FALSE(r.has_value());
      CHECK(r.error().code() == errc::invalid_argument);
    }
    CHECK(format_credits(12'500'000) == "12.5");
    CHECK(format_credits(1) == "0.000001");
    CHECK(format_credits(-3'000'000) == "-3");
  }

  TEST_CASE("transactions balance, stay non-negative, and name open accounts") {
    auto book = funded_book();
    CHECK(book.balance("user/alice") == cr("100"));
    CHECK(book.balance(ledger_book::external) == -cr("100"));
    auto ok = book.prepare("hold", "job-1 round 1",
                           {{"user/alice", -cr("10")}, {"node/n1", cr("10")}}, 4);
    REQUIRE(ok.has_value());
    auto refused = [&](std::vector<posting> p, const char* why) {
      auto before = book.balances();
      auto r = book.prepare("pay", "", std::move(p), 5);
      REQUIRE_FALSE(r.has_value());
      CHECK(r.error().code() == errc::invalid_argument);
      CHECK_MESSAGE(r.error().message().find(why) != std::string::npos, r.error().message());
      CHECK(book.balances() == before);
    };
    refused({{"user/alice", -cr("101")}, {"node/n1", cr("101")}}, "below zero");  // overdraft
    refused({{"user/alice", -cr("1")}, {"node/n1", cr("2")}}, "do not balance");
    refused({{"user/bob", -cr("1")}, {"node/n1", cr("1")}}, "unknown account user/bob");
    refused({{"user/alice", 0}, {"node/n1", 0}}, "zero");
    refused({{"user/alice", -cr("1")}}, "at least two postings");
    CHECK_FALSE(book.prepare_open("user/alice", 6).has_value());  // exists
    CHECK_FALSE(book.prepare_open("admin", 6).has_value());
    CHECK_FALSE(book.prepare_open("user/../x", 6).has_value());
    CHECK_FALSE(book.prepare("open", "user/x", {}, 6).has_value());
  }

  TEST_CASE("credits that would take a balance past int64's range are refused") {
    // Each posting is at most 1e12 credits, a balance had no bound: enough credits issued
    // wrapped the external account's balance (and would a user's), undefined behaviour.
    auto book = funded_book();
    int64_t issued = 0;
    std::optional<error> refusal;
    for (int i = 0; i < 20 && !refusal; ++i) {
      auto e =
          book.prepare("credit", "operator",
                       {{"user/alice", max_amount_micro}, {"external", -max_amount_micro}}, 10 + i);
      if (!e) {
        refusal = e.error();
        break;
      }
      book.apply(*e);
      issued += max_amount_micro;
    }
    REQUIRE(refusal.has_value());
    CHECK(refusal->code() == errc::invalid_argument);
    CHECK_MESSAGE(refusal->message().find("range") != std::string::npos, refusal->message());
    CHECK(book.balance("user/alice") == cr("100") + issued);
    CHECK(book.balance(ledger_book::external) == -cr("100") - issued);
  }

  TEST_CASE("an operator's credit reference names one operation of its own") {
    CHECK(is_credit_reference("INV-2026.12_04"));
    CHECK(is_credit_reference(std::string(128, 'r')));
    CHECK_FALSE(is_credit_reference(""));
    CHECK_FALSE(is_credit_reference(std::string(129, 'r')));
    CHECK_FALSE(is_credit_reference("a b"));
    // No slash: a reference cannot reach into a job's operations ("JOB/RUN/hold/3").
    CHECK_FALSE(is_credit_reference("job-1/00ff/hold/0"));
    CHECK(credit_operation("INV-7") == "operator-credit/INV-7");
    CHECK(is_operation_id(credit_operation(std::string(128, 'r'))));
  }

  TEST_CASE("a named operation is booked once; the chain keeps its name and refuses a second") {
    std::vector<ledger_entry> log;
    auto book = funded_book(&log);
    const std::string op = "job-1/00ff/hold/0";
    auto hold = book.prepare("hold", "job-1 round 1: escrow",
                             {{"user/alice", -cr("10")}, {"node/n1", cr("10")}}, 7, op);
    REQUIRE(hold.has_value());
    CHECK(book.booked(op) == 0);
    book.apply(*hold);
    log.push_back(*hold);
    CHECK(book.booked(op) == hold->seq);
    CHECK(book.booked("job-1/00ff/hold/1") == 0);
    // The same operation again is refused, whatever its postings, and changes nothing.
    const auto before = book.balances();
    auto again = book.prepare("hold", "job-1 round 1: escrow",
                              {{"user/alice", -cr("1")}, {"node/n1", cr("1")}}, 8, op);
    REQUIRE_FALSE(again.has_value());
    CHECK(again.error().message().find("booked already") != std::string::npos);
    CHECK(book.balances() == before);
    CHECK_FALSE(
        book.prepare("hold", "", {{"user/alice", -1}, {"node/n1", 1}}, 8, "a b").has_value());
    CHECK_FALSE(
        book.prepare("hold", "", {{"user/alice", -1}, {"node/n1", 1}}, 8, std::string(257, 'a'))
            .has_value());
    // The name is part of the entry: it round-trips, and an entry without one keeps the form
    // (and hash) of entries booked before operations were named.
    auto back = decode_entry(encode_entry(*hold));
    REQUIRE(back.has_value());
    CHECK(back->op == op);
    CHECK(encode_entry(log[0]).find("\"op\"") == std::string::npos);
    CHECK(verify_ledger(log, book.balances(), book.last_seq()).ok);
    // A chain that books an operation twice fails its check, even re-hashed.
    auto twice = book.prepare("hold", "job-1 round 1: escrow",
                              {{"user/alice", -cr("1")}, {"node/n1", cr("1")}}, 8);
    REQUIRE(twice.has_value());
    twice->op = op;
    twice->hash = entry_hash(*twice);
    auto replayed = book;
    replayed.apply(*twice);
    auto doubled = log;
    doubled.push_back(*twice);
    auto audit = verify_ledger(doubled, replayed.balances(), replayed.last_seq());
    CHECK_FALSE(audit.ok);
    CHECK_MESSAGE(audit.problem.find("booked already") != std::string::npos, audit.problem);
    auto renamed = encode_entry(*hold);
    renamed.replace(renamed.find(op), op.size(), "job 1");
    CHECK_FALSE(decode_entry(renamed).has_value());  // a malformed name is malformed
  }

  TEST_CASE("entries round-trip and the chain verifies; any change is found") {
    std::vector<ledger_entry> log;
    auto book = funded_book(&log);
    auto pay = book.prepare(
        "settle", "job-1 round 1 a=00ff",
        {{"user/alice", -cr("3")}, {"node/n1", cr("2.7")}, {ledger_book::platform, cr("0.3")}}, 9);
    REQUIRE(pay.has_value());
    book.apply(*pay);
    log.push_back(*pay);
    for (auto& e : log) {
      auto back = decode_entry(encode_entry(e));
      REQUIRE(back.has_value());
      CHECK(encode_entry(*back) == encode_entry(e));
    }
    auto audit = verify_ledger(log, book.balances(), book.last_seq());
    CHECK_MESSAGE(audit.ok, audit.problem);
    CHECK(audit.entries == 4);
    CHECK(audit.issued == cr("100"));

    auto tampered = log;
    tampered[2].postings[0].amount += 1;  // someone edits an amount
    CHECK_FALSE(verify_ledger(tampered, book.balances(), book.last_seq()).ok);
    tampered = log;  // a balanced edit, re-hashed: the next entry no longer chains to it
    tampered[2].postings[0].amount += 1;
    tampered[2].postings[1].amount -= 1;
    tampered[2].hash = entry_hash(tampered[2]);
    auto a = verify_ledger(tampered, book.balances(), book.last_seq());
    CHECK_FALSE(a.ok);
    CHECK(a.problem.find("does not chain") != std::string::npos);
    auto dropped = log;
    dropped.erase(dropped.begin() + 1);
    CHECK_FALSE(verify_ledger(dropped, book.balances(), book.last_seq()).ok);
    auto stored = book.balances();
    stored["node/n1"] += 1;  // a balance edited beside the chain
    auto b = verify_ledger(log, stored, book.last_seq());
    CHECK_FALSE(b.ok);
    CHECK(b.problem.find("node/n1") != std::string::npos);
    CHECK_FALSE(verify_ledger(log, book.balances(), book.last_seq() + 1).ok);
    CHECK_FALSE(decode_entry("{\"seq\": 1}").has_value());
    // Found by fuzzing: an integer field holding a huge float is malformed, not a cast.
    auto floated = encode_entry(log[0]);
    floated.replace(floated.find("\"seq\":1"), 7, "\"seq\":1.5e96");
    auto f = decode_entry(floated);
    REQUIRE_FALSE(f.has_value());
    CHECK(f.error().code() == errc::malformed_message);
    CHECK_FALSE(decode_entry("not json").has_value());
  }

  TEST_CASE("an account opening that moves credits fails the check") {
    // Its postings were applied and never checked: an entry opening user/m with a billion
    // credits, its hash and balance written to match, verified, and the credits were not
    // counted as issued.
    std::vector<ledger_entry> log;
    auto book = funded_book(&log);
    auto open = book.prepare_open("user/m", 9);
    REQUIRE(open.has_value());
    open->postings = {{"user/m", cr("1000000")}};
    open->hash = entry_hash(*open);
    auto minted = book;
    minted.apply(*open);
    log.push_back(*open);
    auto audit = verify_ledger(log, minted.balances(), minted.last_seq());
    CHECK_FALSE(audit.ok);
    CHECK_MESSAGE(audit.problem.find("an account opening moves credits") != std::string::npos,
                  audit.problem);
  }
}

TEST_SUITE("matcher") {
  slot_offer offer(uint8_t tier, double price_credits, double throughput, double rep = 0.5) {
    return {tier, static_cast<int64_t>(price_credits * micro_per_credit), throughput, rep, true};
  }

  TEST_CASE("cheapest per unit of work first, within the bid's limits") {
    std::vector<slot_offer> offers{offer(0, 2.0, 1000),        // cost 2e-3
                                   offer(0, 1.0, 100),         // cost 1e-2
                                   offer(0, 3.0, 3000),        // cost 1e-3: cheapest per work
                                   offer(0, 9.0, 10000),       // over max_price
                                   offer(1, 0.5, 1000),        // core tier
                                   offer(0, 0.1, 1000, 0.2)};  // low reputation
    slot_bid bid{trust_tier::community, 5 * micro_per_credit, 0.4};
    auto r = match_slots(offers, bid, 3);
    CHECK(r.chosen == std::vector<size_t>{2, 0, 1});
    CHECK(r.too_expensive == 1);
    CHECK(r.wrong_tier == 1);
    CHECK(r.low_reputation == 1);
    offers[2].available = false;
    r = match_slots(offers, bid, 3);
    CHECK(r.chosen == std::vector<size_t>{0, 1});
    CHECK(r.busy == 1);
  }

  TEST_CASE("a band's slots spread over its nodes: one slot of each before a second of any") {
    // "many" offers 8 slots, the least served of the band; "b" and "c" offer 2 each at the
    // same cost. By `served` alone all 6 slots of a round went to "many", whose results then
    // made the median every result was screened against.
    std::vector<slot_offer> offers;
    auto add = [&](std::string_view node, int64_t served, size_t slots) {
      for (size_t i = 0; i < slots; ++i) {
        offers.push_back(offer(0, 1.0, 1000));
        offers.back().node_id = node;
        offers.back().served = served;
      }
    };
    add("many", 0, 8);
    add("b", 10, 2);
    add("c", 20, 2);
    slot_bid bid{trust_tier::community, -1, 0.0};
    auto per_node = [&](const match_result& r) {
      std::map<std::string_view, int> n;
      for (size_t i : r.chosen) n[offers[i].node_id] += 1;
      return n;
    };
    auto r = match_slots(offers, bid, 6);
    REQUIRE(r.chosen.size() == 6);
    CHECK(per_node(r) == std::map<std::string_view, int>{{"b", 2}, {"c", 2}, {"many", 2}});
    // The least served first within a turn.
    r = match_slots(offers, bid, 2);
    CHECK(per_node(r) == std::map<std::string_view, int>{{"b", 1}, {"many", 1}});
    // Past what the other nodes offer, the rest of the band is the many-slot node's.
    r = match_slots(offers, bid, 10);
    CHECK(per_node(r) == std::map<std::string_view, int>{{"b", 2}, {"c", 2}, {"many", 6}});
    // A cheaper band is still taken first, whoever offers it.
    for (size_t i = 0; i < 8; ++i) offers[i].price /= 2;
    r = match_slots(offers, bid, 6);
    CHECK(per_node(r) == std::map<std::string_view, int>{{"many", 6}});
  }

  TEST_CASE("hybrid takes community slots first, core for the rest; core takes core only") {
    std::vector<slot_offer> offers{offer(1, 0.1, 1000), offer(0, 6.0, 1000), offer(0, 4.0, 1000)};
    auto r = match_slots(offers, {trust_tier::hybrid, -1, 0.0}, 3);
    CHECK(r.chosen == std::vector<size_t>{2, 1, 0});
    r = match_slots(offers, {trust_tier::core, -1, 0.0}, 3);
    CHECK(r.chosen == std::vector<size_t>{0});
    CHECK(r.wrong_tier == 2);
  }

  TEST_CASE("a bid avoids the nodes its work ran out of memory on, and counts them") {
    std::vector<slot_offer> offers{offer(0, 1.0, 1000), offer(0, 2.0, 1000), offer(0, 3.0, 1000),
                                   offer(0, 9.0, 1000)};
    const std::vector<std::string> ids{"small", "also-small", "large", "dear"};
    for (size_t i = 0; i < offers.size(); ++i) offers[i].node_id = ids[i];
    slot_bid bid{trust_tier::community, 5 * micro_per_credit, 0.0};
    bid.avoided = {"small", "also-small", "dear"};
    auto r = match_slots(offers, bid, 3);
    CHECK(r.chosen == std::vector<size_t>{2});
    CHECK(r.avoided == 2);
    CHECK(r.too_expensive == 1);  // counted for its first reason only
    CHECK(misfit_of(offers[0], bid) == bid_misfit::avoided);
    CHECK(fits_bid(offers[2], bid));
  }

  TEST_CASE("equal costs rotate") {
    std::vector<slot_offer> offers(4, offer(0, 1.0, 100));
    CHECK(match_slots(offers, {}, 2, 0).chosen == std::vector<size_t>{0, 1});
    CHECK(match_slots(offers, {}, 2, 3).chosen == std::vector<size_t>{3, 0});
  }

  TEST_CASE("every node of equal price gets its turn, whatever its calibration noise") {
    // Seven community nodes of one price whose calibrated throughputs differ by up to 20%,
    // as those of identical machines do under load; rounds of three assignments. Before,
    // the three fastest-measured took every round and four nodes never worked.
    std::vector<slot_offer> offers;
    for (double t : {1000.0, 1150.0, 980.0, 1190.0, 1010.0, 1100.0, 1050.0})
      offers.push_back(offer(0, 1.0, t));
    for (int round = 0; round < 28; ++round) {
      auto r = match_slots(offers, {}, 3, static_cast<size_t>(round) * 3);
      REQUIRE(r.chosen.size() == 3);
      for (size_t i : r.chosen) offers[i].served += 1;
    }
    for (const auto& o : offers) CHECK(o.served == 12);
    // A clearly cheaper node (half the cost) is still preferred.
    offers[2].throughput = 2000.0;
    auto r = match_slots(offers, {}, 3);
    CHECK(r.chosen.front() == 2);
  }

  TEST_CASE("free offers go to the fastest nodes first: a free job waits for no slow one") {
    // Every offer of price 0 costs 0 per unit of work: the least served node went first
    // whatever its speed, so a node ten times slower (or one of many slow workers) took as
    // much of a free job's work as the fast ones, and each round waited for it.
    std::vector<slot_offer> offers{offer(0, 0.0, 100), offer(0, 0.0, 1000), offer(0, 0.0, 1100),
                                   offer(0, 0.0, 120), offer(0, 1.0, 5000)};
    const std::vector<std::string> ids{"slow", "fast", "faster", "slow2", "priced"};
    for (size_t i = 0; i < offers.size(); ++i) {
      offers[i].node_id = ids[i];
      offers[i].served = i == 0 || i == 3 ? 0 : 50;  // the slow ones served least
    }
    auto r = match_slots(offers, {}, 2);
    CHECK(std::set<size_t>(r.chosen.begin(), r.chosen.end()) == std::set<size_t>{1, 2});
    // Past the fast band, the slow free ones, then what costs credits.
    r = match_slots(offers, {}, 6);
    CHECK(r.chosen.size() == 5);
    CHECK(std::set<size_t>(r.chosen.begin() + 2, r.chosen.begin() + 4) == std::set<size_t>{0, 3});
    CHECK(r.chosen[4] == 4);
    // Within the band of the fastest (1,000 and 1,100 are equal), the least served first.
    offers[2].served = 60;
    CHECK(match_slots(offers, {}, 1).chosen == std::vector<size_t>{1});
  }

  TEST_CASE("a reserved share goes to newcomers first") {
    std::vector<slot_offer> offers{offer(0, 1.0, 1000), offer(0, 1.0, 1000), offer(0, 1.0, 1000),
                                   offer(0, 3.0, 1000), offer(0, 3.0, 1000), offer(1, 0.5, 1000)};
    for (size_t i = 0; i < 3; ++i) offers[i].served = 50;
    offers[4].served = 5;  // has history: served newcomer_served assignments
    slot_bid bid;
    auto r = match_slots(offers, bid, 3);
    CHECK(r.chosen == std::vector<size_t>{0, 1, 2});  // nothing reserved: cheapest first
    bid.reserve_new = 1;
    r = match_slots(offers, bid, 3);
    CHECK(r.chosen == std::vector<size_t>{3, 0, 1});  // the newcomer, then the cheapest
    bid.reserve_new = 5;  // more than there are newcomers: the rest as usual
    r = match_slots(offers, bid, 3);
    CHECK(r.chosen == std::vector<size_t>{3, 0, 1});
    bid.policy = trust_tier::core;  // a core-tier job has no newcomers to reserve for
    r = match_slots(offers, bid, 3);
    CHECK(r.chosen == std::vector<size_t>{5});
  }

  TEST_CASE("nodes are priced by the throughput the core measured, never by a claim alone") {
    // Three honest nodes claim what they do (calibration units are twice the workload's
    // samples per second here); a liar claims 100 times its speed.
    std::vector<speed_evidence> nodes{
        {1000.0, 500.0}, {2000.0, 1000.0}, {1000.0, 500.0}, {100000.0, 500.0}};
    auto priced = priced_throughputs(nodes);
    CHECK(priced[0] == doctest::Approx(1000.0));
    CHECK(priced[1] == doctest::Approx(2000.0));
    CHECK(priced[3] == doctest::Approx(1000.0));  // what it does, not what it says
    // A node that under-claims is priced by its claim.
    nodes[2].claimed = 100.0;
    CHECK(priced_throughputs(nodes)[2] == doctest::Approx(100.0));
    // A node not measured yet is priced by its claim, never above the fastest measured one.
    nodes.push_back({50000.0, std::nullopt});
    nodes.push_back({300.0, std::nullopt});
    priced = priced_throughputs(nodes);
    CHECK(priced[4] == doctest::Approx(2000.0));
    CHECK(priced[5] == doctest::Approx(300.0));
    // Nothing measured: claims, sanitised.
    std::vector<speed_evidence> fresh{
        {1000.0, std::nullopt}, {std::nan(""), std::nullopt}, {-5.0, std::nullopt}};
    priced = priced_throughputs(fresh);
    CHECK(priced == std::vector<double>{1000.0, 0.0, 0.0});
    // Of two measured nodes, the liar's factor does not calibrate: it was the upper median.
    std::vector<speed_evidence> pair{{1000.0, 500.0}, {1e11, 500.0}};
    priced = priced_throughputs(pair);
    CHECK(priced[1] == doctest::Approx(1000.0));
    // Nothing measured (a new workload): no claim above the middle one.
    std::vector<speed_evidence> unmeasured{
        {1000.0, std::nullopt}, {9e11, std::nullopt}, {800.0, std::nullopt}};
    priced = priced_throughputs(unmeasured);
    CHECK(priced == std::vector<double>{1000.0, 1000.0, 800.0});
    // A measured NaN or negative rate counts as nothing done.
    std::vector<speed_evidence> odd{{1000.0, 500.0}, {1000.0, std::nan("")}};
    priced = priced_throughputs(odd);
    CHECK(priced[1] == 0.0);
  }

  TEST_CASE("one node measured on a workload is not priced at its claim: the others get work") {
    // A node claiming 9e11 (under the 1e12 a claim may be) took a new workload's first round,
    // every claim capped alike, and was measured. Its own ratio then calibrated the workload,
    // priced it at 9e11, and it took every slot of every round: the honest nodes were never
    // measured, and on a core with no core tier nothing else would ever be.
    std::vector<speed_evidence> nodes{
        {9e11, 250.0}, {1000.0, std::nullopt}, {1000.0, std::nullopt}};
    auto priced = priced_throughputs(nodes);
    CHECK(priced == std::vector<double>{1000.0, 1000.0, 1000.0});  // the middle claim, all
    std::vector<slot_offer> offers;
    for (double t : priced) offers.push_back(offer(0, 1.0, t));
    offers[0].served = 2;  // round 1's
    for (int round = 0; round < 4; ++round) {
      auto r = match_slots(offers, {}, 2, static_cast<size_t>(round));
      REQUIRE(r.chosen.size() == 2);
      for (size_t i : r.chosen) offers[i].served += 1;
    }
    CHECK(offers[1].served == 3);
    CHECK(offers[2].served == 3);
    // An honest node measured too calibrates the workload (the lower of two ratios is its
    // own): the liar is priced by what it does, and the node not measured yet by its claim.
    nodes[1].measured = 500.0;
    priced = priced_throughputs(nodes);
    CHECK(priced[0] == doctest::Approx(500.0));
    CHECK(priced[1] == doctest::Approx(1000.0));
    CHECK(priced[2] == doctest::Approx(1000.0));
  }

  TEST_CASE("a node whose unmeasured claim makes it the cheapest gets a slot to be measured") {
    // A GPU node doing 30 times a CPU node's work asks 3 times its price. Not measured on the
    // workload, it is priced as the fastest measured node at most: three times their cost per
    // unit of work, outside the band of equal costs. It got work only when every CPU slot was
    // busy, so it was never measured, and jobs paid ten times what they needed to.
    std::vector<speed_evidence> nodes{
        {1000.0, 1000.0}, {1000.0, 1000.0}, {1000.0, 1000.0}, {30000.0, std::nullopt}};
    auto priced = priced_throughputs(nodes);
    REQUIRE(priced[3] == doctest::Approx(1000.0));
    std::vector<slot_offer> offers;
    for (size_t i = 0; i < nodes.size(); ++i)
      offers.push_back(offer(0, i < 3 ? 1.0 : 3.0, priced[i]));
    offers[3].claimed = 30000.0;  // not measured: what it claims
    slot_bid bid;
    CHECK(match_slots(offers, bid, 3).chosen == std::vector<size_t>{0, 1, 2});  // by price alone
    bid.explore = 1;
    auto r = match_slots(offers, bid, 3);
    CHECK(r.chosen == std::vector<size_t>{3, 0, 1});  // one slot on its claim, first
    CHECK(r.explored == 1);
    // Measured, it is priced by what it did, and its slots go first by price alone.
    nodes[3].measured = 30000.0;
    CHECK(priced_throughputs(nodes)[3] == doctest::Approx(30000.0));
    // Bounded: of two nodes claiming to be cheapest, only `explore` slots go on a claim, to
    // the lowest cost by claim (a liar's 9e11 is measured at once and priced by that).
    offers.push_back(offer(0, 3.0, 1000.0));
    offers[4].claimed = 9e11;
    r = match_slots(offers, bid, 3);
    CHECK(r.chosen == std::vector<size_t>{4, 0, 1});
    CHECK(r.explored == 1);
    // No slot on a claim that would not make it the cheapest, nor where none is wanted, nor
    // for a node measured (claimed 0) however low its priced throughput.
    offers[3].claimed = 2000.0;
    offers[4].claimed = 0.0;
    r = match_slots(offers, bid, 3);
    CHECK(r.chosen == std::vector<size_t>{0, 1, 2});
    CHECK(r.explored == 0);
    CHECK(match_slots(offers, bid, 0).chosen.empty());
    // Community slots first for a hybrid bid: a core-tier node is explored only where no
    // community slot is free.
    offers[3] = offer(1, 3.0, 1000.0);
    offers[3].claimed = 30000.0;
    CHECK(match_slots(offers, bid, 1).chosen == std::vector<size_t>{0});
    for (size_t i : {0, 1, 2, 4}) offers[i].available = false;
    r = match_slots(offers, bid, 1);
    CHECK(r.chosen == std::vector<size_t>{3});
    CHECK(r.explored == 1);
  }
}
