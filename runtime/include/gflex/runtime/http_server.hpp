#pragma once
/// @file
/// A small HTTP server on threads of its own (cpp-httplib), for what a core or node serves
/// to people and scrapers beside its actor links: /metrics, the dashboard. Its threads take
/// no signals (the programs wait for SIGINT and SIGTERM on their main thread), it does not
/// share its port with another process, and it stops when destroyed. No httplib header is
/// included here; the code that adds routes includes <httplib.h> itself.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "gflex/runtime/error.hpp"

namespace httplib {
class Server;
struct Request;
}  // namespace httplib

namespace gflex::http {

/// What a server takes before any handler runs: anyone who reaches its port may send it
/// anything, and httplib reads a request's whole body (decompressing it) before routing it.
struct server_limits {
  /// The largest request body taken (413 past it, before it is read); 0: none, and only GET
  /// and HEAD are answered (405 otherwise), as by a read-only service.
  size_t max_body_bytes = 0;
  /// Asked of every request before its body is read: false answers 403 (a service whose
  /// every route needs the same credential checks it here).
  std::function<bool(const httplib::Request&)> admit;
};

class server {
 public:
  /// Binds `host`:`port` (0: any free port), lets `routes` add the handlers, and serves on
  /// `threads` threads within `limits`; a compressed request body (Content-Encoding) is
  /// refused (415): a small one may decompress to any size. When it cannot listen there
  /// (`what` names the service in the error: "metrics", "the dashboard"): errc::unavailable
  /// for what may pass (a port in use, an address not this machine's yet, a lookup that
  /// failed for now); errc::invalid_argument for a setting that stays wrong (a name that does
  /// not exist, a port this user may not take).
  static expected<std::unique_ptr<server>> start(
      const std::string& host, uint16_t port, int threads,
      const std::function<void(httplib::Server&)>& routes, const std::string& what,
      server_limits limits = {});
  ~server();
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  uint16_t port() const { return port_; }

 private:
  server() = default;
  struct impl;
  std::unique_ptr<impl> impl_;
  uint16_t port_ = 0;
};

}  // namespace gflex::http
