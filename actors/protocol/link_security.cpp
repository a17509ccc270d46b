#include "link_security.hpp"

#include <dlfcn.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <caf/actor_system_config.hpp>
#include <caf/openssl/manager.hpp>

#include "gflex/runtime/tls_credentials.hpp"

namespace gflex {

expected<void> configure_core_tls(caf::actor_system_config& cfg,
                                  const std::filesystem::path& data_dir) {
  auto files = core_tls_files::in(data_dir);
  for (const auto& f : {files.ca_cert, files.core_cert, files.core_key}) {
    // Not the throwing overload: a path that cannot be searched ended the program (abort).
    std::error_code ec;
    const bool there = std::filesystem::is_regular_file(f, ec);
    if (ec && ec != std::errc::no_such_file_or_directory)
      return error(errc::io_error, f.string() + ": " + ec.message());
    if (!there)
      return error(errc::invalid_argument,
                   f.string() +
                       " is missing: make the core's credentials with `gflex-core init "
                       "--data-dir " +
                       data_dir.string() + "`, or run with --insecure");
  }
  cfg.openssl_certificate = files.core_cert.string();
  cfg.openssl_key = files.core_key.string();
  cfg.openssl_cafile = files.ca_cert.string();
  cfg.load<caf::openssl::manager>();
  return {};
}

expected<std::string> configure_peer_tls(caf::actor_system_config& cfg,
                                         const std::filesystem::path& bundle) {
  if (bundle.empty())
    return error(errc::invalid_argument,
                 "the core's certificate is needed for an encrypted link (--core-cert or "
                 "GFLEX_CORE_CERT: the core-cert.pem its `gflex-core init` wrote); --insecure "
                 "connects in plain text instead");
  if (auto ok = check_core_bundle(bundle); !ok) return ok.error();
  auto fingerprint = pinned_fingerprint(bundle);
  if (!fingerprint) return fingerprint.error();
  // One file serves CAF as the certificate chain (the link certificate comes first), as the
  // key, and as the trusted authorities. The link certificate among those cannot pose as a
  // core: it may only be used by clients and cannot issue certificates.
  auto path = std::filesystem::absolute(bundle).string();
  cfg.openssl_certificate = path;
  cfg.openssl_key = path;
  cfg.openssl_cafile = path;
  cfg.load<caf::openssl::manager>();
  return *fingerprint;
}

}  // namespace gflex

// CAF 0.17's OpenSSL module does not clear the thread's OpenSSL error queue before it
// calls SSL_read, SSL_write, SSL_connect or SSL_accept, as OpenSSL requires: SSL_get_error
// reports SSL_ERROR_SSL whenever the queue holds anything. So once one peer hangs up
// without a TLS goodbye (every short-lived client does), its "unexpected eof" stays queued
// on the middleman's thread, and the next healthy link that merely has nothing to read is
// taken as failed and closed: nodes were lost seconds after joining. The definitions below
// interpose on libssl's (the executable's symbols come first) and clear the queue first.
namespace {

template <class Fn>
Fn real_ssl(const char* name) {
  return reinterpret_cast<Fn>(dlsym(RTLD_NEXT, name));
}

}  // namespace

extern "C" int SSL_read(SSL* ssl, void* buf, int num) {
  static auto real = real_ssl<int (*)(SSL*, void*, int)>("SSL_read");
  ERR_clear_error();
  return real(ssl, buf, num);
}

extern "C" int SSL_write(SSL* ssl, const void* buf, int num) {
  static auto real = real_ssl<int (*)(SSL*, const void*, int)>("SSL_write");
  ERR_clear_error();
  return real(ssl, buf, num);
}

extern "C" int SSL_connect(SSL* ssl) {
  static auto real = real_ssl<int (*)(SSL*)>("SSL_connect");
  ERR_clear_error();
  return real(ssl);
}

extern "C" int SSL_accept(SSL* ssl) {
  static auto real = real_ssl<int (*)(SSL*)>("SSL_accept");
  ERR_clear_error();
  return real(ssl);
}
