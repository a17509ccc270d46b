#include <charconv>

#include "gflex/kernels/backend.hpp"

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
  if (name == "cuda") return make_cuda_backend(0);
  if (name.starts_with("cuda:")) {
    int ordinal = -1;
    auto digits = std::string_view(name).substr(5);
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), ordinal);
    if (ec == std::errc() && end == digits.data() + digits.size() && ordinal >= 0)
      return make_cuda_backend(ordinal);
  }
  return error(errc::invalid_argument, "unknown backend '" + name + "' (use cpu, cuda or cuda:N)");
}

}  // namespace gflex::kernels
