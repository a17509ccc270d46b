#include "gflex/runtime/tls_credentials.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "gflex/runtime/secret_file.hpp"

namespace gflex {

namespace {

struct free_key {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct free_cert {
  void operator()(X509* p) const { X509_free(p); }
};
struct free_bio {
  void operator()(BIO* p) const { BIO_free(p); }
};
using key_ptr = std::unique_ptr<EVP_PKEY, free_key>;
using cert_ptr = std::unique_ptr<X509, free_cert>;
using bio_ptr = std::unique_ptr<BIO, free_bio>;

constexpr long ten_years_s = 10L * 366 * 24 * 3600;

key_ptr new_key() {
  return key_ptr(EVP_EC_gen("P-256"));
}

bool add_extension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  if (ext == nullptr) return false;
  bool ok = X509_add_ext(cert, ext, -1) == 1;
  X509_EXTENSION_free(ext);
  return ok;
}

// A certificate for `key` named `common_name`, issued by (issuer, issuer_key), or
// self-signed when issuer is null, with the given v3 extensions.
cert_ptr make_cert(EVP_PKEY* key, const char* common_name, X509* issuer, EVP_PKEY* issuer_key,
                   const std::vector<std::pair<int, const char*>>& extensions) {
  cert_ptr cert(X509_new());
  if (!cert) return nullptr;
  X509_set_version(cert.get(), 2);
  unsigned char serial[16];
  if (RAND_bytes(serial, sizeof serial) != 1) return nullptr;
  serial[0] &= 0x7f;  // a positive serial number
  BIGNUM* bn = BN_bin2bn(serial, sizeof serial, nullptr);
  ASN1_INTEGER* sn = BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert.get()));
  BN_free(bn);
  if (sn == nullptr) return nullptr;
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), ten_years_s);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("GPUFlex"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(common_name), -1, -1, 0);
  X509* signer = issuer != nullptr ? issuer : cert.get();
  X509_set_issuer_name(cert.get(), X509_get_subject_name(signer));
  if (X509_set_pubkey(cert.get(), key) != 1) return nullptr;
  for (const auto& [nid, value] : extensions)
    if (!add_extension(cert.get(), signer, nid, value)) return nullptr;
  if (X509_sign(cert.get(), issuer_key != nullptr ? issuer_key : key, EVP_sha256()) <= 0)
    return nullptr;
  return cert;
}

std::string pem_of(X509* cert) {
  bio_ptr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), cert);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

std::string pem_of(EVP_PKEY* key) {
  bio_ptr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

// Writes `text` to a new file (never over an existing one) with `mode`.
expected<void> write_new(const std::filesystem::path& file, const std::string& text, int mode) {
  return write_new_file(file, {reinterpret_cast<const uint8_t*>(text.data()), text.size()}, mode);
}

// The certificates in a PEM file. One that cannot be opened is an error naming it and the
// system's reason: an absent file, or one this user may not read, was reported as a file
// holding no certificate ("not a core certificate bundle"), and its owner looked for what
// was wrong with its contents.
expected<std::vector<cert_ptr>> read_certs(const std::filesystem::path& pem) {
  std::FILE* file = std::fopen(pem.c_str(), "r");
  if (file == nullptr)
    return error(errc::io_error, pem.string() + ": cannot be read (" + std::strerror(errno) + ")");
  bio_ptr bio(BIO_new_fp(file, BIO_CLOSE));
  if (!bio) {
    std::fclose(file);
    return error(errc::io_error, pem.string() + ": OpenSSL cannot read it");
  }
  std::vector<cert_ptr> out;
  while (X509* c = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) out.emplace_back(c);
  return out;
}

std::string fingerprint_of(X509* cert) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  X509_digest(cert, EVP_sha256(), md, &n);
  std::string out = "SHA256:";
  char hex[3];
  for (unsigned i = 0; i < n; ++i) {
    std::snprintf(hex, sizeof hex, "%02x", md[i]);
    out.append(hex, 2);
  }
  return out;
}

X509* self_signed(const std::vector<cert_ptr>& certs) {
  for (const auto& c : certs)
    if (X509_check_issued(c.get(), c.get()) == X509_V_OK) return c.get();
  return nullptr;
}

}  // namespace

core_tls_files core_tls_files::in(const std::filesystem::path& data_dir) {
  auto tls = data_dir / "tls";
  return {tls / "ca.crt", tls / "ca.key", tls / "core.crt", tls / "core.key",
          data_dir / "core-cert.pem"};
}

// Removes the first `written` files create_core_credentials writes (ca.key, core.key,
// ca.crt, core.crt, core-cert.pem, in that order), when they are all it made.
void remove_core_credentials(const std::filesystem::path& data_dir, size_t written) {
  const auto files = core_tls_files::in(data_dir);
  const std::filesystem::path order[] = {files.ca_key, files.core_key, files.ca_cert,
                                         files.core_cert, files.bundle};
  std::error_code ec;
  for (size_t i = 0; i < written && i < std::size(order); ++i)
    std::filesystem::remove(order[i], ec);
}

