/// @file
/// gflex_bench_pipeline: what a pipeline edge costs, against CAF's own plain actors in the same
/// run, and whether backpressure keeps memory flat.
/// 1. Throughput: N small items (an int64) through a chain of K identity stages, pipeline
///    (credit-based flow control, items kept until finished) against a chain of K plain CAF
///    actors forwarding the same messages with no flow control. Reported per edge: messages/s
///    and nanoseconds per message.
/// 2. Latency: items spaced out (one every 200 us, so queues are empty) carry their send time;
///    the sink records how long each took through the chain; per edge: median and 99th
///    percentile. Target: under 10 us per edge in one process.
/// 3. Backpressure: a source producing 64 KiB items as fast as it can into a sink that takes
///    10x longer per item than the source, for SECONDS; the process's resident memory is
///    sampled every second and must stay flat.
///
/// Usage: gflex_bench_pipeline [items=200000] [stages=4] [seconds=60]

#include <unistd.h>

#include <caf/all.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gflex/pipeline.hpp"

namespace pl = gflex::pipeline;
using clock_type = std::chrono::steady_clock;

namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now().time_since_epoch())
      .count();
}

double rss_mib() {
  std::ifstream in("/proc/self/statm");
  long pages = 0, resident = 0;
  in >> pages >> resident;
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / 1048576.0;
}

struct latencies {
  std::mutex m;
  std::vector<int64_t> ns;
  void add(int64_t v) {
    std::lock_guard<std::mutex> lock(m);
    ns.push_back(v);
  }
  std::pair<double, double> median_p99() {
    std::lock_guard<std::mutex> lock(m);
    std::sort(ns.begin(), ns.end());
    if (ns.empty()) return {0, 0};
    return {static_cast<double>(ns[ns.size() / 2]),
            static_cast<double>(ns[std::min(ns.size() - 1, ns.size() * 99 / 100)])};
  }
};

