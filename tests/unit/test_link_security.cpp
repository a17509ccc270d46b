#include "link_security.hpp"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/openssl/all.hpp>

#include <filesystem>
#include <fstream>
#include <string>

#include "configured_system.hpp"
#include "gflex/runtime/tls_credentials.hpp"
#include "skip_case.hpp"
#include "temp_dir.hpp"

using namespace gflex;

namespace {

namespace fs = std::filesystem;

// Puts `from` in place of `to`, as an operator who mixed up two cores' files would.
void replace_file(const fs::path& from, const fs::path& to) {
  fs::copy_file(from, to, fs::copy_options::overwrite_existing);
}

// configure_core_tls's error for `data_dir`, empty when it accepted the files; checks that a
// refusal left the configuration as it was.
std::string refusal(const fs::path& data_dir) {
  caf::actor_system_config cfg;
  auto ok = configure_core_tls(cfg, data_dir);
  if (ok) return {};
  CHECK(cfg.openssl_certificate.empty());
  CHECK(cfg.openssl_key.empty());
  CHECK(cfg.openssl_cafile.empty());
  return ok.error().message();
}

// A TLS handshake with the core at 127.0.0.1:`port` by a plain OpenSSL client that offers
// versions up to `max_version`, holding the bundle's link certificate as nodes do: the
// version agreed ("TLSv1.3") when it completed, else OpenSSL's reason. The client calls
// libssl's SSL_connect itself, not this program's (link_security.cpp's).
std::string handshake(uint16_t port, const fs::path& bundle, int max_version) {
  static auto real_connect = reinterpret_cast<int (*)(SSL*)>(dlsym(RTLD_NEXT, "SSL_connect"));
  REQUIRE(static_cast<bool>(real_connect));
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_client_method()),
                                                        SSL_CTX_free);
  REQUIRE(ctx != nullptr);
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(ctx.get(), max_version);
  REQUIRE(SSL_CTX_use_certificate_chain_file(ctx.get(), bundle.c_str()) == 1);
  REQUIRE(SSL_CTX_use_PrivateKey_file(ctx.get(), bundle.c_str(), SSL_FILETYPE_PEM) == 1);
  REQUIRE(SSL_CTX_load_verify_locations(ctx.get(), bundle.c_str(), nullptr) == 1);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  struct closer {
    int fd;
    ~closer() { ::close(fd); }
  } closed{fd};
  timeval bound{10, 0};  // a core that never answers fails the case, not hangs it
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &bound, sizeof bound);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(ctx.get()), SSL_free);
  SSL_set_fd(ssl.get(), fd);
  ERR_clear_error();
  if (real_connect(ssl.get()) == 1) {
    std::string version = SSL_get_version(ssl.get());
    SSL_shutdown(ssl.get());
    return version;
  }
  char why[256] = "no reason given";
  if (const auto e = ERR_get_error(); e != 0) ERR_error_string_n(e, why, sizeof why);
  return why;
}

}  // namespace

