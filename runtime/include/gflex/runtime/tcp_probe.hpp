#pragma once
/// @file
/// Whether a TCP endpoint answers, within a bound. CAF 0.17 connects with a blocking
/// connect() on its middleman's thread: to a machine that is off (its packets dropped, no
/// reset) that takes the kernel's SYN retries, about 2 minutes, and every other connect of the
/// process waits behind it. Probed first, such an address is passed over in seconds.

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>

#include "gflex/runtime/error.hpp"

namespace gflex {

/// A connected TCP socket (non-blocking, close-on-exec), closed when it goes.
class tcp_socket {
 public:
  explicit tcp_socket(int fd) noexcept : fd_(fd) {}
  tcp_socket(tcp_socket&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  tcp_socket& operator=(tcp_socket&&) = delete;
  ~tcp_socket();

  int fd() const noexcept { return fd_; }

 private:
  int fd_;
};

/// Connects to host:port, each address it resolves to in turn, until `until`. An error
/// (errc::unavailable) begins with host:port and says why not: refused, unresolved, or no
/// answer by `until` ("no answer in <timeout_ms> ms", with `timeout_ms` the bound as the caller
/// counts it).
expected<tcp_socket> connect_tcp(const std::string& host, uint16_t port,
                                 std::chrono::steady_clock::time_point until,
                                 std::chrono::milliseconds timeout_ms);

/// Connects to host:port (each address it resolves to, in turn) and closes again. An error
/// (errc::unavailable) names the address and why: refused, unresolved, or no answer within
/// `timeout`.
expected<void> probe_tcp(const std::string& host, uint16_t port,
                         std::chrono::milliseconds timeout = std::chrono::seconds(3));

}  // namespace gflex
