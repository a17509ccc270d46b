#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "fashion_mnist_installed.hpp"
#include "finite_difference.hpp"
#include "gflex/kernels/mlp.hpp"
#include "gflex/kernels/trainer.hpp"
#include "gflex/runtime/rng.hpp"

using namespace gflex;
using namespace gflex::kernels;

namespace {

// Two Gaussian blobs per class in `dim` dimensions: learnable, but not linearly trivial.
dataset blobs(int64_t n, int64_t dim, int64_t classes, uint64_t seed) {
  dataset d;
  d.classes = classes;
  d.features = tensor::empty({n, dim}, dtype::f32);
  d.labels = tensor::empty({n}, dtype::i32);
  rng centres(99);
  std::vector<float> c(static_cast<size_t>(classes * 2 * dim));
  for (auto& v : c) v = static_cast<float>(centres.normal() * 2.0);
  rng r(seed);
  for (int64_t i = 0; i < n; ++i) {
    int64_t label = static_cast<int64_t>(r.below(classes));
    int64_t blob = label * 2 + static_cast<int64_t>(r.below(2));
    d.labels.span<int32_t>()[i] = static_cast<int32_t>(label);
    for (int64_t j = 0; j < dim; ++j)
      d.features.span<float>()[i * dim + j] = c[blob * dim + j] + static_cast<float>(r.normal());
  }
  return d;
}

mlp_workload small_mlp(dataset_splits data) {
  return mlp_workload("test-mlp", {8, 16, 12, 3}, [data] { return data; });
}

dataset_splits small_data() {
  return {blobs(600, 8, 3, 1), blobs(300, 8, 3, 2)};
}

}  // namespace

