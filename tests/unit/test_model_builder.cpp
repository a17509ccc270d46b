// The C++ model builder declares the same graphs as a spec's [model] table: its TOML reads
// back to the same model, and it reproduces the shipped specs.

#include <doctest/doctest.h>

#include <fstream>
#include <sstream>

#include "gflex/kernels/model_builder.hpp"
#include "gflex/kernels/workload.hpp"

using namespace gflex;
using namespace gflex::kernels;

namespace {

// A GPT block as apps/jobs/lm.toml writes it: pre-norm attention and GELU MLP, each added to
// its input.
void block(model_builder& m, const std::string& in, const std::string& mid,
           const std::string& out) {
  m.layer_norm().from(in).attention(4).add(in).named(mid);
  m.layer_norm().linear(512).gelu().linear(128).add(mid).named(out);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

TEST_SUITE("model builder") {
  TEST_CASE("the builder's TOML reads back to the same model") {
    auto m = model_builder("every-key", {8, 8, 2});
    m.conv2d(4, 3, 2, 1, false)
        .init(weight_init::lecun)
        .named("c")
        .avg_pool(2, 1)
        .max_pool(1)
        .flatten()
        .reshape({6, 6})
        .linear(6)
        .init(weight_init::he)
        .tanh()
        .dropout(0.25)
        .rms_norm(1e-6)
        .named("r")
        .linear(6)
        .from("r")
        .add("r")
        .linear(3)
        .flatten()
        .mse();
    const std::string text = m.toml();
    auto back = parse_model_spec(text, "builder");
    REQUIRE_MESSAGE(back.has_value(), back.error().message() << "\n" << text);
    CHECK(to_toml(*back) == text);
    CHECK(back->layers.size() == m.spec().layers.size());
    CHECK(back->layers[0].stride == 2);
    CHECK(back->layers[0].padding == 1);
    CHECK_FALSE(back->layers[0].bias);
    CHECK(back->layers[0].init == weight_init::lecun);
    CHECK(back->layers[1].stride == 1);
    CHECK(back->layers[9].from == "r");
    auto a = m.plan();
    auto b = plan_model(*back);
    REQUIRE_MESSAGE(a.has_value(), a.error().message());
    REQUIRE(b.has_value());
    CHECK(a->parameters == b->parameters);
    CHECK(a->forward_flops == b->forward_flops);
  }

  TEST_CASE("the shipped language model, built in C++") {
    auto m = model_builder::tokens("gpt-2x128", 64, 256);
    m.embedding(128).position_embedding().named("x0");
    block(m, "x0", "x1", "x2");
    block(m, "x2", "x3", "x4");
    m.layer_norm().linear(256).next_token_xent();
    auto shipped = parse_model_spec(read_file(GFLEX_SOURCE_DIR "/apps/jobs/lm.toml"), "lm.toml");
    REQUIRE_MESSAGE(shipped.has_value(), shipped.error().message());
    auto a = m.plan();
    auto b = plan_model(*shipped);
    REQUIRE_MESSAGE(a.has_value(), a.error().message());
    REQUIRE(b.has_value());
    CHECK(a->parameters == b->parameters);
    CHECK(a->forward_flops == b->forward_flops);
    REQUIRE(a->layers.size() == b->layers.size());
    for (size_t i = 0; i < a->layers.size(); ++i) {
      CAPTURE(i);
      CHECK(a->layers[i].out_shape == b->layers[i].out_shape);
      CHECK(a->layers[i].input == b->layers[i].input);
      CHECK(a->layers[i].other == b->layers[i].other);
    }
  }

  TEST_CASE("a GPT-2-small-sized model at a context of 1,024 is within every bound") {
    auto m = model_builder::tokens("gpt-2-small", 1024, 50257);
    m.embedding(768).position_embedding().named("x0");
    for (int b = 0; b < 12; ++b) {
      const auto in = "x" + std::to_string(2 * b), mid = "x" + std::to_string(2 * b + 1),
                 out = "x" + std::to_string(2 * b + 2);
      m.layer_norm().from(in).attention(12).add(in).named(mid);
      m.layer_norm().linear(3072).gelu().linear(768).add(mid).named(out);
    }
    m.layer_norm().linear(50257).next_token_xent();
    auto plan = m.plan();
    REQUIRE_MESSAGE(plan.has_value(), plan.error().message());
    // Outputs, attention's kept values and probabilities, and their gradients' scratch.
    CHECK(plan->working_values > 300'000'000);
    CHECK(plan->working_values < model_limits{}.max_working_values);
    CHECK(plan->forward_flops < model_limits{}.max_forward_flops);
  }

  TEST_CASE("fashion-cnn, built in C++, has the shipped workload's parameters") {
    auto m = model_builder("fashion-cnn", {28, 28, 1});
    m.conv2d(32, 3, 1, 1).named("conv1").relu().max_pool(2);
    m.conv2d(64, 3, 1, 1).named("conv2").relu().max_pool(2).flatten();
    m.linear(128).named("fc1").relu().linear(10).named("fc2").softmax_xent();
    auto plan = m.plan();
    REQUIRE(plan.has_value());
    auto shipped = find_workload("fashion-cnn");
    REQUIRE(shipped.has_value());
    auto blocks = (*shipped)->layout();
    std::vector<parameter_block> built;
    for (const auto& l : plan->layers)
      for (const auto& p : l.params) built.push_back(p);
    REQUIRE(built.size() == blocks.size());
    for (size_t i = 0; i < blocks.size(); ++i) {
      CHECK(built[i].name == blocks[i].name);
      CHECK(built[i].shape == blocks[i].shape);
    }
  }

  TEST_CASE("a bad model from the builder gets the planner's error, naming the layer") {
    auto m = model_builder("bad", {10});
    m.linear(5).add("nowhere").softmax_xent();
    auto plan = m.plan();
    REQUIRE_FALSE(plan.has_value());
    CHECK(plan.error().message().find("model.layers[1] (add).with") != std::string::npos);
  }

  TEST_CASE("the builder's plan checks every range the core checks, and never crashes") {
    // plan() skipped the parser's range checks: 0 heads and a 0 window divided by zero
    // (SIGFPE in the embedding program), an empty input read past its end, and a kernel of 65
    // passed here to be refused by the core.
    auto refused = [](const model_builder& m, const std::string& says) {
      auto plan = m.plan();
      REQUIRE_FALSE(plan.has_value());
      CHECK_MESSAGE(plan.error().message().find(says) != std::string::npos, plan.error().message());
    };
    refused(model_builder("m", {8, 4}).attention(0).flatten().linear(2).softmax_xent(), "heads");
    refused(model_builder("m", {8, 8, 1}).max_pool(0).flatten().linear(2).softmax_xent(), "size");
    refused(model_builder("m", {8, 8, 1}).conv2d(2, 65).flatten().linear(2).softmax_xent(),
            "kernel");
    refused(model_builder("m", {}).linear(2).softmax_xent(), "input");
  }

  TEST_CASE("plan_model checks a spec built in C++ as the parser does") {
    // The parser checked dropout's rate, a norm's eps and the input's extents; a model_spec
    // filled in C++ went to the kernels with rate 1 (every value dropped), eps 0 (a constant
    // row made NaN) or an input of 0 values.
    auto spec = parse_model_spec(
        model_builder("m", {8}).layer_norm().dropout(0.1).linear(2).softmax_xent().toml(), "model");
    REQUIRE(spec.has_value());
    REQUIRE(plan_model(*spec).has_value());
    auto refused = [](model_spec bad, const std::string& says) {
      auto plan = plan_model(bad);
      REQUIRE_FALSE(plan.has_value());
      CHECK_MESSAGE(plan.error().message().find(says) != std::string::npos, plan.error().message());
    };
    for (const double rate : {1.0, 1.0 - 1e-12, -0.5}) {
      auto bad = *spec;
      bad.layers[1].rate = rate;
      refused(bad, "model.layers[1] (dropout).rate");
    }
    for (const double eps : {0.0, 2.0}) {
      auto bad = *spec;
      bad.layers[0].eps = eps;
      refused(bad, "model.layers[0] (layer_norm).eps");
    }
    auto empty_input = *spec;
    empty_input.input = {0};
    refused(empty_input, "model.input: extents must be at least 1");
  }

  TEST_CASE("two layers whose parameters would share a name are refused") {
    // An unnamed second layer's blocks are "layer2.*": a layer named "layer2" has the same
    // names, and an export read by name loaded the first layer's weights for both.
    auto m = model_builder("m", {16});
    m.linear(16).named("layer2").relu().linear(16).relu().linear(2).softmax_xent();
    auto plan = m.plan();
    REQUIRE_FALSE(plan.has_value());
    CHECK_MESSAGE(plan.error().message().find("'layer2.weight', as an earlier layer's are") !=
                      std::string::npos,
                  plan.error().message());
  }
}
