#include "gflex/runtime/tcp_probe.hpp"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>

namespace gflex {

namespace {

/// Connects `fd` to one address: 0 when it accepted the connection, else the errno
/// (ETIMEDOUT past `until`).
int connect_one(int fd, const addrinfo& a, std::chrono::steady_clock::time_point until) {
  if (::connect(fd, a.ai_addr, a.ai_addrlen) == 0) return 0;
  if (errno != EINPROGRESS) return errno;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        until - std::chrono::steady_clock::now());
    if (left.count() <= 0) return ETIMEDOUT;
    pollfd p{fd, POLLOUT, 0};
    const int n = ::poll(&p, 1, static_cast<int>(left.count()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    if (n == 0) return ETIMEDOUT;
    int err = 0;
    socklen_t len = sizeof err;
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno;
    return err;
  }
}

}  // namespace

tcp_socket::~tcp_socket() {
  if (fd_ >= 0) ::close(fd_);
}

expected<tcp_socket> connect_tcp(const std::string& host, uint16_t port,
                                 std::chrono::steady_clock::time_point until,
                                 std::chrono::milliseconds timeout_ms) {
  const std::string where = host + ":" + std::to_string(port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (const int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found);
      rc != 0)
    return error(errc::unavailable,
                 where + ": cannot resolve " + host + " (" + ::gai_strerror(rc) + ")");
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> owned(found, ::freeaddrinfo);
  int last = ETIMEDOUT;
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd =
        ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      last = errno;
      continue;
    }
    tcp_socket socket{fd};
    last = connect_one(fd, *a, until);
    if (last == 0) return socket;
  }
  if (last == ETIMEDOUT)
    return error(errc::unavailable, where + ": no answer in " + std::to_string(timeout_ms.count()) +
                                        " ms (the machine is off, or its packets are dropped)");
  return error(errc::unavailable, where + ": " + std::strerror(last));
}

expected<void> probe_tcp(const std::string& host, uint16_t port,
                         std::chrono::milliseconds timeout) {
  auto connected = connect_tcp(host, port, std::chrono::steady_clock::now() + timeout, timeout);
  if (!connected) return connected.error();
  return {};
}

}  // namespace gflex
