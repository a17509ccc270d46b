// In a file of its own: <linux/tcp.h>'s tcp_info (which has the byte counts) and glibc's
// <netinet/tcp.h> (httplib, CAF) cannot be in one translation unit.
#include "tcp_bytes_sent.hpp"

#include <arpa/inet.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstddef>
#include <filesystem>
#include <string>

namespace gflex::test {

uint64_t tcp_bytes_sent_to(uint16_t remote_port) {
  uint64_t sum = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    int fd = -1;
    try {
      fd = std::stoi(entry.path().filename().string());
    } catch (const std::exception&) {
      continue;
    }
    sockaddr_storage peer{};
    socklen_t peer_size = sizeof peer;
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_size) != 0) continue;
    uint16_t port = 0;
    if (peer.ss_family == AF_INET)
      port = ntohs(reinterpret_cast<const sockaddr_in&>(peer).sin_port);
    else if (peer.ss_family == AF_INET6)
      port = ntohs(reinterpret_cast<const sockaddr_in6&>(peer).sin6_port);
    if (port != remote_port) continue;
    tcp_info info{};
    socklen_t info_size = sizeof info;
    if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &info_size) == 0 &&
        info_size >= offsetof(tcp_info, tcpi_bytes_acked) + sizeof info.tcpi_bytes_acked)
      sum += info.tcpi_bytes_acked;
  }
  return sum;
}

}  // namespace gflex::test
