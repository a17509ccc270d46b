/// @file
/// The plain (non-template) functions of the cuDNN convolution planning declared in
/// cudnn_planning.hpp, defined once here rather than in every file that includes the header.

#include <cudnn.h>

#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "cudnn_planning.hpp"

namespace gflex::kernels::detail {

std::string describe_geometry(const conv2d_geometry& g) {
  return "batch " + std::to_string(g.batch) + ", " + std::to_string(g.height) + "x" +
         std::to_string(g.width) + "x" + std::to_string(g.in_channels) + " -> " +
         std::to_string(g.out_channels) + ", kernel " + std::to_string(g.kernel_h) + "x" +
         std::to_string(g.kernel_w) + ", pad " + std::to_string(g.pad_h) + "x" +
         std::to_string(g.pad_w) + ", stride " + std::to_string(g.stride);
}

namespace {

struct device_conv_key {
  int ordinal = 0;
  conv_key key;
  conv_pass pass = conv_pass::forward;
  auto operator<=>(const device_conv_key&) const = default;
};

struct device_choices {
  std::mutex mutex;
  std::map<device_conv_key, conv_choice> chosen;
};

device_choices& choices() {
  // Never destroyed: a backend held by another static may still choose while the process
  // exits.
  static auto* instance = new device_choices;
  return *instance;
}

}  // namespace

std::optional<conv_choice> shared_choice(int ordinal, const conv_key& key, conv_pass pass) {
  auto& c = choices();
  std::lock_guard lock(c.mutex);
  auto found = c.chosen.find({ordinal, key, pass});
  if (found == c.chosen.end()) return std::nullopt;
  return found->second;
}

conv_choice share_choice(int ordinal, const conv_key& key, conv_pass pass,
                         const conv_choice& choice) {
  auto& c = choices();
  std::lock_guard lock(c.mutex);
  return c.chosen.emplace(device_conv_key{ordinal, key, pass}, choice).first->second;
}

bool math_allowed(cudnnMathType_t math, math_precision p) {
  if (math == CUDNN_FMA_MATH || math == CUDNN_DEFAULT_MATH) return true;
  return p != math_precision::fp32 && math == CUDNN_TENSOR_OP_MATH;
}

}  // namespace gflex::kernels::detail
