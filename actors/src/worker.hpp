#pragma once
/// @file
/// A worker actor: one compute slot of a node (a CPU thread group or a CUDA stream). It runs
/// assignments: H inner steps from the round's parameters on a shard, and answers with the
/// encoded pseudo-gradient. Detached, so its compute never blocks CAF's scheduler threads.
///
/// Protocol:
/// - (assign_atom, assignment) -> assignment_result, or an error that says what was wrong
///   with the assignment (unknown workload, wrong parameter size, non-finite values, bad
///   hyper-parameters) or that the shard could not be had.
/// - (abort_atom, assignment_id): the job no longer wants it; skipped if not yet started.

#include <caf/fwd.hpp>

#include <atomic>
#include <memory>
#include <string>

#include "gflex/runtime/identity.hpp"
#include "misbehaviour.hpp"

namespace gflex {

struct worker_config {
  std::string backend = "cpu";
  int threads = 1;
  /// Test aid: throw (and so crash this worker) when starting its Nth assignment; 0: never.
  int crash_at_assignment = 0;
  /// Test aid: bad work on purpose (see misbehaviour.hpp), drawn from `misbehave_seed`.
  misbehaviour misbehave;
  uint64_t misbehave_seed = 0;
  /// --idle-only: refuse an assignment while other processes keep the machine busy.
  bool idle_only = false;
  /// --max-hours in seconds (0: no limit), and the node's compute so far, shared by its
  /// workers; a worker refuses assignments once it is spent.
  double max_compute_s = 0.0;
  std::shared_ptr<std::atomic<double>> compute_used = std::make_shared<std::atomic<double>>(0.0);
  /// The node's key: every result is signed with it.
  std::shared_ptr<const node_identity> identity;
};

caf::actor spawn_worker(caf::actor_system& sys, worker_config config, caf::actor cache);

}  // namespace gflex
