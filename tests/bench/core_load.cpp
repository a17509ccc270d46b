/// @file
/// Simulated nodes for the core's scale benchmark (core_scale.py): one process holds many
/// nodes, each a real participant of the wire protocol with its own Ed25519 key, its own
/// hello through the core's front door, its own session, heartbeats at the interval the core
/// asks for, and an uplink that answers every assignment at once with a valid, signed result.
/// What it does not do is compute: the update is made from the assignment (its job, round and
/// seed), not trained, so a re-computation of the same assignment on another simulated node
/// gives the same bytes. The nodes of one process share its one CAF connection (BASP
/// multiplexes actors over one link per pair of processes), so the core sees one TCP
/// connection per process and one session, lease and market slot per node.
///
///   gflex_bench_core_load --core HOST:PORT --nodes N --prefix NAME [--insecure]
///       [--tier core|community] [--concurrent-joins K] [--records FILE]
///
/// The core's bundle and a join token come from GFLEX_CORE_CERT and GFLEX_TOKEN. On SIGTERM or
/// SIGINT it writes one line per answered assignment to --records (job, round, verify flag,
/// arrival and answer times in CLOCK_MONOTONIC nanoseconds, shared by every process of the
/// machine), prints a summary and exits without stopping its actors one by one.

#include <CLI/CLI.hpp>
#include <caf/all.hpp>
#include <caf/io/middleman.hpp>
#include <caf/openssl/remote_actor.hpp>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "gflex/runtime/identity.hpp"
#include "gflex/runtime/rng.hpp"
#include "gflex/runtime/tensor_codec.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "link_security.hpp"
#include "messages.hpp"

using namespace gflex;

