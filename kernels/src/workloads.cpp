/// @file
/// The registry of built-in workloads.

#include <functional>
#include <map>

#include "gflex/kernels/cnn.hpp"
#include "gflex/kernels/mlp.hpp"
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

const std::map<std::string, factory, std::less<>>& registry() {
  static const std::map<std::string, factory, std::less<>> workloads = {
      {"fashion-mlp",
       [] {
         return std::make_unique<mlp_workload>(
             "fashion-mlp", std::vector<int64_t>{784, 512, 256, 10},
             [] { return load_fashion_mnist(fashion_mnist_dir()); });
       }},
      {"fashion-cnn",
       [] {
         return std::make_unique<cnn_workload>(
             "fashion-cnn", cnn_shape{}, [] { return load_fashion_mnist(fashion_mnist_dir()); });
       }},
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
    return std::function<expected<dataset_splits>()>(
        [] { return load_fashion_mnist(fashion_mnist_dir()); });
  }
  if (name == "fortunes") {
    if (plan.spec.vocab != 256)
      return error(errc::invalid_argument,
                   "data.set: fortunes is byte-level text: the model needs vocab = 256");
    const int64_t window = plan.sample_values;
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
