// The shipped workloads (fashion-mlp, fashion-cnn) are layer graphs, declared as a user would
// declare them. These tests pin them to the hand-written networks they replaced: the same
// parameter layout, the same initial parameters for a seed, and the same training steps.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>

#include "gflex/kernels/cnn.hpp"
#include "gflex/kernels/mlp.hpp"
#include "gflex/kernels/workload.hpp"
#include "gflex/runtime/rng.hpp"

using namespace gflex;
using namespace gflex::kernels;

namespace {

// Image-like samples in [0, 1) with labels: the hand-written and graph networks see the same.
struct batch_data {
  std::vector<float> x;
  std::vector<int32_t> y;
};

batch_data random_batch(int64_t n, int64_t dim, uint64_t seed) {
  rng r(seed);
  batch_data b;
  b.x.resize(static_cast<size_t>(n * dim));
  for (auto& v : b.x) v = static_cast<float>(r.uniform());
  for (int64_t i = 0; i < n; ++i) b.y.push_back(static_cast<int32_t>(r.below(10)));
  return b;
}

// Largest |a - b|, reported rather than a bare inequality.
double max_difference(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0.0;
  for (size_t i = 0; i < a.size(); ++i)
    diff = std::max(diff, static_cast<double>(std::fabs(a[i] - b[i])));
  return diff;
}

// Trains `reference` and `shipped` side by side from the same seed on the same batches and
// checks that they stay together.
void check_same_training(const workload& reference, const workload& shipped, int64_t batch,
                         int steps) {
  auto ref_blocks = reference.layout();
  auto graph_blocks = shipped.layout();
  REQUIRE(ref_blocks.size() == graph_blocks.size());
  for (size_t i = 0; i < ref_blocks.size(); ++i) {
    CAPTURE(ref_blocks[i].name);
    CHECK(graph_blocks[i].name == ref_blocks[i].name);
    CHECK(graph_blocks[i].shape == ref_blocks[i].shape);
    CHECK(graph_blocks[i].offset == ref_blocks[i].offset);
  }
  CHECK(shipped.feature_dim() == reference.feature_dim());
  CHECK(shipped.classes() == reference.classes());
  const auto n = static_cast<size_t>(reference.parameter_count());
  REQUIRE(static_cast<size_t>(shipped.parameter_count()) == n);

  std::vector<float> a(n), b(n);
  reference.init_parameters(11, a);
  shipped.init_parameters(11, b);
  CHECK(a == b);  // bit for bit

  auto be = make_cpu_backend(1);
  auto ref_model = reference.instantiate(*be, batch);
  auto graph_model = shipped.instantiate(*be, batch);
  REQUIRE(ref_model.has_value());
  REQUIRE(graph_model.has_value());
  (*ref_model)->load_parameters(a);
  (*graph_model)->load_parameters(b);
  (*ref_model)->optimizer().lr = 2e-3f;
  (*graph_model)->optimizer().lr = 2e-3f;
  for (int step = 0; step < steps; ++step) {
    auto data = random_batch(batch, reference.feature_dim(), 100 + static_cast<uint64_t>(step));
    (*ref_model)->backward(data.x.data(), data.y.data(), batch, 1.0f);
    (*ref_model)->apply_gradients();
    (*graph_model)->backward(data.x.data(), data.y.data(), batch, 1.0f);
    (*graph_model)->apply_gradients();
  }
  (*ref_model)->store_parameters(a);
  (*graph_model)->store_parameters(b);
  const auto ref_stats = (*ref_model)->take_stats();
  const auto graph_stats = (*graph_model)->take_stats();
  // The same products in the same order on one thread: equal bit for bit.
  CHECK(graph_stats.loss_sum == ref_stats.loss_sum);
  CHECK(graph_stats.correct == ref_stats.correct);
  CHECK(max_difference(a, b) == 0.0);
}

}  // namespace

TEST_SUITE("shipped graphs") {
  TEST_CASE("fashion-mlp is the hand-written MLP as a layer graph") {
    mlp_workload reference("fashion-mlp", {784, 512, 256, 10}, [] { return dataset_splits{}; });
    auto shipped = find_workload("fashion-mlp");
    REQUIRE(shipped.has_value());
    check_same_training(reference, **shipped, 32, 5);
  }

  TEST_CASE("fashion-cnn is the hand-written CNN as a layer graph") {
    cnn_workload reference("fashion-cnn", cnn_shape{}, [] { return dataset_splits{}; });
    auto shipped = find_workload("fashion-cnn");
    REQUIRE(shipped.has_value());
    check_same_training(reference, **shipped, 16, 3);
  }
}
