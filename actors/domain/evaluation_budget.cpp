#include "evaluation_budget.hpp"

#include <algorithm>
#include <cmath>

namespace gflex {

int64_t evaluation_samples(double forward_flops, int64_t test_samples, double budget) {
  if (test_samples <= 0) return 0;
  // A count of FLOPs that is not a positive number (a workload that does not know its own)
  // is no reason to evaluate less.
  if (!(forward_flops > 0.0) || !std::isfinite(forward_flops)) return test_samples;
  const double fit = std::floor(budget / forward_flops);
  if (!(fit < static_cast<double>(test_samples))) return test_samples;
  return std::max<int64_t>(1, static_cast<int64_t>(fit));
}

}  // namespace gflex
