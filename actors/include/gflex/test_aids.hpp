#pragma once
/// @file
/// A node's test aids: ways to make it fail or misbehave on purpose, so that the project's
/// own tests can exercise the core's defences and the node's supervision. They are not part
/// of the embedding API (node_config); `gflex-node` exposes them as hidden flags.

#include <cstdint>
#include <string>

#include "gflex/gflex.hpp"

namespace gflex {

struct node_test_aids {
  /// Protocol version announced at join; 0 means this build's (a core must refuse others).
  uint32_t announce_protocol = 0;
  /// The first workers crash when they start their Nth assignment (0: never), to exercise
  /// the node supervisor's restarts.
  int crash_worker_at = 0;
  /// Every worker's Nth assignment fails as a device running out of memory would (0:
  /// never), to exercise that path where there is no GPU.
  int device_error_at = 0;
  /// Every worker's assignments from its Nth on fail as a device in a failed state would (an
  /// illegal memory access; 0: never): the node must leave, not fail work for ever.
  int device_broken_from = 0;
  /// Return bad work on purpose (random, scale:X, signflip, lazy, stale, sometimes:P:MODE);
  /// empty: honest. Nothing else in the node changes.
  std::string misbehave;
  /// Re-computations (verifications) wait this long before they start, so that a test can
  /// have a round applied before its check ends and see it rolled back (0: no wait).
  int verify_delay_ms = 0;
  uint64_t misbehave_seed = 0;  ///< 0: derived from the node's name.
};

/// run_node with test aids.
int run_node(const node_config& config, const std::string& host, uint16_t port,
             const node_test_aids& aids);

}  // namespace gflex
