#pragma once
/// @file
/// The TLS credentials of a core, made by `gflex-core init` (OpenSSL, ECDSA P-256):
///
/// - `DATA_DIR/tls/ca.crt`, `ca.key`: the core's own certificate authority, self-signed. Its
///   certificate is what nodes and clients pin: they accept no other core.
/// - `DATA_DIR/tls/core.crt`, `core.key`: the certificate the core serves (server use only),
///   issued by that authority, with the authority's certificate after it.
/// - `DATA_DIR/core-cert.pem`: what nodes and clients are given (`--core-cert`): the
///   authority's certificate and a link certificate with its key (client use only).
///
/// Why a link certificate that everyone holds: CAF 0.17's OpenSSL module, once it
/// authenticates at all, demands a certificate from both ends of every connection and has
/// no hook to accept a self-made one. The link certificate satisfies that demand; it
/// proves nothing about its holder, and is not meant to. Nodes prove who they are with
/// their Ed25519 keys and join tokens, clients with API keys, inside the encrypted link.
/// What TLS adds is that nobody can read or change the link, and that nobody can pose as
/// the core: the link certificate cannot serve (its key usage is client only, and it
/// cannot issue certificates), and a core's certificate must come from the pinned
/// authority.
///
/// Key files are written with mode 0600; no file is overwritten.

#include <cstddef>
#include <filesystem>
#include <string>

#include "gflex/runtime/error.hpp"

namespace gflex {

/// Where a core's TLS files lie under its data directory.
struct core_tls_files {
  std::filesystem::path ca_cert, ca_key, core_cert, core_key, bundle;
  static core_tls_files in(const std::filesystem::path& data_dir);
};

/// Makes a core's credentials under `data_dir` (see above); returns the pinned authority's
/// fingerprint. Refuses, changing nothing, when any of the files already exists.
expected<std::string> create_core_credentials(const std::filesystem::path& data_dir);

/// Removes the first `written` of the files create_core_credentials writes (ca.key,
/// core.key, ca.crt, core.crt, core-cert.pem, in that order): a set an init could not finish.
void remove_core_credentials(const std::filesystem::path& data_dir, size_t written);

/// The SHA-256 fingerprint ("SHA256:" and 64 hex digits, colon-free) of the self-signed
/// certificate in a PEM file: the authority a bundle or a core's files pin. An unreadable
/// file, or one without a self-signed certificate, is an error naming the file.
expected<std::string> pinned_fingerprint(const std::filesystem::path& pem);

/// Checks that `bundle` is a usable core certificate bundle (an authority, a client
/// certificate it issued, and that certificate's key), so that a node or client says what
/// is wrong with it before connecting.
expected<void> check_core_bundle(const std::filesystem::path& bundle);

}  // namespace gflex
