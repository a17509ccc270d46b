#pragma once
/// @file
/// TLS for the links between core, nodes and clients, through CAF's OpenSSL module. The
/// credentials are the ones `gflex-core init` makes (gflex/runtime/tls_credentials.hpp):
/// the core serves its certificate; nodes and clients trust only the authority in their
/// bundle, and present the bundle's link certificate because CAF requires one.

#include <caf/fwd.hpp>

#include <filesystem>
#include <string>

#include "gflex/runtime/error.hpp"

namespace gflex {

/// Loads CAF's OpenSSL module into `cfg` for a core: its certificate chain and key, and the
/// authority whose link certificates it accepts. Loads them first as CAF will for every
/// connection, and checks that the key is the certificate's and that the certificate is a
/// server certificate from that authority: an error names the file and changes nothing in
/// `cfg`, where CAF would end the process at the first connection.
expected<void> configure_core_tls(caf::actor_system_config& cfg,
                                  const std::filesystem::path& data_dir);

/// Loads CAF's OpenSSL module into `cfg` for a node or client holding `bundle` (a core's
/// core-cert.pem); checks the bundle first. Returns the pinned authority's fingerprint.
expected<std::string> configure_peer_tls(caf::actor_system_config& cfg,
                                         const std::filesystem::path& bundle);

}  // namespace gflex
