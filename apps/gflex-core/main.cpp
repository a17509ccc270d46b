/// @file
/// `gflex-core --listen HOST:PORT --data-dir DIR`: runs a core until SIGINT or SIGTERM.

#include <CLI/CLI.hpp>

#include <cstdlib>

#include "../gflex/core_address.hpp"
#include "gflex/gflex.hpp"

int main(int argc, char** argv) {
  CLI::App app{"gflex-core: the coordinating core of a GPUFlex cloud"};
  std::string listen = "127.0.0.1:7400", log_level = "info";
  gflex::core_config config;
  app.add_option("--listen", listen, "HOST:PORT to accept nodes and clients on")
      ->capture_default_str();
  app.add_option("--data-dir", config.data_dir, "directory of the LMDB store")->required();
  app.add_option("--heartbeat-ms", config.heartbeat_ms, "heartbeat interval told to nodes")
      ->check(CLI::Range(50, 600000))
      ->capture_default_str();
  app.add_option("--lease-ms", config.lease_ms, "silence after which a node is taken as lost")
      ->check(CLI::Range(100, 3600000))
      ->capture_default_str();
  app.add_option("--core-secret", config.core_secret,
                 "secret a node must present to join the core tier (default: "
                 "$GFLEX_CORE_SECRET; none: no core-tier nodes)");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical or off")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (const char* secret = std::getenv("GFLEX_CORE_SECRET");
      config.core_secret.empty() && secret != nullptr)
    config.core_secret = secret;
  auto address = gflex::app::start_daemon("gflex-core", log_level, listen, "--listen");
  if (!address) return 2;
  config.host = address->host;
  config.port = address->port;
  return gflex::run_core(config);
}
