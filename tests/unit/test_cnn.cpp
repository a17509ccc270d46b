/// fashion-cnn and the replica group: gradients against finite differences, learning on
/// synthetic and real data, and the multi-rank path (CPU ranks) against a single rank.

#include <doctest/doctest.h>

#include <cmath>
#include <string>

#include "fashion_mnist_installed.hpp"
#include "finite_difference.hpp"
#include "gflex/kernels/cnn.hpp"
#include "gflex/kernels/replica_group.hpp"
#include "gflex/kernels/trainer.hpp"
#include "gflex/runtime/rng.hpp"
#include "host_replicas.hpp"
#include "skip_case.hpp"

using namespace gflex;
using namespace gflex::kernels;

namespace {

// 8x8 single-channel images of three classes: a bright square in one of three places, on
// noise. A convolution and a pool see it; the class is where it is.
dataset squares(int64_t n, uint64_t seed) {
  dataset d;
  d.classes = 3;
  d.features = tensor::empty({n, 64}, dtype::f32);
  d.labels = tensor::empty({n}, dtype::i32);
  rng r(seed);
  for (int64_t i = 0; i < n; ++i) {
    auto label = static_cast<int32_t>(r.below(3));
    d.labels.span<int32_t>()[i] = label;
    float* img = d.features.data<float>() + i * 64;
    for (int64_t p = 0; p < 64; ++p) img[p] = static_cast<float>(r.normal() * 0.3);
    int64_t top = label == 2 ? 5 : 1, left = label == 1 ? 5 : 1;
    for (int64_t y = top; y < top + 2; ++y)
      for (int64_t x = left; x < left + 2; ++x) img[y * 8 + x] += 2.0f;
  }
  return d;
}

cnn_workload small_cnn(dataset_splits data) {
  cnn_shape s{
      .height = 8, .width = 8, .channels = 1, .conv1 = 3, .conv2 = 4, .hidden = 6, .classes = 3};
  return cnn_workload("test-cnn", s, [data] { return data; });
}

dataset_splits small_data() {
  return {squares(600, 1), squares(300, 2)};
}

}  // namespace

