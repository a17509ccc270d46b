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
/// 4. Between two processes over loopback: a source in this process, an identity stage in a
///    worker process (this program, started again with --pipeline-worker), the sink back in
///    this process: every item crosses twice. Against plain CAF actors doing the same (a
///    relay actor published by a child process, forwarding to a sink here). Throughput
///    (items/s end to end) and latency (median and p99 per crossing, items spaced 200 us).
///
/// Usage: gflex_bench_pipeline [items=200000] [stages=4] [seconds=60] [remote_items=50000]

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <caf/all.hpp>
#include <caf/io/all.hpp>

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

// -- two processes -------------------------------------------------------------------------

const std::string remote_token = "bench-pipeline-token-0123456789";

/// Source -> "relay" (on a worker process) -> sink; `seen` and `lat` are null in the worker.
pl::graph remote_graph(int64_t items, std::chrono::microseconds spacing, std::atomic<int64_t>* seen,
                       latencies* lat) {
  pl::graph g;
  pl::stage_options relay;
  relay.on_workers = true;
  g.source<int64_t>("source",
                    [items, spacing](int64_t p) -> std::optional<int64_t> {
                      if (p >= items) return std::nullopt;
                      if (spacing.count() > 0) std::this_thread::sleep_for(spacing);
                      return now_ns();
                    })
      .map(
          "relay", [](const int64_t& v) { return v; }, relay)
      .sink("sink", [seen, lat](const int64_t& t) {
        if (lat) lat->add(now_ns() - t);
        if (seen) ++*seen;
      });
  return g;
}

pid_t spawn_self(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  std::string self = "/proc/self/exe";
  argv.push_back(self.data());
  std::vector<std::string> copy = args;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  if (posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv.data(), environ) != 0) {
    std::perror("posix_spawn");
    std::exit(1);
  }
  return pid;
}