namespace {

std::atomic<bool> stop_requested{false};

extern "C" void on_stop_signal(int) {
  stop_requested.store(true);
}

int64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

struct answered {
  std::string job;
  uint64_t round = 0;
  bool verify = false;
  int64_t arrived_ns = 0;
  int64_t answered_ns = 0;
};

// What every simulated node of this process shares: counters, the records, the join limit.
struct fleet {
  std::atomic<int64_t> joined{0};
  std::atomic<int64_t> welcomed{0};  // welcomes over the run, rejoins included
  std::atomic<int64_t> refused{0};
  std::atomic<int64_t> beats{0};
  std::atomic<int64_t> sessions_lost{0};
  std::mutex mutex;
  std::vector<answered> records;
  std::string last_refusal;
};

// The update a simulated node "computes" for an assignment: a direction common to the round
// (so that every result of a round looks like the others, as honest ones do) plus a tenth of
// that in noise of the assignment's own seed (so that a node's successive results differ, as
// honest ones do). A function of the assignment only: a re-computation reproduces it.
std::vector<float> made_update(const assignment& a, size_t count) {
  rng common(std::hash<std::string>{}(a.job_id) ^ (a.round * 0x2545f4914f6cdd1dull));
  rng own(a.seed);
  auto unit = [](rng& r) { return 2.0 * r.uniform() - 1.0; };  // in [-1, 1)
  std::vector<float> v(count);
  for (auto& x : v) x = static_cast<float>(1e-3 * (unit(common) + 0.1 * unit(own)));
  return v;
}

// The parameter count of an assignment's tensor, decoded once per encoded size and remembered:
// decoding 10,000 copies of the same parameters per round would cost the load generator more
// than the core's sending them. Parameters sent as chunks (a model over one payload chunk)
// have no inline tensor: 0, which the node refuses.
size_t parameter_count(const assignment& a, std::map<size_t, size_t>& known) {
  const auto& bytes = a.params;
  auto it = known.find(bytes.size());
  if (it != known.end()) return it->second;
  size_t count = 0;
  if (auto t = decode_tensor(bytes); t) count = static_cast<size_t>(t->numel());
  known[bytes.size()] = count;
  return count;
}

struct simulated_node_state {
  std::string node_name;
  bool joined = false;
  std::shared_ptr<const node_identity> key;
  caf::actor session;
  uint32_t heartbeat_ms = 1000;
  uint64_t incarnation = 0;  // the session a tick belongs to: a rejoin starts a new one
  std::map<size_t, size_t> counts;
  static inline const char* name = "simulated_node";
};

using simulated_node = caf::stateful_actor<simulated_node_state>;

struct join_settings {
  caf::actor core;
  uint8_t tier = 1;
  std::string token;
};

void join(simulated_node* self, std::shared_ptr<fleet> f, join_settings js);

caf::behavior simulated_node_behavior(simulated_node* self, std::string name,
                                      std::shared_ptr<fleet> f, join_settings js) {
  self->state.node_name = std::move(name);
  self->state.key = std::make_shared<const node_identity>(node_identity::generate());
  self->set_down_handler([=](const caf::down_msg& down) {
    if (down.source != self->state.session.address()) return;
    f->sessions_lost.fetch_add(1);
    self->state.session = nullptr;
    self->state.incarnation += 1;
    // A real node says hello again with backoff; one second, with jitter, here.
    self->delayed_send(self, std::chrono::milliseconds(1000 + std::rand() % 1000),
                       hello_atom::value);
  });
  self->set_error_handler([](caf::error&) {});
  join(self, f, js);
  return {
      [=](hello_atom) { join(self, f, js); },
      [=](tick_atom, uint64_t incarnation) {
        auto& st = self->state;
        if (incarnation != st.incarnation || !st.session) return;
        self->send(st.session, beat_atom::value);
        f->beats.fetch_add(1, std::memory_order_relaxed);
        self->delayed_send(self, std::chrono::milliseconds(st.heartbeat_ms), tick_atom::value,
                           incarnation);
      },
      [=](assign_atom, uint32_t, const assignment& a) -> caf::result<assignment_result> {
        const int64_t arrived = monotonic_ns();
        auto& st = self->state;
        const size_t count = parameter_count(a, st.counts);
        if (count == 0) return to_caf(error(errc::malformed_message, "no parameters to train"));
        assignment_result r;
        r.assignment_id = a.id;
        r.update =
            encode_update(made_update(a, count),
                          a.verify ? compression::fp32 : static_cast<compression>(a.compression));
        r.loss = 1.0;
        r.samples = a.local_steps * a.batch_size;
        r.compute_s = 0.001;
        r.signature = st.key->sign(result_message(r.assignment_id, r.update));
        std::lock_guard<std::mutex> lock(f->mutex);
        f->records.push_back({a.job_id, a.round, a.verify, arrived, monotonic_ns()});
        return r;
      },
      [](chunk_atom, const std::string&) -> caf::result<std::vector<uint8_t>> {
        return to_caf(error(errc::io_error, "a simulated node keeps no update chunks"));
      },
      [](abort_atom, uint64_t) {},
      [](bye_atom, const std::string&) {},
  };
}

void join(simulated_node* self, std::shared_ptr<fleet> f, join_settings js) {
  auto& st = self->state;
  node_hello h;
  h.protocol = protocol_version;
  h.name = st.node_name;
  h.device = "simulated";
  h.workers = 1;
  h.uplink = caf::actor_cast<caf::actor>(self);
  h.tier = js.tier;
  h.credential = js.token;
  h.throughput = 1000.0;
  h.public_key = st.key->public_key();
  h.proof = st.key->sign(hello_message(protocol_version, st.node_name));
  self->request(js.core, std::chrono::seconds(120), hello_atom::value, std::move(h))
      .then(
          [=](node_welcome& w) {
            auto& st = self->state;
            f->welcomed.fetch_add(1);
            if (!st.joined) f->joined.fetch_add(1);
            st.joined = true;
            st.session = caf::actor_cast<caf::actor>(w.session);
            st.heartbeat_ms = std::max<uint32_t>(w.heartbeat_ms, 50);
            self->monitor(st.session);
            // Beats of different nodes spread over the interval, as independent nodes' are.
            self->delayed_send(self, std::chrono::milliseconds(std::rand() % st.heartbeat_ms),
                               tick_atom::value, st.incarnation);
          },
          [=](caf::error& e) {
            f->refused.fetch_add(1);
            {
              std::lock_guard<std::mutex> lock(f->mutex);
              f->last_refusal = from_caf(e).message();
            }
            self->delayed_send(self, std::chrono::milliseconds(1000 + std::rand() % 1000),
                               hello_atom::value);
          });
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"simulated nodes for the core's scale benchmark"};
  std::string core_at, prefix = "sim", records_path, tier = "core";
  int64_t nodes = 100;
  int64_t concurrent = 50;
  bool insecure = false;
  app.add_option("--core", core_at, "the core, HOST:PORT")->required();
  app.add_option("--nodes", nodes, "simulated nodes in this process")
      ->check(CLI::Range(int64_t{1}, int64_t{100000}));
  app.add_option("--prefix", prefix, "node names are PREFIX-0, PREFIX-1, ...");
  app.add_option("--tier", tier, "core or community")->check(CLI::IsMember({"core", "community"}));
  app.add_option("--concurrent-joins", concurrent, "hellos in flight at once")
      ->check(CLI::Range(int64_t{1}, int64_t{100000}));
  app.add_option("--records", records_path, "where to write the answered assignments");
  app.add_flag("--insecure", insecure, "plain TCP (a core run with --insecure)");
  CLI11_PARSE(app, argc, argv);
  const auto colon = core_at.rfind(':');
  if (colon == std::string::npos) {
    std::fprintf(stderr, "--core: expected HOST:PORT, got %s\n", core_at.c_str());
    return 2;
  }
  const char* token = std::getenv("GFLEX_TOKEN");
  if (token == nullptr) {
    std::fprintf(stderr, "set GFLEX_TOKEN to a join token of the core\n");
    return 2;
  }
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGINT, on_stop_signal);

  caf::actor_system_config cfg;
  configure_actor_system(cfg);
  // One scheduler thread that sleeps when it has nothing to do: CAF's default work-stealing
  // workers poll before they sleep, and twenty load generators polling would take the CPU the
  // core is measured on.
  cfg.set("scheduler.policy", caf::atom("sharing"));
  cfg.set("scheduler.max-threads", size_t{1});
  if (!insecure) {
    const char* bundle = std::getenv("GFLEX_CORE_CERT");
    if (bundle == nullptr) {
      std::fprintf(stderr, "set GFLEX_CORE_CERT to the core's bundle (or use --insecure)\n");
      return 2;
    }
    if (auto tls = configure_peer_tls(cfg, bundle); !tls) {
      std::fprintf(stderr, "%s\n", tls.error().message().c_str());
      return 2;
    }
  }
  caf::actor_system sys{cfg};
  const std::string host = core_at.substr(0, colon);
  const auto port = static_cast<uint16_t>(std::stoi(core_at.substr(colon + 1)));
  auto core = insecure ? sys.middleman().remote_actor(host, port)
                       : caf::openssl::remote_actor(sys, host, port);
  if (!core) {
    std::fprintf(stderr, "cannot reach the core at %s: %s\n", core_at.c_str(),
                 sys.render(core.error()).c_str());
    return 1;
  }
  auto f = std::make_shared<fleet>();
  join_settings js{*core, static_cast<uint8_t>(tier == "core" ? 1 : 0), token};
  std::srand(static_cast<unsigned>(monotonic_ns()));
  const auto started = std::chrono::steady_clock::now();
  // Joins go out `concurrent` at a time: a thousand hellos at once would only queue at the
  // front door, and the time to join is part of what is measured.
  int64_t spawned = 0;
  bool announced = false;
  while (!stop_requested.load()) {
    while (spawned < nodes && spawned - f->joined.load() < concurrent) {
      sys.spawn(simulated_node_behavior, prefix + "-" + std::to_string(spawned), f, js);
      ++spawned;
    }
    if (!announced && f->joined.load() == nodes) {
      announced = true;
      std::printf(
          "joined %lld nodes in %.2f s\n", static_cast<long long>(nodes),
          std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
      std::fflush(stdout);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::vector<answered> records;
  std::string refusal;
  {
    std::lock_guard<std::mutex> lock(f->mutex);
    records = f->records;
    refusal = f->last_refusal;
  }
  if (!records_path.empty()) {
    std::ofstream out(records_path);
    for (const auto& r : records)
      out << r.job << '\t' << r.round << '\t' << (r.verify ? 1 : 0) << '\t' << r.arrived_ns << '\t'
          << r.answered_ns << '\n';
  }
  std::printf(
      "joined %lld of %lld, %lld welcomes, %lld refusals%s%s, %lld sessions lost, %lld "
      "heartbeats, %zu assignments answered\n",
      static_cast<long long>(f->joined.load()), static_cast<long long>(nodes),
      static_cast<long long>(f->welcomed.load()), static_cast<long long>(f->refused.load()),
      refusal.empty() ? "" : " (last: ", refusal.empty() ? "" : (refusal + ")").c_str(),
      static_cast<long long>(f->sessions_lost.load()), static_cast<long long>(f->beats.load()),
      records.size());
  std::fflush(stdout);
  // Thousands of actors and their connection need not be stopped one by one to exit.
  std::_Exit(0);
}
