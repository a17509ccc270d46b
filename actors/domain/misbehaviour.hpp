#pragma once
/// @file
/// Misbehaviour for tests: `gflex-node --misbehave MODE` makes a node's workers return bad
/// work, so that the core's checks, verification and reputation can be exercised against
/// real processes. Nothing else in the node changes. Free of CAF.
///
/// Modes:
/// - `random`: the update is replaced by Gaussian noise of the same norm.
/// - `scale:X`: the update is multiplied by X (finite, X != 1).
/// - `signflip`: the update is negated.
/// - `lazy`: only a tenth of the inner steps are run (at least one).
/// - `stale`: the update of the worker's previous assignment of the job is sent again.
/// - `sometimes:P:MODE`: MODE with probability P in (0, 1], else honest work.
/// - `in:JOB:MODE`: MODE on the assignments of job JOB only, honest work for the others (a
///   node that cheats one job while it works honestly for another).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "gflex/runtime/error.hpp"
#include "gflex/runtime/rng.hpp"

namespace gflex {

struct misbehaviour {
  enum class mode : uint8_t { honest, random, scale, signflip, lazy, stale };
  mode kind = mode::honest;
  double factor = 1.0;       ///< For scale.
  double probability = 1.0;  ///< Of misbehaving on an assignment.
  std::string only_job;      ///< For in:JOB:MODE: the one job it misbehaves in.
};

/// Parses a --misbehave value; errc::invalid_argument says what is wrong. "" and "honest"
/// are honest work.
expected<misbehaviour> parse_misbehaviour(std::string_view text);

/// What one worker needs to misbehave: the mode, its own random stream, and (for `stale`)
/// the last update it computed per job.
class misbehaving_worker {
 public:
  misbehaving_worker(misbehaviour how, uint64_t seed) : how_(how), rng_(seed) {}

  /// Decides, once per assignment (of job `job_id`), whether this one misbehaves; call
  /// before training.
  bool decide(const std::string& job_id = {});

  /// The inner steps to run out of `local_steps` (lazy runs a tenth of them).
  int64_t steps(int64_t local_steps) const;

  /// Alters the honest update `delta` of an assignment of `job_id` in place, as decided.
  void alter(const std::string& job_id, std::vector<float>& delta);

 private:
  misbehaviour how_;
  rng rng_;
  bool now_ = false;
  std::string last_job_;
  std::vector<float> last_update_;
};

}  // namespace gflex
