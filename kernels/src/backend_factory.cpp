#include <charconv>

#include "gflex/kernels/backend.hpp"
#include "gflex/kernels/devices.hpp"

namespace gflex::kernels {

bool cuda_compiled() noexcept {
#ifdef GFLEX_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

#ifndef GFLEX_HAVE_CUDA
int cuda_device_count() noexcept {
  return 0;
}

expected<std::unique_ptr<backend>> make_cuda_backend(int) {
  return error(errc::no_device,
               "this build of gflex has no CUDA backend (built with GFLEX_CUDA=OFF "
               "or without a CUDA toolkit)");
}
#endif

expected<std::unique_ptr<backend>> make_backend(const std::string& name, int cpu_threads) {
  if (name == "cpu") return make_cpu_backend(cpu_threads);
  // Only the devices cuda_devices() lists: a card older than this build's kernels is left
  // out there, saying why, where make_cuda_backend would take it and fail on its first
  // kernel launch. A build without CUDA says so itself.
  if (name == "cuda") {
    if (!cuda_compiled()) return make_cuda_backend(0);
    std::string why;
    const auto usable = cuda_devices(&why);
    if (usable.empty()) return error(errc::no_device, "no usable CUDA device (" + why + ")");
    return make_cuda_backend(usable.front().ordinal);
  }
  if (name.starts_with("cuda:")) {
    int ordinal = -1;
    auto digits = std::string_view(name).substr(5);
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), ordinal);
    if (ec == std::errc() && end == digits.data() + digits.size() && ordinal >= 0) {
      if (!cuda_compiled()) return make_cuda_backend(ordinal);
      std::vector<int> usable;
      for (const auto& d : cuda_devices()) usable.push_back(d.ordinal);
      if (auto chosen = parse_gpu_list(std::string(digits), usable, "cuda:"); !chosen)
        return chosen.error();
      return make_cuda_backend(ordinal);
    }
  }
  return error(errc::invalid_argument, "unknown backend '" + name + "' (use cpu, cuda or cuda:N)");
}

}  // namespace gflex::kernels
