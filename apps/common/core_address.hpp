#pragma once
/// @file
/// Parsing of HOST:PORT arguments shared by the apps.

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cctype>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "gflex/runtime/error.hpp"

namespace gflex::app {

struct host_port {
  std::string host;
  uint16_t port = 0;
};

/// "host:port" with a port in [1, 65535]; `flag` names the option in errors. An IPv6 address
/// goes in brackets ("[::1]:9464"), which are taken off: getaddrinfo, httplib and CAF took
/// "[::1]" for a host name they could not find, and the failure read as a port in use. One
/// without brackets is taken where it is an address (":::7400", every address), and refused
/// where it is not ("2001:db8::7400" left out its port).
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
  std::string host = text.substr(0, colon);
  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']' || host.find_first_of("[]", 1) != host.size() - 1)
      return error(errc::invalid_argument, flag + ": '" + text +
                                               "' opens a bracket it does not close right before " +
                                               "the port ([IPV6]:PORT)");
    host = host.substr(1, host.size() - 2);
  } else if (host.find_first_of("[]") != std::string::npos) {
    return bad();
  } else if (host.find(':') != std::string::npos) {
    in6_addr address{};
    if (::inet_pton(AF_INET6, host.c_str(), &address) != 1)
      return error(errc::invalid_argument,
                   flag + ": '" + host + "' (before the last colon of '" + text +
                       "') is not an IPv6 address; write one in brackets with its port, "
                       "[2001:db8::1]:7400");
  }
  return host_port{std::move(host), static_cast<uint16_t>(port)};
}

/// `where` as HOST:PORT, an IPv6 address in brackets (to show, or to give a parser that splits
/// at the last colon).
inline std::string address_text(const host_port& where) {
  const bool v6 = where.host.find(':') != std::string::npos;
  return (v6 ? "[" + where.host + "]" : where.host) + ":" + std::to_string(where.port);
}

/// Whether an address to listen on takes in `a` also takes in `b` on the same port: one names
/// every address of the machine, or both name the same one.
inline bool same_listen_host(const std::string& a, const std::string& b) {
  auto canonical = [](std::string h) {
    for (char& c : h) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (h == "localhost") return std::string("127.0.0.1");
    return h;
  };
  auto every = [](const std::string& h) { return h == "0.0.0.0" || h == "::" || h == "*"; };
  return every(a) || every(b) || canonical(a) == canonical(b);
}

/// An error naming both flags where two of `listens` (flag, address) would listen on one port:
/// the second bind failed as a port in use, exit 1, and a service restarted the process for
/// ever on flags that never work.
inline expected<void> check_distinct_listens(
    const std::vector<std::pair<std::string, host_port>>& listens) {
  for (size_t i = 0; i < listens.size(); ++i)
    for (size_t j = i + 1; j < listens.size(); ++j) {
      const auto& [flag_a, a] = listens[i];
      const auto& [flag_b, b] = listens[j];
      if (a.port != b.port || !same_listen_host(a.host, b.host)) continue;
      return error(errc::invalid_argument, flag_a + " " + address_text(a) + " and " + flag_b + " " +
                                               address_text(b) +
                                               " listen on the same port: give each its own");
    }
  return {};
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
