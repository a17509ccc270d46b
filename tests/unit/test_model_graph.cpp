/// User-defined models (kernels/model_spec.hpp): every layer's gradient against finite
/// differences, the new backend operations against double-precision references, planning
/// errors that name the layer and key, and a graph model that learns.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "finite_difference.hpp"
#include "gflex/kernels/devices.hpp"
#include "gflex/kernels/model_spec.hpp"
#include "gflex/kernels/trainer.hpp"
#include "gflex/runtime/job_spec.hpp"
#include "gflex/runtime/rng.hpp"
#include "gflex/runtime/text_corpus.hpp"
#include "host_replicas.hpp"
#include "recording_backend.hpp"
#include "skip_case.hpp"
#include "temp_dir.hpp"

using namespace gflex;
using namespace gflex::kernels;

namespace {

std::unique_ptr<workload> graph(const std::string& text) {
  auto w = find_workload("test-model", text, "");
  REQUIRE_MESSAGE(w.has_value(), (w ? "" : w.error().message()));
  return std::move(*w);
}

// Random samples for a model: features in [-1, 1] (token ids below `vocab` for a token
// model) and labels below `classes`.
struct batch_data {
  std::vector<float> x;
  std::vector<int32_t> y;
};

batch_data random_batch(const workload& w, int64_t batch, int64_t vocab, uint64_t seed) {
  rng r(seed);
  batch_data d;
  d.x.resize(static_cast<size_t>(batch * w.feature_dim()));
  for (auto& v : d.x)
    v = vocab > 0 ? static_cast<float>(r.below(static_cast<uint64_t>(vocab)))
                  : static_cast<float>(r.uniform() * 2.0 - 1.0);
  d.y.resize(static_cast<size_t>(batch));
  for (auto& v : d.y) v = static_cast<int32_t>(r.below(static_cast<uint64_t>(w.classes())));
  return d;
}

// Samples parameters of every block and compares backpropagation with central differences.
// A step that crosses a kink (ReLU, a pooling winner) makes the difference meaningless; two
// step sizes that disagree reveal it, and such a parameter is skipped.
void check_gradients(const std::string& text, int64_t vocab, int64_t batch = 4) {
  auto w = graph(text);
  auto be = make_cpu_backend(1);
  auto m = w->instantiate(*be, batch);
  REQUIRE(m.has_value());
  std::vector<float> params(static_cast<size_t>(w->parameter_count()));
  w->init_parameters(7, params);
  // Non-zero biases and norm parameters, so that their gradients and effects are tested too.
  rng jitter(11);
  for (auto& p : params) p += static_cast<float>(jitter.normal() * 0.05);
  (*m)->load_parameters(params);
  auto data = random_batch(*w, batch, vocab, 3);
  std::vector<float> grad(params.size());
  (*m)->compute_gradients(data.x.data(), data.y.data(), batch, grad);
  auto blocks = w->layout();
  rng pick(5);
  std::vector<int> per_block(blocks.size(), 0);
  for (int trial = 0; trial < 12 * static_cast<int>(blocks.size()); ++trial) {
    const size_t bi = static_cast<size_t>(trial) % blocks.size();
    const int64_t n = *checked_numel(blocks[bi].shape);
    const size_t i = static_cast<size_t>(blocks[bi].offset) + pick.below(static_cast<uint64_t>(n));
    const double numeric =
        test::central_difference(**m, params, i, 2e-3f, data.x.data(), data.y.data(), batch);
    const double half =
        test::central_difference(**m, params, i, 1e-3f, data.x.data(), data.y.data(), batch);
    if (std::fabs(numeric - half) > 0.02 * std::fabs(numeric) + 2e-4) continue;
    CHECK_MESSAGE(grad[i] == doctest::Approx(numeric).epsilon(0.03).scale(3e-3),
                  blocks[bi].name << " parameter " << i << ": " << grad[i] << " vs " << numeric);
    ++per_block[bi];
  }
  for (size_t b = 0; b < blocks.size(); ++b) CHECK_MESSAGE(per_block[b] > 0, blocks[b].name);
}

// A small classifier with a dropout layer that drops half its values.
const char* const k_dropout_model = R"([model]
input = [6]
layers = [
  { type = "linear", units = 16 }, { type = "relu" }, { type = "dropout", rate = 0.5 },
  { type = "linear", units = 3 }, { type = "softmax_xent" },
])";

// GFLEX_FUSED_ATTENTION for the models instantiated next (read at instantiation); unset again
// when the case ends, so that later cases run the composed path.
struct fused_attention_setting {
  void use(bool fused) {
    if (fused)
      setenv("GFLEX_FUSED_ATTENTION", "1", 1);
    else
      unsetenv("GFLEX_FUSED_ATTENTION");
  }
  ~fused_attention_setting() { unsetenv("GFLEX_FUSED_ATTENTION"); }
};

std::string plan_error(const std::string& text) {
  auto w = find_workload("test-model", text, "");
  REQUIRE_FALSE(w.has_value());
  return w.error().message();
}

}  // namespace

