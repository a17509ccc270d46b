/// @file
/// gflex_pipeline_probe: a pipeline whose middle stage runs in worker processes, for
/// pipeline_workers.sh. The same program is the pipeline and its workers:
///
///   gflex_pipeline_probe serve --port-file F --workers W [--items N] [--token T]
///                        [--kill-actor-ms MS] [--join-timeout-ms MS] [--relay]
///                        [--relay-fails-at X] [--square-restarts R] [--chain]
///   gflex_pipeline_probe join --port P [--host H] [--connect-timeout-ms MS] [--token T]
///                        [--other-graph] [--other-type] [--relay] [--relay-fails-at X]
///                        [--square-restarts R] [--chain]
///
/// The graph: a source of 0..N-1 (in the pipeline's process) -> "square" (a map on the
/// workers, 2 instances, 2 ms per item: [x, x*x]) -> "check" (a sink in the pipeline's
/// process that requires every x exactly once, with its square). serve prints one line,
/// "done: N items, each once; square restarts R; workers joined J, lost L", and exits 0, or
/// "error: ..." and exits 1. --kill-actor-ms kills the first square instance's actor (in a
/// worker process) that long after the start. --other-graph builds the graph with 3
/// instances of square (a different graph, which the pipeline must refuse); --other-type,
/// with a square that returns doubles (the same stages of another type: refused too). --relay
/// (given to the pipeline and its workers alike) puts a "relay" map in the pipeline's process
/// between the source and square: its items to square carry the acknowledgements of the source's
/// items they were made from, which must reach the source even when square's process dies
/// with them in flight. --relay-fails-at X (implies --relay) makes the relay throw once when
/// it takes item X, while square, slowed down for the 40 items before X, still holds items
/// that carry the acknowledgements of the source's items: the restarted relay must not be
/// given those items again. --chain (to both) adds "pass", a map on the workers after square:
/// two chained stages in one worker process, which lose their instances at once when it dies.

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "gflex/pipeline.hpp"

namespace pl = gflex::pipeline;

namespace {

struct args {
  std::string mode;
  std::string port_file;
  int workers = 1;
  int64_t items = 3000;
  std::string token = "pipeline-probe-token-0123";
  int kill_actor_ms = 0;
  int join_timeout_ms = 30000;
  int port = 0;
  std::string host = "127.0.0.1";
  int connect_timeout_ms = 10000;
  bool other_graph = false;
  bool other_type = false;  ///< square returns doubles: the same stages, another item type
  bool relay = false;
  int64_t relay_fails_at = -1;
  int square_restarts = 5;
  bool chain = false;
};

struct tally {
  std::mutex m;
  std::vector<int> seen;
  int64_t wrong = 0;
};

/// The probe's graph; `t` is null in a worker process (its sink runs in the pipeline's).
pl::graph build(const args& a, tally* t) {
  pl::graph g;
  const int64_t n = a.items;
  pl::stage_options square;
  square.on_workers = true;
  square.instances = a.other_graph ? 3 : 2;
  square.window = 16;
  square.restarts = a.square_restarts;
  auto numbers = g.source<int64_t>("numbers", [n](int64_t p) -> std::optional<int64_t> {
    if (p >= n) return std::nullopt;
    return p;
  });
  pl::stage_options relay;
  relay.window = 16;
  const int64_t fails_at = a.relay_fails_at;
  auto failed = std::make_shared<std::atomic<bool>>(false);
  if (a.relay)
    numbers = numbers.map(
        "relay",
        [fails_at, failed](const int64_t& x) {
          if (x == fails_at && !failed->exchange(true))
            throw std::runtime_error("relay fails once, at " + std::to_string(x));
          return x;
        },
        relay);
  if (a.other_type) {
    numbers
        .map(
            "square",
            [](const int64_t& x) {
              return std::vector<double>{1.0 * x, 1.0 * x * x};
            },
            square)
        .sink("check", [](const std::vector<double>&) {});
    return g;
  }
  auto squares = numbers.map(
      "square",
      [fails_at](const int64_t& x) {
        const bool slow = fails_at >= 0 && x >= fails_at - 40 && x < fails_at;
        std::this_thread::sleep_for(std::chrono::milliseconds(slow ? 100 : 2));
        return std::vector<int64_t>{x, x * x};
      },
      square);
  if (a.chain) {
    pl::stage_options pass = square;
    pass.instances = 1;
    squares = squares.map(
        "pass", [](const std::vector<int64_t>& v) { return v; }, pass);
  }
  squares.sink("check", [t](const std::vector<int64_t>& v) {
    if (t == nullptr) return;
    std::lock_guard<std::mutex> lock(t->m);
    if (v.size() != 2 || v[0] < 0 || v[0] >= static_cast<int64_t>(t->seen.size()) ||
        v[1] != v[0] * v[0]) {
      ++t->wrong;
      return;
    }
    ++t->seen[static_cast<size_t>(v[0])];
  });
  return g;
}

int serve(const args& a) {
  tally t;
  t.seen.assign(static_cast<size_t>(a.items), 0);
  auto g = build(a, &t);
  pl::run_options o;
  o.workers = a.workers;
  o.token = a.token;
  o.join_timeout = std::chrono::milliseconds(a.join_timeout_ms);
  o.on_listening = [&](uint16_t port) {
    std::ofstream(a.port_file + ".tmp") << port << "\n";
    std::rename((a.port_file + ".tmp").c_str(), a.port_file.c_str());
  };
  o.on_running = [&](pl::running& r) {
    std::printf("running\n");
    std::fflush(stdout);
    if (a.kill_actor_ms > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(a.kill_actor_ms));
      std::printf("killed square's actor 0: %s\n", r.kill("square", 0) ? "yes" : "no");
      std::fflush(stdout);
    }
  };
  o.deadline = std::chrono::milliseconds(120000);
  auto report = g.run(o);
  if (!report) {
    std::printf("error: %s\n", report.error().message().c_str());
    return 1;
  }
  int64_t missing = 0, twice = 0;
  for (int c : t.seen) {
    if (c == 0) ++missing;
    if (c > 1) ++twice;
  }
  if (missing > 0 || twice > 0 || t.wrong > 0) {
    std::printf("error: %lld missing, %lld more than once, %lld wrong\n",
                static_cast<long long>(missing), static_cast<long long>(twice),
                static_cast<long long>(t.wrong));
    return 1;
  }
  const auto* sq = report->stage("square");
  std::printf(
      "done: %lld items, each once; square restarts %d, in %lld; workers joined %d, lost %d\n",
      static_cast<long long>(a.items), sq->restarts, static_cast<long long>(sq->items_in),
      report->workers_joined, report->workers_lost);
  return 0;
}

