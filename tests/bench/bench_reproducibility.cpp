/// @file
/// gflex_bench_reproducibility: how far an honest re-computation lands from the result it
/// checks, round by round through a whole job, when the two run on different arithmetic.
///
/// A fashion-mlp job is trained as the core does it (each round `workers` assignments of
/// `steps` AdamW steps from the round's parameters, averaged, Nesterov outer step). In each
/// round worker 0's assignment is also computed on other arithmetic and compared with the
/// reference result by relative L2 distance, the verifier's measure:
/// - `threads`: the CPU backend on another thread count (another GEMM blocking and order);
/// - `ulp`: the round's parameters moved by one unit in the last place, at random signs (what
///   a GPU's different rounding of the first operation does);
/// - `int8`: the reference result as the wire carries it (int8 blocks), against itself in fp32.
///
/// Usage: gflex_bench_reproducibility [rounds=30] [workers=4] [steps=50] [eps=1e-8]

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "gflex/kernels/backend.hpp"
#include "gflex/kernels/blas_kernels.hpp"
#include "gflex/kernels/workload.hpp"
#include "gflex/runtime/rng.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "robust_aggregation.hpp"

using namespace gflex;

int main(int argc, char** argv) {
  gflex::kernels::use_best_blas_kernels(argv);
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 30;
  const int workers = argc > 2 ? std::atoi(argv[2]) : 4;
  const int64_t steps = argc > 3 ? std::atoll(argv[3]) : 50;
  const float eps = argc > 4 ? std::strtof(argv[4], nullptr) : 1e-8f;
  auto w = kernels::find_workload("fashion-mlp");
  auto data = w ? (*w)->load_data() : expected<dataset_splits>(w.error());
  if (!data) {
    std::fprintf(stderr, "cannot load fashion-mlp: %s\n", data.error().message().c_str());
    return 1;
  }
  const auto& train = data->train;
  const int64_t dim = train.feature_dim(), batch = 128;
  auto two = kernels::make_cpu_backend(2);
  auto one = kernels::make_cpu_backend(1);
  auto m2 = (*w)->instantiate(*two, batch);
  auto m1 = (*w)->instantiate(*one, batch);
  if (!m2 || !m1) return 1;
  const size_t n = static_cast<size_t>((*w)->parameter_count());
  std::vector<float> theta(n), momentum(n, 0.0f);
  (*w)->init_parameters(1, theta);
  auto inner = [&](kernels::model& model, const std::vector<float>& start, int node, int round) {
    model.load_parameters(start);
    model.reset_optimizer();
    model.optimizer() = kernels::adamw_config{};
    model.optimizer().lr = 1e-3f;
    model.optimizer().eps = eps;
    rng r(1000003ULL * static_cast<uint64_t>(round + 1) + static_cast<uint64_t>(node));
    std::vector<float> bx(static_cast<size_t>(batch * dim));
    std::vector<int32_t> by(static_cast<size_t>(batch));
    const int64_t shard = train.size() / workers, base = shard * node;
    for (int64_t s = 0; s < steps; ++s) {
      for (int64_t b = 0; b < batch; ++b) {
        int64_t row = base + static_cast<int64_t>(r.below(static_cast<uint64_t>(shard)));
        std::memcpy(&bx[static_cast<size_t>(b * dim)], train.features.data<float>() + row * dim,
                    sizeof(float) * static_cast<size_t>(dim));
        by[static_cast<size_t>(b)] = train.labels.data<int32_t>()[row];
      }
      model.train_step(bx.data(), by.data(), batch);
    }
    std::vector<float> end(n), delta(n);
    model.store_parameters(end);
    for (size_t i = 0; i < n; ++i) delta[i] = start[i] - end[i];
    return delta;
  };
  std::printf("%5s %10s %10s %10s %10s %8s %9s %8s %8s %8s\n", "round", "threads", "ulp", "int8",
              "agreement", "ulp@1%", "ulp norm", "d_eff", "cos min", "cos max");
  double worst_threads = 0, worst_ulp = 0;
  rng flip(99);
  for (int round = 0; round < rounds; ++round) {
    std::vector<std::vector<float>> updates;
    for (int k = 0; k < workers; ++k) updates.push_back(inner(**m2, theta, k, round));
    auto other = inner(**m1, theta, 0, round);
    auto moved = theta;
    for (auto& x : moved) x = std::nextafter(x, flip.below(2) ? INFINITY : -INFINITY);
    auto ulp = inner(**m2, moved, 0, round);
    auto wire = decode_update(encode_update(updates[0], compression::int8), n).value();
    const double d_threads = relative_distance(other, updates[0]);
    const double d_ulp = relative_distance(ulp, updates[0]);
    worst_threads = std::max(worst_threads, d_threads);
    worst_ulp = std::max(worst_ulp, d_ulp);
    std::vector<std::span<const float>> spans(updates.begin(), updates.end());
    auto agree = agreement(spans);
    // Where the difference lies: the share of its square in the 1% of coordinates that
    // differ most.
    std::vector<double> sq(n);
    double total = 0.0;
    for (size_t i = 0; i < n; ++i) {
      double d = static_cast<double>(ulp[i]) - updates[0][i];
      sq[i] = d * d;
      total += sq[i];
    }
    std::sort(sq.begin(), sq.end(), std::greater<>());
    double top = 0.0;
    for (size_t i = 0; i < n / 100; ++i) top += sq[i];
    std::vector<double> cos_med;
    for (auto& r : screen_round(spans, {})) cos_med.push_back(r.cosine);
    std::sort(cos_med.begin(), cos_med.end());
    std::printf("%5d %10.2e %10.2e %10.2e %10.4f %8.3f %9.5f %8.0f %8.4f %8.4f\n", round + 1,
                d_threads, d_ulp, relative_distance(wire, updates[0]),
                *std::min_element(agree.begin(), agree.end()), total > 0 ? top / total : 0.0,
                l2_norm(ulp) / l2_norm(updates[0]), effective_dimension(updates[0]),
                cos_med.front(), cos_med.back());
    std::vector<double> mean(n, 0.0);
    for (const auto& u : updates)
      for (size_t i = 0; i < n; ++i) mean[i] += u[i] / workers;
    for (size_t i = 0; i < n; ++i) {
      double g = mean[i], mo = 0.8 * momentum[i] + g;
      momentum[i] = static_cast<float>(mo);
      theta[i] = static_cast<float>(theta[i] - 0.5 * (g + 0.8 * mo));
    }
  }
  std::printf("worst: threads %.3g, ulp %.3g\n", worst_threads, worst_ulp);
}
