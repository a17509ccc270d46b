#include "message_limit.hpp"
#include "interposition.hpp"

#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <caf/io/abstract_broker.hpp>
#include <caf/io/scribe.hpp>

#include <atomic>
#include <mutex>

#include "gflex/runtime/log_throttle.hpp"

namespace gflex {

namespace {

std::atomic<uint64_t> refused{0};
std::atomic<uint64_t> stalled{0};

constexpr const char* configure_read_symbol =
    "_ZN3caf2io15abstract_broker14configure_readENS0_17connection_handleESt4pairINS0_19"
    "receive_policy_flagEmE";
constexpr const char* flush_symbol = "_ZN3caf2io15abstract_broker5flushENS0_17connection_handleE";

// Whether a line may be written, at most 20 in 10 s for each `throttle` (a peer makes as many
// such events as it likes); if lines were held back before it, `what` says how many.
bool may_log(std::mutex& m, log_throttle& throttle, const char* what) {
  uint64_t held_back = 0;
  bool log = false;
  {
    std::lock_guard lock(m);
    log = throttle.allow(log_throttle::clock::now(), held_back);
  }
  if (log && held_back > 0) spdlog::warn("{} more {} unlogged", held_back, what);
  return log;
}

// The remote port of socket `fd`, 0 if it has none.
uint16_t peer_port(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return 0;
  if (addr.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in&>(addr).sin_port);
  if (addr.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6&>(addr).sin6_port);
  return 0;
}

// Shuts down the connection `hdl` of `broker`, whose peer has let `waiting` bytes pile up.
// Not closed through CAF: its close() waits for the unsent bytes to be written before it
// closes the socket, which a peer that does not read never lets happen. Shut down, the socket
// fails its next read and write, and CAF closes it by the path of a peer that went away
// (BASP drops the route, and the peer's actors go down here).
void shut_down_stalled(caf::io::abstract_broker& broker, caf::io::connection_handle hdl,
                       size_t waiting) {
  // CAF's scribes for TCP (and TLS over it) are named by their socket.
  const int fd = static_cast<int>(hdl.id());
  if (hdl.id() < 0 || peer_port(fd) == 0 || peer_port(fd) != broker.remote_port(hdl)) {
    static std::mutex log_mutex;
    static log_throttle throttle{20, std::chrono::seconds(10)};
    if (may_log(log_mutex, throttle, "connections with too much to send were left open"))
      spdlog::error("a connection has {} MiB waiting to be sent, and its socket is not found",
                    waiting >> 20);
    return;
  }
  // Once shut down (each flush until CAF's cleanup comes round would do it again), the
  // state is no longer one of an open connection.
  tcp_info info{};
  socklen_t len = sizeof info;
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0 ||
      (info.tcpi_state != TCP_ESTABLISHED && info.tcpi_state != TCP_CLOSE_WAIT))
    return;
  // Closed with a reset, dropping what waits: the kernel would otherwise keep trying to send
  // it to the peer that does not read.
  linger abort{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort, sizeof abort);
  shutdown(fd, SHUT_RDWR);
  stalled.fetch_add(1);
  static std::mutex log_mutex;
  static log_throttle throttle{20, std::chrono::seconds(10)};
  if (may_log(log_mutex, throttle, "connections whose peer stopped reading were closed"))
    spdlog::warn(
        "closed the connection to {} port {}: {} MiB wait to be sent to it (the limit is {} "
        "MiB); its peer stopped reading",
        broker.remote_addr(hdl), broker.remote_port(hdl), waiting >> 20, max_unsent_bytes >> 20);
}

}  // namespace

uint64_t oversized_messages_refused() {
  return refused.load();
}

uint64_t stalled_connections_closed() {
  return stalled.load();
}

expected<void> message_limit_in_effect() {
  if (auto read = interposed_here(configure_read_symbol,
                                  reinterpret_cast<const void*>(&oversized_messages_refused),
                                  "the message size limit");
      !read)
    return read;
  return interposed_here(flush_symbol, reinterpret_cast<const void*>(&oversized_messages_refused),
                         "the bound on unsent bytes");
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
    if (gflex::may_log(log_mutex, throttle,
                       "connections that announced oversized messages were closed"))
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

// BASP writes each message to the connection's buffer (wr_buf) and then calls this; so does
// every other broker. Runs on the broker's own thread, as CAF's does.
void caf::io::abstract_broker::flush(connection_handle hdl) {
  using fn = void (*)(abstract_broker*, connection_handle);
  static fn real = reinterpret_cast<fn>(dlsym(RTLD_NEXT, gflex::flush_symbol));
  if (!valid(hdl)) {
    // Written for a connection that is gone (BASP writes to one until its cleanup comes
    // round): CAF keeps such bytes in one buffer per broker, which nothing ever empties.
    wr_buf(hdl).clear();
    return;
  }
  real(this, hdl);
  // After CAF's flush, wr_buf holds what waits behind the write in progress (none is: it
  // took the buffer). It grows while the peer does not read.
  const size_t waiting = wr_buf(hdl).size();
  if (waiting > gflex::max_unsent_bytes) gflex::shut_down_stalled(*this, hdl, waiting);
}
