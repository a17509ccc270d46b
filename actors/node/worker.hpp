#pragma once
/// @file
/// A worker actor: one compute slot of a node. It owns a replica group (one CPU rank, or one
/// stream on each of the node's GPUs) and runs assignments: H inner steps from the round's
/// parameters on a shard, each step's batch split between the ranks and their gradients
/// all-reduced (NCCL on GPUs) before the optimiser step, and answers with one encoded
/// pseudo-gradient. Detached: its compute, and every CUDA call that waits, runs on the
/// worker's own thread, never on CAF's scheduler threads.
///
/// Protocol:
/// - (assign_atom, assignment) -> assignment_result, or an error that says what was wrong
///   with the assignment (unknown workload, wrong parameter size, non-finite values, bad
///   hyper-parameters) or that the shard could not be had.
/// - (update_atom, "cache", new cache) from the node supervisor: its cache was restarted.
///   Assignments still waiting for a shard from the old one fail at once (unavailable): a
///   stopped cache answers nothing.
/// An assignment the node no longer wants is cancelled through `worker_config::cancelled`
/// (the uplink writes it), which the worker reads before and between its steps: a running
/// handler cannot receive a message. The worker holds there each assignment it accepted
/// until it answers it, so that the node supervisor can cancel them all when it restarts the
/// uplink.

#include <caf/fwd.hpp>

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include <vector>

#include "cancellations.hpp"
#include "compute_clock.hpp"
#include "gflex/kernels/replica_group.hpp"
#include "gflex/node_activity.hpp"
#include "gflex/runtime/identity.hpp"
#include "misbehaviour.hpp"

namespace gflex {

struct worker_config {
  /// Backend names of the replica group's ranks: {"cpu"} or {"cuda:0", "cuda:1"}.
  std::vector<std::string> ranks = {"cpu"};
  int threads = 1;
  /// Test aid: throw (and so crash this worker) as its Nth assignment starts; 0: never.
  int crash_at_assignment = 0;
  /// Test aid: fail the Nth assignment with an out-of-device-memory error; 0: never.
  int device_error_at_assignment = 0;
  /// Test aid: fail every assignment from the Nth on as a broken device; 0: never.
  int device_broken_from = 0;
  /// Assignments the node's workers failed in a row on their device for a reason other than
  /// its memory (shared; a success resets it): the node supervisor makes a node whose device
  /// keeps failing leave, to be started afresh, rather than fail work for ever.
  std::shared_ptr<std::atomic<int>> device_failures = std::make_shared<std::atomic<int>>(0);
  /// Test aid: milliseconds a verification waits before it runs (0: none).
  int verify_delay_ms = 0;
  /// Test aid: bad work on purpose (see misbehaviour.hpp), drawn from `misbehave_seed`.
  misbehaviour misbehave;
  uint64_t misbehave_seed = 0;
  /// --idle-only: refuse an assignment while other processes keep the machine busy.
  bool idle_only = false;
  /// --max-hours in seconds (0: no limit), and the node's compute so far, shared by its
  /// workers; a worker refuses assignments once it is spent.
  double max_compute_s = 0.0;
  std::shared_ptr<compute_clock> compute_used = std::make_shared<compute_clock>();
  /// node_config::on_activity (may be empty).
  std::function<void(const node_activity&)> on_activity;
  /// The node's key: every result is signed with it.
  std::shared_ptr<const node_identity> identity;
  /// Assignments the node no longer wants (shared with its uplink): one that is cancelled
  /// before it starts is refused, one that is running stops at its next step.
  std::shared_ptr<cancellations> cancelled = std::make_shared<cancellations>();
};

/// The replica group over `ranks` (CPU ranks use `cpu_threads` OpenBLAS threads each).
expected<std::unique_ptr<kernels::replica_group>> make_worker_group(
    const std::vector<std::string>& ranks, int cpu_threads);

caf::actor spawn_worker(caf::actor_system& sys, worker_config config, caf::actor cache);

}  // namespace gflex
