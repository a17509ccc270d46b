/// Batches given as row numbers of data held where the model computes, and updates quantised
/// there (model::backward_rows, replica_step_rows, model::quantized_update): the same steps
/// and the same update bytes as the host path, on the CPU, on a group of CPU ranks, and on a
/// GPU where there is one.

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "gflex/kernels/cnn.hpp"
#include "gflex/kernels/mlp.hpp"
#include "gflex/kernels/replica_group.hpp"
#include "gflex/kernels/resident_features.hpp"
#include "gflex/kernels/trainer.hpp"
#include "gflex/runtime/rng.hpp"
#include "gflex/runtime/update_codec.hpp"

using namespace gflex;
using namespace gflex::kernels;

namespace {

dataset labelled_noise(int64_t rows, int64_t dim, int64_t classes, uint64_t seed) {
  dataset d;
  d.classes = classes;
  d.features = tensor::empty({rows, dim}, dtype::f32);
  d.labels = tensor::empty({rows}, dtype::i32);
  rng r(seed);
  for (auto& v : d.features.span<float>()) v = static_cast<float>(r.normal());
  for (auto& v : d.labels.span<int32_t>())
    v = static_cast<int32_t>(r.below(static_cast<uint64_t>(classes)));
  return d;
}

std::vector<std::unique_ptr<workload>> workloads_under_test(const dataset_splits& data) {
  std::vector<std::unique_ptr<workload>> out;
  out.push_back(std::make_unique<mlp_workload>("test-mlp", std::vector<int64_t>{64, 16, 3},
                                               [data] { return data; }));
  cnn_shape s{
      .height = 8, .width = 8, .channels = 1, .conv1 = 3, .conv2 = 4, .hidden = 6, .classes = 3};
  out.push_back(std::make_unique<cnn_workload>("test-cnn", s, [data] { return data; }));
  auto graph = find_workload("test-graph", R"([model]
input = [8, 8, 1]
layers = [
  { type = "conv2d", filters = 2, kernel = 3, padding = 1 }, { type = "relu" },
  { type = "flatten" },
  { type = "linear", units = 3 }, { type = "softmax_xent" },
])",
                             "");
  REQUIRE_MESSAGE(graph.has_value(), (graph ? "" : graph.error().message()));
  out.push_back(std::move(*graph));
  return out;
}

/// A group of `ranks` CPU ranks, or one GPU.
std::unique_ptr<replica_group> group_of(bool gpu, int ranks) {
  std::vector<std::unique_ptr<backend>> backends;
  for (int r = 0; r < ranks; ++r) {
    if (gpu) {
      auto b = make_cuda_backend(r);
      REQUIRE_MESSAGE(b.has_value(), (b ? "" : b.error().message()));
      backends.push_back(std::move(*b));
    } else {
      backends.push_back(make_cpu_backend(1));
    }
  }
  auto g = make_replica_group(std::move(backends));
  REQUIRE_MESSAGE(g.has_value(), (g ? "" : g.error().message()));
  return std::move(*g);
}

std::vector<std::unique_ptr<model>> replicas_on(replica_group& g, const workload& w,
                                                const std::vector<float>& params, int64_t batch) {
  std::vector<std::unique_ptr<model>> out;
  for (int r = 0; r < g.size(); ++r) {
    auto m = w.instantiate(g.rank(r), (batch + g.size() - 1) / g.size());
    REQUIRE_MESSAGE(m.has_value(), (m ? "" : m.error().message()));
    (*m)->load_parameters(params);
    out.push_back(std::move(*m));
  }
  return out;
}

/// The configurations every test runs: one CPU rank, two CPU ranks, and one GPU if present.
std::vector<std::pair<bool, int>> groups_under_test() {
  std::vector<std::pair<bool, int>> out{{false, 1}, {false, 2}};
  if (cuda_device_count() > 0)
    out.emplace_back(true, 1);
  else
    MESSAGE("GPU group skipped: " << std::string(cuda_compiled() ? "no CUDA device on this machine"
                                                                 : "CUDA not compiled in"));
  return out;
}

/// One rank on each backend: the CPU, and a GPU if present.
std::vector<bool> one_rank_on_each_backend() {
  std::vector<bool> gpu;
  for (const auto& config : groups_under_test())
    if (config.second == 1) gpu.push_back(config.first);
  return gpu;
}

/// The MLP under test with its data and starting parameters.
struct mlp_case {
  dataset_splits data;
  std::unique_ptr<workload> w;
  std::vector<float> params;

  mlp_case(int64_t rows, uint64_t seed)
      : data{labelled_noise(rows, 64, 3, seed), labelled_noise(10, 64, 3, seed + 1)} {
    w = std::move(workloads_under_test(data).front());
    params.resize(static_cast<size_t>(w->parameter_count()));
    w->init_parameters(6, params);
  }
};

std::vector<float> parameters_of(model& m) {
  std::vector<float> out(static_cast<size_t>(m.parameter_count()));
  m.store_parameters(out);
  return out;
}

}  // namespace

