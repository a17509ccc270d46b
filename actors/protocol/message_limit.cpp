#include "message_limit.hpp"

#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <spdlog/spdlog.h>
#include <caf/io/abstract_broker.hpp>
#include <caf/io/scribe.hpp>

#include <atomic>
#include <string>

namespace gflex {

namespace {

std::atomic<uint64_t> refused{0};

constexpr const char* configure_read_symbol =
    "_ZN3caf2io15abstract_broker14configure_readENS0_17connection_handleESt4pairINS0_19"
    "receive_policy_flagEmE";

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

uint64_t oversized_messages_refused() {
  return refused.load();
}

expected<void> message_limit_in_effect() {
  void* real = dlsym(RTLD_NEXT, configure_read_symbol);
  void* global = dlsym(RTLD_DEFAULT, configure_read_symbol);
  if (real == nullptr)
    return error(errc::io_error,
                 "the message size limit cannot work: CAF's configure_read is not in this process");
  Dl_info ours{}, found{}, caf_io{};
  if (dladdr(reinterpret_cast<void*>(&oversized_messages_refused), &ours) == 0 ||
      global == nullptr || dladdr(global, &found) == 0 ||
      std::string(found.dli_fname) != ours.dli_fname)
    return error(errc::io_error,
                 std::string("the message size limit is not in effect: configure_read resolves "
                             "to ") +
                     (global != nullptr && found.dli_fname ? found.dli_fname : "nothing") +
                     ", not to " + (ours.dli_fname ? ours.dli_fname : "this program"));
  if (dladdr(real, &caf_io) != 0 &&
      binds_symbolically(reinterpret_cast<uintptr_t>(caf_io.dli_fbase)))
    return error(errc::io_error, std::string("the message size limit is not in effect: ") +
                                     caf_io.dli_fname +
                                     " binds its own calls (-Bsymbolic), past the limit");
  return {};
}

}  // namespace gflex

// The executable's definition comes first in symbol lookup, so CAF's own calls (through the
// PLT) land here; reads of sizes within the limit go on to CAF's definition unchanged.
void caf::io::abstract_broker::configure_read(connection_handle hdl, receive_policy::config cfg) {
  using fn = void (*)(abstract_broker*, connection_handle, receive_policy::config);
  static fn real = reinterpret_cast<fn>(dlsym(RTLD_NEXT, gflex::configure_read_symbol));
  if (cfg.second > gflex::max_message_bytes) {
    gflex::refused.fetch_add(1);
    spdlog::warn("closed a connection that announced a {} byte message (the limit is {})",
                 cfg.second, gflex::max_message_bytes);
    // Read no such payload: BASP gets the next header's worth of bytes as the payload it
    // announced, fails to make a message of it, and closes the connection by its own
    // path. (Closing it here, in the middle of BASP's bookkeeping, stalls the broker.)
    real(this, hdl, receive_policy::exactly(32));
    return;
  }
  real(this, hdl, cfg);
}
