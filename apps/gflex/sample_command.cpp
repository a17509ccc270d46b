#include "sample_command.hpp"
#include "fail.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "gflex/kernels/backend.hpp"
#include "gflex/kernels/workload.hpp"
#include "gflex/runtime/checkpoint.hpp"
#include "gflex/runtime/rng.hpp"
#include "parse_command_line.hpp"

namespace gflex::app {

namespace {

struct sample_flags {
  std::string checkpoint;
  std::string prompt;
  int64_t tokens = 200;
  double temperature = 0.0;
  uint64_t seed = 1;
};

// The next byte after `text` from the model's logits at the last position it sees. The
// context is the last `t` bytes; a shorter one sits at positions 0..k-1 and the positions
// after it (zeros) cannot change the logits of earlier ones (attention is causal).
int run_sample(const sample_flags& f) {
  // Bounded, as gflex eval reads it: /dev/zero or a pipe that never ends is refused, not read
  // until memory runs out.
  auto bytes = read_file(f.checkpoint);
  if (!bytes) return fail(bytes.error(), 2);
  auto c = decode_checkpoint(*bytes);
  if (!c) return fail(error(c.error().code(), f.checkpoint + ": " + c.error().message()), 2);
  auto w = kernels::find_workload(c->workload, c->model, "");
  if (!w) return fail(error(w.error().code(), f.checkpoint + ": " + w.error().message()), 2);
  if (!(*w)->token_input() || (*w)->classes() != 256)
    return fail(error(errc::invalid_argument,
                      f.checkpoint + ": " + c->workload +
                          " is not a byte-level language model (a [model] with vocab = 256)"),
                2);
  std::vector<float> params(static_cast<size_t>((*w)->parameter_count()));
  for (const auto& block : (*w)->layout()) {
    const tensor* t = c->find(block.name);
    if (t == nullptr || t->type() != dtype::f32 || t->shape() != block.shape)
      return fail(error(errc::shape_mismatch, f.checkpoint + ": " + block.name +
                                                  " is missing or not " + to_string(block.shape)),
                  2);
    std::copy_n(t->data<float>(), t->numel(), params.begin() + block.offset);
  }
  auto b = kernels::make_cpu_backend(0);
  auto m = (*w)->instantiate(*b, 1);
  if (!m) return fail(m.error(), 2);
  const int64_t window = (*w)->feature_dim(), t = window - 1, vocab = 256;
  std::vector<float> sample(static_cast<size_t>(window)), logits(static_cast<size_t>(t * vocab));
  std::string text = f.prompt;
  if (text.empty()) text = "\n";
  rng r(f.seed);
  try {
    (*m)->load_parameters(params);
    std::fputs(f.prompt.c_str(), stdout);
    for (int64_t n = 0; n < f.tokens; ++n) {
      const int64_t k = std::min<int64_t>(static_cast<int64_t>(text.size()), t);
      std::fill(sample.begin(), sample.end(), 0.0f);
      for (int64_t i = 0; i < k; ++i)
        sample[static_cast<size_t>(i)] = static_cast<float>(
            static_cast<uint8_t>(text[text.size() - static_cast<size_t>(k - i)]));
      (*m)->predict(sample.data(), 1, logits);
      const float* z = logits.data() + (k - 1) * vocab;
      int64_t next = std::max_element(z, z + vocab) - z;
      if (f.temperature > 0.0) {
        std::vector<double> p(static_cast<size_t>(vocab));
        double total = 0.0;
        for (int64_t v = 0; v < vocab; ++v)
          total += p[static_cast<size_t>(v)] = std::exp((z[v] - z[next]) / f.temperature);
        double u = r.uniform() * total;
        for (next = 0; next + 1 < vocab && (u -= p[static_cast<size_t>(next)]) > 0.0; ++next) {
        }
      }
      text.push_back(static_cast<char>(next));
      std::fputc(static_cast<int>(next), stdout);
      std::fflush(stdout);
    }
    std::fputc('\n', stdout);
  } catch (const kernels::compute_error& e) {
    return fail(e.err(), 1);
  }
  return 0;
}

}  // namespace

void add_sample_command(CLI::App& app, std::function<int()>& run) {
  auto f = std::make_shared<sample_flags>();
  auto* cmd =
      app.add_subcommand("sample", "generate text from a fetched language-model checkpoint");
  cmd->add_option("checkpoint", f->checkpoint, "a checkpoint (gflex fetch JOB --out FILE)")
      ->required();
  cmd->add_option("--prompt", f->prompt, "the text to continue");
  cmd->add_option("--tokens", f->tokens, "bytes to generate")
      ->check(CLI::Range(int64_t{1}, int64_t{100000}))
      ->capture_default_str();
  cmd->add_option("--temperature", f->temperature,
                  "0: the likeliest byte each time (greedy); above 0: sampled, flatter as it grows")
      ->check(finite_range(0.0, 10.0))
      ->capture_default_str();
  cmd->add_option("--seed", f->seed, "seed of the sampling")->capture_default_str();
  cmd->callback([f, &run] { run = [f] { return run_sample(*f); }; });
}

}  // namespace gflex::app
