#include "core_address.hpp"

#include "gflex/runtime/metrics.hpp"

#include <spdlog/spdlog.h>

#include "gflex/runtime/logging.hpp"

namespace gflex::app {

expected<host_port> start_daemon(const char* program, const std::string& log_level,
                                 const std::string& address, const std::string& flag) {
  auto bad = [&](const error& e) {
    std::fprintf(stderr, "%s: %s\n", program, e.message().c_str());
    return e;
  };
  if (auto ok = init_logging(log_level); !ok) return bad(ok.error());
  auto parsed = parse_host_port(address, flag);
  if (!parsed) return bad(parsed.error());
  return parsed;
}

}  // namespace gflex::app

namespace gflex::app {

int serve_metrics(const std::string& address) {
  if (address.empty()) return 0;
  auto where = parse_host_port(address, "--metrics-listen");
  if (!where) {
    spdlog::error("{}", where.error().message());
    return 2;
  }
  // Without an IPv6 address's brackets: metrics::serve splits at the last colon and takes
  // what is before it for the host.
  auto port = metrics::serve(where->host + ":" + std::to_string(where->port));
  if (!port) {
    spdlog::error("{}", port.error().message());
    // A port in use may be free at the next start (the service restarts on exit 1, not 2).
    return port.error().code() == errc::unavailable ? 1 : 2;
  }
  spdlog::info("metrics on http://{}/metrics", address_text(host_port{where->host, *port}));
  return 0;
}

}  // namespace gflex::app
