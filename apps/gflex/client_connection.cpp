#include "client_connection.hpp"

#include <spdlog/spdlog.h>

#include "core_address.hpp"

namespace gflex::app {

int connect_core(const std::string& core, std::optional<client>& out) {
  auto address = parse_host_port(core, "--core");
  if (!address) {
    spdlog::error("{}", address.error().message());
    return 2;
  }
  auto c = client::connect(address->host, address->port);
  if (!c) {
    spdlog::error("{}", c.error().message());
    return 1;
  }
  out.emplace(std::move(*c));
  return 0;
}

}  // namespace gflex::app
