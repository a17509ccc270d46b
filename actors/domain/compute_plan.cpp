#include "compute_plan.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <mutex>

#include "gflex/kernels/devices.hpp"

namespace gflex {

namespace {

expected<compute_plan> plan_gpus(const node_config& config, const std::string& gpu_list,
                                 const std::string& flag) {
  std::string why;
  auto found = kernels::cuda_devices(&why);
  if (found.empty())
    return error(errc::no_device,
                 "--backend " + config.backend + ": no usable CUDA device (" + why + ")");
  // Device numbers, not positions in `found`: a device the driver cannot describe is left
  // out of it, and the others keep their numbers.
  std::vector<int> usable;
  for (const auto& info : found) usable.push_back(info.ordinal);
  auto chosen = kernels::parse_gpu_list(gpu_list, usable, flag);
  if (!chosen) return chosen.error();
  auto limit = kernels::parse_byte_size(config.gpu_memory_limit);  // checked by plan_compute
  compute_plan plan;
  plan.workers = config.streams_per_gpu;
  for (int ordinal : *chosen) {
    const auto& info = *std::find_if(found.begin(), found.end(), [&](const kernels::gpu_info& d) {
      return d.ordinal == ordinal;
    });
    if (*limit > info.memory_bytes)
      return error(errc::invalid_argument, "--gpu-memory-limit " + config.gpu_memory_limit +
                                               " is more than cuda:" + std::to_string(ordinal) +
                                               " has (" + std::to_string(info.memory_bytes) +
                                               " bytes)");
    kernels::set_cuda_memory_limit(ordinal, *limit);
    auto cal = kernels::calibrate_cuda_device(ordinal);
    if (!cal) return cal.error();
    gpu_status g;
    g.ordinal = ordinal;
    g.name = info.name;
    g.compute_capability = std::to_string(info.cc_major) + "." + std::to_string(info.cc_minor);
    g.memory_bytes = info.memory_bytes;
    g.memory_limit = *limit;
    g.sm_count = info.sm_count;
    g.gemm_tflops = cal->gemm_tflops;
    g.h2d_gbps = cal->h2d_gbps;
    spdlog::info(
        "cuda:{} {} (sm_{}{}, {} SMs, {:.1f} GiB{}): FP32 GEMM {:.1f} TFLOP/s, "
        "host-to-device {:.1f} GB/s, device-to-host {:.1f} GB/s",
        ordinal, info.name, info.cc_major, info.cc_minor, info.sm_count,
        static_cast<double>(info.memory_bytes) / (1 << 30),
        *limit > 0 ? ", limited to " + config.gpu_memory_limit : std::string(), cal->gemm_tflops,
        cal->h2d_gbps, cal->d2h_gbps);
    plan.ranks.push_back("cuda:" + std::to_string(ordinal));
    plan.gpus.push_back(std::move(g));
  }
  return plan;
}

/// --memory-limit: a byte size, 0 for none, or auto (three quarters of what the kernel says
/// is available now: the rest is left to the node's own data, messages and the machine's
/// owner; none where the kernel cannot tell).
expected<uint64_t> host_memory_limit_of(const std::string& text) {
  if (text == "auto") return kernels::available_host_memory() / 4 * 3;
  auto limit = kernels::parse_byte_size(text);
  if (!limit) return error(errc::invalid_argument, "--memory-limit: " + limit.error().message());
  return *limit;
}

}  // namespace

expected<compute_plan> plan_compute(const node_config& config) {
  if (config.streams_per_gpu < 1 || config.streams_per_gpu > 64)
    return error(errc::invalid_argument, "--streams-per-gpu must be in [1, 64]");
  // Checked on every node, so that a typo is reported where it is made, not on the day the
  // machine gets a GPU.
  if (auto limit = kernels::parse_byte_size(config.gpu_memory_limit); !limit)
    return error(errc::invalid_argument, "--gpu-memory-limit: " + limit.error().message());
  auto host_limit = host_memory_limit_of(config.memory_limit);
  if (!host_limit) return host_limit.error();
  kernels::set_host_memory_limit(*host_limit);
  const std::string& b = config.backend;
  if (b == "cuda") return plan_gpus(config, config.gpus, "--gpus");
  if (b.starts_with("cuda:")) {
    if (!config.gpus.empty())
      return error(errc::invalid_argument, "give either --backend cuda:N or --gpus, not both");
    // An empty list means every device to --gpus; "cuda:" is a device number left out.
    if (b.size() == 5)
      return error(errc::invalid_argument,
                   "--backend cuda: needs a device number (cuda:0), or use --backend cuda for "
                   "every device");
    return plan_gpus(config, b.substr(5), "--backend cuda:");
  }
  if (b == "auto") {
    std::string why;
    if (!kernels::cuda_devices(&why).empty()) return plan_gpus(config, config.gpus, "--gpus");
    if (!config.gpus.empty())
      return error(errc::no_device,
                   "--gpus " + config.gpus + ": no usable CUDA device (" + why + ")");
    // Once per process: the embedded demo starts several nodes in one.
    static std::once_flag said;
    std::call_once(
        said, [&] { spdlog::info("no usable CUDA device ({}); serving on the CPU backend", why); });
  } else if (b != "cpu") {
    return error(errc::invalid_argument,
                 "unknown --backend '" + b + "' (use auto, cpu, cuda or cuda:N)");
  } else if (!config.gpus.empty()) {
    return error(errc::invalid_argument, "--gpus needs a CUDA backend (--backend cuda or auto)");
  }
  if (*host_limit > 0)
    spdlog::info("the CPU workers may hold {} MiB for their models (--memory-limit {})",
                 *host_limit >> 20, config.memory_limit);
  compute_plan plan;
  plan.ranks = {"cpu"};
  plan.workers = config.workers;
  return plan;
}

}  // namespace gflex
