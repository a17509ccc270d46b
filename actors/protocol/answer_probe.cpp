/// @file
/// The probe of a core's address before CAF dials it (answer_probe.hpp).

#include "answer_probe.hpp"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>

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
  const std::string where = host + ":" + std::to_string(port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (const int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found);
      rc != 0)
    return error(errc::io_error,
                 where + ": cannot resolve " + host + " (" + ::gai_strerror(rc) + ")");
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> owned(found, ::freeaddrinfo);
  const auto until = std::chrono::steady_clock::now() + timeout;
  // The events seen on `fd` (POLLERR for a failed poll), or 0 once `until` has passed.
  auto wait = [until](int fd, short events) -> short {
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          until - std::chrono::steady_clock::now());
      if (left.count() <= 0) return 0;
      pollfd p{fd, events, 0};
      const int n = ::poll(&p, 1, static_cast<int>(left.count()));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return POLLERR;
      return n == 0 ? short{0} : p.revents;
    }
  };
  int last = ETIMEDOUT;
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd =
        ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      last = errno;
      continue;
    }
    struct closer {
      int fd;
      ~closer() { ::close(fd); }
    } closed{fd};
    if (::connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      if (errno != EINPROGRESS) {
        last = errno;
        continue;
      }
      if (wait(fd, POLLOUT) == 0) break;  // past the bound: ETIMEDOUT
      int err = 0;
      socklen_t len = sizeof err;
      if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      if (err != 0) {
        last = err;
        continue;
      }
    }
    // A peer that reset the connection already answered; MSG_NOSIGNAL keeps that a poll
    // event rather than a SIGPIPE.
    (void)::send(fd, probe_goodbye, sizeof probe_goodbye, MSG_NOSIGNAL);
    if (wait(fd, POLLIN) != 0) return {};
    return error(errc::io_error, where + ": took the connection but did not answer within " +
                                     std::to_string(timeout.count()) +
                                     " s (is the core frozen or stopped, or is another "
                                     "program listening there?)");
  }
  if (last == ETIMEDOUT)
    return error(errc::io_error, where + ": the core did not take the connection within " +
                                     std::to_string(timeout.count()) + " s");
  return error(errc::io_error, where + ": " + std::strerror(last));
}

}  // namespace gflex