expected<std::string> create_core_credentials(const std::filesystem::path& data_dir) {
  auto files = core_tls_files::in(data_dir);
  std::error_code ec;
  for (const auto& f :
       {files.ca_cert, files.ca_key, files.core_cert, files.core_key, files.bundle}) {
    const bool there = std::filesystem::exists(f, ec);
    if (ec) return error(errc::io_error, f.string() + ": " + ec.message());
    if (there)
      return error(errc::invalid_argument,
                   f.string() + " already exists: this core has its credentials");
  }
  std::filesystem::create_directories(files.ca_cert.parent_path(), ec);
  if (ec) return error(errc::io_error, files.ca_cert.parent_path().string() + ": " + ec.message());
  auto ca_key = new_key(), core_key = new_key(), link_key = new_key();
  if (!ca_key || !core_key || !link_key) return error(errc::io_error, "OpenSSL cannot make keys");
  auto ca = make_cert(ca_key.get(), "GPUFlex core authority", nullptr, nullptr,
                      {{NID_basic_constraints, "critical,CA:TRUE,pathlen:0"},
                       {NID_key_usage, "critical,keyCertSign,cRLSign"},
                       {NID_subject_key_identifier, "hash"}});
  if (!ca) return error(errc::io_error, "OpenSSL cannot make the authority's certificate");
  auto core = make_cert(core_key.get(), "GPUFlex core", ca.get(), ca_key.get(),
                        {{NID_basic_constraints, "critical,CA:FALSE"},
                         {NID_key_usage, "critical,digitalSignature"},
                         {NID_ext_key_usage, "serverAuth"}});
  auto link = make_cert(link_key.get(), "GPUFlex link", ca.get(), ca_key.get(),
                        {{NID_basic_constraints, "critical,CA:FALSE"},
                         {NID_key_usage, "critical,digitalSignature"},
                         {NID_ext_key_usage, "clientAuth"}});
  if (!core || !link) return error(errc::io_error, "OpenSSL cannot issue certificates");
  // The core serves its certificate followed by the authority's (a chain file); nodes and
  // clients present the link certificate the same way, with its key in the same file.
  std::vector<std::pair<std::filesystem::path, std::pair<std::string, int>>> writes = {
      {files.ca_key, {pem_of(ca_key.get()), 0600}},
      {files.core_key, {pem_of(core_key.get()), 0600}},
      {files.ca_cert, {pem_of(ca.get()), 0644}},
      {files.core_cert, {pem_of(core.get()) + pem_of(ca.get()), 0644}},
      {files.bundle, {pem_of(link.get()) + pem_of(ca.get()) + pem_of(link_key.get()), 0644}},
  };
  // All or none: a set cut short (a full disk) refused every later init ("already exists")
  // while the core asked for one. What this call wrote goes again; nothing used it yet.
  for (size_t i = 0; i < writes.size(); ++i)
    if (auto ok = write_new(writes[i].first, writes[i].second.first, writes[i].second.second);
        !ok) {
      remove_core_credentials(data_dir, i);
      return ok.error();
    }
  return fingerprint_of(ca.get());
}

expected<std::string> pinned_fingerprint(const std::filesystem::path& pem) {
  auto certs = read_certs(pem);
  if (!certs) return certs.error();
  if (certs->empty()) return error(errc::bad_format, pem.string() + ": no certificate in it");
  X509* root = self_signed(*certs);
  if (root == nullptr)
    return error(errc::bad_format, pem.string() + ": has no self-signed (authority) certificate");
  return fingerprint_of(root);
}

expected<void> check_core_bundle(const std::filesystem::path& bundle) {
  auto read = read_certs(bundle);
  if (!read) return read.error();
  const auto& certs = *read;
  auto bad = [&](const std::string& what) {
    return error(errc::bad_format, bundle.string() + ": not a core certificate bundle (" + what +
                                       "; use the core-cert.pem that `gflex-core init` wrote)");
  };
  if (certs.size() < 2) return bad("it needs two certificates");
  X509* root = self_signed(certs);
  if (root == nullptr) return bad("no authority certificate");
  X509* leaf = certs.front().get();
  if (leaf == root || X509_check_issued(root, leaf) != X509_V_OK)
    return bad("the first certificate is not issued by the authority");
  bio_ptr bio(BIO_new_file(bundle.c_str(), "r"));
  key_ptr key(bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr) : nullptr);
  if (!key) return bad("no private key");
  if (X509_check_private_key(leaf, key.get()) != 1)
    return bad("the key does not belong to the first certificate");
  return {};
}

}  // namespace gflex