TEST_SUITE("cnn") {
  TEST_CASE("layout and initialisation") {
    auto w = small_cnn(small_data());
    auto blocks = w.layout();
    REQUIRE(blocks.size() == 8);
    CHECK(blocks[0].name == "conv1.weight");
    CHECK(blocks[0].shape == shape_t{3, 3, 3, 1});
    CHECK(blocks[4].shape == shape_t{2 * 2 * 4, 6});
    CHECK(w.parameter_count() == 27 + 3 + 4 * 27 + 4 + 16 * 6 + 6 + 6 * 3 + 3);
    std::vector<float> a(w.parameter_count()), b(w.parameter_count());
    w.init_parameters(7, a);
    w.init_parameters(7, b);
    CHECK(a == b);
    CHECK(a[blocks[1].offset] == 0.0f);
    auto real = find_workload("fashion-cnn");
    REQUIRE(real.has_value());
    CHECK((*real)->feature_dim() == 784);
    CHECK((*real)->describe().find("fashion-cnn") != std::string::npos);
  }

  TEST_CASE("a shape the network cannot take is a clear error, not an abort") {
    // An embedding program's shape may come from its user: a bad one aborted the program.
    auto data = small_data();
    auto be = make_cpu_backend(1);
    auto refused = [&](cnn_shape s, const std::string& fragment) {
      CAPTURE(fragment);
      cnn_workload bad("bad-cnn", s, [data] { return data; });
      CHECK(bad.parameter_count() == 0);
      CHECK(bad.forward_flops() == 0.0);
      auto m = bad.instantiate(*be, 4);
      REQUIRE_FALSE(m.has_value());
      CHECK(m.error().code() == errc::invalid_argument);
      CHECK_MESSAGE(m.error().message().find(fragment) != std::string::npos, m.error().message());
      CHECK(bad.check_batch(4).error().code() == errc::invalid_argument);
    };
    const cnn_shape good{
        .height = 8, .width = 8, .channels = 1, .conv1 = 3, .conv2 = 4, .hidden = 6, .classes = 3};
    cnn_shape s = good;
    s.height = 6;
    refused(s, "bad-cnn: a CNN's image height must be a positive multiple of 4, got 6");
    s = good;
    s.width = -8;
    refused(s, "image width must be a positive multiple of 4, got -8");
    s = good;
    s.conv2 = 0;
    refused(s, "widths must be positive, got channels 1, conv1 3, conv2 0, hidden 6");
    s = good;
    s.hidden = -1;
    refused(s, "hidden -1");
    s = good;
    s.classes = 1;
    refused(s, "at least 2 classes, got 1");
    // Through train(): the data fit its input and classes, the hidden width does not.
    s = good;
    s.hidden = 0;
    cnn_workload zero("zero-cnn", s, [data] { return data; });
    auto r = train(zero, data, *be, {});
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code() == errc::invalid_argument);
    CHECK(r.error().message().find("hidden 0") != std::string::npos);
  }

  TEST_CASE("backpropagation matches finite differences") {
    auto data = small_data();
    auto w = small_cnn(data);
    auto be = make_cpu_backend(1);
    auto m = w.instantiate(*be, 16);
    REQUIRE(m.has_value());
    std::vector<float> params(w.parameter_count());
    w.init_parameters(3, params);
    (*m)->load_parameters(params);
    const int64_t batch = 16;
    const float* x = data.train.features.data<float>();
    const int32_t* y = data.train.labels.data<int32_t>();
    std::vector<float> grad(params.size());
    (*m)->compute_gradients(x, y, batch, grad);
    auto central_difference = [&](size_t i, float h) {
      return test::central_difference(**m, params, i, h, x, y, batch);
    };
    // Every block is sampled. A step that flips a ReLU or a pooling winner makes the
    // difference meaningless; two step sizes that disagree reveal it. A first-layer weight
    // moves every pixel of its channel, so the steps are small to make such flips rare.
    rng pick(5);
    auto blocks = w.layout();
    int checked = 0;
    std::vector<int> per_block(blocks.size(), 0);
    for (int trial = 0; trial < 200; ++trial) {
      size_t bi = static_cast<size_t>(trial) % blocks.size();
      int64_t n = *checked_numel(blocks[bi].shape);
      size_t i = static_cast<size_t>(blocks[bi].offset) + pick.below(static_cast<uint64_t>(n));
      double numeric = central_difference(i, 5e-4f);
      double half = central_difference(i, 2.5e-4f);
      if (std::fabs(numeric - half) > 0.01 * std::fabs(numeric) + 5e-4) continue;
      if (std::fabs(numeric) < 1e-3 && std::fabs(grad[i]) < 1e-3) continue;
      CHECK_MESSAGE(grad[i] == doctest::Approx(numeric).epsilon(0.05).scale(1e-3),
                    blocks[bi].name << " parameter " << i);
      ++checked;
      ++per_block[bi];
    }
    CHECK(checked > 60);
    for (size_t b = 0; b < blocks.size(); ++b) CHECK_MESSAGE(per_block[b] > 0, blocks[b].name);
  }

  TEST_CASE("training learns the synthetic images and is deterministic") {
    auto data = small_data();
    auto w = small_cnn(data);
    train_options o;
    o.epochs = 6;
    o.batch_size = 32;
    o.optimizer.lr = 5e-3f;
    auto be = make_cpu_backend(1);
    auto r1 = train(w, data, *be, o);
    REQUIRE_MESSAGE(r1.has_value(), r1.error().message());
    CHECK(r1->test_accuracy > 0.95);
    auto r2 = train(w, data, *be, o);
    REQUIRE(r2.has_value());
    CHECK(r2->epochs.back().train_loss == r1->epochs.back().train_loss);
  }

  TEST_CASE("fashion-cnn learns real Fashion-MNIST in a few hundred steps" *
            doctest::skip(!test::fashion_mnist_installed())) {
    auto w = find_workload("fashion-cnn");
    REQUIRE(w.has_value());
    auto data = (*w)->load_data();
    REQUIRE_MESSAGE(data.has_value(), data.error().message());
    train_options o;
    o.max_steps = 150;
    auto be = make_cpu_backend(0);
    auto r = train(**w, *data, *be, o);
    REQUIRE_MESSAGE(r.has_value(), r.error().message());
    CHECK(r->steps == 150);
    CHECK(r->test_accuracy > 0.78);
  }
}

