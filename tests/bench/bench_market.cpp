/// @file
/// gflex_bench_market: the marketplace's two hot paths, each against its baseline in the same
/// run.
/// 1. Matching: the time to fill a round of 1,000 assignments from 10,000 offers (a mix of
///    tiers, prices, throughputs, reputations, a fifth busy), building the offer list as the
///    market actor does and running the core's matcher (actors/domain/matcher.cpp). Target:
///    < 10 ms.
/// 2. The ledger: entries committed per second with the hash chain (each a settlement paying
///    two nodes and the platform from escrow: prepare, hash, encode, and one LMDB transaction
///    with the entry, its balances and the head, as the ledger keeper writes them), against
///    LMDB's raw rate of one small put per transaction, in the same store directory kind and
///    with the same durability (fsync at every commit). Target: >= 50% of the raw rate.
///
/// Usage: gflex_bench_market [entries=2000]

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "gflex/runtime/rng.hpp"
#include "gflex/runtime/store.hpp"
#include "ledger_book.hpp"
#include "matcher.hpp"

using namespace gflex;
using clock_type = std::chrono::steady_clock;

namespace {

double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}

struct slot_record {  // what the market keeps per slot
  uint8_t tier;
  int64_t price;
  double throughput;
  std::string node;
  bool busy;
};

}  // namespace

int main(int argc, char** argv) {
  const int entries = argc > 1 ? std::atoi(argv[1]) : 2000;
  if (entries < 100) {
    std::fprintf(stderr, "usage: %s [entries >= 100]\n", argv[0]);
    return 2;
  }
  // -- 1. matching ---------------------------------------------------------------------------
  rng r(42);
  std::vector<slot_record> slots;
  std::vector<double> scores;
  for (int i = 0; i < 10000; ++i) {
    slots.push_back({static_cast<uint8_t>(i % 10 == 0 ? 1 : 0),
                     static_cast<int64_t>((0.2 + 4.8 * r.uniform()) * micro_per_credit),
                     1000.0 + 49000.0 * r.uniform(), std::string("n").append(std::to_string(i)),
                     r.uniform() < 0.2});
    scores.push_back(r.uniform());
  }
  slot_bid bid{trust_tier::hybrid, 4 * micro_per_credit, 0.3};
  std::vector<double> times;
  size_t filled = 0;
  for (int rep = 0; rep < 200; ++rep) {
    auto t = clock_type::now();
    std::vector<slot_offer> offers;
    offers.reserve(slots.size());
    for (size_t i = 0; i < slots.size(); ++i)
      offers.push_back(
          {slots[i].tier, slots[i].price, slots[i].throughput, scores[i], !slots[i].busy});
    auto m = match_slots(offers, bid, 1000, static_cast<size_t>(rep));
    times.push_back(seconds_since(t) * 1e3);
    filled = m.chosen.size();
  }
  std::sort(times.begin(), times.end());
  std::printf("| measure | value | target |\n|---|---:|---:|\n");
  std::printf(
      "| fill a round of 1,000 assignments from 10,000 offers, median of 200 | %.3f ms "
      "| < 10 ms |\n",
      times[times.size() / 2]);
  std::printf("| ... worst of 200 | %.3f ms | |\n", times.back());
  std::printf("| assignments filled | %zu | 1000 |\n", filled);

  // -- 2. the ledger against LMDB's raw put rate ----------------------------------------------
  auto dir = std::filesystem::temp_directory_path() /
             std::string("gflex-bench-market-").append(std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  {
    auto raw = store::open(dir / "raw");
    auto led = store::open(dir / "ledger");
    if (!raw || !led) {
      std::fprintf(stderr, "cannot open LMDB stores under %s\n", dir.c_str());
      return 1;
    }
    std::vector<uint8_t> value(64, 0xab);
    auto t = clock_type::now();
    for (int i = 0; i < entries; ++i) {
      char key[32];
      std::snprintf(key, sizeof key, "raw/%020d", i);
      if (!raw->put(key, value)) return 1;
    }
    double raw_rate = entries / seconds_since(t);

    ledger_book book;
    auto commit = [&](const ledger_entry& e) {
      std::vector<store_write> writes;
      auto text = encode_entry(e);
      char key[40];
      std::snprintf(key, sizeof key, "ledger/entry/%020llu",
                    static_cast<unsigned long long>(e.seq));
      writes.push_back({key, std::vector<uint8_t>(text.begin(), text.end())});
      std::map<std::string, int64_t> changed;
      if (e.kind == "open") changed[e.memo] = 0;
      for (const auto& p : e.postings) changed[p.account] = book.balance(p.account) + p.amount;
      for (const auto& [account, v] : changed) {
        auto s = std::to_string(v);
        writes.push_back({"ledger/balance/" + account, std::vector<uint8_t>(s.begin(), s.end())});
      }
      auto head = std::to_string(e.seq);
      writes.push_back({"ledger/head", std::vector<uint8_t>(head.begin(), head.end())});
      if (!led->commit(writes)) std::exit(1);
      book.apply(e);
    };
    for (const char* a : {"user/alice", "node/a", "node/b", "escrow/job-1"})
      commit(book.prepare_open(a, 0).value());
    commit(book.prepare("credit", "operator",
                        {{"user/alice", 1'000'000 * micro_per_credit},
                         {ledger_book::external, -1'000'000 * micro_per_credit}},
                        0)
               .value());
    t = clock_type::now();
    for (int i = 0; i < entries; ++i) {
      // A hold and its settlement, alternately: each is one entry and one transaction.
      auto e =
          i % 2 == 0
              ? book.prepare("hold", std::string("job-1 round ").append(std::to_string(i / 2 + 1)),
                             {{"user/alice", -1000}, {"escrow/job-1", 1000}}, i)
              : book.prepare("settle",
                             std::string("job-1 round ")
                                 .append(std::to_string(i / 2 + 1))
                                 .append(": 2 assignment(s) paid"),
                             {{"escrow/job-1", -1000},
                              {"node/a", 400},
                              {"node/b", 400},
                              {ledger_book::platform, 100},
                              {"user/alice", 100}},
                             i);
      if (!e) {
        std::fprintf(stderr, "%s\n", e.error().message().c_str());
        return 1;
      }
      commit(*e);
    }
    double ledger_rate = entries / seconds_since(t);
    std::printf("| LMDB raw: one 64-byte put per transaction, fsync each | %.0f per s | |\n",
                raw_rate);
    std::printf(
        "| ledger: one hash-chained entry (hold or settlement) per transaction | %.0f "
        "per s | |\n",
        ledger_rate);
    std::printf("| ledger / raw | %.0f%% | >= 50%% |\n", 100.0 * ledger_rate / raw_rate);
  }
  std::filesystem::remove_all(dir);
  return 0;
}
