// sample_gpus: device memory and utilisation from NVML, the NVIDIA driver's management
// library. It is opened with dlopen rather than linked: it comes with the driver (not the
// toolkit, whose stub cannot run), and a node on a machine without one must still start.
// The few entry points used are declared here from NVML's documented C interface, as its
// header is not part of the toolkit that builds us.

#include <dlfcn.h>

#include <mutex>

#include "gflex/kernels/devices.hpp"

namespace gflex::kernels {

namespace {

using nvml_return = int;  // nvmlReturn_t: 0 is NVML_SUCCESS
using nvml_device = void*;
struct nvml_memory {  // nvmlMemory_t
  unsigned long long total, free, used;
};
struct nvml_utilization {  // nvmlUtilization_t
  unsigned int gpu, memory;
};

struct nvml_library {
  void* handle = nullptr;
  std::string why_not;  // set when it cannot be used
  nvml_return (*init)() = nullptr;
  nvml_return (*by_bus)(const char*, nvml_device*) = nullptr;
  nvml_return (*memory)(nvml_device, nvml_memory*) = nullptr;
  nvml_return (*utilization)(nvml_device, nvml_utilization*) = nullptr;
  const char* (*describe)(nvml_return) = nullptr;

  std::string failed(const char* what, nvml_return r) const {
    return std::string("NVML: ") + what + ": " + (describe ? describe(r) : std::to_string(r));
  }
};

const nvml_library& nvml() {
  static nvml_library lib;
  static std::once_flag once;
  std::call_once(once, [] {
    lib.handle = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib.handle == nullptr) {
      lib.why_not = std::string("NVML is not installed (the NVIDIA driver's libnvidia-ml.so.1: ") +
                    dlerror() + ")";
      return;
    }
    auto find = [](const char* name) { return dlsym(lib.handle, name); };
    lib.init = reinterpret_cast<decltype(lib.init)>(find("nvmlInit_v2"));
    lib.by_bus = reinterpret_cast<decltype(lib.by_bus)>(find("nvmlDeviceGetHandleByPciBusId_v2"));
    lib.memory = reinterpret_cast<decltype(lib.memory)>(find("nvmlDeviceGetMemoryInfo"));
    lib.utilization =
        reinterpret_cast<decltype(lib.utilization)>(find("nvmlDeviceGetUtilizationRates"));
    lib.describe = reinterpret_cast<decltype(lib.describe)>(find("nvmlErrorString"));
    if (!lib.init || !lib.by_bus || !lib.memory || !lib.utilization) {
      lib.why_not = "NVML lacks the functions used (an old driver?)";
      return;
    }
    if (nvml_return r = lib.init(); r != 0) lib.why_not = lib.failed("nvmlInit", r);
  });
  return lib;
}

}  // namespace

expected<std::vector<gpu_sample>> sample_gpus(const std::vector<int>& ordinals) {
  std::string why_none;
  static const std::vector<gpu_info> devices = cuda_devices(&why_none);
  if (devices.empty())
    return error(errc::no_device,
                 "no GPU to sample: " + (why_none.empty() ? std::string("none found") : why_none));
  const auto& lib = nvml();
  if (!lib.why_not.empty()) return error(errc::no_device, lib.why_not);
  std::vector<gpu_sample> out;
  for (int ordinal : ordinals) {
    const gpu_info* info = nullptr;
    for (const auto& d : devices)
      if (d.ordinal == ordinal) info = &d;
    if (info == nullptr)
      return error(errc::no_device, "no CUDA device " + std::to_string(ordinal) + " to sample");
    nvml_device dev = nullptr;
    if (nvml_return r = lib.by_bus(info->pci_bus_id.c_str(), &dev); r != 0)
      return error(errc::no_device, lib.failed(("device at " + info->pci_bus_id).c_str(), r));
    nvml_memory mem{};
    nvml_utilization use{};
    if (nvml_return r = lib.memory(dev, &mem); r != 0)
      return error(errc::no_device, lib.failed("memory", r));
    if (nvml_return r = lib.utilization(dev, &use); r != 0)
      return error(errc::no_device, lib.failed("utilization", r));
    gpu_sample s;
    s.ordinal = ordinal;
    s.memory_total = mem.total;
    s.memory_used = mem.used;
    s.memory_ours = cuda_memory_in_use(ordinal);
    s.utilization = use.gpu / 100.0;
    s.memory_activity = use.memory / 100.0;
    out.push_back(s);
  }
  return out;
}

}  // namespace gflex::kernels