TEST_SUITE("mlp") {
  TEST_CASE("layout and initialisation") {
    auto w = small_mlp(small_data());
    auto blocks = w.layout();
    REQUIRE(blocks.size() == 6);
    CHECK(blocks[0].name == "fc1.weight");
    CHECK(blocks[0].shape == shape_t{8, 16});
    CHECK(blocks[1].offset == 128);
    CHECK(w.parameter_count() == 8 * 16 + 16 + 16 * 12 + 12 + 12 * 3 + 3);
    std::vector<float> a(w.parameter_count()), b(w.parameter_count()), c(w.parameter_count());
    w.init_parameters(7, a);
    w.init_parameters(7, b);
    w.init_parameters(8, c);
    CHECK(a == b);
    CHECK(a != c);
    CHECK(a[blocks[1].offset] == 0.0f);  // biases start at zero
  }

  TEST_CASE("backpropagation matches finite differences") {
    auto data = small_data();
    auto w = small_mlp(data);
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
    // Central differences on a sample of parameters from every block. A step that moves a
    // ReLU input across zero makes the difference meaningless; two step sizes that disagree
    // reveal it, and such parameters are left out.
    rng pick(5);
    int checked = 0;
    for (int trial = 0; trial < 60; ++trial) {
      size_t i = pick.below(params.size());
      double numeric = central_difference(i, 2e-3f);
      double half = central_difference(i, 1e-3f);
      if (std::fabs(numeric - half) > 0.02 * std::fabs(numeric) + 1e-3) continue;
      if (std::fabs(numeric) < 1e-3 && std::fabs(grad[i]) < 1e-3) continue;
      CHECK_MESSAGE(grad[i] == doctest::Approx(numeric).epsilon(0.05).scale(1e-3),
                    "parameter " << i);
      ++checked;
    }
    CHECK(checked > 15);
  }

  TEST_CASE("training learns and is deterministic for a seed") {
    auto data = small_data();
    auto w = small_mlp(data);
    train_options o;
    o.epochs = 15;
    o.batch_size = 32;
    o.optimizer.lr = 3e-3f;
    auto be = make_cpu_backend(1);
    auto r1 = train(w, data, *be, o);
    REQUIRE_MESSAGE(r1.has_value(), r1.error().message());
    CHECK(r1->test_accuracy > 0.9);
    CHECK(r1->epochs.back().train_loss < r1->epochs.front().train_loss);
    auto r2 = train(w, data, *be, o);
    REQUIRE(r2.has_value());
    CHECK(r2->test_accuracy == r1->test_accuracy);
    CHECK(r2->epochs.back().train_loss == r1->epochs.back().train_loss);
    o.seed = 2;
    auto r3 = train(w, data, *be, o);
    REQUIRE(r3.has_value());
    CHECK(r3->epochs.back().train_loss != r1->epochs.back().train_loss);
  }

  TEST_CASE("training that diverges stops with an error, not a made-up accuracy") {
    // It trained on past the first NaN, every step after of NaN parameters, and reported the
    // share of class 0 in the test set as its accuracy.
    auto data = small_data();
    auto w = small_mlp(data);
    train_options o;
    o.epochs = 3;
    o.batch_size = 32;
    o.optimizer.lr = 1e30f;
    auto be = make_cpu_backend(1);
    auto r = train(w, data, *be, o);
    REQUIRE_FALSE_MESSAGE(r.has_value(), "test accuracy " << r->test_accuracy);
    CHECK(r.error().code() == errc::non_finite);
    CHECK_MESSAGE(r.error().message().find("training diverged in epoch 1") == 0,
                  r.error().message());
  }

  TEST_CASE("warm-up steps are left out of the steady rate and change nothing of the training") {
    auto data = small_data();  // 600 samples: 19 steps of 32 an epoch, the last of 24
    auto w = small_mlp(data);
    train_options o;
    o.epochs = 3;
    o.batch_size = 32;
    auto be = make_cpu_backend(1);
    auto all = train(w, data, *be, o);
    REQUIRE_MESSAGE(all.has_value(), all.error().message());
    CHECK(all->steady_samples == 1800);
    CHECK(all->steady_samples_per_s == all->samples_per_s);
    // Within the first epoch, at its last step, across into the second, and past the run.
    const std::pair<int64_t, int64_t> expected_samples[] = {
        {5, 1800 - 5 * 32}, {19, 1200}, {25, 1200 - 6 * 32}, {57, 0}, {80, 0}};
    for (const auto& expected : expected_samples) {
      const int64_t warmup = expected.first, samples = expected.second;  // clang 14: no bindings
      o.warmup_steps = warmup;
      auto r = train(w, data, *be, o);
      REQUIRE(r.has_value());
      CHECK_MESSAGE(r->steady_samples == samples, "warm-up " << warmup);
      CHECK_MESSAGE((r->steady_samples_per_s > 0) == (samples > 0), "warm-up " << warmup);
      CHECK(r->samples == 1800);
      CHECK(r->test_accuracy == all->test_accuracy);
      CHECK(r->epochs.back().test_loss == all->epochs.back().test_loss);
      CHECK(r->epochs.back().train_loss == doctest::Approx(all->epochs.back().train_loss));
    }
    o.warmup_steps = -1;
    auto bad = train(w, data, *be, o);
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().message().find("warmup_steps") != std::string::npos);
  }

  TEST_CASE("bad options and mismatched data are clear errors") {
    auto data = small_data();
    auto w = small_mlp(data);
    auto be = make_cpu_backend(1);
    auto expect = [&](train_options o, const std::string& fragment) {
      auto r = train(w, data, *be, o);
      REQUIRE_FALSE(r.has_value());
      CHECK(r.error().code() == errc::invalid_argument);
      CHECK_MESSAGE(r.error().message().find(fragment) != std::string::npos, r.error().message());
    };
    train_options o;
    o.epochs = 0;
    expect(o, "epochs");
    o = {};
    o.batch_size = 0;
    expect(o, "batch size");
    o = {};
    o.optimizer.lr = std::nanf("");
    expect(o, "learning rate");
    o = {};
    o.optimizer.beta1 = 1.0f;
    expect(o, "betas");
    o = {};
    o.optimizer.plain_sgd = true;  // which steps by the gradient alone
    o.optimizer.weight_decay = 0.01f;
    expect(o, "weight decay applies to AdamW only");
    o = {};
    o.optimizer.lr = 2.0f;  // AdamW's decay factor 1 - 2 x 0.6: every parameter flipped
    o.optimizer.weight_decay = 0.6f;
    expect(o, "learning rate times weight decay must be below 1");

    dataset_splits wrong{blobs(10, 5, 3, 1), blobs(10, 5, 3, 2)};
    auto r = train(w, wrong, *be, {});
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code() == errc::shape_mismatch);
    CHECK(r.error().message().find("5 features") != std::string::npos);

    // Widths an embedding program took from its user: a width of 0 or below reached the
    // GEMMs, which refused it and left the layer's output unwritten, and training went on
    // from garbage; too few widths aborted the program.
    auto refused = [&](std::vector<int64_t> widths, const std::string& fragment) {
      CAPTURE(fragment);
      mlp_workload bad("bad-mlp", std::move(widths), [data] { return data; });
      CHECK(bad.parameter_count() == 0);
      auto m = bad.instantiate(*be, 4);
      REQUIRE_FALSE(m.has_value());
      CHECK(m.error().code() == errc::invalid_argument);
      CHECK_MESSAGE(m.error().message().find(fragment) != std::string::npos, m.error().message());
      CHECK(bad.check_batch(4).error().code() == errc::invalid_argument);
    };
    refused({8, 0, 3}, "bad-mlp: an MLP's widths must be positive, width 1 is 0");
    refused({8, -16, 3}, "width 1 is -16");
    refused({0, 16, 3}, "width 0 is 0");
    refused({8, 16, 1}, "at least 2 classes (its last width), got 1");
    refused({8}, "an input and an output width, got 1 widths");
    refused({}, "got 0 widths");
    // Through train(): the data fit its input and classes, the hidden width does not.
    mlp_workload zero("zero-mlp", {8, 0, 3}, [data] { return data; });
    auto z = train(zero, data, *be, {});
    REQUIRE_FALSE(z.has_value());
    CHECK(z.error().code() == errc::invalid_argument);
    CHECK(z.error().message().find("width 1 is 0") != std::string::npos);
  }

  TEST_CASE("labels out of range, short features and non-finite features are clear errors") {
    auto w = small_mlp(small_data());
    auto be = make_cpu_backend(1);
    std::vector<float> params(w.parameter_count());
    w.init_parameters(1, params);
    // Each bad set is refused by train() (as either split) and by evaluate(): the CPU's loss
    // read z[label] unchecked, past the logits for a label of `classes` or below them for -1.
    auto refused = [&](const dataset& bad, const std::string& fragment) {
      CAPTURE(fragment);
      dataset_splits as_train{bad, small_data().test};
      dataset_splits as_test{small_data().train, bad};
      train_options o;
      o.max_steps = 1;
      for (const auto* splits : {&as_train, &as_test}) {
        auto r = train(w, *splits, *be, o);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code() == errc::invalid_argument);
        CHECK_MESSAGE(r.error().message().find(fragment) != std::string::npos, r.error().message());
      }
      CHECK(train(w, as_train, *be, o).error().message().find("training") != std::string::npos);
      CHECK(train(w, as_test, *be, o).error().message().find("test") != std::string::npos);
      auto e = evaluate(w, bad, *be, params);
      REQUIRE_FALSE(e.has_value());
      CHECK(e.error().code() == errc::invalid_argument);
      CHECK_MESSAGE(e.error().message().find(fragment) != std::string::npos, e.error().message());
    };
    auto with_label = [](int32_t label) {
      auto d = blobs(300, 8, 3, 3);
      d.labels.span<int32_t>()[17] = label;
      return d;
    };
    refused(with_label(3), "label 3 of row 17 is outside [0, 3)");
    refused(with_label(-1), "label -1 of row 17 is outside [0, 3)");
    refused(with_label(1 << 30), "label 1073741824 of row 17 is outside [0, 3)");
    // Fewer rows of features than labels: the last labels' rows were read past the features.
    auto short_rows = blobs(300, 8, 3, 3);
    auto fewer = blobs(299, 8, 3, 3);
    short_rows.features = fewer.features;
    refused(short_rows, "299 rows of features but 300 labels");
    auto nan = blobs(300, 8, 3, 3);
    nan.features.span<float>()[5 * 8 + 2] = std::nanf("");
    refused(nan, "row 5 holds a value that is not finite");
  }

  TEST_CASE("an AdamW eps or a final learning-rate fraction out of range is a clear error") {
    auto data = small_data();
    auto w = small_mlp(data);
    auto be = make_cpu_backend(1);
    auto expect = [&](train_options o, const std::string& fragment) {
      CAPTURE(fragment);
      auto r = train(w, data, *be, o);
      REQUIRE_FALSE(r.has_value());
      CHECK(r.error().code() == errc::invalid_argument);
      CHECK_MESSAGE(r.error().message().find(fragment) != std::string::npos, r.error().message());
    };
    // An eps of 0 divided 0 by 0 for a parameter whose gradient stayed 0 (NaN, then reported
    // as divergence and blamed on the learning rate); a negative one could divide by 0 or
    // flip a step.
    for (float eps : {0.0f, -1e-8f, std::nanf(""), std::numeric_limits<float>::infinity()}) {
      train_options o;
      o.optimizer.eps = eps;
      expect(o, "AdamW eps must be positive and finite");
    }
    // Below 0 the last steps' learning rate is negative (gradient ascent); above 1 the
    // schedule rises; NaN makes every step's rate NaN.
    for (float f : {-0.5f, 1.5f, std::nanf(""), std::numeric_limits<float>::infinity()}) {
      train_options o;
      o.final_lr_fraction = f;
      expect(o, "final learning-rate fraction must be in [0, 1]");
    }
    train_options edge;
    edge.max_steps = 2;
    edge.evaluate = false;
    edge.final_lr_fraction = 0.0f;
    CHECK(train(w, data, *be, edge).has_value());
    edge.final_lr_fraction = 1.0f;
    CHECK(train(w, data, *be, edge).has_value());
  }

  TEST_CASE("evaluate refuses wrong sizes and non-finite parameters") {
    auto data = small_data();
    auto w = small_mlp(data);
    auto be = make_cpu_backend(1);
    std::vector<float> params(w.parameter_count());
    w.init_parameters(1, params);
    auto ok = evaluate(w, data.test, *be, params);
    REQUIRE(ok.has_value());
    CHECK(ok->samples == 300);
    std::vector<float> short_params(params.begin(), params.end() - 1);
    CHECK(evaluate(w, data.test, *be, short_params).error().code() == errc::shape_mismatch);
    params[17] = std::nanf("");
    auto nan = evaluate(w, data.test, *be, params);
    REQUIRE_FALSE(nan.has_value());
    CHECK(nan.error().code() == errc::non_finite);
    CHECK(nan.error().message().find("17") != std::string::npos);
  }

  TEST_CASE("fashion-mlp learns real Fashion-MNIST in a few hundred steps" *
            doctest::skip(!test::fashion_mnist_installed())) {
    auto w = find_workload("fashion-mlp");
    REQUIRE(w.has_value());
    auto data = (*w)->load_data();
    REQUIRE_MESSAGE(data.has_value(), data.error().message());
    train_options o;
    o.max_steps = 300;
    auto be = make_cpu_backend(0);
    auto r = train(**w, *data, *be, o);
    REQUIRE(r.has_value());
    CHECK(r->steps == 300);
    CHECK(r->test_accuracy > 0.80);
  }

  TEST_CASE("unknown workloads are named with the known ones") {
    auto w = find_workload("imagenet-vit");
    REQUIRE_FALSE(w.has_value());
    CHECK(w.error().code() == errc::unknown_workload);
    CHECK(w.error().message().find("imagenet-vit") != std::string::npos);
    CHECK(w.error().message().find("fashion-mlp") != std::string::npos);
  }
}
