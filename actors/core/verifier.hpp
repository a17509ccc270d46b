#pragma once
/// @file
/// The verifier: re-runs sampled assignments on core-tier workers, the platform's own
/// machines, and says how far a node's claimed update is from the re-computed one. An
/// assignment is deterministic given its parameters, shard, seed and hyper-parameters (a
/// worker carries nothing from one assignment to the next), so an honest result differs from
/// the re-computation only by the int8 wire format and by rounding on other arithmetic, which
/// training can amplify (docs/BENCHMARKS.md, "Re-computation on other arithmetic").
///
/// Protocol:
/// - (verify_atom, verify_request) -> (double distance, double norm_ratio, double compute_s):
///   the relative L2 distance |claimed - recomputed| / |recomputed|, the ratio of the norms
///   |claimed| / |recomputed|, and the compute seconds the re-computation took; or an error when
///   the re-computation itself failed three times, or errc::non_finite at once when its training
///   diverged on the core tier. With nothing claimed (an empty `claimed`), it answers (0, 1,
///   compute_s) once the core tier has computed the work: whether it diverges is all the job
///   asks then. Requests wait in order for a free core-tier slot
///   (acquired from the market with the core policy); a lost worker's request is run again on
///   another. A request that has waited `max_wait` without one is answered errc::unavailable
///   (the job decides whether to ask again or to go on unverified), and at most `max_queue`
///   wait: one more is answered errc::limit_exceeded at once, so nothing piles up.
/// - (withdraw_atom, node_id) from the market: a core-tier node went away; its requests are
///   run again.
/// - (update_atom, "market", actor): a restarted market.

#include <caf/fwd.hpp>

#include <chrono>
#include <cstddef>

namespace gflex {

struct verifier_limits {
  std::chrono::milliseconds max_wait{60000};
  size_t max_queue = 4096;
  /// Bytes of claimed updates (fp32) the verifier holds, waiting or being re-computed: past
  /// them a request is refused (errc::limit_exceeded; its job asks again). Bounded by count
  /// alone, 200 new nodes' results on a 25M-parameter model held 20 GB in the core. One
  /// request is always taken when none is held.
  uint64_t max_claimed_bytes = uint64_t{4} << 30;
  /// A re-computation not answered within `recompute_factor` times its job's deadline_s (at
  /// least `min_recompute_wait`, at most max_deadline_s) is aborted and tried on another
  /// core-tier worker, which waits twice as long as the attempt before it (at most
  /// max_deadline_s); the worker that ran out of time is not held at fault. Its worker may be
  /// slower than the node it checks (a CPU for a GPU's work), hence the factor; a worker that
  /// hung held its job's round for a day.
  double recompute_factor = 30.0;
  std::chrono::milliseconds min_recompute_wait{std::chrono::minutes(10)};
};

caf::actor spawn_verifier(caf::actor_system& sys, caf::actor market, verifier_limits limits = {});

}  // namespace gflex