TEST_SUITE("link security") {
  TEST_CASE("a core's own credentials are taken, and set for CAF's OpenSSL module") {
    test::temp_dir dir;
    REQUIRE(create_core_credentials(dir.path()).has_value());
    auto files = core_tls_files::in(dir.path());
    caf::actor_system_config cfg;
    auto ok = configure_core_tls(cfg, dir.path());
    REQUIRE_MESSAGE(ok.has_value(), ok.error().message());
    CHECK(cfg.openssl_certificate == files.core_cert.string());
    CHECK(cfg.openssl_key == files.core_key.string());
    CHECK(cfg.openssl_cafile == files.ca_cert.string());
  }

  // CAF loads these files only when a connection comes, and ends the process when it cannot:
  // each of these started a core that the first node or client to connect ended.
  TEST_CASE("a core key that is not its certificate's is refused at start, naming it") {
    test::temp_dir dir;
    REQUIRE(create_core_credentials(dir.path()).has_value());
    auto files = core_tls_files::in(dir.path());
    // A valid key, but the authority's.
    replace_file(files.ca_key, files.core_key);
    CHECK(refusal(dir.path()) ==
          files.core_key.string() + " is not the key of the certificate in " +
              files.core_cert.string() + ": both must come from the same `gflex-core init`");
    // Another core's key.
    test::temp_dir other;
    REQUIRE(create_core_credentials(other.path()).has_value());
    replace_file(core_tls_files::in(other.path()).core_key, files.core_key);
    CHECK(refusal(dir.path()).find(files.core_key.string() + " is not the key of") == 0);
  }

  TEST_CASE("a core key or certificate OpenSSL cannot load is refused at start, naming it") {
    test::temp_dir dir;
    REQUIRE(create_core_credentials(dir.path()).has_value());
    auto files = core_tls_files::in(dir.path());
    const auto good_key = dir / "good.key";
    replace_file(files.core_key, good_key);
    std::ofstream(files.core_key, std::ios::trunc) << "not a key\n";
    CHECK(refusal(dir.path())
              .find(files.core_key.string() +
                    ": not an unencrypted private key OpenSSL can load (") == 0);
    replace_file(good_key, files.core_key);
    std::ofstream(files.core_cert, std::ios::trunc) << "not a certificate\n";
    CHECK(refusal(dir.path())
              .find(files.core_cert.string() + ": not a certificate chain OpenSSL can load (") ==
          0);
  }

  TEST_CASE("a certificate from another authority, or not for a server, is refused at start") {
    test::temp_dir dir, other;
    REQUIRE(create_core_credentials(dir.path()).has_value());
    REQUIRE(create_core_credentials(other.path()).has_value());
    auto files = core_tls_files::in(dir.path());
    const auto theirs = core_tls_files::in(other.path());
    // Another core's certificate and key: they match, but nodes pin this core's authority.
    replace_file(theirs.core_cert, files.core_cert);
    replace_file(theirs.core_key, files.core_key);
    auto why = refusal(dir.path());
    CHECK(why.find(files.core_cert.string() +
                   ": not a server certificate issued by the authority in " +
                   files.ca_cert.string() + " (") == 0);
    // The link certificate every node holds, with its key: issued by the authority, but for
    // clients only.
    replace_file(files.bundle, files.core_cert);
    replace_file(files.bundle, files.core_key);
    why = refusal(dir.path());
    CHECK(why.find(files.core_cert.string() + ": not a server certificate") == 0);
    CHECK(why.find("unsuitable certificate purpose") != std::string::npos);
  }

  TEST_CASE("a core key this user may not read is refused at start, saying so") {
    if (::geteuid() == 0) GFLEX_SKIP_CASE("root reads any file");
    test::temp_dir dir;
    REQUIRE(create_core_credentials(dir.path()).has_value());
    auto files = core_tls_files::in(dir.path());
    fs::permissions(files.core_key, fs::perms::none);
    CHECK(refusal(dir.path()) == files.core_key.string() +
                                     ": cannot be read (Permission denied); the core loads it "
                                     "for every TLS connection");
  }

  TEST_CASE("a core's link with a gflex peer is TLS 1.3") {
    // SECURITY.md says so: both ends offer it (OpenSSL's default), and a gflex peer's
    // credentials (the bundle's link certificate) complete the handshake.
    test::temp_dir dir;
    REQUIRE(create_core_credentials(dir.path()).has_value());
    caf::actor_system_config cfg;
    test::configured_system::configured(cfg);
    REQUIRE(configure_core_tls(cfg, dir.path()).has_value());
    caf::actor_system sys{cfg};
    auto door = sys.spawn([]() -> caf::behavior { return {[](int) {}}; });
    auto port = caf::openssl::publish(door, 0, "127.0.0.1");
    REQUIRE(static_cast<bool>(port));
    const auto bundle = core_tls_files::in(dir.path()).bundle;
    CHECK(handshake(*port, bundle, TLS1_3_VERSION) == "TLSv1.3");
    caf::anon_send_exit(door, caf::exit_reason::user_shutdown);
  }
}
