#include "link_security.hpp"

#include <dlfcn.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <caf/actor_system_config.hpp>
#include <caf/openssl/manager.hpp>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "gflex/runtime/tls_credentials.hpp"

namespace gflex {

namespace {

struct free_ssl_ctx {
  void operator()(SSL_CTX* p) const { SSL_CTX_free(p); }
};
struct free_store_ctx {
  void operator()(X509_STORE_CTX* p) const { X509_STORE_CTX_free(p); }
};

// OpenSSL's queued reasons for the last failure, oldest first; empties the queue.
std::string openssl_reasons() {
  std::string out;
  while (unsigned long code = ERR_get_error()) {
    char text[256];
    ERR_error_string_n(code, text, sizeof text);
    if (!out.empty()) out += "; ";
    out += text;
  }
  return out.empty() ? "no reason given" : out;
}

// Refuses an encrypted key instead of letting OpenSSL ask for its passphrase on the terminal:
// the core sets none, so CAF could not load such a key either.
int no_passphrase(char*, int, int, void*) {
  return 0;
}

// Loads the core's credentials as CAF's OpenSSL module does for every connection it accepts,
// and checks what it only finds out then. CAF loads them in session::init, on the
// multiplexer's thread, and throws when that fails: nothing catches it there, so a key this
// user may not read, or one that is not the certificate's, let the core start and log that it
// listens, and the first node or client to connect ended it (std::terminate, nothing else on
// stderr). Checked here, the core refuses to start with the file and what is wrong with it.
expected<void> check_core_credentials(const core_tls_files& files) {
  for (const auto& f : {files.ca_cert, files.core_cert, files.core_key}) {
    // The system's reason, which OpenSSL's queue reports only as a failed fopen.
    std::FILE* file = std::fopen(f.c_str(), "r");
    if (file == nullptr)
      return error(errc::io_error, f.string() + ": cannot be read (" + std::strerror(errno) +
                                       "); the core loads it for every TLS connection");
    std::fclose(file);
  }
  ERR_clear_error();
  std::unique_ptr<SSL_CTX, free_ssl_ctx> ctx(SSL_CTX_new(TLS_server_method()));
  if (!ctx) return error(errc::io_error, "OpenSSL cannot make a TLS context: " + openssl_reasons());
  SSL_CTX_set_default_passwd_cb(ctx.get(), no_passphrase);
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), files.core_cert.c_str()) != 1)
    return error(errc::bad_format, files.core_cert.string() +
                                       ": not a certificate chain OpenSSL can load (" +
                                       openssl_reasons() + ")");
  const std::string not_its_key =
      files.core_key.string() + " is not the key of the certificate in " +
      files.core_cert.string() + ": both must come from the same `gflex-core init`";
  // OpenSSL 3 compares the key with the certificate as it loads it (hence the reason looked
  // at here); SSL_CTX_check_private_key below covers a library that does not.
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), files.core_key.c_str(), SSL_FILETYPE_PEM) != 1) {
    if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
      ERR_clear_error();
      return error(errc::bad_format, not_its_key);
    }
    return error(errc::bad_format, files.core_key.string() +
                                       ": not an unencrypted private key OpenSSL can load (" +
                                       openssl_reasons() + ")");
  }
  if (SSL_CTX_check_private_key(ctx.get()) != 1) {
    ERR_clear_error();
    return error(errc::bad_format, not_its_key);
  }
  if (SSL_CTX_load_verify_locations(ctx.get(), files.ca_cert.c_str(), nullptr) != 1)
    return error(errc::bad_format, files.ca_cert.string() +
                                       ": no authority certificate OpenSSL can load (" +
                                       openssl_reasons() + ")");
  // Nodes and clients accept the core only with a server certificate from the authority they
  // pin (ca.crt): one that is not, or has expired, would have every connection refused.
  X509* leaf = SSL_CTX_get0_certificate(ctx.get());
  STACK_OF(X509)* chain = nullptr;
  SSL_CTX_get0_chain_certs(ctx.get(), &chain);
  std::unique_ptr<X509_STORE_CTX, free_store_ctx> verify(X509_STORE_CTX_new());
  if (!verify ||
      X509_STORE_CTX_init(verify.get(), SSL_CTX_get_cert_store(ctx.get()), leaf, chain) != 1)
    return error(errc::io_error, "OpenSSL cannot check a certificate chain: " + openssl_reasons());
  X509_STORE_CTX_set_purpose(verify.get(), X509_PURPOSE_SSL_SERVER);
  if (X509_verify_cert(verify.get()) != 1) {
    const int why = X509_STORE_CTX_get_error(verify.get());
    ERR_clear_error();
    return error(errc::bad_format, files.core_cert.string() +
                                       ": not a server certificate issued by the authority in " +
                                       files.ca_cert.string() + " (" +
                                       X509_verify_cert_error_string(why) +
                                       "): nodes and clients would refuse it");
  }
  return {};
}

}  // namespace

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
  if (auto ok = check_core_credentials(files); !ok) return ok;
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
