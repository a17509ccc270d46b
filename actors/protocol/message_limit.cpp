#include "message_limit.hpp"
#include "interposition.hpp"

#include <dlfcn.h>
// The kernel's tcp_info, not glibc's (netinet/tcp.h, which cannot be included beside it):
// glibc's ends before tcpi_bytes_acked.
#include <linux/tcp.h>
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>
#include <caf/binary_deserializer.hpp>
#include <caf/io/abstract_broker.hpp>
#include <caf/io/scribe.hpp>
#include <caf/sec.hpp>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <utility>

#include "gflex/runtime/log_throttle.hpp"

namespace gflex {

namespace {

std::atomic<uint64_t> refused{0};
std::atomic<uint64_t> stalled{0};

constexpr const char* configure_read_symbol =
    "_ZN3caf2io15abstract_broker14configure_readENS0_17connection_handleESt4pairINS0_19"
    "receive_policy_flagEmE";
constexpr const char* flush_symbol = "_ZN3caf2io15abstract_broker5flushENS0_17connection_handleE";
constexpr const char* begin_sequence_symbol = "_ZN3caf19binary_deserializer14begin_sequenceERm";

// Whether a line may be written, at most 20 in 10 s for each `throttle` (a peer makes as many
// such events as it likes); if lines were held back before it, `what` says how many.
bool may_log(locked_log_throttle& throttle, const char* what) {
  uint64_t held_back = 0;
  const bool log = throttle.allow(held_back);
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

// The socket of connection `hdl`, or -1 where it is not found; `port` (if given) its peer's
// port. CAF's scribes for TCP (and TLS over it) are named by their socket; the port CAF knows
// for the connection confirms it.
int socket_of(caf::io::abstract_broker& broker, caf::io::connection_handle hdl,
              uint16_t* port = nullptr) {
  if (hdl.id() < 0) return -1;
  const int fd = static_cast<int>(hdl.id());
  const uint16_t remote = peer_port(fd);
  if (remote == 0 || remote != broker.remote_port(hdl)) return -1;
  if (port) *port = remote;
  return fd;
}

// The kernel's view of socket `fd`, or nothing.
std::optional<tcp_info> tcp_info_of(int fd) {
  tcp_info info{};
  socklen_t len = sizeof info;
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return std::nullopt;
  // A kernel older than the header fills less; what it leaves out reads as zero.
  return info;
}

// The kernel's numbers of the two states of an open connection (include/net/tcp_states.h),
// which no header here exports beside the kernel's tcp_info.
constexpr uint8_t tcp_established = 1;
constexpr uint8_t tcp_close_wait = 8;

// The bound in effect: read on every I/O thread at each flush over stall_bytes, replaced by
// set_unsent_bound (tests).
std::atomic<size_t> stall_bytes{unsent_stall_bytes};
std::atomic<int64_t> stall_ms{std::chrono::milliseconds(unsent_stall_time).count()};
std::atomic<size_t> max_bytes{max_unsent_bytes()};

// A connection with more than stall_bytes waiting, as its last flush left it.
struct backlog {
  uint16_t port = 0;   // the peer's: a new connection on a reused socket number is another
  size_t waiting = 0;  // bytes behind the write in progress
  uint64_t acked = 0;  // bytes the peer's kernel acknowledged, 0 where unknown
  std::chrono::steady_clock::time_point since;  // when it went over, or last made progress
  bool shut = false;                            // shut down for it (or its socket not found)
};

// Kept per I/O thread, with no lock: a broker runs on its actor system's multiplexer thread
// only. Only connections over stall_bytes have an entry; one whose waiting bytes fall under
// it loses it, as does one found gone when another connection of its broker goes over.
using backlog_key = std::pair<const caf::io::abstract_broker*, int64_t>;
thread_local std::map<backlog_key, backlog> backlogs;

// Why a connection is shut down, if it is.
enum class verdict { keep, stalled, too_much };

// Whether connection `hdl` of `broker`, with `waiting` bytes behind the write in progress
// after a flush, is kept. The peer made progress if the kernel counts more bytes acknowledged
// than at the last flush (the peer's receive buffer makes room for them only as its program
// reads), or if fewer bytes wait (the write in progress completed and the stream took them):
// progress every stall_time keeps a connection open however much waits, up to max_bytes.
// The clock runs from the flush that found it over stall_bytes, so a broker's own time
// serializing a burst counts too: stall_time is far longer than that.
verdict judge(caf::io::abstract_broker& broker, caf::io::connection_handle hdl, size_t waiting) {
  const backlog_key key{&broker, hdl.id()};
  if (waiting <= stall_bytes.load(std::memory_order_relaxed)) {
    if (!backlogs.empty()) backlogs.erase(key);
    return verdict::keep;
  }
  const auto now = std::chrono::steady_clock::now();
  auto [at, fresh] = backlogs.try_emplace(key);
  if (fresh) {
    // Connections of this broker that closed while over the bound (CAF's cleanup does not
    // come through here); checked on the broker's own thread, as valid() must be.
    for (auto i = backlogs.lower_bound({&broker, std::numeric_limits<int64_t>::min()});
         i != backlogs.end() && i->first.first == &broker;) {
      if (i != at && !broker.valid(caf::io::connection_handle::from_int(i->first.second)))
        i = backlogs.erase(i);
      else
        ++i;
    }
  }
  backlog& b = at->second;
  uint16_t port = 0;
  const int fd = socket_of(broker, hdl, &port);
  if (b.shut) {
    // Shut down here already: CAF closes it once it sees its socket fail (a shut socket has
    // no peer), unless the socket number names another connection by now.
    if (fd < 0 || port == b.port) return verdict::keep;
    b = backlog{};
    fresh = true;
  }
  uint64_t acked = 0;
  if (fd >= 0)
    if (auto info = tcp_info_of(fd)) acked = info->tcpi_bytes_acked;
  const bool progress = fresh || port != b.port || acked != b.acked || waiting < b.waiting;
  b.port = port;
  b.waiting = waiting;
  b.acked = acked;
  if (progress) b.since = now;
  verdict out = verdict::keep;
  if (waiting > max_bytes.load(std::memory_order_relaxed))
    out = verdict::too_much;
  else if (now - b.since > std::chrono::milliseconds(stall_ms.load(std::memory_order_relaxed)))
    out = verdict::stalled;
  b.shut = out != verdict::keep;
  return out;
}

// Shuts down the connection `hdl` of `broker`, whose peer has let `waiting` bytes pile up.
// Not closed through CAF: its close() waits for the unsent bytes to be written before it
// closes the socket, which a peer that does not read never lets happen. Shut down, the socket
// fails its next read and write, and CAF closes it by the path of a peer that went away
// (BASP drops the route, and the peer's actors go down here).
void shut_down_stalled(caf::io::abstract_broker& broker, caf::io::connection_handle hdl,
                       size_t waiting, verdict why) {
  const int fd = socket_of(broker, hdl);
  if (fd < 0) {
    static locked_log_throttle throttle{20, std::chrono::seconds(10)};
    if (may_log(throttle, "connections with too much to send were left open"))
      spdlog::error("a connection has {} MiB waiting to be sent, and its socket is not found",
                    waiting >> 20);
    return;
  }
  // A socket no longer open (its peer reset it) needs no shutting down, and is not counted.
  const auto info = tcp_info_of(fd);
  if (!info || (info->tcpi_state != tcp_established && info->tcpi_state != tcp_close_wait)) return;
  // Closed with a reset, dropping what waits: the kernel would otherwise keep trying to send
  // it to the peer that does not read.
  linger abort{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort, sizeof abort);
  shutdown(fd, SHUT_RDWR);
  stalled.fetch_add(1);
  static locked_log_throttle throttle{20, std::chrono::seconds(10)};
  if (!may_log(throttle, "connections whose peer stopped reading were closed")) return;
  if (why == verdict::too_much)
    spdlog::warn(
        "closed the connection to {} port {}: {} bytes wait to be sent to it, more than the {} "
        "MiB one connection may have waiting",
        broker.remote_addr(hdl), broker.remote_port(hdl), waiting, max_bytes.load() >> 20);
  else
    spdlog::warn(
        "closed the connection to {} port {}: {} MiB wait to be sent to it, and its peer "
        "took none for {} s; it stopped reading",
        broker.remote_addr(hdl), broker.remote_port(hdl), waiting >> 20, stall_ms.load() / 1000.0);
}

}  // namespace

uint64_t oversized_messages_refused() {
  return refused.load();
}

uint64_t stalled_connections_closed() {
  return stalled.load();
}

size_t max_unsent_bytes() {
  static const size_t bytes = [] {
    const long pages = sysconf(_SC_PHYS_PAGES);
    const long page_size = sysconf(_SC_PAGE_SIZE);
    const size_t eighth =
        pages > 0 && page_size > 0 ? static_cast<size_t>(pages) * page_size / 8 : 0;
    return std::clamp(eighth, size_t{1} << 30, size_t{4} << 30);
  }();
  return bytes;
}

unsent_bound current_unsent_bound() {
  return {stall_bytes.load(), std::chrono::milliseconds(stall_ms.load()), max_bytes.load()};
}

expected<void> set_unsent_bound(const unsent_bound& bound) {
  if (bound.stall_bytes == 0 || bound.stall_bytes > bound.max_bytes)
    return error(errc::invalid_argument, "the bytes that may wait with no progress (" +
                                             std::to_string(bound.stall_bytes) +
                                             ") must be above 0 and at most the "
                                             "bytes that may wait at all (" +
                                             std::to_string(bound.max_bytes) + ")");
  if (bound.stall_time <= std::chrono::milliseconds::zero())
    return error(errc::invalid_argument,
                 "the time bytes may wait with no progress must be positive, not " +
                     std::to_string(bound.stall_time.count()) + " ms");
  stall_bytes.store(bound.stall_bytes);
  stall_ms.store(bound.stall_time.count());
  max_bytes.store(bound.max_bytes);
  return {};
}

expected<void> message_limit_in_effect() {
  if (auto read = interposed_here(configure_read_symbol,
                                  reinterpret_cast<const void*>(&oversized_messages_refused),
                                  "the message size limit");
      !read)
    return read;
  if (auto flush =
          interposed_here(flush_symbol, reinterpret_cast<const void*>(&oversized_messages_refused),
                          "the bound on unsent bytes");
      !flush)
    return flush;
  return interposed_here(begin_sequence_symbol,
                         reinterpret_cast<const void*>(&oversized_messages_refused),
                         "the check of sequence lengths against the message's bytes");
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
    static gflex::locked_log_throttle throttle{20, std::chrono::seconds(10)};
    if (gflex::may_log(throttle, "connections that announced oversized messages were closed"))
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
    gflex::backlogs.erase({this, hdl.id()});
    return;
  }
  real(this, hdl);
  // After CAF's flush, wr_buf is the stream's offline buffer: what waits behind the write in
  // progress (or nothing, if no write was in progress: it took the buffer). It grows while
  // the peer does not read, and also with each burst a healthy peer is sent.
  const size_t waiting = wr_buf(hdl).size();
  if (const auto why = gflex::judge(*this, hdl, waiting); why != gflex::verdict::keep)
    gflex::shut_down_stalled(*this, hdl, waiting, why);
}

namespace {

// The containers (strings, vectors, maps) one deserializer may still begin: a sixteenth of
// its bytes, and 4,096 more. Each takes a byte on the wire at least but 24 to 32 bytes in memory,
// so a message of 128 MiB of empty strings (CAF's own `@strvec`, or any vector of strings a
// node may send) became 4 GiB of strings, and 2 GiB more while its vector grew, before any
// token or key was asked for; now about twice its size at most, and as much again while a
// vector grows. The program's own messages begin a container per 16 bytes or more (a digest,
// a posting, a node's row), past the first 4,096.
struct container_budget {
  const caf::binary_deserializer* reader = nullptr;
  const void* end = nullptr;  // the reader's buffer's end
  size_t last_remaining = 0;  // at the reader's last begin_sequence
  size_t left = 0;
};
thread_local container_budget containers;

// Counts a container `reader` begins, `before` bytes from its end; false past its budget.
// A deserializer reads a length of a byte at least at each begin_sequence, so one that has
// as many bytes left as at its last call or more, or another end, is a new one (another
// message, perhaps in a buffer at the same address).
bool within_budget(const caf::binary_deserializer& reader, size_t before) {
  auto& b = containers;
  const void* end = reader.remainder().data() + reader.remainder().size();
  if (b.reader != &reader || b.end != end || before >= b.last_remaining) {
    b.reader = &reader;
    b.end = end;
    b.left = before / 16 + 4096;
  }
  b.last_remaining = before;
  if (b.left == 0) return false;
  b.left -= 1;
  return true;
}

}  // namespace

// A sequence's length is read before its elements: CAF sizes a string or a byte vector to it
// (and zero-fills it) before it checks that the bytes are there, so a message of 40 bytes
// that announced 4 GiB made the core allocate and fill 4 GiB, before any token or key was
// asked for. Every element of every type the program sends takes at least a byte, so a
// length past the bytes left is malformed: refused as CAF refuses a message cut short. So
// is a message that begins more containers than container_budget allows.
caf::error caf::binary_deserializer::begin_sequence(size_t& list_size) {
  using fn = caf::error (*)(binary_deserializer*, size_t&);
  static fn real = reinterpret_cast<fn>(dlsym(RTLD_NEXT, gflex::begin_sequence_symbol));
  const size_t before = remaining();
  if (auto e = real(this, list_size)) return e;
  if (list_size > remaining()) return caf::make_error(caf::sec::end_of_stream);
  if (!within_budget(*this, before)) return caf::make_error(caf::sec::invalid_argument);
  return caf::none;
}
