#include "link_security.hpp"

#include <doctest/doctest.h>
#include <unistd.h>
#include <caf/actor_system_config.hpp>

#include <filesystem>
#include <fstream>
#include <string>

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
}
