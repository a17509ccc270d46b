#include "node_supervisor.hpp"

#include "misbehaviour.hpp"
#include "reputation.hpp"

#include <unistd.h>

#include <spdlog/spdlog.h>

#include <atomic>
#include <cmath>
#include <deque>

#include "cache.hpp"
#include "compute_plan.hpp"
#include "device_description.hpp"
#include "gflex/kernels/backend.hpp"
#include "gflex/kernels/calibration.hpp"
#include "gflex/kernels/devices.hpp"
#include "messages.hpp"
#include "uplink.hpp"
#include "worker.hpp"

namespace gflex {

namespace {

// What the chunk cache leaves free of its disk whatever --cache-limit says: the volunteer's
// own programs need room, and a full disk failed them (spawn_cache).
constexpr uint64_t cache_keep_free = uint64_t{1} << 30;

struct node_children {
  caf::actor cache, uplink;
  std::vector<caf::actor> workers;
  worker_config config;
  uplink_config uplink_cfg;
  caf::actor core;   // embedded mode: the core in this process
  caf::actor owner;  // hears (stop_atom, code, reason)
  std::filesystem::path cache_dir;
  uint64_t cache_limit = 0;  // bytes (--cache-limit)
};

/// Assignments failed in a row on the device (not for its memory) before the node leaves.
constexpr int max_device_failures = 5;

/// Restarts allowed within `restart_window` before the node gives up (escalates).
constexpr int restart_budget = 5;
constexpr auto restart_window = std::chrono::seconds(60);

struct node_state {
  // Shared with the functor that stops the children when the node stops: by then the
  // actor's state is gone.
  std::shared_ptr<node_children> children;
  std::deque<std::chrono::steady_clock::time_point> restarts;
  static inline const char* name = "node_supervisor";
};

using node_actor_type = caf::stateful_actor<node_state>;

// Replaces a dead child: a worker (offered to the core by the uplink), the uplink (which
// joins the core again; the core has seen the old one go down), or the cache (workers and
// uplink are given the new one). Returns the replacement, or nothing if `who` is no child.
caf::actor restart_child(node_actor_type* self, const caf::actor_addr& who) {
  auto& c = *self->state.children;
  auto& sys = self->system();
  auto it = std::find_if(c.workers.begin(), c.workers.end(),
                         [&](const caf::actor& w) { return w.address() == who; });
  if (it != c.workers.end()) {
    auto old = *it;
    *it = spawn_worker(sys, c.config, c.cache);
    self->send(c.uplink, offer_atom::value, *it, old);
    return *it;
  }
  if (who == c.uplink.address()) {
    // The core gives the old uplink's work to other nodes as its session ends; the new
    // uplink knows none of it. Computed to the end, it held the workers for minutes, counted
    // against --max-hours, and the next session's first assignments queued behind it past
    // their deadlines. Every assignment a worker accepted is cancelled, those still waiting
    // for their shard too (cancelled only once computing, they ran every step once it came).
    c.config.cancelled->cancel_held();
    c.uplink = spawn_uplink(sys, c.uplink_cfg, c.core, c.workers, c.cache, c.owner);
    return c.uplink;
  }
  if (who == c.cache.address()) {
    c.cache =
        spawn_cache(sys, c.cache_dir, c.cache_limit, std::chrono::minutes(2), cache_keep_free);
    // The uplink first: it names the session to the new cache (serve_atom), and a worker told
    // first could ask the new cache for its shard before that, which then failed for want of
    // a data server. Two senders are not ordered, so this narrows the window; what still
    // comes before the session fails as unavailable, not as the node's fault.
    self->send(c.uplink, update_atom::value, std::string("cache"), c.cache);
    for (const auto& w : c.workers)
      self->send(w, update_atom::value, std::string("cache"), c.cache);
    return c.cache;
  }
  return {};
}

caf::behavior node_actor(node_actor_type* self, node_children children) {
  // Every child is supervised one for one: monitored, and restarted when it dies with an
  // error, at most 5 times a minute; then the node stops (escalation).
  children.config.crash_at_assignment = 0;  // the test aid applies to the first workers only
  self->state.children = std::make_shared<node_children>(std::move(children));
  auto current = self->state.children;
  self->monitor(current->cache);
  self->monitor(current->uplink);
  for (auto& w : current->workers) self->monitor(w);
  self->attach_functor([current](const caf::error&) {
    // A worker computes an assignment in one handler on its own thread: the exit below waits
    // in its mailbox until every step has run (minutes for a large model), and an embedded
    // cluster's actor system, stopping, waited for it. Cancelled, it stops at its next step.
    current->config.cancelled->cancel_held();
    for (auto& w : current->workers) caf::anon_send_exit(w, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(current->uplink, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(current->cache, caf::exit_reason::user_shutdown);
  });
  self->set_down_handler([=](const caf::down_msg& down) {
    auto& st = self->state;
    // An uplink that stops normally was refused by the core: its owner ends the process.
    if (!down.reason) return;
    auto now = std::chrono::steady_clock::now();
    while (!st.restarts.empty() && now - st.restarts.front() > restart_window)
      st.restarts.pop_front();
    if (static_cast<int>(st.restarts.size()) >= restart_budget) {
      spdlog::error("children crashed {} times within {} s; stopping the node", restart_budget + 1,
                    restart_window.count());
      self->quit(down.reason);
      return;
    }
    auto replacement = restart_child(self, down.source);
    if (!replacement) return;
    st.restarts.push_back(now);
    spdlog::warn("a node child stopped ({}); restarted it", self->system().render(down.reason));
    self->monitor(replacement);
  });
  // Every second: --max-hours (once the workers have computed that long, the node leaves like
  // on SIGTERM), and a device that keeps failing.
  self->delayed_send(self, std::chrono::seconds(1), tick_atom::value);
  return {
      [=](tick_atom) {
        auto& c = *self->state.children;
        // A device in a failed state (an illegal address, an ECC error) fails every
        // assignment until its process ends: the node stayed joined, failing work once a
        // minute per slot for ever. It leaves with exit 1, which a service restarts afresh.
        if (const int failed = c.config.device_failures->load(); failed >= max_device_failures) {
          self->send(c.owner, stop_atom::value, 1,
                     "the device failed " + std::to_string(failed) +
                         " assignments in a row, not for want of memory: the node stops, to be "
                         "started afresh (the log above says how they failed)");
          return;
        }
        double used = c.config.compute_used->seconds();
        if (c.config.max_compute_s > 0.0 && used >= c.config.max_compute_s) {
          self->send(c.owner, stop_atom::value, 0,
                     "this node has computed for its --max-hours (" +
                         std::to_string(c.config.max_compute_s / 3600.0) + " h)");
          return;
        }
        self->delayed_send(self, std::chrono::seconds(1), tick_atom::value);
      },
      [=](bye_atom) {
        // The core gives this node's work to others once it hears the bye; the uplink, leaving,
        // no longer cancels what its session handed out, so the node does.
        current->config.cancelled->cancel_held();
        self->send(current->uplink, bye_atom::value);
        // Let the bye leave before the children are stopped.
        self->delayed_send(self, std::chrono::milliseconds(200), stop_atom::value);
      },
      [=](stop_atom) { self->quit(caf::exit_reason::user_shutdown); },
  };
}

}  // namespace

int start_failure_exit_code(const error& e) {
  switch (e.code()) {
    case errc::device_error:
    case errc::io_error:
    case errc::store_error:
    case errc::unavailable:
      return 1;
    default:
      return 2;
  }
}

expected<caf::actor> spawn_node(caf::actor_system& sys, const node_config& config,
                                const node_test_aids& aids, const std::string& host, uint16_t port,
                                caf::actor core, caf::actor owner) {
  if (config.workers < 1 || config.workers > 256)
    return error(errc::invalid_argument, "--workers must be in [1, 256]");
  auto cache_limit = kernels::parse_byte_size(config.cache_limit);
  if (!cache_limit)
    return error(errc::invalid_argument, "--cache-limit: " + cache_limit.error().message());
  // Decide the devices here, and make one worker's replica group, so that a node without the
  // device fails at start with the reason rather than with workers that die one by one.
  auto plan = plan_compute(config);
  if (!plan) return plan.error();
  auto probe = make_worker_group(plan->ranks, config.threads_per_worker);
  if (!probe) return probe.error();
  // What the core shows: the device, or each GPU of the group and how they reduce.
  std::vector<std::string> ranks;
  for (int r = 0; r < (*probe)->size(); ++r) ranks.push_back((*probe)->rank(r).describe());
  const std::string device =
      describe_devices(ranks, (*probe)->describe(), max_device_description_chars);

  std::string name = config.name;
  if (name.empty()) {
    char buf[256] = {};
    gethostname(buf, sizeof buf - 1);
    name = buf;
  }
  if (config.token.empty())
    return error(errc::invalid_argument,
                 "a node needs a join token (--token or GFLEX_TOKEN; the core's operator makes "
                 "one with `gflex-core token create`)");
  auto misbehave = parse_misbehaviour(aids.misbehave);
  if (!misbehave) return misbehave.error();
  if (misbehave->kind != misbehaviour::mode::honest)
    spdlog::warn("this node misbehaves ({}): a test aid", aids.misbehave);
  // The node's identity: made at its first start, kept beside its cache.
  auto identity = node_identity::load_or_create(config.data_dir / "node.key");
  if (!identity) return identity.error();
  auto key = std::make_shared<const node_identity>(std::move(*identity));
  spdlog::info("node key {}", key_hex(key->public_key()));
  node_children c;
  c.cache = spawn_cache(sys, config.data_dir / "chunks", *cache_limit, std::chrono::minutes(2),
                        cache_keep_free);
  c.cache_limit = *cache_limit;
  c.config.ranks = plan->ranks;
  c.config.threads = config.threads_per_worker;
  c.config.crash_at_assignment = aids.crash_worker_at;
  c.config.device_error_at_assignment = aids.device_error_at;
  c.config.device_broken_from = aids.device_broken_from;
  c.config.verify_delay_ms = aids.verify_delay_ms;
  c.config.misbehave = *misbehave;
  c.config.identity = key;
  c.config.idle_only = config.idle_only;
  c.config.max_compute_s = config.max_hours * 3600.0;
  c.config.compute_used = std::make_shared<compute_clock>();
  c.config.on_activity = config.on_activity;
  if (!(config.price >= 0.0 && config.price <= 1e6))
    return error(errc::invalid_argument, "--price must be in [0, 1000000] credits per hour");
  if (!(config.max_hours >= 0.0 && config.max_hours <= 1e6))
    return error(errc::invalid_argument, "--max-hours must be in [0, 1000000] (0: no limit)");
  // One rank's fashion-mlp rate; a group of several GPUs splits each batch between them, so
  // its rate is taken as that many times one rank's (the all-reduce is not counted).
  auto throughput = kernels::calibrate_throughput((*probe)->rank(0));
  if (!throughput && throughput.error().code() == errc::device_error &&
      kernels::host_memory_limit() > 0 && plan->gpus.empty())
    return error(errc::invalid_argument,
                 "--memory-limit " + config.memory_limit +
                     " leaves no room for the calibration model: " + throughput.error().message());
  if (!throughput) return throughput.error();
  *throughput *= static_cast<double>((*probe)->size());
  probe->reset();
  spdlog::info(
      "calibration: {:.0f} fashion-mlp samples/s per worker; asking {} credits per "
      "device-hour",
      *throughput, config.price);
  // Each worker draws its own misbehaviour stream, repeatable for a given node name.
  uint64_t seed = aids.misbehave_seed;
  if (seed == 0)
    for (char ch : name) seed = (seed ^ static_cast<uint8_t>(ch)) * 0x100000001B3ULL;
  c.cache_dir = config.data_dir / "chunks";
  for (int i = 0; i < plan->workers; ++i) {
    c.config.misbehave_seed = seed + static_cast<uint64_t>(i);
    c.workers.push_back(spawn_worker(sys, c.config, c.cache));
  }
  uplink_config up;
  up.name = name;
  up.device = device;
  up.gpus = plan->gpus;
  up.protocol = aids.announce_protocol != 0 ? aids.announce_protocol : protocol_version;
  up.host = host;
  up.port = port;
  up.other_cores = config.other_cores;
  up.tier = static_cast<uint8_t>(config.tier);
  up.price = std::llround(config.price * 1e6);
  up.throughput = *throughput;
  up.identity = key;
  up.credential = config.token;
  up.tls = !core && !config.insecure;
  up.on_activity = config.on_activity;
  up.cancelled = c.config.cancelled;
  c.uplink_cfg = up;
  c.core = core;
  c.owner = owner;
  c.uplink = spawn_uplink(sys, up, std::move(core), c.workers, c.cache, std::move(owner));
  return sys.spawn(node_actor, std::move(c));
}

}  // namespace gflex