/// A chain of `stages` identity maps between a source of `items` and a sink; with `spacing`,
/// the source sleeps that long before each item (latency).
double pipeline_chain(int64_t items, int stages, std::chrono::microseconds spacing,
                      latencies* lat) {
  pl::graph g;
  auto s = g.source<int64_t>("source", [items, spacing](int64_t p) -> std::optional<int64_t> {
    if (p >= items) return std::nullopt;
    if (spacing.count() > 0) std::this_thread::sleep_for(spacing);
    return now_ns();
  });
  for (int k = 0; k < stages; ++k)
    s = s.map("stage " + std::to_string(k), [](const int64_t& v) { return v; });
  std::atomic<int64_t> seen{0};
  s.sink("sink", [&](const int64_t& t) {
    if (lat) lat->add(now_ns() - t);
    ++seen;
  });
  auto t0 = clock_type::now();
  auto r = g.run();
  if (!r || seen != items) {
    std::fprintf(stderr, "pipeline failed: %s\n", r ? "items lost" : r.error().message().c_str());
    std::exit(1);
  }
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

/// The same chain as plain CAF actors: each forwards what it gets to the next; the last one
/// counts, and the caller waits until it has counted `items`.
double caf_chain(caf::actor_system& sys, int64_t items, int stages,
                 std::chrono::microseconds spacing, latencies* lat) {
  std::atomic<int64_t> seen{0};
  auto sink = sys.spawn([&](caf::event_based_actor*) -> caf::behavior {
    return {[&](int64_t t) {
      if (lat) lat->add(now_ns() - t);
      ++seen;
    }};
  });
  caf::actor next = sink;
  std::vector<caf::actor> chain{sink};
  for (int k = 0; k < stages; ++k) {
    next = sys.spawn([next](caf::event_based_actor* self) -> caf::behavior {
      return {[=](int64_t t) { self->send(next, t); }};
    });
    chain.push_back(next);
  }
  auto t0 = clock_type::now();
  caf::scoped_actor self{sys};
  for (int64_t i = 0; i < items; ++i) {
    if (spacing.count() > 0) std::this_thread::sleep_for(spacing);
    self->send(next, now_ns());
  }
  while (seen < items) std::this_thread::sleep_for(std::chrono::microseconds(50));
  double s = std::chrono::duration<double>(clock_type::now() - t0).count();
  for (auto& a : chain) self->send_exit(a, caf::exit_reason::user_shutdown);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t items = argc > 1 ? std::atoll(argv[1]) : 200000;
  const int stages = argc > 2 ? std::atoi(argv[2]) : 4;
  const int seconds = argc > 3 ? std::atoi(argv[3]) : 60;
  const int edges = stages + 1;
  std::printf("gflex_bench_pipeline: %lld items, %d stages (%d edges), %u hardware threads\n\n",
              static_cast<long long>(items), stages, edges, std::thread::hardware_concurrency());

  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};

  // 1. throughput
  const double t_pipe = pipeline_chain(items, stages, {}, nullptr);
  const double t_caf = caf_chain(sys, items, stages, {}, nullptr);
  auto per_edge = [&](double t) { return static_cast<double>(items) * edges / t; };
  std::printf("| throughput, one process | messages/s per edge | ns per message per edge |\n");
  std::printf("|---|---|---|\n");
  std::printf("| pipeline (credit flow, kept until finished) | %.0f | %.0f |\n", per_edge(t_pipe),
              1e9 / per_edge(t_pipe));
  std::printf("| plain CAF actors (no flow control) | %.0f | %.0f |\n", per_edge(t_caf),
              1e9 / per_edge(t_caf));
  std::printf("| ratio pipeline / CAF | %.2f | |\n\n", per_edge(t_pipe) / per_edge(t_caf));

  // 2. latency
  const int64_t spaced = std::min<int64_t>(items / 20, 5000);
  latencies lp, lc;
  pipeline_chain(spaced, stages, std::chrono::microseconds(200), &lp);
  caf_chain(sys, spaced, stages, std::chrono::microseconds(200), &lc);
  auto [pm, p99] = lp.median_p99();
  auto [cm, c99] = lc.median_p99();
  std::printf(
      "| latency, one process (%lld items, one every 200 us) | median us per edge | "
      "p99 us per edge |\n",
      static_cast<long long>(spaced));
  std::printf("|---|---|---|\n");
  std::printf("| pipeline | %.2f | %.2f |\n", pm / 1e3 / edges, p99 / 1e3 / edges);
  std::printf("| plain CAF actors | %.2f | %.2f |\n\n", cm / 1e3 / edges, c99 / 1e3 / edges);

  // 3. backpressure: memory over time with a consumer 10x slower than the producer.
  if (seconds > 0) {
    constexpr size_t payload = 64 * 1024;
    const auto produce = std::chrono::microseconds(100);
    const auto consume = std::chrono::microseconds(1000);
    std::atomic<bool> stop{false};
    std::atomic<int64_t> produced{0}, consumed{0};
    pl::graph g;
    g.source<std::vector<char>>("fast",
                                [&](int64_t) -> std::optional<std::vector<char>> {
                                  if (stop) return std::nullopt;
                                  std::this_thread::sleep_for(produce);
                                  ++produced;
                                  return std::vector<char>(payload, 'x');
                                })
        .map("copy", [](const std::vector<char>& v) { return v; })
        .sink("slow", [&](const std::vector<char>&) {
          std::this_thread::sleep_for(consume);
          ++consumed;
        });
    std::vector<double> rss;
    std::thread sampler([&] {
      for (int s = 0; s < seconds; ++s) {
        std::this_thread::sleep_for(std::chrono::seconds(1));
        rss.push_back(rss_mib());
      }
      stop = true;
    });
    auto r = g.run();
    sampler.join();
    if (!r) {
      std::fprintf(stderr, "backpressure run failed: %s\n", r.error().message().c_str());
      return 1;
    }
    const double first = rss.size() > 4 ? rss[4] : rss.front();
    const double peak = *std::max_element(rss.begin(), rss.end());
    std::printf(
        "| backpressure, %d s: 64 KiB items, producer every 100 us, consumer every 1 ms | "
        "value |\n",
        seconds);
    std::printf("|---|---|\n");
    std::printf("| items consumed / produced | %lld / %lld |\n",
                static_cast<long long>(consumed.load()), static_cast<long long>(produced.load()));
    std::printf("| resident MiB at 5 s, at the end, peak | %.1f, %.1f, %.1f |\n", first, rss.back(),
                peak);
    std::printf("| growth from 5 s to the end | %.1f MiB |\n", rss.back() - first);
    std::printf("| window bound (64 items x 2 edges x 64 KiB) | %.1f MiB |\n",
                64.0 * 2 * payload / 1048576.0);
  }
  return 0;
}
