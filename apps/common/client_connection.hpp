#pragma once
/// @file
/// The client commands' shared start: a connection to the core named by --core, over TLS
/// pinned to --core-cert (or plain with --insecure), with the API key of --api-key-file.

#include <CLI/CLI.hpp>

#include <optional>
#include <string>

#include "gflex/gflex.hpp"

namespace gflex::app {

/// Where the core is and how to reach it; the environment fills what the flags leave out
/// (GFLEX_API_KEY, GFLEX_CORE_CERT), so that secrets stay out of the process list.
struct connection_flags {
  std::string core = "127.0.0.1:7400";
  std::string api_key_file;
  std::string core_cert;
  bool insecure = false;
};

/// Whether `file` (the core's certificate bundle, named by `what`: "--core-cert" or
/// "GFLEX_CORE_CERT") can be opened and read; the error says why not, naming the file. The
/// TLS check that follows reads an absent or unreadable file as one that is not a bundle.
expected<void> check_core_cert_file(const std::string& file, const std::string& what);

/// Adds --core, --api-key-file, --core-cert and --insecure to `cmd`.
void add_connection_flags(CLI::App* cmd, connection_flags& f);

/// Connects to the core; returns 0, or the exit code after logging why not (2 for a
/// malformed address or unusable key or certificate file, 1 for an unreachable core).
int connect_core(const connection_flags& f, std::optional<client>& out);

}  // namespace gflex::app