void reap(pid_t pid) {
  for (int k = 0; k < 50; ++k) {
    if (waitpid(pid, nullptr, WNOHANG) == pid) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
}

double pipeline_remote(int64_t items, std::chrono::microseconds spacing, latencies* lat) {
  std::atomic<int64_t> seen{0};
  auto g = remote_graph(items, spacing, &seen, lat);
  pl::run_options o;
  o.workers = 1;
  o.token = remote_token;
  pid_t child = 0;
  o.on_listening = [&](uint16_t port) {
    child = spawn_self({"--pipeline-worker", std::to_string(port)});
  };
  clock_type::time_point t0;
  o.on_running = [&](pl::running&) { t0 = clock_type::now(); };
  auto r = g.run(o);
  const double s = std::chrono::duration<double>(clock_type::now() - t0).count();
  if (child) reap(child);
  if (!r || seen != items) {
    std::fprintf(stderr, "remote pipeline failed: %s\n",
                 r ? "items lost" : r.error().message().c_str());
    std::exit(1);
  }
  return s;
}

int pipeline_worker(uint16_t port) {
  auto g = remote_graph(0, {}, nullptr, nullptr);
  auto r = g.join({.host = "127.0.0.1", .port = port, .token = remote_token});
  if (!r) std::fprintf(stderr, "worker: %s\n", r.error().message().c_str());
  return r ? 0 : 1;
}

using relay_sink_atom = caf::atom_constant<caf::atom("rsink")>;

/// The plain CAF baseline's child: publishes a relay that forwards every int64 to the sink
/// it is given, and ends when the relay is told to.
int caf_relay(const std::string& port_file) {
  caf::actor_system_config cfg;
  cfg.load<caf::io::middleman>();
  caf::actor_system sys{cfg};
  auto relay = sys.spawn([](caf::event_based_actor* self) -> caf::behavior {
    auto sink = std::make_shared<caf::actor>();
    return {
        [=](relay_sink_atom, caf::actor& s) { *sink = s; },
        [=](int64_t t) { self->send(*sink, t); },
    };
  });
  auto port = sys.middleman().publish(relay, 0, "127.0.0.1");
  if (!port) return 1;
  std::ofstream(port_file + ".tmp") << *port;
  std::rename((port_file + ".tmp").c_str(), port_file.c_str());
  caf::scoped_actor self{sys};
  self->monitor(relay);
  self->receive([](caf::down_msg&) {});
  return 0;
}

double caf_remote(int64_t items, std::chrono::microseconds spacing, latencies* lat) {
  const std::string port_file = "/tmp/gflex-bench-relay-" + std::to_string(getpid());
  std::remove(port_file.c_str());
  pid_t child = spawn_self({"--caf-relay", port_file});
  uint16_t port = 0;
  for (int k = 0; k < 100 && port == 0; ++k) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::ifstream in(port_file);
    in >> port;
  }
  std::remove(port_file.c_str());
  caf::actor_system_config cfg;
  cfg.load<caf::io::middleman>();
  caf::actor_system sys{cfg};
  auto relay = sys.middleman().remote_actor("127.0.0.1", port);
  if (!relay) {
    std::fprintf(stderr, "caf relay: %s\n", sys.render(relay.error()).c_str());
    std::exit(1);
  }
  std::atomic<int64_t> seen{0};
  auto sink = sys.spawn([&](caf::event_based_actor*) -> caf::behavior {
    return {[&](int64_t t) {
      if (lat) lat->add(now_ns() - t);
      ++seen;
    }};
  });
  caf::scoped_actor self{sys};
  self->send(*relay, relay_sink_atom::value, sink);
  auto t0 = clock_type::now();
  for (int64_t i = 0; i < items; ++i) {
    if (spacing.count() > 0) std::this_thread::sleep_for(spacing);
    self->send(*relay, now_ns());
  }
  while (seen < items) std::this_thread::sleep_for(std::chrono::microseconds(50));
  const double s = std::chrono::duration<double>(clock_type::now() - t0).count();
  self->send_exit(*relay, caf::exit_reason::user_shutdown);
  self->send_exit(sink, caf::exit_reason::user_shutdown);
  reap(child);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--pipeline-worker")
    return pipeline_worker(static_cast<uint16_t>(std::atoi(argv[2])));
  if (argc == 3 && std::string(argv[1]) == "--caf-relay") return caf_relay(argv[2]);
  const int64_t items = argc > 1 ? std::atoll(argv[1]) : 200000;
  const int stages = argc > 2 ? std::atoi(argv[2]) : 4;
  const int seconds = argc > 3 ? std::atoi(argv[3]) : 60;
  const int64_t remote_items = argc > 4 ? std::atoll(argv[4]) : 50000;
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

  // 4. two processes over loopback: every item crosses twice.
  if (remote_items > 0) {
    const double t_rp = pipeline_remote(remote_items, {}, nullptr);
    const double t_rc = caf_remote(remote_items, {}, nullptr);
    const auto n = static_cast<double>(remote_items);
    std::printf(
        "| two processes over loopback (%lld items, each crossing twice) | items/s | us per "
        "item |\n",
        static_cast<long long>(remote_items));
    std::printf("|---|---|---|\n");
    std::printf("| pipeline (stage in a worker process) | %.0f | %.2f |\n", n / t_rp,
                t_rp / n * 1e6);
    std::printf("| plain CAF actors (a remote relay) | %.0f | %.2f |\n", n / t_rc, t_rc / n * 1e6);
    std::printf("| ratio pipeline / CAF | %.2f | |\n\n", t_rc / t_rp);
    const int64_t spaced_remote = std::min<int64_t>(remote_items / 10, 2000);
    latencies rp, rc;
    pipeline_remote(spaced_remote, std::chrono::microseconds(200), &rp);
    caf_remote(spaced_remote, std::chrono::microseconds(200), &rc);
    auto [rpm, rp99] = rp.median_p99();
    auto [rcm, rc99] = rc.median_p99();
    std::printf(
        "| latency, two processes (%lld items, one every 200 us) | median us per crossing | "
        "p99 us per crossing |\n",
        static_cast<long long>(spaced_remote));
    std::printf("|---|---|---|\n");
    std::printf("| pipeline | %.1f | %.1f |\n", rpm / 2e3, rp99 / 2e3);
    std::printf("| plain CAF actors | %.1f | %.1f |\n\n", rcm / 2e3, rc99 / 2e3);
  }

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
