#include "message_limit.hpp"
#include "interposition.hpp"

#include <dlfcn.h>
#include <spdlog/spdlog.h>
#include <caf/io/abstract_broker.hpp>
#include <caf/io/scribe.hpp>

#include <atomic>
#include <mutex>

#include "gflex/runtime/log_throttle.hpp"

namespace gflex {

namespace {

std::atomic<uint64_t> refused{0};

constexpr const char* configure_read_symbol =
    "_ZN3caf2io15abstract_broker14configure_readENS0_17connection_handleESt4pairINS0_19"
    "receive_policy_flagEmE";

}  // namespace

uint64_t oversized_messages_refused() {
  return refused.load();
}

expected<void> message_limit_in_effect() {
  return interposed_here(configure_read_symbol,
                         reinterpret_cast<const void*>(&oversized_messages_refused),
                         "the message size limit");
}

}  // namespace gflex

// The executable's definition comes first in symbol lookup, so CAF's own calls (through the
// PLT) land here; reads of sizes within the limit go on to CAF's definition unchanged.
void caf::io::abstract_broker::configure_read(connection_handle hdl, receive_policy::config cfg) {
  using fn = void (*)(abstract_broker*, connection_handle, receive_policy::config);
  static fn real = reinterpret_cast<fn>(dlsym(RTLD_NEXT, gflex::configure_read_symbol));
  if (cfg.second > gflex::max_message_bytes) {
    gflex::refused.fetch_add(1);
    // At most 20 lines in 10 s: a peer opens as many such connections as it likes.
    static std::mutex log_mutex;
    static gflex::log_throttle throttle{20, std::chrono::seconds(10)};
    uint64_t held_back = 0;
    bool log = false;
    {
      std::lock_guard lock(log_mutex);
      log = throttle.allow(gflex::log_throttle::clock::now(), held_back);
    }
    if (log) {
      if (held_back > 0)
        spdlog::warn(
            "{} more connections that announced oversized messages were closed "
            "unlogged",
            held_back);
      spdlog::warn("closed a connection that announced a {} byte message (the limit is {})",
                   cfg.second, gflex::max_message_bytes);
    }
    // Read no such payload: BASP gets the next header's worth of bytes as the payload it
    // announced, fails to make a message of it, and closes the connection by its own
    // path. (Closing it here, in the middle of BASP's bookkeeping, stalls the broker.)
    real(this, hdl, receive_policy::exactly(32));
    return;
  }
  real(this, hdl, cfg);
}
