/// @file
/// The registry of built-in workloads.

#include <functional>
#include <map>

#include "gflex/kernels/model_spec.hpp"
#include "gflex/kernels/workload.hpp"
#include "gflex/runtime/text_corpus.hpp"

namespace gflex::kernels {

void model::predict(const float*, int64_t, std::span<float>) {
  throw compute_error(error(errc::invalid_argument, "this model does not offer its outputs"));
}

int64_t workload::parameter_count() const {
  auto blocks = layout();
  if (blocks.empty()) return 0;
  auto n = checked_numel(blocks.back().shape);
  return blocks.back().offset + (n ? *n : 0);
}

namespace {

using factory = std::function<std::unique_ptr<workload>()>;

// The shipped models are layer graphs like any user's, declared here as a user would declare
// them. Every weighted layer starts with He initialisation (init = "he"), the logits layer
// included, as the hand-written networks these graphs replaced did: the same seed gives the
// same parameters, and the same training, as before.
constexpr std::string_view k_fashion_mlp = R"([model]
name = "fashion-mlp"
input = [784]
layers = [
  { type = "linear", name = "fc1", units = 512, init = "he" },
  { type = "relu" },
  { type = "linear", name = "fc2", units = 256, init = "he" },
  { type = "relu" },
  { type = "linear", name = "fc3", units = 10, init = "he" },
  { type = "softmax_xent" },
]
)";

constexpr std::string_view k_fashion_cnn = R"([model]
name = "fashion-cnn"
input = [28, 28, 1]
layers = [
  { type = "conv2d", name = "conv1", filters = 32, kernel = 3, padding = 1, init = "he" },
  { type = "relu" },
  { type = "max_pool", size = 2 },
  { type = "conv2d", name = "conv2", filters = 64, kernel = 3, padding = 1, init = "he" },
  { type = "relu" },
  { type = "max_pool", size = 2 },
  { type = "flatten" },
  { type = "linear", name = "fc1", units = 128, init = "he" },
  { type = "relu" },
  { type = "linear", name = "fc2", units = 10, init = "he" },
  { type = "softmax_xent" },
]
)";

// A shipped graph on Fashion-MNIST. Its model text stays empty: jobs and assignments name the
// workload, and every node plans the same graph from its own copy of this registry.
std::unique_ptr<workload> fashion_graph(std::string_view text) {
  auto spec = parse_model_spec(text, "built-in model");
  GFLEX_CHECK(spec.has_value(), "a built-in model does not parse");
  auto plan = plan_model(*spec);
  GFLEX_CHECK(plan.has_value(), "a built-in model does not plan");
  std::string name = spec->name;
  return make_graph_workload(std::move(name), std::move(*plan), std::string(),
                             [] { return load_fashion_mnist(fashion_mnist_dir()); });
}

const std::map<std::string, factory, std::less<>>& registry() {
  static const std::map<std::string, factory, std::less<>> workloads = {
      {"fashion-mlp", [] { return fashion_graph(k_fashion_mlp); }},
      {"fashion-cnn", [] { return fashion_graph(k_fashion_cnn); }},
  };
  return workloads;
}

}  // namespace

expected<std::unique_ptr<workload>> find_workload(std::string_view name) {
  const auto& known = registry();
  if (auto it = known.find(name); it != known.end()) return it->second();
  std::string names;
  for (const auto& [key, _] : known) names += (names.empty() ? "" : ", ") + key;
  return error(errc::unknown_workload,
               "unknown workload '" + std::string(name) + "' (known: " + names + ")");
}

namespace {

// The data sets a user-defined model can name: built in, like the workloads.
expected<std::function<expected<dataset_splits>()>> data_set_loader(const std::string& name,
                                                                    const model_plan& plan) {
  if (name == "fashion-mnist") {
    if (plan.spec.vocab > 0 || plan.sample_values != 784)
      return error(errc::invalid_argument,
                   "data.set: fashion-mnist has 784 values per sample (28x28 pixels), the model "
                   "takes " +
                       std::to_string(plan.sample_values));
    // Checked here, before a job is accepted: a worker refuses a shard whose classes its
    // model does not have, and every assignment of such a job would fail.
    if (plan.classes != 10)
      return error(errc::invalid_argument,
                   "data.set: fashion-mnist has 10 classes, the model's loss takes " +
                       std::to_string(plan.classes));
    return std::function<expected<dataset_splits>()>(
        [] { return load_fashion_mnist(fashion_mnist_dir()); });
  }
  if (name == "fortunes") {
    if (plan.spec.vocab != 256)
      return error(errc::invalid_argument,
                   "data.set: fortunes is byte-level text: the model needs vocab = 256");
    const int64_t window = plan.sample_values;
    // Checked here, before a job is accepted, from the files' sizes: a context too long for
    // the corpus was accepted, its budget held, and the job failed as it started. (A machine
    // without the corpus, a node's, says so when it loads it.)
    if (auto size = text_corpus_size(fortunes_dir()))
      if (auto fits = check_token_splits(static_cast<int64_t>(*size), window); !fits) {
        // A sample is the input and the token after it; the test split takes one in ten.
        const auto longest = (static_cast<int64_t>(*size) - 1) / 10 + 1;
        return error(errc::invalid_argument, "data.set: fortunes: " + fits.error().message() +
                                                 " (an input of " + std::to_string(window - 1) +
                                                 " and the token after it): an input of " +
                                                 std::to_string(std::max<int64_t>(longest - 1, 0)) +
                                                 " tokens at most fits this core's corpus");
      }
    return std::function<expected<dataset_splits>()>([window]() -> expected<dataset_splits> {
      auto bytes = read_text_corpus(fortunes_dir());
      if (!bytes) return bytes.error();
      return make_token_splits(*bytes, window);
    });
  }
  return error(errc::invalid_argument,
               "data.set: unknown data set '" + name + "' (known: fashion-mnist, fortunes)");
}

}  // namespace

bool is_builtin_data_set(std::string_view name) {
  return name == "fashion-mnist" || name == "fortunes";
}

expected<std::unique_ptr<workload>> find_workload(std::string_view name,
                                                  const std::string& model_text,
                                                  const std::string& data_set) {
  if (model_text.empty()) return find_workload(name);
  auto spec = parse_model_spec(model_text, "model");
  if (!spec) return spec.error();
  auto plan = plan_model(*spec);
  if (!plan) return plan.error();
  std::function<expected<dataset_splits>()> data;
  if (!data_set.empty()) {
    auto loader = data_set_loader(data_set, *plan);
    if (!loader) return loader.error();
    data = std::move(*loader);
  }
  return make_graph_workload(std::string(name), std::move(*plan), model_text, std::move(data));
}

std::vector<std::string> workload_names() {
  std::vector<std::string> names;
  for (const auto& [key, _] : registry()) names.push_back(key);
  return names;
}

}  // namespace gflex::kernels