TEST_SUITE("model graph") {
  TEST_CASE("a batch whose values pass the kernels' 32-bit sizes is refused before it is made") {
    // Each sample's activations are within the plan's bounds, 65,536 of them are not. Such a
    // job's every assignment failed on every node; where the memory sufficed, the GEMM's
    // 32-bit refusal, thrown mid-pass, counted as a failed device, and five such assignments
    // in a row shut a node down (a job's spec may ask any batch up to 65,536).
    auto w = graph(
        "[model]\ninput = [784]\nlayers = [ { type = \"linear\", units = 32768 }, "
        "{ type = \"reshape\", shape = [32768, 1] }, { type = \"linear\", units = 1 }, "
        "{ type = \"flatten\" }, { type = \"linear\", units = 10 }, "
        "{ type = \"softmax_xent\" } ]\n");
    CHECK(w->check_batch(65535).has_value());  // 65,535 x 32,768 values: just under 2^31
    auto refused = w->check_batch(65536);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().code() == errc::invalid_argument);
    CHECK_MESSAGE(
        refused.error().message().find("inner.batch_size: 65536 samples of layer 1 "
                                       "(linear, 32768 values each)") != std::string::npos,
        refused.error().message());
    CHECK(refused.error().message().find("at most 65535 fit") != std::string::npos);
    auto be = make_cpu_backend(1);
    auto m = w->instantiate(*be, 65536);  // refused before any of its 8 GiB is allocated
    REQUIRE_FALSE(m.has_value());
    CHECK(m.error().code() == errc::invalid_argument);
  }

  TEST_CASE(
      "a batch of inputs past the kernels' 32-bit sizes is refused, however small the layers") {
    // Only the layers' outputs were counted: a strided convolution over a large image kept
    // them small, and cuDNN refused every GPU node the batch of inputs (2.6e9 values).
    auto w = graph(
        "[model]\ninput = [256, 256, 1]\nlayers = [ { type = \"conv2d\", filters = 1, "
        "kernel = 16, stride = 16 }, { type = \"flatten\" }, { type = \"linear\", units = 10 }, "
        "{ type = \"softmax_xent\" } ]\n");
    CHECK(w->check_batch(32767).has_value());  // 32,767 x 65,536 values: under 2^31
    auto refused = w->check_batch(40000);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().code() == errc::invalid_argument);
    CHECK_MESSAGE(refused.error().message().find("inner.batch_size: 40000 samples of the model's "
                                                 "input (65536 values each)") != std::string::npos,
                  refused.error().message());
  }

  TEST_CASE("a model whose keys nest thousands of tables deep is refused, not parsed") {
    // A node parses the model text it is sent: the core checked the spec it came in, and
    // the node does not take that on trust (the parser's recursion overflowed its stack).
    std::string deep = "[model]\ninput = [784]\n";
    for (int i = 0; i < 20000; ++i) deep += "a.";
    deep += "a = 1\n";
    auto spec = parse_model_spec(deep, "model.toml");
    REQUIRE_FALSE(spec.has_value());
    CHECK(spec.error().code() == errc::invalid_argument);
    CHECK_MESSAGE(spec.error().message().find("model.toml: nests") == 0, spec.error().message());
  }

  TEST_CASE("dense layers, activations and norms backpropagate as finite differences say") {
    check_gradients(R"([model]
input = [6]
layers = [
  { type = "linear", units = 5 }, { type = "tanh" },
  { type = "linear", units = 4 }, { type = "gelu" }, { type = "layer_norm" },
  { type = "linear", units = 4 }, { type = "relu" }, { type = "rms_norm" },
  { type = "linear", units = 3 }, { type = "softmax_xent" },
])",
                    0);
  }

  TEST_CASE("strided convolution, pooling, flatten and mse backpropagate") {
    check_gradients(R"([model]
input = [6, 6, 2]
layers = [
  { type = "conv2d", filters = 3, kernel = 3, stride = 2, padding = 1 },
  { type = "tanh" },
  { type = "avg_pool", size = 2, stride = 1 },
  { type = "conv2d", filters = 2, kernel = 1 },
  { type = "max_pool", size = 2, stride = 1 },
  { type = "flatten" },
  { type = "linear", units = 3 }, { type = "mse" },
])",
                    0);
  }

  TEST_CASE("reshape and a linear layer over the last dimension backpropagate") {
    check_gradients(R"([model]
input = [12]
layers = [
  { type = "reshape", shape = [3, 4] },
  { type = "linear", units = 5 }, { type = "gelu" },
  { type = "flatten" },
  { type = "linear", units = 3 }, { type = "softmax_xent" },
])",
                    0);
  }

  TEST_CASE("a transformer block (embeddings, causal attention, residuals) backpropagates") {
    check_gradients(R"([model]
input = [5]
vocab = 7
layers = [
  { type = "embedding", dim = 8 },
  { type = "position_embedding", name = "x0" },
  { type = "layer_norm" },
  { type = "attention", heads = 2 },
  { type = "add", with = "x0", name = "x1" },
  { type = "rms_norm" },
  { type = "linear", units = 16 }, { type = "gelu" },
  { type = "linear", units = 8 },
  { type = "add", with = "x1" },
  { type = "layer_norm" },
  { type = "linear", units = 7 },
  { type = "next_token_xent" },
])",
                    7, 3);
  }

  TEST_CASE("residual sums and fused activations backpropagate, however their values are shared") {
    // The cases alias_values() tells apart: a ReLU with two readers (applied in its linear
    // layer's bias pass, not in place) and one with one (in place); an add's input only it
    // reads (its gradient is the sum's buffer), one read twice (x + x), a chain of sums
    // sharing one buffer (u into s4 into the last sum), a norm over a value another layer
    // also reads (its gradient added in place).
    check_gradients(R"([model]
input = [6]
layers = [
  { type = "linear", units = 8, name = "h0" }, { type = "relu" },
  { type = "add", with = "h0", name = "s0" },
  { type = "linear", units = 8 }, { type = "tanh" },
  { type = "add", with = "s0", name = "s1" },
  { type = "add", with = "s1", name = "s2" },
  { type = "linear", units = 8 }, { type = "relu" },
  { type = "add", with = "s2", name = "s3" },
  { type = "rms_norm", from = "s3" },
  { type = "linear", units = 8 }, { type = "gelu" }, { type = "linear", units = 8 },
  { type = "add", with = "s3", name = "s4" },
  { type = "add", with = "s3" },
  { type = "layer_norm" },
  { type = "linear", units = 3 }, { type = "softmax_xent" },
])",
                    0);
  }

  TEST_CASE("on a GPU: every layer's gradients agree with the CPU's") {
    if (cuda_device_count() == 0)
      GFLEX_SKIP_CASE(cuda_compiled() ? "no CUDA device on this machine" : "CUDA not compiled in");
    // One model with every layer type but the losses it cannot share (mse has its own).
    for (const auto& [text, vocab] : std::vector<std::pair<std::string, int64_t>>{{R"([model]
input = [6, 6, 2]
layers = [
  { type = "conv2d", filters = 3, kernel = 3, stride = 2, padding = 1 }, { type = "tanh" },
  { type = "avg_pool", size = 2, stride = 1 }, { type = "max_pool", size = 1 },
  { type = "flatten" }, { type = "linear", units = 8 }, { type = "gelu" },
  { type = "layer_norm" }, { type = "dropout", rate = 0.2 }, { type = "rms_norm" },
  { type = "reshape", shape = [2, 4] }, { type = "relu" }, { type = "flatten" },
  { type = "linear", units = 3 }, { type = "mse" },
])",
                                                                                   0},
                                                                                  {R"([model]
input = [5]
vocab = 7
layers = [
  { type = "embedding", dim = 8 }, { type = "position_embedding", name = "x0" },
  { type = "layer_norm" }, { type = "attention", heads = 2 }, { type = "add", with = "x0" },
  { type = "linear", units = 7 }, { type = "next_token_xent" },
])",
                                                                                   7}}) {
      auto w = graph(text);
      std::vector<float> params(static_cast<size_t>(w->parameter_count()));
      w->init_parameters(5, params);
      auto data = random_batch(*w, 8, vocab, 3);
      auto gradients_on = [&](backend& b) {
        auto m = w->instantiate(b, 8);
        REQUIRE_MESSAGE(m.has_value(), (m ? "" : m.error().message()));
        (*m)->load_parameters(params);
        std::vector<float> g(params.size());
        (*m)->compute_gradients(data.x.data(), data.y.data(), 8, g);
        return g;
      };
      auto cpu = make_cpu_backend(1);
      auto gpu = make_cuda_backend(0);
      REQUIRE(gpu.has_value());
      auto a = gradients_on(*cpu), b = gradients_on(**gpu);
      double diff = 0.0, norm = 0.0;
      for (size_t i = 0; i < a.size(); ++i) {
        diff += (a[i] - b[i]) * (a[i] - b[i]);
        norm += a[i] * a[i];
      }
      CHECK_MESSAGE(std::sqrt(diff) <= 1e-4 * std::sqrt(norm) + 1e-7,
                    "relative difference " << std::sqrt(diff / norm));
    }
  }

  TEST_CASE("GFLEX_FUSED_ATTENTION=1: fused attention, the same gradients, less memory") {
    // A context of 70 (past one of the CUDA kernels' 64-row tiles) and heads of 32 values, in
    // bf16: the CPU runs its FP32 fused attention, the CUDA backend its flash kernels.
    auto w = graph(R"([model]
input = [70]
vocab = 11
layers = [
  { type = "embedding", dim = 64 }, { type = "position_embedding", name = "x0" },
  { type = "layer_norm" }, { type = "attention", heads = 2 }, { type = "add", with = "x0" },
  { type = "linear", units = 11 }, { type = "next_token_xent" },
])");
    std::vector<float> params(static_cast<size_t>(w->parameter_count()));
    w->init_parameters(5, params);
    auto data = random_batch(*w, 6, 11, 3);
    fused_attention_setting restore;
    std::vector<std::unique_ptr<backend>> backends;
    backends.push_back(make_cpu_backend(1));
    if (cuda_device_count() > 0) {
      auto gpu = make_cuda_backend(0);
      REQUIRE(gpu.has_value());
      backends.push_back(std::move(*gpu));
    } else {
      MESSAGE("the CUDA backend's fused attention is not run: no CUDA device on this machine");
    }
    for (auto& b : backends) {
      CAPTURE(b->describe());
      const bool on_host = b->where().kind == device_kind::host;
      b->set_precision(math_precision::bf16);
      if (!b->fused_attention(32)) {
        MESSAGE(b->describe() << " has no fused attention for heads of 32 values: skipped");
        continue;
      }
      // The gradients, and the memory the backends hold while the model is alive.
      auto run = [&](bool fused) {
        restore.use(fused);
        auto m = w->instantiate(*b, 6);
        REQUIRE_MESSAGE(m.has_value(), (m ? "" : m.error().message()));
        (*m)->load_parameters(params);
        std::vector<float> g(params.size());
        (*m)->compute_gradients(data.x.data(), data.y.data(), 6, g);
        const uint64_t held = on_host ? host_memory_in_use() : cuda_memory_in_use(0);
        return std::pair{g, held};
      };
      const auto composed = run(false), fused = run(true);
      double diff = 0.0, norm = 0.0;
      for (size_t i = 0; i < composed.first.size(); ++i) {
        const double e = composed.first[i] - fused.first[i];
        diff += e * e;
        norm += static_cast<double>(composed.first[i]) * composed.first[i];
      }
      // FP32 on the CPU (another order of sums); bf16 tensor-core products on a GPU.
      const double tolerance = on_host ? 1e-5 : 3e-2;
      CHECK_MESSAGE(std::sqrt(diff) <= tolerance * std::sqrt(norm),
                    "relative difference " << std::sqrt(diff / norm));
      // Without the [heads, t, t] probabilities and their gradient (6 x 2 x 70 x 70 values
      // each), the fused model holds at least the size of one of them less.
      CHECK_MESSAGE(fused.second + 6 * 2 * 70 * 70 * sizeof(float) <= composed.second,
                    "fused " << fused.second << " bytes, composed " << composed.second);
    }
  }

  TEST_CASE("recorded training passes (GFLEX_CUDA_GRAPHS unset), the bits of unrecorded ones") {
    // Six AdamW steps on new batches each, with and without the variable: the same parameters
    // bit for bit (a replay runs the recorded operations on the same buffers). A backend that
    // records replays from the second pass on (recorded, then replayed: five replays); one
    // that does not (the CPU's) runs every pass as before. The CPU backend made to record as
    // the CUDA backend does (recording_backend.hpp) tests the model's side here; a GPU, where
    // there is one, its CUDA graphs.
    struct restore_env {
      ~restore_env() { unsetenv("GFLEX_CUDA_GRAPHS"); }
    } restore;
    auto cpu = make_cpu_backend(1);
    testing::recording_backend recording(*cpu);
    std::vector<backend*> backends{cpu.get(), &recording};
    std::unique_ptr<backend> gpu;
    if (cuda_device_count() > 0) {
      auto made = make_cuda_backend(0);
      REQUIRE(made.has_value());
      gpu = std::move(*made);
      backends.push_back(gpu.get());
    } else {
      MESSAGE("CUDA graphs are not run: no CUDA device on this machine");
    }
    for (const auto& model : std::vector<std::pair<std::string, int64_t>>{{R"([model]
input = [8, 8, 1]
layers = [
  { type = "conv2d", filters = 4, kernel = 3, padding = 1 }, { type = "relu" },
  { type = "max_pool", size = 2 }, { type = "flatten" },
  { type = "linear", units = 16 }, { type = "gelu" }, { type = "layer_norm" },
  { type = "linear", units = 5 }, { type = "softmax_xent" },
])",
                                                                           0},
                                                                          {R"([model]
input = [12]
vocab = 9
layers = [
  { type = "embedding", dim = 16 }, { type = "position_embedding", name = "x0" },
  { type = "layer_norm" }, { type = "attention", heads = 2 }, { type = "add", with = "x0" },
  { type = "linear", units = 9 }, { type = "next_token_xent" },
])",
                                                                           9}}) {
      auto w = graph(model.first);
      std::vector<float> init(static_cast<size_t>(w->parameter_count()));
      w->init_parameters(5, init);
      // The parameters after six steps, and how many passes were replays; `between` runs
      // after each step.
      auto train = [&](backend& b, bool recorded, const std::function<void(int)>& between) {
        if (recorded)
          unsetenv("GFLEX_CUDA_GRAPHS");  // the default records
        else
          setenv("GFLEX_CUDA_GRAPHS", "0", 1);
        auto m = w->instantiate(b, 8);
        REQUIRE_MESSAGE(m.has_value(), (m ? "" : m.error().message()));
        (*m)->load_parameters(init);
        const uint64_t replays = b.replays();
        // One buffer for every batch: a host backend reads batches in place, so a recorded
        // pass reads where the batch was when it was recorded.
        batch_data data;
        for (int step = 0; step < 6; ++step) {
          auto next = random_batch(*w, 8, model.second, 40 + static_cast<uint64_t>(step));
          if (step == 0) data = next;
          std::copy(next.x.begin(), next.x.end(), data.x.begin());
          std::copy(next.y.begin(), next.y.end(), data.y.begin());
          (*m)->train_step(data.x.data(), data.y.data(), 8);
          if (between) between(step);
        }
        std::vector<float> out(init.size());
        (*m)->store_parameters(out);
        return std::pair{out, b.replays() - replays};
      };
      for (backend* b : backends) {
        CAPTURE(b->describe());
        CAPTURE(b->records());
        const auto plain = train(*b, false, nullptr), recorded = train(*b, true, nullptr);
        CHECK(plain.second == 0);
        CHECK(recorded.first == plain.first);
        CHECK(recorded.second == (b->records() ? 5u : 0u));
      }
      const auto plain = train(recording, false, nullptr);
      // Buffers replaced after the third step: the fourth pass runs as it is, the fifth is
      // recorded anew.
      const auto replaced = train(recording, true, [&](int step) {
        if (step == 2) recording.replace_buffers();
      });
      CHECK(replaced.first == plain.first);
      CHECK(replaced.second == 4);
      // A recording that fails once (a GEMM throws while recording): that pass runs
      // unrecorded, the next is recorded.
      recording.throw_op = "gemm";
      recording.throw_times = 1;
      const auto retried = train(recording, true, nullptr);
      CHECK(retried.first == plain.first);
      CHECK(retried.second == 4);
      // A recording that always fails: every pass runs unrecorded.
      recording.throw_times = 1 << 30;
      const auto refused = train(recording, true, nullptr);
      recording.throw_op.clear();
      CHECK(refused.first == plain.first);
      CHECK(refused.second == 0);
    }
  }

  TEST_CASE("recorded work replays on the backend that recorded it, until its buffers change") {
    // A replay runs on the buffers the work was recorded with: on another backend (its own
    // streams and workspace) or after the backend replaced a buffer (a grown workspace), it
    // would use memory that is not, or no longer, its own. Both are refused; the work itself
    // replays as often as asked. The CPU backend made to record stands in for a GPU's here.
    auto cpu = make_cpu_backend(1);
    testing::recording_backend recording(*cpu), other_recording(*cpu);
    std::vector<std::pair<backend*, backend*>> pairs{{&recording, &other_recording}};
    std::unique_ptr<backend> gpu, other_gpu;
    if (cuda_device_count() > 0) {
      auto a = make_cuda_backend(0), b = make_cuda_backend(0);
      REQUIRE(a.has_value());
      REQUIRE(b.has_value());
      gpu = std::move(*a);
      other_gpu = std::move(*b);
      pairs.emplace_back(gpu.get(), other_gpu.get());
    } else {
      MESSAGE("CUDA graphs are not replayed: no CUDA device on this machine");
    }
    for (const auto& pair : pairs) {  // not a structured binding: clang 14 cannot capture one
      backend* b = pair.first;
      backend* other = pair.second;
      CAPTURE(b->describe());
      REQUIRE(b->records());
      const int64_t n = 64;
      tensor x = b->allocate({n}, dtype::f32), y = b->allocate({n}, dtype::f32);
      const std::vector<float> ones(n, 1.0f), zeros(n, 0.0f);
      b->upload(ones.data(), x.raw(), n * sizeof(float));
      b->upload(zeros.data(), y.raw(), n * sizeof(float));
      b->begin_recording();
      b->axpby(n, 2.0f, x.data<float>(), 1.0f, y.data<float>());  // y += 2x
      auto work = b->end_recording();
      REQUIRE(work != nullptr);
      b->replay(*work);
      b->replay(*work);
      std::vector<float> got(n);
      b->download(y.raw(), got.data(), n * sizeof(float));
      CHECK(got == std::vector<float>(n, 4.0f));  // recorded, not run, then run twice
      CHECK_THROWS_WITH_AS(other->replay(*work), doctest::Contains("another backend recorded"),
                           compute_error);
      // Replace a buffer: the test double by hand, a GPU by its first workspace (the
      // embedding gradient's sort uses it).
      const uint64_t epoch = b->recording_epoch();
      if (b == &recording) {
        recording.replace_buffers();
      } else {
        tensor ids = b->allocate({n}, dtype::i32), table = b->allocate({8, 8}, dtype::f32);
        const std::vector<int32_t> id_values(n, 3);
        b->upload(id_values.data(), ids.raw(), n * sizeof(int32_t));
        b->embedding_backward(ids.data<int32_t>(), y.data<float>(), 8, 8, 8, table.data<float>());
        b->synchronize();
      }
      REQUIRE(b->recording_epoch() != epoch);
      CHECK_THROWS_WITH_AS(b->replay(*work), doctest::Contains("workspace was replaced"),
                           compute_error);
      b->download(y.raw(), got.data(), n * sizeof(float));
      CHECK(got == std::vector<float>(n, 4.0f));  // the refused replays changed nothing
      if (b == gpu.get()) {
        // A tensor released while recording: freed once the recording ends, and the
        // recording, whose work may use it, dropped; the next one is kept.
        tensor scratch = b->allocate({n}, dtype::f32);
        b->upload(ones.data(), scratch.raw(), n * sizeof(float));
        b->begin_recording();
        b->axpby(n, 1.0f, scratch.data<float>(), 1.0f, y.data<float>());
        scratch = tensor{};
        CHECK(b->end_recording() == nullptr);
        b->begin_recording();
        b->axpby(n, 1.0f, x.data<float>(), 1.0f, y.data<float>());
        auto kept = b->end_recording();
        REQUIRE(kept != nullptr);
        b->replay(*kept);
        b->download(y.raw(), got.data(), n * sizeof(float));
        CHECK(got == std::vector<float>(n, 5.0f));  // neither dropped recording ran
      }
    }
  }

  TEST_CASE(
      "dropout draws a sample's mask by its place in the batch, not by the rank that computes it") {
    // A node with several GPUs splits each batch over its ranks. Each rank drew its masks as
    // if its rows began the batch, and a rank with no rows fell a pass behind: the node
    // followed another noise path than a one-device re-computation of the same assignment.
    auto w = graph(k_dropout_model);
    std::vector<float> params(static_cast<size_t>(w->parameter_count()));
    w->init_parameters(3, params);
    for (auto [group_size, batch_size] : {std::pair{2, 8}, {3, 8}, {3, 2}}) {
      const int ranks = group_size;
      const int64_t batch = batch_size;
      CAPTURE(ranks);
      CAPTURE(batch);
      auto one = make_cpu_backend(1);
      auto single = w->instantiate(*one, batch);
      REQUIRE(single.has_value());
      (*single)->load_parameters(params);
      auto replicas = test::make_host_replicas(*w, ranks, batch, params);
      for (int step = 0; step < 4; ++step) {
        auto d = random_batch(*w, batch, 0, 100 + static_cast<uint64_t>(step));
        (*single)->train_step(d.x.data(), d.y.data(), batch);
        replica_step(*replicas.group, replicas.models, d.x.data(), d.y.data(), batch);
      }
      std::vector<float> want(params.size()), got(params.size());
      (*single)->store_parameters(want);
      replicas.models[0]->store_parameters(got);
      size_t off = 0;
      for (size_t i = 0; i < want.size(); ++i)
        off += std::fabs(got[i] - want[i]) > 1e-4f + 1e-3f * std::fabs(want[i]) ? 1 : 0;
      CHECK_MESSAGE(off == 0, off << " of " << want.size() << " parameters differ");
    }
  }

  TEST_CASE("each assignment's seed draws its own dropout masks, and the same seed the same") {
    // The masks hashed only the layer and the pass since the optimiser's reset: step k of
    // every assignment, in every round and on every node, dropped the same values.
    auto w = graph(k_dropout_model);
    std::vector<float> params(static_cast<size_t>(w->parameter_count()));
    w->init_parameters(3, params);
    auto be = make_cpu_backend(1);
    auto m = w->instantiate(*be, 8);
    REQUIRE(m.has_value());
    auto d = random_batch(*w, 8, 0, 7);
    auto gradient_with = [&](uint64_t seed) {
      (*m)->load_parameters(params);
      (*m)->reset_optimizer();
      (*m)->set_noise_seed(seed);
      std::vector<float> g(params.size());
      (*m)->compute_gradients(d.x.data(), d.y.data(), 8, g);
      return g;
    };
    const auto first = gradient_with(1);
    CHECK(gradient_with(1) == first);  // a re-computation draws the same masks
    CHECK(gradient_with(2) != first);
  }

  TEST_CASE("GELU's gradient is finite wherever its output is") {
    // Past |x| of about 2e19, x * x overflowed: (1 - t^2) * inf made the gradient NaN where
    // the output is a finite 0 (or x), and a diverging model's update NaN instead of finite.
    auto be = make_cpu_backend(1);
    const std::vector<float> x = {-1e20f, -3e38f, -11.0f, 11.0f, 1e20f, 3e38f, 0.5f};
    std::vector<float> y(x.size()), dy(x.size(), 1.0f), dx(x.size());
    be->activation_forward(activation::gelu, x.data(), y.data(), static_cast<int64_t>(x.size()));
    be->activation_backward(activation::gelu, x.data(), dy.data(), dx.data(),
                            static_cast<int64_t>(x.size()));
    for (size_t i = 0; i < x.size(); ++i) {
      CAPTURE(x[i]);
      CHECK(std::isfinite(y[i]));
      CHECK(std::isfinite(dx[i]));
      // Past the clamp, the gradient at |x| = 10 (its tanh within float rounding of +-1).
      if (x[i] < -10.0f) CHECK(std::fabs(dx[i]) < 1e-4f);
      if (x[i] > 10.0f) CHECK(std::fabs(dx[i] - 1.0f) < 1e-4f);
    }
    CHECK(dx.back() == doctest::Approx(0.8674).epsilon(1e-3));  // an ordinary value unchanged
  }

  TEST_CASE("tanh and GELU keep their signs in saturation") {
    // The rational tanh could come out just past +-1 near its clamp (by the build's fused
    // multiply-adds): 1 - t^2 then turned negative, and a saturated unit's tiny gradient
    // pointed the wrong way, which AdamW's per-parameter scaling makes a full step.
    auto be = make_cpu_backend(1);
    std::vector<float> x;
    for (float v = 6.0f; v <= 12.0f; v += 1.0f / 64.0f) {
      x.push_back(v);
      x.push_back(-v);
    }
    for (float v : {7.90531110763549805f, 7.99881172180175781f, 20.0f, 1e6f}) {
      x.push_back(v);
      x.push_back(-v);
    }
    const auto n = static_cast<int64_t>(x.size());
    std::vector<float> y(x.size()), dy(x.size(), 1.0f), dx(x.size());
    be->activation_forward(activation::tanh, x.data(), y.data(), n);
    be->activation_backward(activation::tanh, x.data(), dy.data(), dx.data(), n);
    int wrong = 0;
    for (size_t i = 0; i < x.size(); ++i)
      if (std::fabs(y[i]) > 1.0f || dx[i] < 0.0f) ++wrong;
    CHECK(wrong == 0);
    // GELU: at x below about -4 its output is at most 0 and its slope negative or 0.
    std::vector<float> g;
    for (float v = 4.0f; v <= 12.0f; v += 1.0f / 64.0f) g.push_back(-v);
    g.push_back(-1e4f);
    const auto m = static_cast<int64_t>(g.size());
    std::vector<float> gy(g.size()), gdy(g.size(), 1.0f), gdx(g.size());
    be->activation_forward(activation::gelu, g.data(), gy.data(), m);
    be->activation_backward(activation::gelu, g.data(), gdy.data(), gdx.data(), m);
    int wrong_gelu = 0;
    for (size_t i = 0; i < g.size(); ++i)
      if (gy[i] > 0.0f || gdx[i] > 0.0f) ++wrong_gelu;
    CHECK(wrong_gelu == 0);
  }

  TEST_CASE("backend operations agree with double-precision references") {
    auto be = make_cpu_backend(1);
    rng r(9);
    std::vector<float> x(3 * 8);
    for (auto& v : x) v = static_cast<float>(r.normal());
    std::vector<float> gamma(8), beta(8);
    for (auto& v : gamma) v = static_cast<float>(1.0 + 0.3 * r.normal());
    for (auto& v : beta) v = static_cast<float>(0.3 * r.normal());
    SUBCASE("layer norm and RMS norm") {
      for (bool rms : {false, true}) {
        std::vector<float> y(x.size()), mean(3), rstd(3);
        be->norm_forward(rms, x.data(), gamma.data(), rms ? nullptr : beta.data(), 3, 8, 1e-5f,
                         y.data(), mean.data(), rstd.data());
        for (int row = 0; row < 3; ++row) {
          double mu = 0, var = 0;
          for (int c = 0; c < 8; ++c) mu += rms ? 0.0 : x[row * 8 + c] / 8.0;
          for (int c = 0; c < 8; ++c) var += (x[row * 8 + c] - mu) * (x[row * 8 + c] - mu) / 8.0;
          for (int c = 0; c < 8; ++c) {
            double want =
                (x[row * 8 + c] - mu) / std::sqrt(var + 1e-5) * gamma[c] + (rms ? 0.0 : beta[c]);
            CHECK(y[row * 8 + c] == doctest::Approx(want).epsilon(1e-5));
          }
        }
      }
    }
    SUBCASE("causal softmax") {
      std::vector<float> s(x.begin(), x.begin() + 16);  // one 4x4 score matrix
      auto copy = s;
      be->causal_softmax_forward(s.data(), 1, 4, 0.5f);
      for (int i = 0; i < 4; ++i) {
        double denom = 0;
        for (int j = 0; j <= i; ++j) denom += std::exp(0.5 * copy[i * 4 + j]);
        for (int j = 0; j < 4; ++j) {
          double want = j <= i ? std::exp(0.5 * copy[i * 4 + j]) / denom : 0.0;
          CHECK(s[i * 4 + j] == doctest::Approx(want).epsilon(1e-5));
        }
      }
    }
    SUBCASE("GELU and tanh") {
      std::vector<float> y(x.size());
      be->activation_forward(activation::gelu, x.data(), y.data(), static_cast<int64_t>(x.size()));
      for (size_t i = 0; i < x.size(); ++i) {
        const double v = x[i];
        const double want =
            0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
        CHECK(y[i] == doctest::Approx(want).epsilon(1e-5));
      }
      be->activation_forward(activation::tanh, x.data(), y.data(), static_cast<int64_t>(x.size()));
      for (size_t i = 0; i < x.size(); ++i) CHECK(y[i] == doctest::Approx(std::tanh(x[i])));
    }
    SUBCASE("pooling with overlapping windows") {
      // One 3x3 single-channel image, window 2, stride 1: four overlapping windows.
      std::vector<float> img{1, 5, 2, 4, 3, 9, 0, 7, 6}, y(4);
      std::vector<int32_t> arg(4);
      be->pool2d_forward(true, img.data(), 1, 3, 3, 1, 2, 1, y.data(), arg.data());
      CHECK(y == std::vector<float>{5, 9, 7, 9});
      be->pool2d_forward(false, img.data(), 1, 3, 3, 1, 2, 1, y.data(), nullptr);
      CHECK(y[0] == doctest::Approx(13.0 / 4));
      CHECK(y[3] == doctest::Approx(25.0 / 4));
      std::vector<float> dy{1, 1, 1, 1}, dx(9);
      be->pool2d_forward(true, img.data(), 1, 3, 3, 1, 2, 1, y.data(), arg.data());
      be->pool2d_backward(true, dy.data(), arg.data(), 1, 3, 3, 1, 2, 1, dx.data());
      CHECK(dx == std::vector<float>{0, 1, 0, 0, 0, 2, 0, 1, 0});  // 9 wins two windows
    }
    SUBCASE("dropout keeps about 1 - rate of the values, scaled") {
      std::vector<float> mask(100000);
      be->dropout_mask(static_cast<int64_t>(mask.size()), 0.25f, 42, mask.data());
      double kept = 0;
      for (float v : mask) {
        CHECK((v == 0.0f || v == doctest::Approx(1.0 / 0.75)));
        kept += v != 0.0f;
      }
      CHECK(kept / static_cast<double>(mask.size()) == doctest::Approx(0.75).epsilon(0.01));
    }
  }

  TEST_CASE("plans: shapes, parameters and FLOPs") {
    auto spec = parse_model_spec(R"([model]
input = [28, 28, 1]
layers = [
  { type = "conv2d", filters = 8, kernel = 3, padding = 1 }, { type = "relu" },
  { type = "max_pool", size = 2 }, { type = "flatten" },
  { type = "linear", units = 10 }, { type = "softmax_xent" },
])",
                                 "spec");
    REQUIRE(spec.has_value());
    auto plan = plan_model(*spec);
    REQUIRE(plan.has_value());
    CHECK(plan->parameters == 8 * 9 + 8 + 14 * 14 * 8 * 10 + 10);
    CHECK(plan->classes == 10);
    CHECK(plan->sample_values == 784);
    CHECK(plan->layers[2].out_shape == shape_t{14, 14, 8});
    // The pool's window is counted: one operation per value it reads; the ReLU one a value,
    // the loss's softmax 20 a class.
    CHECK(plan->forward_flops == doctest::Approx(2.0 * 28 * 28 * 8 * 9 + 28 * 28 * 8 +
                                                 14 * 14 * 8 * 4 + 2.0 * 1568 * 10 + 20 * 10));
    CHECK(plan->layers[1].flops == 0.0);  // no product: not in a training step's GEMM count
    CHECK(plan->layers[1].vector_flops == 28 * 28 * 8);
  }

  TEST_CASE("plans: norms, activations and softmax rows are counted, a cost per value") {
    // A chain of norms and GELUs has no matrix product: counted as 0, it passed for free
    // where the core sizes its evaluation by the count, and each of its passes did about 5e9
    // operations at 500 layers of [512, 1024].
    auto chain = [](int n, int64_t width) {
      std::string s = "[model]\ninput = [512, " + std::to_string(width) + "]\nlayers = [\n";
      for (int i = 0; i < n; ++i) s += R"({ type = "layer_norm" }, { type = "gelu" },)";
      s += R"({ type = "flatten" }, { type = "linear", units = 2 }, { type = "softmax_xent" }])";
      return plan_model(*parse_model_spec(s, "spec"));
    };
    auto one = chain(1, 64), two = chain(2, 64), wide = chain(2, 128);
    REQUIRE(one.has_value());
    REQUIRE(two.has_value());
    REQUIRE(wide.has_value());
    const double gemm = 2.0 * 512 * 64 * 2, values = 512.0 * 64;
    // A norm 10 operations a value, a GELU 20.
    CHECK(one->layers[0].vector_flops == doctest::Approx(10 * values));
    CHECK(one->layers[1].vector_flops == doctest::Approx(20 * values));
    CHECK(one->forward_flops == doctest::Approx(gemm + 30 * values + 20 * 2));
    CHECK(two->forward_flops - one->forward_flops == doctest::Approx(30 * values));
    // Twice the values, twice the chain's count.
    CHECK(wide->forward_flops - 2.0 * gemm - 40 ==
          doctest::Approx(2.0 * (two->forward_flops - gemm - 40)));
    // Attention's softmax: 20 operations per value of its [heads, t, t] probabilities.
    auto att = plan_model(*parse_model_spec(R"([model]
input = [16]
vocab = 8
layers = [ { type = "embedding", dim = 8 }, { type = "attention", heads = 2 },
           { type = "linear", units = 8 }, { type = "next_token_xent" } ])",
                                            "spec"));
    REQUIRE(att.has_value());
    CHECK(att->layers[0].vector_flops == 16 * 8);
    CHECK(att->layers[1].vector_flops == doctest::Approx(20.0 * 2 * 16 * 16));
    CHECK(att->layers[3].vector_flops == doctest::Approx(20.0 * 16 * 8));
  }

  TEST_CASE("a convolutional net may flatten a feature map of more than 2^20 values") {
    // Flatten's one dimension is the map's size: held to the bound of one dimension (2^20),
    // a net on 256x256 images with 128 filters could not reach its dense layer, whatever its
    // parameters, activations and FLOPs (all within their bounds).
    auto w = find_workload("wide-cnn", R"([model]
input = [256, 256, 3]
layers = [
  { type = "conv2d", filters = 128, kernel = 3, padding = 1 }, { type = "relu" },
  { type = "max_pool", size = 2 }, { type = "flatten" }, { type = "linear", units = 10 },
  { type = "softmax_xent" },
])",
                           "");
    REQUIRE_MESSAGE(w.has_value(), w.error().message());
    CHECK((*w)->parameter_count() == 128 * 27 + 128 + 2097152 * 10 + 10);
  }

  TEST_CASE("a bad model is refused with the layer and the key named") {
    const std::string head = "[model]\ninput = [6]\nlayers = [\n";
    auto err = [&](const std::string& layers) { return plan_error(head + layers + "\n]\n"); };
    CHECK(err(R"({ type = "linear", units = 3 }, { type = "softmax" },)")
              .find("model.layers[1].type: unknown layer type 'softmax'") != std::string::npos);
    CHECK(err(R"({ type = "linear" }, { type = "softmax_xent" },)")
              .find("model.layers[0] (linear).units: missing") != std::string::npos);
    // A type given, but not as a string, was said to be missing.
    CHECK(err(R"({ type = 3 }, { type = "softmax_xent" },)")
              .find("model.layers[0].type: must be a string naming a layer type") !=
          std::string::npos);
    CHECK(err(R"({ type = "linear", units = 3, kernel = 2 }, { type = "softmax_xent" },)")
              .find("model.layers[0] (linear).kernel: not a key of a linear layer") !=
          std::string::npos);
    CHECK(err(R"({ type = "linear", units = -3 }, { type = "softmax_xent" },)")
              .find("units: must be in [1, 1048576], got -3") != std::string::npos);
    // A number is quoted as given: std::to_string printed 1e-13 as "0.000000".
    CHECK(err(R"({ type = "layer_norm", eps = 1e-13 }, { type = "linear", units = 3 },
                 { type = "softmax_xent" },)")
              .find("eps: must be in [1e-12, 1], got 1e-13") != std::string::npos);
    CHECK(err(R"({ type = "conv2d", filters = 2, kernel = 3 }, { type = "softmax_xent" },)")
              .find("model.layers[0] (conv2d): takes [height, width, channels] input, got [6]") !=
          std::string::npos);
    CHECK(err(R"({ type = "linear", units = 3 }, { type = "relu" },)")
              .find("the last layer must be a loss") != std::string::npos);
    CHECK(err(R"({ type = "linear", units = 3, name = "a" }, { type = "add", with = "b" },
                 { type = "softmax_xent" },)")
              .find("model.layers[1] (add).with: no earlier layer is named 'b'") !=
          std::string::npos);
    CHECK(err(R"({ type = "linear", units = 3, name = "a" }, { type = "linear", units = 4 },
                 { type = "add", with = "a" }, { type = "softmax_xent" },)")
              .find("model.layers[2] (add 'a')") == std::string::npos);
    CHECK(err(R"({ type = "linear", units = 3, name = "a" }, { type = "linear", units = 4 },
                 { type = "add", with = "a" }, { type = "softmax_xent" },)")
              .find("adds 'a' of shape [3] to input of shape [4]") != std::string::npos);
    CHECK(err(R"({ type = "linear", units = 3, name = "a" },
                 { type = "linear", units = 3, from = "input" }, { type = "softmax_xent" },)")
              .find("model.layers[0] (linear 'a'): its output is never used") != std::string::npos);
    CHECK(err(R"({ type = "linear", units = 100000 }, { type = "linear", units = 100000 },
                 { type = "softmax_xent" },)")
              .find("more than") != std::string::npos);
    // One sample's activations are capped (2^28 values): the input and two GELUs of 2^26
    // values each are within it, the input and four are not.
    const std::string wide = "[model]\ninput = [16384, 4096]\nlayers = [\n";
    const std::string gelus = R"({ type = "gelu" }, { type = "gelu" },)";
    const std::string tail = R"({ type = "linear", units = 1 }, { type = "flatten" },
                                { type = "linear", units = 2 }, { type = "softmax_xent" },])";
    auto within = find_workload("test-model", wide + gelus + tail, "");
    CHECK_MESSAGE(within.has_value(), (within ? "" : within.error().message()));
    CHECK(plan_error(wide + gelus + gelus + tail)
              .find("model.layers[3] (gelu): brings one sample's activations to 335544320 "
                    "values, more than 268435456") != std::string::npos);
    // What a pass holds beyond the outputs is capped too (2^29 values a sample), and the
    // forward FLOPs (2e12 a sample): the core evaluates every model on its CPU, and each of
    // these passed the plan and then asked it for tens of gigabytes, or hours a sample.
    // Attention's [heads, t, t] probabilities and their gradients: 2^34 each at a context of
    // 131,072.
    CHECK(plan_error(R"([model]
input = [131072]
vocab = 256
layers = [ { type = "embedding", dim = 64 }, { type = "attention", heads = 1 },
           { type = "linear", units = 256 }, { type = "next_token_xent" } ])")
              .find("model.layers[1] (attention): brings the values one sample's pass holds "
                    "(outputs, attention probabilities, convolution patches) to 3.44e+10, "
                    "more than 536870912") != std::string::npos);
    // A convolution's patch matrix: 93 x 93 pixels of 64 x 64 x 256 values.
    CHECK(plan_error(R"([model]
input = [28, 28, 1]
layers = [ { type = "conv2d", filters = 256, kernel = 3, padding = 1 },
           { type = "conv2d", filters = 1, kernel = 64, padding = 64 }, { type = "flatten" },
           { type = "linear", units = 10 }, { type = "softmax_xent" } ])")
              .find("model.layers[1] (conv2d): brings the values one sample's pass holds") !=
          std::string::npos);
    CHECK(plan_error(R"([model]
input = [8192, 4096]
layers = [ { type = "attention", heads = 1 }, { type = "flatten" },
           { type = "linear", units = 2 }, { type = "softmax_xent" } ])")
              .find("model.layers[0] (attention): brings one sample's forward pass to 2.2e+12 "
                    "FLOPs, more than 2e+12") != std::string::npos);
    CHECK(err(R"({ type = "softmax_xent" }, { type = "linear", units = 3 },)")
              .find("a loss must be the last layer") != std::string::npos);
    // A dropout rate below 1 that rounds to 1 as the kernels' float dropped every value.
    CHECK(err(R"({ type = "dropout", rate = 0.99999999 }, { type = "linear", units = 3 },
                 { type = "softmax_xent" },)")
              .find("model.layers[0] (dropout).rate: must be below 1 as a 32-bit float") !=
          std::string::npos);
    CHECK(err(R"({ type = "embedding", dim = 4 }, { type = "softmax_xent" },)")
              .find("an embedding needs token input") != std::string::npos);
    CHECK(plan_error(R"([model]
input = [8]
vocab = 16
layers = [ { type = "embedding", dim = 6 }, { type = "attention", heads = 4 },
           { type = "linear", units = 16 }, { type = "next_token_xent" } ])")
              .find("model.layers[1] (attention).heads: width 6 is not a multiple of 4 heads") !=
          std::string::npos);
    // A token model whose positions meet outside attention sees the tokens it is to predict
    // (its loss falls towards 0 and means nothing): flattened through a dense layer, or
    // reshaped so that one attention row holds two positions.
    CHECK(plan_error(R"([model]
input = [8]
vocab = 16
layers = [ { type = "embedding", dim = 4 }, { type = "flatten" }, { type = "linear", units = 128 },
           { type = "reshape", shape = [8, 16] }, { type = "next_token_xent" } ])")
              .find("model.layers[1] (flatten): mixes a token model's positions") !=
          std::string::npos);
    CHECK(plan_error(R"([model]
input = [8]
vocab = 16
layers = [ { type = "embedding", dim = 4 }, { type = "reshape", shape = [4, 8] },
           { type = "attention", heads = 1 }, { type = "reshape", shape = [8, 4] },
           { type = "linear", units = 16 }, { type = "next_token_xent" } ])")
              .find("model.layers[1] (reshape): mixes a token model's positions, so that each "
                    "sees the tokens after it") != std::string::npos);
    // Reshaped to the positions' axis alone, a dense layer runs across the positions.
    CHECK(plan_error(R"([model]
input = [8]
vocab = 16
layers = [ { type = "embedding", dim = 1 }, { type = "reshape", shape = [8] },
           { type = "linear", units = 128 }, { type = "reshape", shape = [8, 16] },
           { type = "next_token_xent" } ])")
              .find("model.layers[1] (reshape): mixes a token model's positions") !=
          std::string::npos);
    // A reshape that keeps the positions' axis (and another) keeps them apart.
    CHECK(find_workload("m", R"([model]
input = [8]
vocab = 16
layers = [ { type = "embedding", dim = 4 }, { type = "reshape", shape = [8, 2, 2] },
           { type = "reshape", shape = [8, 4] }, { type = "linear", units = 16 },
           { type = "next_token_xent" } ])",
                        "")
              .has_value());
    // Hostile graphs the kernels cannot run, refused by the plan (each crashed the process
    // that planned or trained it): a parameter past the value bound, a token model adding
    // its token ids to floats (which needs a reshape to the positions alone, refused before
    // the add now), an embedding reading anything but the token ids.
    CHECK(plan_error(R"([model]
input = [1, 1048576]
layers = [ { type = "attention", heads = 1 }, { type = "flatten" },
           { type = "linear", units = 10 }, { type = "softmax_xent" } ])")
              .find("model.layers[0] (attention): its parameter qkv.weight [1048576, 3145728] "
                    "holds more than 268435456 values") != std::string::npos);
    CHECK(plan_error(R"([model]
input = [8]
vocab = 256
layers = [ { type = "embedding", dim = 1 }, { type = "reshape", shape = [8] },
           { type = "add", with = "input" }, { type = "reshape", shape = [8, 1] },
           { type = "linear", units = 256 }, { type = "next_token_xent" } ])")
              .find("model.layers[1] (reshape): mixes a token model's positions") !=
          std::string::npos);
    CHECK(plan_error(R"([model]
input = [64]
vocab = 256
layers = [ { type = "embedding", dim = 4 }, { type = "reshape", shape = [64, 2, 2] },
           { type = "embedding", dim = 4 }, { type = "reshape", shape = [4, 1] },
           { type = "linear", units = 16 }, { type = "reshape", shape = [64, 1] },
           { type = "linear", units = 256 }, { type = "next_token_xent" } ])")
              .find("model.layers[2] (embedding).from: an embedding reads the token input") !=
          std::string::npos);
    CHECK(plan_error("[model]\ninput = [8]\nlayers = []\n").find("model.layers") !=
          std::string::npos);
    CHECK(plan_error("[model]\nlayers = [ { type = \"softmax_xent\" } ]\n")
              .find("model.input: missing") != std::string::npos);
    CHECK(plan_error("[model]\ninput = [8]\nwidth = 3\nlayers = []\n")
              .find("model.width: unknown key") != std::string::npos);
  }

  TEST_CASE("a spec built in C++ that reshapes to no axes or more than 4 is refused") {
    // The parser refuses shape = [], and checked_numel of no extents is 1: a spec filled in
    // C++ reshaped [1] to [], and the next layer read the last axis of an empty shape.
    auto with_shape = [](std::vector<int64_t> shape) {
      model_spec spec;
      spec.input = {4};
      layer_spec first;
      first.units = 1;
      layer_spec reshape;
      reshape.kind = layer_kind::reshape;
      reshape.shape = std::move(shape);
      layer_spec second;
      second.units = 2;
      layer_spec flatten;
      flatten.kind = layer_kind::flatten;
      layer_spec loss;
      loss.kind = layer_kind::softmax_xent;
      spec.layers = {first, reshape, second, flatten, loss};
      return plan_model(spec);
    };
    REQUIRE_MESSAGE(with_shape({1}).has_value(), with_shape({1}).error().message());
    REQUIRE(with_shape({1, 1, 1, 1}).has_value());
    for (const auto& shape : {std::vector<int64_t>{}, std::vector<int64_t>{1, 1, 1, 1, 1}}) {
      auto plan = with_shape(shape);
      REQUIRE_FALSE(plan.has_value());
      CHECK(plan.error().code() == errc::invalid_argument);
      CHECK_MESSAGE(
          plan.error().message().find("model.layers[1] (reshape).shape: must be an "
                                      "array of 1 to 4 positive integers") != std::string::npos,
          plan.error().message());
    }
  }

  TEST_CASE("a job spec carries its model and data set, and refuses them half given") {
    const std::string model = R"(
[data]
set = "fashion-mnist"

[model]
name = "small-mlp"
input = [784]
layers = [ { type = "linear", units = 32 }, { type = "relu" },
           { type = "linear", units = 10 }, { type = "softmax_xent" } ]
)";
    auto spec = parse_job_spec("[job]\nrounds = 2\n" + model, "spec");
    REQUIRE_MESSAGE(spec.has_value(), (spec ? "" : spec.error().message()));
    CHECK(spec->workload == "small-mlp");
    CHECK(spec->data_set == "fashion-mnist");
    CHECK(spec->model.find("[model]") != std::string::npos);
    auto again = parse_job_spec(to_toml(*spec), "round trip");
    REQUIRE(again.has_value());
    CHECK(*again == *spec);
    auto w = find_workload(spec->workload, spec->model, spec->data_set);
    REQUIRE(w.has_value());
    CHECK((*w)->parameter_count() == 784 * 32 + 32 + 32 * 10 + 10);
    auto no_data = parse_job_spec("[model]\ninput = [4]\nlayers = []\n", "spec");
    REQUIRE_FALSE(no_data.has_value());
    CHECK(no_data.error().message().find("data.set: missing") != std::string::npos);
    auto stray = parse_job_spec("[job]\nworkload = \"fashion-mlp\"\n[data]\nset = \"x\"\n", "s");
    REQUIRE_FALSE(stray.has_value());
    CHECK(stray.error().message().find("data.set: only a job with a [model]") != std::string::npos);
    auto wrong_set = find_workload("m", spec->model, "imagenet");
    REQUIRE_FALSE(wrong_set.has_value());
    CHECK(wrong_set.error().message().find("unknown data set 'imagenet'") != std::string::npos);
    auto fortunes_for_images = find_workload("m", spec->model, "fortunes");
    REQUIRE_FALSE(fortunes_for_images.has_value());
    CHECK(fortunes_for_images.error().message().find("vocab = 256") != std::string::npos);
    // A context too long for the corpus: refused here, where a job is accepted (it was
    // accepted, its budget held, and it failed as it started).
    {
      test::temp_dir corpus;
      std::ofstream(corpus / "text") << std::string(1000, 'x');
      const char* before = std::getenv("GFLEX_FORTUNES_DIR");
      const std::string kept = before != nullptr ? before : "";
      ::setenv("GFLEX_FORTUNES_DIR", corpus.path().c_str(), 1);
      auto token_model = [](int context) {
        return "[model]\ninput = [" + std::to_string(context) +
               "]\nvocab = 256\nlayers = [ { type = \"embedding\", dim = 4 }, "
               "{ type = \"linear\", units = 256 }, { type = \"next_token_xent\" } ]\n";
      };
      auto too_long = find_workload("m", token_model(200), "fortunes");
      auto fits = find_workload("m", token_model(99), "fortunes");
      auto one_past = find_workload("m", token_model(100), "fortunes");
      if (before != nullptr)
        ::setenv("GFLEX_FORTUNES_DIR", kept.c_str(), 1);
      else
        ::unsetenv("GFLEX_FORTUNES_DIR");
      REQUIRE_FALSE(too_long.has_value());
      CHECK_MESSAGE(
          too_long.error().message().find("fortunes: the text has 1000 bytes: too few "
                                          "for samples of 201 tokens") != std::string::npos,
          too_long.error().message());
      CHECK(too_long.error().message().find("an input of 99 tokens at most fits") !=
            std::string::npos);
      CHECK_MESSAGE(fits.has_value(), (fits ? "" : fits.error().message()));
      CHECK_FALSE(one_past.has_value());
    }
    // Seven classes on ten: refused where a job is accepted, not by every worker after it.
    std::string seven = spec->model;
    const size_t units = seven.find("units = 10");
    REQUIRE(units != std::string::npos);
    seven.replace(units, 10, "units = 7");
    auto too_few = find_workload("m", seven, "fashion-mnist");
    REQUIRE_FALSE(too_few.has_value());
    CHECK(too_few.error().message() ==
          "data.set: fashion-mnist has 10 classes, the model's loss takes 7");
  }

  TEST_CASE("a training step's GEMM FLOPs: no gradient of the data is counted") {
    // 784-32-10: the first layer's forward and weight gradient, the second's forward and
    // both gradients, 2 FLOPs a multiply-add, per sample.
    auto w = graph(R"([model]
input = [784]
layers = [ { type = "linear", units = 32 }, { type = "relu" },
           { type = "linear", units = 10 }, { type = "softmax_xent" } ])");
    auto be = make_cpu_backend(1);
    auto m = w->instantiate(*be, 4);
    REQUIRE(m.has_value());
    CHECK((*m)->train_step_gemm_flops(4) ==
          doctest::Approx(4.0 * 2.0 * (784 * 32 * 2 + 32 * 10 * 3)));
  }

  TEST_CASE("evaluation batches fit a budget: a long attention context evaluates few at once") {
    // The core evaluates every job's model on its CPU: 1,000 samples of a model whose
    // attention keeps 2 x 2,048 x 2,048 probabilities each would be 34 GB.
    CHECK(graph(R"([model]
input = [784]
layers = [ { type = "linear", units = 32 }, { type = "relu" },
           { type = "linear", units = 10 }, { type = "softmax_xent" } ])")
              ->eval_batch() == 1000);
    const auto long_context = graph(R"([model]
input = [2048, 8]
layers = [ { type = "attention", heads = 2 }, { type = "flatten" },
           { type = "linear", units = 10 }, { type = "softmax_xent" } ])");
    CHECK(long_context->eval_batch() >= 1);
    CHECK(long_context->eval_batch() <= (int64_t{1} << 26) / (2 * 2048 * 2048));
    CHECK(graph(R"([model]
input = [16]
vocab = 32
layers = [ { type = "embedding", dim = 8 }, { type = "attention", heads = 2 },
           { type = "linear", units = 32 }, { type = "next_token_xent" } ])")
              ->eval_batch() == 16);
  }

  TEST_CASE("a model that only evaluates holds no gradients") {
    // The core's evaluator and `gflex job eval` never train: the gradients, scratch and masks
    // made with the model held as much again as its activations, past the memory the
    // evaluation budget allows for.
    auto w = graph(R"([model]
input = [4096]
layers = [ { type = "layer_norm" }, { type = "layer_norm" }, { type = "layer_norm" },
           { type = "dropout", rate = 0.1 }, { type = "linear", units = 2 },
           { type = "softmax_xent" } ])");
    auto be = make_cpu_backend(1);
    const int64_t batch = 256;
    std::vector<float> x(static_cast<size_t>(batch * 4096), 0.5f);
    for (size_t i = 0; i < x.size(); i += 7) x[i] = -1.0f;
    std::vector<int32_t> y(static_cast<size_t>(batch), 1);
    const uint64_t base = host_memory_in_use();
    auto m = w->instantiate(*be, batch);
    REQUIRE(m.has_value());
    (*m)->evaluate_batch(x.data(), y.data(), batch);
    const uint64_t evaluating = host_memory_in_use() - base;
    std::vector<float> g(static_cast<size_t>(w->parameter_count()));
    (*m)->compute_gradients(x.data(), y.data(), batch, g);
    const uint64_t training = host_memory_in_use() - base;
    // Four activations of 256 x 4,096 values (3 norms, dropout) to evaluate; training adds
    // as many gradients, a scratch buffer and the mask.
    const uint64_t activations = 4 * batch * 4096 * sizeof(float);
    CHECK(evaluating >= activations);
    CHECK_MESSAGE(evaluating < activations * 5 / 4, evaluating << " bytes to evaluate");
    CHECK_MESSAGE(training >= evaluating + activations, training << " bytes to train");
  }

  TEST_CASE("what an evaluation holds is within its plan's working values") {
    // A max pool's winners and a norm's row statistics were not counted: a pass held up to
    // twice (pools) or three times (norms over narrow rows) the values its bound allowed,
    // and the core's evaluation batch, sized by it, as much more.
    const std::string pools = R"([model]
input = [256, 256, 1]
layers = [ { type = "max_pool", size = 1 }, { type = "max_pool", size = 1 },
           { type = "max_pool", size = 1 }, { type = "max_pool", size = 1 },
           { type = "flatten" }, { type = "linear", units = 2 }, { type = "softmax_xent" } ])";
    const std::string norms = R"([model]