TEST_SUITE("replica group") {
  TEST_CASE("replicas on parts of a batch step like one model on all of it") {
    auto data = small_data();
    auto w = small_cnn(data);
    std::vector<float> params(w.parameter_count());
    w.init_parameters(11, params);
    const int64_t dim = w.feature_dim();
    const float* x = data.train.features.data<float>();
    const int32_t* y = data.train.labels.data<int32_t>();
    // Even and uneven splits, and a batch smaller than the group (a rank without rows).
    for (auto [group_size, batch_size] : {std::pair{2, 32}, {3, 32}, {3, 2}}) {
      // Copies: clang cannot capture structured bindings in CAPTURE's lambda.
      const int ranks = group_size;
      const int64_t batch = batch_size;
      CAPTURE(ranks);
      CAPTURE(batch);
      auto one = make_cpu_backend(1);
      auto single = w.instantiate(*one, batch);
      REQUIRE(single.has_value());
      (*single)->load_parameters(params);

      auto host = test::make_host_replicas(w, ranks, batch, params);
      CHECK(host.group->describe() == "host, " + std::to_string(ranks) + " ranks");
      auto& replicas = host.models;
      for (int step = 0; step < 3; ++step) {
        const int64_t offset = step * batch;
        (*single)->train_step(x + offset * dim, y + offset, batch);
        replica_step(*host.group, replicas, x + offset * dim, y + offset, batch);
      }
      std::vector<float> want(params.size()), got(params.size());
      (*single)->store_parameters(want);
      for (int r = 0; r < ranks; ++r) {
        replicas[static_cast<size_t>(r)]->store_parameters(got);
        if (r > 0) {
          std::vector<float> first(params.size());
          replicas[0]->store_parameters(first);
          CHECK(got == first);  // the replicas never diverge
        }
      }
      for (size_t i = 0; i < want.size(); ++i) {
        if (std::fabs(got[i] - want[i]) > 1e-4f + 1e-3f * std::fabs(want[i])) {
          FAIL_CHECK("parameter " << i << ": " << got[i] << " vs " << want[i]);
          break;
        }
      }
      int64_t samples = 0;
      for (auto& m : replicas) samples += m->take_stats().samples;
      CHECK(samples == 3 * batch);
    }
  }

  TEST_CASE("groups must be non-empty and of one kind") {
    CHECK(make_replica_group({}).error().code() == errc::invalid_argument);
    std::vector<std::unique_ptr<backend>> one;
    one.push_back(make_cpu_backend(1));
    auto g = make_replica_group(std::move(one));
    REQUIRE(g.has_value());
    CHECK((*g)->size() == 1);
    CHECK((*g)->describe() == "host, 1 rank");
  }
}

TEST_SUITE("cnn") {
  TEST_CASE("on a GPU: the same gradients as the CPU, and a one-rank NCCL group") {
    if (cuda_device_count() == 0)
      GFLEX_SKIP_CASE(cuda_compiled() ? "no CUDA device on this machine" : "CUDA not compiled in");
    auto data = small_data();
    auto w = small_cnn(data);
    std::vector<float> params(w.parameter_count());
    w.init_parameters(5, params);
    const float* x = data.train.features.data<float>();
    const int32_t* y = data.train.labels.data<int32_t>();
    auto gradients_on = [&](backend& b) {
      auto m = w.instantiate(b, 32);
      REQUIRE_MESSAGE(m.has_value(), m.error().message());
      (*m)->load_parameters(params);
      std::vector<float> g(params.size());
      (*m)->compute_gradients(x, y, 32, g);
      return g;
    };
    auto cpu = make_cpu_backend(1);
    auto gpu = make_cuda_backend(0);
    REQUIRE_MESSAGE(gpu.has_value(), gpu.error().message());
    auto want = gradients_on(*cpu);
    auto got = gradients_on(**gpu);
    for (size_t i = 0; i < want.size(); ++i)
      CHECK_MESSAGE(std::fabs(got[i] - want[i]) <= 1e-4f + 1e-3f * std::fabs(want[i]),
                    "gradient " << i << ": " << got[i] << " vs " << want[i]);

    std::vector<std::unique_ptr<backend>> ranks;
    ranks.push_back(std::move(*gpu));
    auto group = make_replica_group(std::move(ranks));
    REQUIRE_MESSAGE(group.has_value(), group.error().message());
    MESSAGE("group: " << (*group)->describe());
    auto m = w.instantiate((*group)->rank(0), 32);
    REQUIRE(m.has_value());
    (*m)->load_parameters(params);
    (*m)->backward(x, y, 32, 1.0f / 32);
    (*group)->all_reduce_sum({(*m)->gradients()}, w.parameter_count());
    std::vector<float> reduced(params.size());
    (*group)->rank(0).download((*m)->gradients(), reduced.data(), reduced.size() * sizeof(float));
    for (size_t i = 0; i < want.size(); ++i)
      CHECK_MESSAGE(std::fabs(reduced[i] - want[i]) <= 1e-4f + 1e-3f * std::fabs(want[i]),
                    "reduced gradient " << i);
  }
}
