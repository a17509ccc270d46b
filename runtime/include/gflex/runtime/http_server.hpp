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
}

namespace gflex::http {

class server {
 public:
  /// Binds `host`:`port` (0: any free port), lets `routes` add the handlers, and serves on
  /// `threads` threads. errc::unavailable when it cannot listen there (`what` names the
  /// service in the error: "metrics", "the dashboard").
  static expected<std::unique_ptr<server>> start(
      const std::string& host, uint16_t port, int threads,
      const std::function<void(httplib::Server&)>& routes, const std::string& what);
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
