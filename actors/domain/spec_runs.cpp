#include "spec_runs.hpp"

#include <fmt/format.h>

#include "gflex/runtime/printable_text.hpp"
#include "reputation.hpp"

namespace gflex {

expected<void> check_spec_runs(const job_spec& spec, const kernels::workload& w) {
  // The core's trackers score with the default policy: a bar above what a node can score
  // left the job waiting for community workers for good.
  if (const double best = reputation_policy{}.highest_score(); spec.min_reputation > best)
    return error(errc::invalid_argument,
                 "job spec: market.min_reputation: " + format_double(spec.min_reputation) +
                     " is more than any node can score (" + fmt::format("{:.4f}", best) +
                     "): no worker would ever qualify");
  // Every assignment would fail on every node.
  if (auto fits = w.check_batch(spec.batch_size); !fits)
    return error(fits.error().code(), "job spec: " + fits.error().message());
  return {};
}

}  // namespace gflex
