#pragma once
/// @file
/// Parsing of HOST:PORT arguments shared by the apps.

#include <charconv>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "gflex/runtime/error.hpp"

namespace gflex::app {

struct host_port {
  std::string host;
  uint16_t port = 0;
};

/// "host:port" with a port in [1, 65535]; `flag` names the option in errors.
inline expected<host_port> parse_host_port(const std::string& text, const std::string& flag) {
  auto colon = text.rfind(':');
  auto bad = [&] {
    return error(errc::invalid_argument,
                 flag + ": expected HOST:PORT with a port in [1, 65535], got '" + text + "'");
  };
  if (colon == std::string::npos || colon == 0) return bad();
  unsigned port = 0;
  const char* begin = text.data() + colon + 1;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(begin, end, port);
  if (ec != std::errc() || ptr != end || port == 0 || port > 65535) return bad();
  return host_port{text.substr(0, colon), static_cast<uint16_t>(port)};
}

/// "host:port[,host:port...]": the servers of a core of several (only the leader serves);
/// `flag` names the option in errors.
inline expected<std::vector<host_port>> parse_host_ports(const std::string& text,
                                                         const std::string& flag) {
  std::vector<host_port> out;
  size_t at = 0;
  for (;;) {
    const size_t comma = text.find(',', at);
    auto one = parse_host_port(
        text.substr(at, comma == std::string::npos ? std::string::npos : comma - at), flag);
    if (!one) return one.error();
    out.push_back(std::move(*one));
    if (comma == std::string::npos) return out;
    at = comma + 1;
  }
}

/// The shared start of a daemon's main: logging at `log_level`, then the HOST:PORT given for
/// `flag`. On error it prints why (prefixed with `program`) and the caller exits with 2.
expected<host_port> start_daemon(const char* program, const std::string& log_level,
                                 const std::string& address, const std::string& flag);

/// `--metrics-listen HOST:PORT`: serves the process's Prometheus metrics on /metrics (no-op
/// when empty). 0, or the exit code when it cannot (the reason logged): 2 for an address to
/// fix, 1 for a port in use now, as for --listen.
int serve_metrics(const std::string& address);

}  // namespace gflex::app
