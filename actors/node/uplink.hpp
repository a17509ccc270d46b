#pragma once
/// @file
/// The uplink: a node's only connection to the core. Nodes only dial out, so they work
/// behind home routers. It joins (hello -> welcome), sends heartbeats, and when the core
/// goes away reconnects with exponential backoff and jitter (0.5 s doubling to 30 s, times
/// a random factor in [0.5, 1.5) so that a thousand nodes do not reconnect in step).
///
/// The core's welcome holds this node's session, the only core handle besides the front door
/// that the node ever holds; heartbeats, bye and chunk requests (from the cache) go there,
/// and assignments come from there as (assign_atom, worker index, assignment), answered by
/// that worker (the core never holds a worker's handle). When the session ends (the node
/// was given up for lost while stopped, the core restarted its registry, or the core
/// disconnected it and said why with (bye_atom, reason)), the uplink joins again.
/// (offer_atom, new worker, old worker) from the node supervisor: a restarted worker takes
/// the old one's index.
///
/// A refusal by the core (another protocol version, a malformed hello) is final: the uplink
/// tells its owner (stop_atom, exit code, reason) and stops.

#include <caf/fwd.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "gflex/job_status.hpp"
#include "gflex/node_activity.hpp"
#include "gflex/runtime/identity.hpp"

#include "cancellations.hpp"

namespace gflex {

struct uplink_config {
  std::string name;
  std::string device;
  /// Advertised to the core with the hello, and sampled into the node's metrics about every
  /// 5 s (NVML) while the node runs.
  std::vector<gpu_status> gpus;
  uint32_t protocol = 0;
  std::string host;  ///< Empty when `core` is given (embedded: no sockets).
  uint16_t port = 0;
  /// The other servers of a core of several, tried in turn when one cannot be reached.
  std::vector<std::pair<std::string, uint16_t>> other_cores;
  /// With other_cores: a core that answers nothing (its `earned`) and asks for nothing (an
  /// update's chunks) for this long is taken for lost, and the next one is tried.
  std::chrono::milliseconds core_silence{15000};
  /// A fetch of parameters that no assignment has waited for this long (all were aborted,
  /// or their session ended) lets what it holds go: up to a gigabyte, kept before until two
  /// newer fetches pushed it out, which an idle node never saw.
  std::chrono::milliseconds params_idle{std::chrono::minutes(2)};
  uint8_t tier = 0;        ///< gflex::node_tier to join with.
  std::string credential;  ///< The join token.
  bool tls = false;        ///< Connect through the OpenSSL module (the actor system has it loaded).
  int64_t price = 0;       ///< Micro-credits per device-hour.
  double throughput = 0.0;                        ///< Calibrated samples per second per worker.
  std::shared_ptr<const node_identity> identity;  ///< Signs the hello.
  std::function<void(const node_activity&)> on_activity;  ///< node_config's (may be empty).
  /// Shared with the workers: what the uplink cancels, a running assignment stops at.
  std::shared_ptr<cancellations> cancelled = std::make_shared<cancellations>();
};

caf::actor spawn_uplink(caf::actor_system& sys, uplink_config config, caf::actor core,
                        std::vector<caf::actor> workers, caf::actor cache, caf::actor owner);

}  // namespace gflex
