/// @file
/// gflex_bench_store: the core's commit rate on its two stores, side by side in one run: the
/// single core's LMDB file against a core of three servers (replicated_store: etcd for the
/// values, the other two cores sent every chunk before the commit that names it). Two shapes
/// of commit, as the core makes them:
/// - a ledger settlement: four small values (the entry, two balances and the chain's head,
///   about 300 bytes each) in one transaction;
/// - a committed round of fashion-mlp: the job's record (1 KB) and its checkpoint (the
///   parameters and outer momentum, 4.29 MB, new bytes every round).
/// Both stores are durable at every commit (LMDB syncs its file; etcd syncs its log on a
/// quorum of members). The two follower cores run in this process with their own chunk
/// services on loopback, so a chunk crosses a real socket and is written to a real file.
///
/// Usage: gflex_bench_store ETCD_ENDPOINTS DIR [settlements=300] [rounds=30]

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "gflex/runtime/replicated_store.hpp"
#include "gflex/runtime/store.hpp"

using namespace gflex;
using clock_type = std::chrono::steady_clock;

namespace {

struct timing {
  double per_s = 0, p50_ms = 0, p99_ms = 0;
};

// Commits `count` batches made by `make(i)`; the rate and the latency percentiles.
template <class Make>
timing run(key_value_store& s, int count, Make make) {
  std::vector<double> ms;
  const auto begin = clock_type::now();
  for (int i = 0; i < count; ++i) {
    auto batch = make(i);
    const auto t = clock_type::now();
    if (auto ok = s.commit(batch); !ok) {
      std::fprintf(stderr, "commit %d failed: %s\n", i, ok.error().message().c_str());
      std::exit(1);
    }
    ms.push_back(std::chrono::duration<double, std::milli>(clock_type::now() - t).count());
  }
  const double total = std::chrono::duration<double>(clock_type::now() - begin).count();
  std::sort(ms.begin(), ms.end());
  return {count / total, ms[ms.size() / 2], ms[std::min(ms.size() - 1, ms.size() * 99 / 100)]};
}

std::vector<uint8_t> filled(size_t n, uint64_t seed) {
  std::vector<uint8_t> v(n);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& b : v) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b = static_cast<uint8_t>(x);
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s ETCD_ENDPOINTS DIR [settlements=300] [rounds=30]\n", argv[0]);
    return 2;
  }
  const std::string endpoints = argv[1];
  const std::filesystem::path dir = argv[2];
  const int settlements = argc > 3 ? std::atoi(argv[3]) : 300;
  const int rounds = argc > 4 ? std::atoi(argv[4]) : 30;
  if (settlements < 10 || rounds < 5) {
    std::fprintf(stderr, "at least 10 settlements and 5 rounds\n");
    return 2;
  }
  std::filesystem::create_directories(dir);

  // One checkpoint's bytes, changed at the front each round so each is a new chunk.
  // fashion-mlp (784-512-256-10): 535,818 parameters and as many momentum values.
  const size_t checkpoint_bytes = 2 * 535'818 * sizeof(float);
  std::vector<uint8_t> checkpoint = filled(checkpoint_bytes, 7);
  const std::vector<uint8_t> record = filled(1024, 3);
  auto settlement = [&](int i) {
    std::vector<store_write> w;
    const std::string n = std::to_string(i);
    w.push_back({"ledger/entry/" + n, filled(320, i)});
    w.push_back({"ledger/balance/node/a", filled(96, i + 1)});
    w.push_back({"ledger/balance/escrow/job", filled(96, i + 2)});
    w.push_back({"ledger/head", filled(80, i + 3)});
    return w;
  };
  auto round = [&](int i) {
    for (int k = 0; k < 8; ++k) checkpoint[k] = static_cast<uint8_t>((i + 1) >> (k * 8));
    std::vector<store_write> w;
    w.push_back({"job/bench/record", record});
    w.push_back({"job/bench/checkpoint", checkpoint});
    return w;
  };

  auto lmdb = store::open(dir / "lmdb");
  if (!lmdb) {
    std::fprintf(stderr, "%s\n", lmdb.error().message().c_str());
    return 1;
  }
  const timing lmdb_settle = run(*lmdb, settlements, settlement);
  const timing lmdb_round = run(*lmdb, rounds, round);

  std::vector<std::unique_ptr<replicated_store>> cores;
  for (const char* id : {"bench-a", "bench-b", "bench-c"}) {
    replication_config c;
    c.endpoints = endpoints;
    c.core_id = id;
    c.chunk_listen = "127.0.0.1:0";
    c.chunk_dir = dir / (std::string("chunks-") + id);
    c.secret = "bench operator key";
    c.core_address = "127.0.0.1:1";
    auto s = replicated_store::start(c, [] {
      std::fprintf(stderr, "the benchmark's leader lost its lease\n");
      std::exit(1);
    });
    if (!s) {
      std::fprintf(stderr, "%s\n", s.error().message().c_str());
      return 1;
    }
    cores.push_back(std::move(*s));
  }
  std::atomic<int> stop{0};
  if (auto led = cores[0]->campaign(stop, {}); !led || !*led) {
    std::fprintf(stderr, "the benchmark's first core did not lead (is another running?)\n");
    return 1;
  }
  const timing etcd_settle = run(*cores[0], settlements, settlement);
  const timing etcd_round = run(*cores[0], rounds, round);

  std::printf(
      "| commit | commits | LMDB commits/s (p50, p99 ms) | three cores commits/s (p50, p99 ms) "
      "| three cores / LMDB |\n| --- | ---: | ---: | ---: | ---: |\n");
  auto row = [](const char* what, int n, timing a, timing b) {
    std::printf("| %s | %d | %.0f (%.2f, %.2f) | %.0f (%.2f, %.2f) | %.2fx |\n", what, n, a.per_s,
                a.p50_ms, a.p99_ms, b.per_s, b.p50_ms, b.p99_ms, b.per_s / a.per_s);
  };
  row("ledger settlement (4 values, 0.6 KB)", settlements, lmdb_settle, etcd_settle);
  row("fashion-mlp round (record + 4.29 MB checkpoint)", rounds, lmdb_round, etcd_round);
  return 0;
}