TEST_SUITE("device batches") {
  TEST_CASE("batches by row number step bit for bit as the same rows sent from the host") {
    const dataset_splits data{labelled_noise(200, 64, 3, 1), labelled_noise(10, 64, 3, 2)};
    const int64_t batch = 25, rows = data.train.size(), dim = 64;
    for (const auto& w : workloads_under_test(data)) {
      CAPTURE(w->name());
      REQUIRE(w->instantiate(*make_cpu_backend(1), 4).value()->gathers_rows());
      std::vector<float> params(static_cast<size_t>(w->parameter_count()));
      w->init_parameters(3, params);
      for (const auto& config : groups_under_test()) {
        const bool gpu = config.first;
        const int ranks = config.second;
        CAPTURE(gpu);
        CAPTURE(ranks);
        auto host_group = group_of(gpu, ranks), rows_group = group_of(gpu, ranks);
        auto by_host = replicas_on(*host_group, *w, params, batch);
        auto by_rows = replicas_on(*rows_group, *w, params, batch);
        // The data where each rank of the second group computes (in place on a CPU rank).
        std::vector<resident_features> held;
        std::vector<const float*> at;
        for (int r = 0; r < ranks; ++r) {
          held.emplace_back(rows_group->rank(r), data.train.features);
          REQUIRE(held.back().held());
          at.push_back(held.back().at());
        }
        if (!gpu) CHECK(at.front() == data.train.features.data<float>());
        rng pick(9);
        std::vector<int32_t> idx(batch), labels(batch);
        std::vector<float> x(static_cast<size_t>(batch * dim));
        for (int step = 0; step < 4; ++step) {
          for (int64_t i = 0; i < batch; ++i) {
            idx[i] = static_cast<int32_t>(pick.below(static_cast<uint64_t>(rows)));
            labels[i] = data.train.labels.data<int32_t>()[idx[i]];
            std::copy_n(data.train.features.data<float>() + idx[i] * dim, dim, &x[i * dim]);
          }
          replica_step(*host_group, by_host, x.data(), labels.data(), batch);
          replica_step_rows(*rows_group, by_rows, at, rows, idx.data(), labels.data(), batch);
        }
        const auto want = parameters_of(*by_host.front());
        CHECK(want != params);  // it trained
        for (auto& m : by_rows) CHECK(parameters_of(*m) == want);
        for (int r = 0; r < ranks; ++r) {
          auto a = by_host[static_cast<size_t>(r)]->take_stats();
          auto b = by_rows[static_cast<size_t>(r)]->take_stats();
          CHECK(a.samples == b.samples);
          CHECK(a.correct == b.correct);
          // A GPU sums the loss over its blocks with float atomics, in no fixed order: the one
          // figure the CUDA backend does not promise bit for bit.
          if (gpu)
            CHECK(a.loss_sum == doctest::Approx(b.loss_sum).epsilon(1e-5));
          else
            CHECK(a.loss_sum == b.loss_sum);
        }
      }
    }
  }

  TEST_CASE("an update quantised where the model is encodes to the host's bytes") {
    const mlp_case c(200, 4);
    const auto& data = c.data;
    const auto& params = c.params;
    for (bool gpu : one_rank_on_each_backend()) {
      CAPTURE(gpu);
      auto g = group_of(gpu, 1);
      // The default block, and one that leaves a short last block.
      for (int64_t block : {int64_t{default_update_block_size}, int64_t{100}}) {
        CAPTURE(block);
        auto replicas = replicas_on(*g, *c.w, params, 32);
        auto& m = *replicas.front();
        REQUIRE(m.mark_start());
        for (int step = 0; step < 3; ++step)
          m.train_step(data.train.features.data<float>() + step * 32 * 64,
                       data.train.labels.data<int32_t>() + step * 32, 32);
        auto end = parameters_of(m);
        std::vector<float> delta(params.size());
        for (size_t i = 0; i < delta.size(); ++i) delta[i] = params[i] - end[i];
        const auto want =
            encode_update(delta, compression::int8, nullptr, static_cast<uint32_t>(block));

        std::vector<int8_t> q(params.size());
        std::vector<float> scales((params.size() + block - 1) / block);
        REQUIRE(m.quantized_update(block, q, scales));
        CHECK(encode_quantized_update(q, scales, static_cast<uint32_t>(block)) == want);
      }
    }
  }

  TEST_CASE("a non-finite update is reported and nothing is quantised") {
    const mlp_case c(20, 7);
    const auto& params = c.params;
    for (bool gpu : one_rank_on_each_backend()) {
      CAPTURE(gpu);
      auto g = group_of(gpu, 1);
      auto replicas = replicas_on(*g, *c.w, params, 8);
      auto& m = *replicas.front();
      for (float bad :
           {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
        CAPTURE(bad);
        REQUIRE(m.mark_start());
        auto diverged = params;
        diverged[diverged.size() / 2] = bad;  // a NaN passes a max unseen: it must be caught
        m.load_parameters(diverged);
        std::vector<int8_t> q(params.size(), 7);
        std::vector<float> scales((params.size() + 255) / 256, 7.0f);
        CHECK_FALSE(m.quantized_update(256, q, scales));
        CHECK(q == std::vector<int8_t>(params.size(), 7));
        CHECK(scales == std::vector<float>(scales.size(), 7.0f));
        m.load_parameters(params);
      }
      // The start was used up; a new one quantises again (an update of zeros).
      REQUIRE(m.mark_start());
      std::vector<int8_t> q(params.size(), 7);
      std::vector<float> scales((params.size() + 255) / 256, 7.0f);
      CHECK(m.quantized_update(256, q, scales));
      CHECK(q == std::vector<int8_t>(params.size(), 0));
      CHECK(scales == std::vector<float>(scales.size(), 0.0f));
    }
  }

  TEST_CASE("a token model takes its batches from the host") {
    auto lm = find_workload("test-lm", R"([model]
input = [4]
vocab = 7
layers = [
  { type = "embedding", dim = 8 },
  { type = "linear", units = 7 },
  { type = "next_token_xent" },
])",
                            "");
    REQUIRE_MESSAGE(lm.has_value(), (lm ? "" : lm.error().message()));
    auto cpu = make_cpu_backend(1);
    auto m = (*lm)->instantiate(*cpu, 4);
    REQUIRE(m.has_value());
    CHECK_FALSE((*m)->gathers_rows());
  }
}
