#pragma once
/// @file
/// Gradient checks for the unit tests: the derivative of a model's mean loss on a batch with
/// respect to one parameter, by central differences.

#include <vector>

#include "gflex/kernels/workload.hpp"

namespace gflex::test {

/// (loss(params + h e_i) - loss(params - h e_i)) / 2h for the model's mean loss on the batch;
/// leaves the model holding `params` perturbed (callers reload what they need).
inline double central_difference(kernels::model& m, const std::vector<float>& params, size_t i,
                                 float h, const float* x, const int32_t* y, int64_t batch) {
  auto loss_at = [&](float delta) {
    auto p = params;
    p[i] += delta;
    m.load_parameters(p);
    m.take_stats();
    m.evaluate_batch(x, y, batch);
    return m.take_stats().mean_loss();
  };
  return (loss_at(h) - loss_at(-h)) / (2.0 * h);
}

}  // namespace gflex::test
