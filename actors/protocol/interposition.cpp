#include "interposition.hpp"

#include <dlfcn.h>
#include <elf.h>
#include <link.h>

#include <cstdint>

namespace gflex {

namespace {

// Whether the loaded object whose base address is `base` asks for symbolic binding.
bool binds_symbolically(uintptr_t base) {
  struct query {
    uintptr_t base;
    bool found = false;
    bool symbolic = false;
  } q{base};
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        auto& q = *static_cast<query*>(data);
        if (info->dlpi_addr != q.base) return 0;
        q.found = true;
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          if (info->dlpi_phdr[i].p_type != PT_DYNAMIC) continue;
          const auto* dyn =
              reinterpret_cast<const ElfW(Dyn)*>(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
          for (; dyn->d_tag != DT_NULL; ++dyn)
            if (dyn->d_tag == DT_SYMBOLIC ||
                (dyn->d_tag == DT_FLAGS && (dyn->d_un.d_val & DF_SYMBOLIC) != 0))
              q.symbolic = true;
        }
        return 1;
      },
      &q);
  return q.symbolic;
}

}  // namespace

expected<void> interposed_here(const char* symbol, const void* ours, const std::string& what) {
  void* real = dlsym(RTLD_NEXT, symbol);
  void* global = dlsym(RTLD_DEFAULT, symbol);
  if (real == nullptr)
    return error(errc::io_error,
                 what + " cannot work: CAF's " + symbol + " is not in this process");
  Dl_info here{}, found{}, caf_io{};
  if (dladdr(ours, &here) == 0 || global == nullptr || dladdr(global, &found) == 0 ||
      std::string(found.dli_fname) != here.dli_fname)
    return error(errc::io_error,
                 what + " is not in effect: " + symbol + " resolves to " +
                     (global != nullptr && found.dli_fname ? found.dli_fname : "nothing") +
                     ", not to " + (here.dli_fname ? here.dli_fname : "this program"));
  if (dladdr(real, &caf_io) != 0 &&
      binds_symbolically(reinterpret_cast<uintptr_t>(caf_io.dli_fbase)))
    return error(errc::io_error, what + " is not in effect: " + caf_io.dli_fname +
                                     " binds its own calls (-Bsymbolic), past it");
  return {};
}

}  // namespace gflex
