// How much of its test split the core evaluates a job on: all of it for the shipped models,
// and no more than its budget's worth of forward passes for a model whose every sample is
// costly (the core's CPU, shared by all jobs, was held for days by one user's model).
#include <doctest/doctest.h>

#include <fstream>
#include <iterator>
#include <string>

#include "evaluation_budget.hpp"
#include "gflex/kernels/workload.hpp"
#include "gflex/runtime/job_spec.hpp"

using namespace gflex;

TEST_SUITE("evaluation budget") {
  TEST_CASE("an evaluation takes the whole split within the budget, else as many as fit") {
    CHECK(evaluation_samples(1e6, 10000, 1e12) == 10000);
    CHECK(evaluation_samples(1e8, 10000, 1e12) == 10000);  // exactly the budget
    CHECK(evaluation_samples(2e8, 10000, 1e12) == 5000);
    CHECK(evaluation_samples(3e11, 10000, 1e12) == 3);
    // The largest model a spec may declare (2e12 FLOPs a sample) still takes one.
    CHECK(evaluation_samples(2e12, 10000, 1e12) == 1);
    CHECK(evaluation_samples(2e12, 0, 1e12) == 0);
    // A workload that does not know its cost is not cut.
    CHECK(evaluation_samples(0.0, 10000, 1e12) == 10000);
    CHECK(evaluation_samples(-1.0, 10000, 1e12) == 10000);
  }

  TEST_CASE("the shipped models evaluate on all of their test splits") {
    for (const char* name : {"fashion-mlp", "fashion-cnn"}) {
      auto w = kernels::find_workload(name);
      REQUIRE(w);
      CHECK((*w)->forward_flops() > 1e5);  // counted, not left at 0
      CHECK(evaluation_samples((*w)->forward_flops(), 10000) == 10000);
    }
    std::ifstream in(std::string(GFLEX_SOURCE_DIR) + "/apps/jobs/lm.toml");
    const std::string text((std::istreambuf_iterator<char>(in)), {});
    auto spec = parse_job_spec(text, "lm.toml");
    REQUIRE(spec);
    auto lm = kernels::find_workload(spec->workload, spec->model, "");
    REQUIRE(lm);
    CHECK((*lm)->forward_flops() > 1e6);
    CHECK(evaluation_samples((*lm)->forward_flops(), 4300) == 4300);  // fortunes' held-out part
  }

  TEST_CASE("a model whose every sample is costly is evaluated on part of the split") {
    // Width 2,048 at 1,024 positions: about 3.4e10 FLOPs of projections a sample.
    const std::string model = R"([model]
name = "wide"
input = [1024]
vocab = 256
layers = [
  { type = "embedding", dim = 2048 },
  { type = "attention", heads = 16 },
  { type = "linear", units = 256 },
  { type = "next_token_xent" },
]
)";
    auto w = kernels::find_workload("wide", model, "");
    REQUIRE(w);
    const double flops = (*w)->forward_flops();
    CHECK(flops > 3e10);
    const int64_t n = evaluation_samples(flops, 10000);
    CHECK(n < 10000);
    CHECK(static_cast<double>(n) * flops <= core_evaluation_flops);
    CHECK(static_cast<double>(n + 1) * flops > core_evaluation_flops);
  }

  TEST_CASE("a model of norms and activations, with few products, is evaluated on part") {
    // 250 layer norms and 250 GELUs on [512, 1024]: about 4e9 operations a sample outside
    // any matrix product. Counted as the products' 2e6 alone, the core evaluated all 10,000
    // test samples, tens of minutes of its CPU each evaluation.
    std::string model = "[model]\nname = \"norms\"\ninput = [512, 1024]\nlayers = [\n";
    for (int i = 0; i < 250; ++i) model += R"({ type = "layer_norm" }, { type = "gelu" },)";
    model += R"({ type = "flatten" }, { type = "linear", units = 2 }, { type = "softmax_xent" }])";
    auto w = kernels::find_workload("norms", model, "");
    REQUIRE_MESSAGE(w.has_value(), (w ? "" : w.error().message()));
    const double flops = (*w)->forward_flops();
    CHECK(flops > 3e9);
    const int64_t n = evaluation_samples(flops, 10000);
    CHECK(n < 1000);
    CHECK(static_cast<double>(n) * flops <= core_evaluation_flops);
  }
}
