#pragma once
/// @file
/// The verifier: re-runs sampled assignments on core-tier workers, the platform's own
/// machines, and says how far a node's claimed update is from the re-computed one. An
/// assignment is deterministic given its parameters, shard, seed and hyper-parameters, so an
/// honest result differs from the re-computation only by rounding and by the claimant's
/// int8 error-feedback residual (the re-computation runs in fp32 and leaves the core-tier
/// worker's residual alone).
///
/// Protocol:
/// - (verify_atom, verify_request) -> double: the relative L2 distance |claimed - recomputed|
///   / |recomputed|, or an error when the re-computation itself failed three times. Requests
///   wait in order for a free core-tier slot (acquired from the market with the core
///   policy); a lost worker's request is run again on another.
/// - (withdraw_atom, node_id) from the market: a core-tier node went away; its requests are
///   run again.
/// - (update_atom, "market", actor): a restarted market.

#include <caf/fwd.hpp>

namespace gflex {

caf::actor spawn_verifier(caf::actor_system& sys, caf::actor market);

}  // namespace gflex
