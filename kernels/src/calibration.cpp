#include "gflex/kernels/calibration.hpp"

#include <chrono>
#include <vector>

#include "gflex/kernels/workload.hpp"
#include "gflex/runtime/rng.hpp"

namespace gflex::kernels {

expected<double> calibrate_throughput(backend& b, double seconds) try {
  auto w = find_workload("fashion-mlp");
  if (!w) return w.error();
  constexpr int64_t batch = 128;
  auto m = (*w)->instantiate(b, batch);
  if (!m) return m.error();
  std::vector<float> theta(static_cast<size_t>((*w)->parameter_count()));
  (*w)->init_parameters(1, theta);
  (*m)->load_parameters(theta);
  const auto dim = (*w)->feature_dim();
  std::vector<float> x(static_cast<size_t>(batch * dim));
  std::vector<int32_t> y(static_cast<size_t>(batch));
  rng r(7);
  for (auto& v : x) v = static_cast<float>(r.uniform());
  for (auto& v : y) v = static_cast<int32_t>(r.below(static_cast<uint64_t>((*w)->classes())));
  (*m)->train_step(x.data(), y.data(), batch);  // warm-up: allocation, first touch
  using clock_type = std::chrono::steady_clock;
  auto start = clock_type::now();
  int64_t samples = 0;
  double elapsed = 0.0;
  do {
    (*m)->train_step(x.data(), y.data(), batch);
    samples += batch;
    elapsed = std::chrono::duration<double>(clock_type::now() - start).count();
  } while (elapsed < seconds);
  return static_cast<double>(samples) / elapsed;
} catch (const compute_error& e) {
  // A device that fails a step (a launch, a copy) fails the calibration, and the node's
  // start says why: thrown on, it ended the process (or an embedding trainer's) in
  // std::terminate.
  return e.err();
}

}  // namespace gflex::kernels