int join(const args& a) {
  auto g = build(a, nullptr);
  pl::join_options o;
  o.host = a.host;
  o.port = static_cast<uint16_t>(a.port);
  o.token = a.token;
  o.connect_timeout = std::chrono::milliseconds(a.connect_timeout_ms);
  auto r = g.join(o);
  if (!r) {
    std::printf("error: %s\n", r.error().message().c_str());
    return 1;
  }
  std::printf("joined: ran %d stage instances\n", r->instances);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  args a;
  if (argc < 2) {
    std::fprintf(stderr, "usage: gflex_pipeline_probe serve|join [options]\n");
    return 2;
  }
  a.mode = argv[1];
  for (int k = 2; k < argc; ++k) {
    const std::string s = argv[k];
    auto next = [&]() -> std::string {
      if (k + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", s.c_str());
        std::exit(2);
      }
      return argv[++k];
    };
    if (s == "--port-file")
      a.port_file = next();
    else if (s == "--workers")
      a.workers = std::stoi(next());
    else if (s == "--items")
      a.items = std::stoll(next());
    else if (s == "--token")
      a.token = next();
    else if (s == "--kill-actor-ms")
      a.kill_actor_ms = std::stoi(next());
    else if (s == "--join-timeout-ms")
      a.join_timeout_ms = std::stoi(next());
    else if (s == "--port")
      a.port = std::stoi(next());
    else if (s == "--host")
      a.host = next();
    else if (s == "--connect-timeout-ms")
      a.connect_timeout_ms = std::stoi(next());
    else if (s == "--other-graph")
      a.other_graph = true;
    else if (s == "--other-type")
      a.other_type = true;
    else if (s == "--relay")
      a.relay = true;
    else if (s == "--square-restarts")
      a.square_restarts = std::stoi(next());
    else if (s == "--chain")
      a.chain = true;
    else if (s == "--relay-fails-at") {
      a.relay = true;
      a.relay_fails_at = std::stoll(next());
    } else {
      std::fprintf(stderr, "unknown option %s\n", s.c_str());
      return 2;
    }
  }
  if (a.mode == "serve") return serve(a);
  if (a.mode == "join") return join(a);
  std::fprintf(stderr, "unknown mode %s\n", a.mode.c_str());
  return 2;
}
