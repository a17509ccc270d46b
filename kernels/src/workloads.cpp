/// @file
/// The registry of built-in workloads.

#include <functional>
#include <map>

#include "gflex/kernels/cnn.hpp"
#include "gflex/kernels/mlp.hpp"
#include "gflex/kernels/workload.hpp"

namespace gflex::kernels {

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

std::vector<std::string> workload_names() {
  std::vector<std::string> names;
  for (const auto& [key, _] : registry()) names.push_back(key);
  return names;
}

}  // namespace gflex::kernels
