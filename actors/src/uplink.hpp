#pragma once
/// @file
/// The uplink: a node's only connection to the core. Nodes only dial out, so they work
/// behind home routers. It joins (hello -> welcome), sends heartbeats, and when the core
/// goes away reconnects with exponential backoff and jitter (0.5 s doubling to 30 s, times
/// a random factor in [0.5, 1.5) so that a thousand nodes do not reconnect in step).
///
/// (rejoin_atom) from the registry means the core no longer knows this node (it was given up
/// for lost while the process was stopped, or the core restarted): the uplink joins again.
/// (offer_atom, new worker, old worker) from the node supervisor: a restarted worker.
///
/// A refusal by the core (another protocol version, a malformed hello) is final: the uplink
/// tells its owner (stop_atom, exit code, reason) and stops.

#include <caf/fwd.hpp>

#include <memory>
#include <string>
#include <vector>

#include "gflex/job_status.hpp"
#include "gflex/runtime/identity.hpp"

namespace gflex {

struct uplink_config {
  std::string name;
  std::string device;
  std::vector<gpu_status> gpus;  ///< Advertised to the core with the hello.
  uint32_t protocol = 0;
  std::string host;  ///< Empty when `core` is given (embedded: no sockets).
  uint16_t port = 0;
  uint8_t tier = 0;        ///< gflex::node_tier to join with.
  std::string credential;  ///< The join token.
  bool tls = false;        ///< Connect through the OpenSSL module (the actor system has it loaded).
  int64_t price = 0;       ///< Micro-credits per device-hour.
  double throughput = 0.0;                        ///< Calibrated samples per second per worker.
  std::shared_ptr<const node_identity> identity;  ///< Signs the hello.
};

caf::actor spawn_uplink(caf::actor_system& sys, uplink_config config, caf::actor core,
                        std::vector<caf::actor> workers, caf::actor cache, caf::actor owner);

}  // namespace gflex
