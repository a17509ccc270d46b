/// @file
/// The probe of a core's address before CAF dials it (answer_probe.hpp).

#include "answer_probe.hpp"

#include "gflex/runtime/tcp_probe.hpp"

#include <poll.h>
#include <sys/socket.h>

#include <cerrno>

namespace gflex {

namespace {
// What the probe says: a TLS alert record (close_notify). A TLS server answers it at once
// with an alert of its own or by closing; a plain CAF core sends its handshake unasked. Any
// bytes, the connection's end or a reset show a process that serves the port.
constexpr unsigned char probe_goodbye[] = {0x15, 0x03, 0x01, 0x00, 0x02, 0x01, 0x00};
}  // namespace

// Its own socket rather than CAF's: a dial that CAF began cannot be taken back, and this
// one is closed whatever the peer does.
expected<void> probe_answer(const std::string& host, uint16_t port, std::chrono::seconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  auto connected = connect_tcp(host, port, until, timeout);
  if (!connected) return error(errc::io_error, connected.error().message());
  const int fd = connected->fd();
  // A peer that reset the connection already answered; MSG_NOSIGNAL keeps that a poll event
  // rather than a SIGPIPE.
  (void)::send(fd, probe_goodbye, sizeof probe_goodbye, MSG_NOSIGNAL);
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        until - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{fd, POLLIN, 0};
    const int n = ::poll(&p, 1, static_cast<int>(left.count()));
    if (n < 0 && errno == EINTR) continue;
    if (n != 0) return {};  // bytes, the end, a reset, or a failed poll: not a silent peer
    break;
  }
  return error(errc::io_error, host + ":" + std::to_string(port) +
                                   ": took the connection but did not answer within " +
                                   std::to_string(timeout.count()) +
                                   " s (is the core frozen or stopped, or is another program "
                                   "listening there?)");
}

}  // namespace gflex