input = [65536, 1]
layers = [ { type = "layer_norm" }, { type = "rms_norm" }, { type = "layer_norm" },
           { type = "rms_norm" }, { type = "flatten" }, { type = "linear", units = 2 },
           { type = "softmax_xent" } ])";
    for (const auto& text : {pools, norms}) {
      CAPTURE(text);
      auto spec = parse_model_spec(text, "model");
      REQUIRE(spec.has_value());
      auto plan = plan_model(*spec);
      REQUIRE(plan.has_value());
      auto w = graph(text);
      auto be = make_cpu_backend(1);
      const int64_t batch = 4;
      const auto r = random_batch(*w, batch, 0, 3);
      const uint64_t parameter_bytes = static_cast<uint64_t>(w->parameter_count()) * sizeof(float);
      const uint64_t base = host_memory_in_use();
      auto m = w->instantiate(*be, batch);
      REQUIRE(m.has_value());
      (*m)->evaluate_batch(r.x.data(), r.y.data(), batch);
      const uint64_t evaluating = host_memory_in_use() - base;
      const auto planned = static_cast<uint64_t>(plan->working_values) * batch * sizeof(float);
      CHECK_MESSAGE(evaluating <= planned + parameter_bytes + (uint64_t{1} << 20),
                    evaluating << " bytes held to evaluate; the plan says " << planned
                               << " and the parameters " << parameter_bytes);
    }
  }

  TEST_CASE("a model that only evaluates holds no parameter gradients on the host") {
    // The parameters' gradient buffer was made with the model: every job's evaluation on the
    // core held its model's parameters twice, a GiB more for the largest models.
    auto w = graph(R"([model]
input = [4096]
layers = [ { type = "linear", units = 4096 }, { type = "linear", units = 2 },
           { type = "softmax_xent" } ])");
    auto be = make_cpu_backend(1);
    const int64_t batch = 4;
    std::vector<float> x(static_cast<size_t>(batch * 4096), 0.25f);
    std::vector<int32_t> y(static_cast<size_t>(batch), 1);
    const uint64_t parameter_bytes = static_cast<uint64_t>(w->parameter_count()) * sizeof(float);
    const uint64_t base = host_memory_in_use();
    auto m = w->instantiate(*be, batch);
    REQUIRE(m.has_value());
    (*m)->evaluate_batch(x.data(), y.data(), batch);
    const uint64_t evaluating = host_memory_in_use() - base;
    CHECK_MESSAGE(evaluating < parameter_bytes * 5 / 4,
                  evaluating << " bytes to evaluate " << parameter_bytes << " of parameters");
    // Training makes them, and computes the same gradients as a fresh model.
    std::vector<float> g(static_cast<size_t>(w->parameter_count()));
    (*m)->compute_gradients(x.data(), y.data(), batch, g);
    CHECK(host_memory_in_use() - base >= evaluating + parameter_bytes);
    auto fresh = w->instantiate(*be, batch);
    REQUIRE(fresh.has_value());
    std::vector<float> g_fresh(g.size());
    (*fresh)->compute_gradients(x.data(), y.data(), batch, g_fresh);
    CHECK(g == g_fresh);
  }

  TEST_CASE("token data: windows overlap by one byte and the held-out split is every tenth") {
    std::vector<uint8_t> bytes(1000);
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i % 251);
    auto splits = make_token_splits(bytes, 11, 10);
    REQUIRE(splits.has_value());
    CHECK(splits->train.size() + splits->test.size() == 999 / 10);
    CHECK(splits->test.size() == 9);
    const float* first = splits->train.features.data<float>();
    CHECK(first[10] == first[11]);  // the last token of a sample starts the next one
    CHECK(splits->train.labels.data<int32_t>()[0] == 10);
    CHECK_FALSE(make_token_splits(std::vector<uint8_t>(5), 11, 10).has_value());
  }

  TEST_CASE(
      "a token model is causal: later tokens leave the earlier positions' logits as they were") {
    // The gradient checks hold the wiring to its own gradients, and the kernels to their
    // references: a mask wrong the same way forward and backward would pass them both, and
    // gflex sample (which pads after the prompt) and the per-token loss would be wrong.
    const int64_t t = 9, vocab = 13, batch = 2;
    auto w = graph(R"([model]
input = [9]
vocab = 13
layers = [
  { type = "embedding", dim = 64 }, { type = "position_embedding", name = "x0" },
  { type = "layer_norm" }, { type = "attention", heads = 2 }, { type = "add", with = "x0" },
  { type = "rms_norm" }, { type = "linear", units = 13 }, { type = "next_token_xent" },
])");
    std::vector<float> params(static_cast<size_t>(w->parameter_count()));
    w->init_parameters(3, params);
    const auto first = random_batch(*w, batch, vocab, 21);
    fused_attention_setting restore;
    for (const bool fused : {false, true}) {
      CAPTURE(fused);
      restore.use(fused);
      auto be = make_cpu_backend(1);
      if (fused) {
        be->set_precision(math_precision::bf16);  // the CPU's fused path runs under it
        REQUIRE(be->fused_attention(32));
      }
      auto m = w->instantiate(*be, batch);
      REQUIRE_MESSAGE(m.has_value(), (m ? "" : m.error().message()));
      (*m)->load_parameters(params);
      auto logits_of = [&](const std::vector<float>& x) {
        std::vector<float> out(static_cast<size_t>(batch * t * vocab));
        (*m)->predict(x.data(), batch, out);
        return out;
      };
      const auto before = logits_of(first.x);
      for (int64_t k = 0; k + 1 < t; ++k) {
        // Every token after position k changed, in every sample.
        auto later = first.x;
        for (int64_t b = 0; b < batch; ++b)
          for (int64_t p = k + 1; p < t; ++p) {
            auto& token = later[static_cast<size_t>(b * w->feature_dim() + p)];
            token = static_cast<float>((static_cast<int64_t>(token) + 1 + p) % vocab);
          }
        const auto after = logits_of(later);
        double moved_before = 0.0, moved_after = 0.0;
        for (int64_t b = 0; b < batch; ++b)
          for (int64_t p = 0; p < t; ++p)
            for (int64_t v = 0; v < vocab; ++v) {
              const size_t i = static_cast<size_t>((b * t + p) * vocab + v);
              const double d = std::fabs(static_cast<double>(after[i]) - before[i]);
              (p <= k ? moved_before : moved_after) =
                  std::max(p <= k ? moved_before : moved_after, d);
            }
        CHECK_MESSAGE(moved_before <= 1e-6, "positions 0.." << k << " moved by " << moved_before);
        // The change is seen where it may be: the test would pass on a model that ignored its
        // input.
        CHECK(moved_after > 1e-3);
      }
    }
  }

  TEST_CASE("a token outside the vocabulary is an error, not a read out of bounds") {
    auto w = graph(R"([model]
input = [3]
vocab = 4
layers = [ { type = "embedding", dim = 4 }, { type = "linear", units = 4 },
           { type = "next_token_xent" } ])");
    auto be = make_cpu_backend(1);
    auto m = w->instantiate(*be, 1);
    REQUIRE(m.has_value());
    std::vector<float> x{1, 2, 9, 0};
    std::vector<int32_t> y{0};
    CHECK_THROWS_AS((*m)->evaluate_batch(x.data(), y.data(), 1), compute_error);
  }

  TEST_CASE("a graph model learns: a small convolutional net on synthetic images") {
    // Three classes told apart by where a bright square sits.
    dataset_splits data;
    for (dataset* d : {&data.train, &data.test}) {
      const int64_t n = d == &data.train ? 600 : 200;
      d->classes = 3;
      d->features = tensor::empty({n, 64}, dtype::f32);
      d->labels = tensor::empty({n}, dtype::i32);
      rng r(d == &data.train ? 1 : 2);
      for (int64_t i = 0; i < n; ++i) {
        auto label = static_cast<int32_t>(r.below(3));
        d->labels.span<int32_t>()[i] = label;
        float* img = d->features.data<float>() + i * 64;
        for (int64_t p = 0; p < 64; ++p) img[p] = static_cast<float>(r.normal() * 0.3);
        int64_t top = label == 2 ? 5 : 1, left = label == 1 ? 5 : 1;
        for (int64_t yy = top; yy < top + 2; ++yy)
          for (int64_t xx = left; xx < left + 2; ++xx) img[yy * 8 + xx] += 2.0f;
      }
    }
    auto w = graph(R"([model]
input = [8, 8, 1]
layers = [
  { type = "conv2d", filters = 4, kernel = 3, padding = 1 }, { type = "relu" },
  { type = "max_pool", size = 2 }, { type = "flatten" }, { type = "dropout", rate = 0.1 },
  { type = "linear", units = 3 }, { type = "softmax_xent" },
])");
    auto be = make_cpu_backend(1);
    train_options o;
    o.epochs = 3;
    o.batch_size = 32;
    o.optimizer.lr = 1e-2f;
    auto report = train(*w, data, *be, o);
    REQUIRE(report.has_value());
    CHECK(report->test_accuracy > 0.95);
    auto again = train(*w, data, *be, o);
    REQUIRE(again.has_value());
    CHECK(again->test_accuracy == report->test_accuracy);  // dropout masks are deterministic
  }
}
