/// @file
/// The parts of device discovery that need no CUDA: flag parsing, names, and the answers of
/// a build without the CUDA backend; and what the backend interface does by default.

#include "gflex/kernels/devices.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <mutex>
#include <set>

#include "gflex/kernels/backend.hpp"

namespace gflex::kernels {

namespace {

[[noreturn]] void no_fused_attention(const backend& b, int64_t d, int64_t heads) {
  throw compute_error(
      error(errc::invalid_argument, b.describe() + " has no fused attention for heads of " +
                                        std::to_string(heads > 0 ? d / heads : 0) + " values"));
}

/// "sm_80, sm_90 (compute capability 8.0 and later)".
std::string architectures_text(const std::vector<int>& architectures) {
  std::string out;
  for (int a : architectures) out += (out.empty() ? "sm_" : ", sm_") + std::to_string(a);
  const int lowest = architectures.front();
  return out + " (compute capability " + std::to_string(lowest / 10) + "." +
         std::to_string(lowest % 10) + " and later)";
}

}  // namespace

std::vector<gpu_info> runnable_cuda_devices(std::vector<gpu_info> devices,
                                            const std::vector<int>& architectures,
                                            std::vector<std::string>* left_out) {
  if (architectures.empty()) return devices;
  const int lowest = *std::min_element(architectures.begin(), architectures.end());
  std::vector<gpu_info> runnable;
  for (auto& d : devices) {
    if (d.cc_major * 10 + d.cc_minor >= lowest) {
      runnable.push_back(std::move(d));
      continue;
    }
    if (left_out != nullptr)
      left_out->push_back(
          "cuda:" + std::to_string(d.ordinal) + " " + d.name + " (compute capability " +
          std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor) +
          ") is left out: this build's kernels are for " + architectures_text(architectures) +
          "; a build with CMAKE_CUDA_ARCHITECTURES=" + std::to_string(d.cc_major) +
          std::to_string(d.cc_minor) + " among them would run on it");
  }
  return runnable;
}

std::vector<gpu_info> cuda_devices(std::string* why_none) {
  std::string why;
  std::vector<std::string> left_out;
  auto usable = runnable_cuda_devices(cuda_driver_devices(&why), cuda_architectures(), &left_out);
  if (!left_out.empty()) {
    // Once per process: a node lists its devices more than once, the embedded demo's nodes
    // share one process.
    static std::once_flag said;
    std::call_once(said, [&] {
      for (const auto& line : left_out) spdlog::warn("{}", line);
    });
  }
  if (usable.empty() && why_none != nullptr) {
    if (left_out.empty()) {
      *why_none = why;
    } else {
      why_none->clear();
      for (const auto& line : left_out) *why_none += (why_none->empty() ? "" : "; ") + line;
    }
  }
  return usable;
}

void backend::fused_attention_forward(const float*, int64_t, int64_t, int64_t d, int64_t heads,
                                      float, float*, float*) {
  no_fused_attention(*this, d, heads);
}

void backend::fused_attention_backward(const float*, const float*, const float*, const float*,
                                       int64_t, int64_t, int64_t d, int64_t heads, float, float*) {
  no_fused_attention(*this, d, heads);
}

void backend::begin_recording() {
  throw compute_error(error(errc::invalid_argument, describe() + " records no work"));
}

std::unique_ptr<recorded_work> backend::end_recording() {
  return nullptr;
}

void backend::replay(const recorded_work&) {
  throw compute_error(error(errc::invalid_argument, describe() + " records no work"));
}

bool conv2d_geometry::valid() const {
  for (int64_t v : {batch, height, width, in_channels, out_channels, kernel_h, kernel_w})
    if (v <= 0) return false;
  return pad_h >= 0 && pad_w >= 0 && stride > 0 && height + 2 * pad_h >= kernel_h &&
         width + 2 * pad_w >= kernel_w && out_height() > 0 && out_width() > 0;
}

expected<std::vector<int>> parse_gpu_list(const std::string& text, const std::vector<int>& usable,
                                          const std::string& flag) {
  // "--gpus 3" reads "--gpus: ..."; "--backend cuda:3" reads "--backend cuda:3: ...".
  const std::string at = flag == "--gpus" ? flag : flag + text;
  if (text.empty()) return usable;
  std::vector<int> out;
  std::set<int> seen;
  std::string_view rest = text;
  while (true) {
    auto comma = rest.find(',');
    auto item = rest.substr(0, comma);
    int ordinal = -1;
    auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), ordinal);
    if (item.empty() || ec != std::errc() || end != item.data() + item.size() || ordinal < 0)
      return error(errc::invalid_argument,
                   at + ": '" + std::string(item) + "' is not a device number (e.g. " +
                       (flag == "--gpus" ? "--gpus 0,2" : flag + "0") + ")");
    if (std::find(usable.begin(), usable.end(), ordinal) == usable.end()) {
      std::string there;
      for (int u : usable) there += (there.empty() ? "" : ",") + std::to_string(u);
      // The device may be there but older than the kernels: cuda_devices() leaves it out
      // (and has logged it); naming the build's architectures says what would run.
      const auto architectures = cuda_architectures();
      return error(errc::no_device,
                   at + ": there is no usable CUDA device " + std::to_string(ordinal) +
                       " (usable: " + (there.empty() ? std::string("none") : there) + ")" +
                       (architectures.empty() ? std::string()
                                              : "; this build's kernels run on " +
                                                    architectures_text(architectures)));
    }
    if (!seen.insert(ordinal).second)
      return error(errc::invalid_argument,
                   at + ": device " + std::to_string(ordinal) + " is listed twice");
    out.push_back(ordinal);
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  return out;
}

expected<uint64_t> parse_byte_size(const std::string& text) {
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  std::string_view suffix(end, static_cast<size_t>(text.data() + text.size() - end));
  int shift = -1;
  if (suffix.empty()) shift = 0;
  for (auto [name, bits] : {std::pair{"K", 10}, {"M", 20}, {"G", 30}, {"T", 40}})
    if (suffix == name || suffix == std::string(name) + "i" || suffix == std::string(name) + "iB")
      shift = bits;
  if (text.empty() || end == text.data() || ec != std::errc() || shift < 0 ||
      (shift > 0 && value > (UINT64_MAX >> shift)))
    return error(errc::invalid_argument,
                 "'" + text + "' is not a byte size (e.g. 6G, 512M, 1073741824)");
  return value << shift;
}

#ifndef GFLEX_HAVE_CUDA
std::vector<gpu_info> cuda_driver_devices(std::string* why_none) {
  if (why_none != nullptr) *why_none = "this build of gflex has no CUDA backend";
  return {};
}

std::vector<int> cuda_architectures() {
  return {};
}

expected<device_calibration> calibrate_cuda_device(int ordinal, double) {
  return error(errc::no_device, "no CUDA device cuda:" + std::to_string(ordinal) +
                                    " (this build of gflex has no CUDA backend)");
}

expected<gemm_rates> measure_cuda_gemm_rates(int ordinal, double) {
  return error(errc::no_device, "no CUDA device cuda:" + std::to_string(ordinal) +
                                    " (this build of gflex has no CUDA backend)");
}

void set_cuda_memory_limit(int, uint64_t) {}

uint64_t cuda_memory_in_use(int) {
  return 0;
}
#endif

}  // namespace gflex::kernels
