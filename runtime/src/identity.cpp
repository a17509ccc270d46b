#include "gflex/runtime/identity.hpp"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "gflex/runtime/digest.hpp"
#include "gflex/runtime/secret_file.hpp"

namespace gflex {

namespace {

// An error naming `file`. `code` says whether starting again may help: io_error for a failure
// that may pass (the disk, a descriptor limit), a settings error (exit 2) for a key file that
// stays wrong until someone fixes it: a node's service restarted on it for ever, measuring its
// GPUs each time.
error key_error(const std::filesystem::path& file, const std::string& what,
                errc code = errc::invalid_argument) {
  return error(code, file.string() + ": " + what);
}

// Whether open(2) failing with `err` is the file's own doing (its kind, its owner or mode), not
// a failure that may pass.
bool lasting_open_error(int err) {
  return err == EACCES || err == EPERM || err == ELOOP || err == ENOTDIR || err == EISDIR ||
         err == ENXIO;
}

void append(std::vector<uint8_t>& out, std::string_view text) {
  // Byte by byte: GCC 12 warns (-Wstringop-overflow, a false positive) on insert here.
  out.reserve(out.size() + text.size());
  for (char c : text) out.push_back(static_cast<uint8_t>(c));
}

void append_u64(std::vector<uint8_t>& out, uint64_t x) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(x >> (8 * i)));
}

}  // namespace

node_identity node_identity::generate() {
  if (sodium_init() < 0) std::abort();
  node_identity id;
  id.public_.resize(crypto_sign_PUBLICKEYBYTES);
  crypto_sign_keypair(id.public_.data(), id.secret_.data());
  return id;
}

expected<node_identity> node_identity::load_or_create(const std::filesystem::path& file) {
  if (sodium_init() < 0) return error(errc::io_error, "libsodium cannot start");
  // O_NONBLOCK: opening a FIFO no one writes would wait in open(2) for ever, before the check
  // below could refuse it; a regular file's reads are not changed by it.
  int fd = ::open(file.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0 && errno == ENOENT) {
    std::error_code ec;
    std::filesystem::create_directories(file.parent_path(), ec);
    auto id = generate();
    if (auto written = write_new_file(file, id.secret_); !written) return written.error();
    return id;
  }
  if (fd < 0) {
    const int err = errno;
    return key_error(file, std::string("cannot open (") + std::strerror(err) + ")",
                     lasting_open_error(err) ? errc::invalid_argument : errc::io_error);
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return key_error(file, "is not a regular file");
  }
  if ((st.st_mode & 077) != 0) {
    ::close(fd);
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 0777));
    return key_error(file, std::string("may be read by others (mode ") + mode +
                               ", should be 0600); fix it with chmod 600");
  }
  if (st.st_uid != ::geteuid() && st.st_uid != 0) {  // its owner could read or swap the key
    ::close(fd);
    return key_error(file, foreign_owner(st.st_uid));
  }
  node_identity id;
  ssize_t got = ::read(fd, id.secret_.data(), id.secret_.size());
  int err = got < 0 ? errno : 0;
  char extra = 0;
  ssize_t more = ::read(fd, &extra, 1);
  if (more < 0 && err == 0) err = errno;
  ::close(fd);
  if (got < 0 || more < 0)
    return key_error(file, std::string("cannot read (") + std::strerror(err) + ")", errc::io_error);
  if (got != static_cast<ssize_t>(id.secret_.size()) || more != 0)
    return key_error(file, "is not a node key (64 bytes)", errc::bad_format);
  id.public_.resize(crypto_sign_PUBLICKEYBYTES);
  crypto_sign_ed25519_sk_to_pk(id.public_.data(), id.secret_.data());
  return id;
}

std::vector<uint8_t> node_identity::sign(std::span<const uint8_t> message) const {
  std::vector<uint8_t> sig(crypto_sign_BYTES);
  crypto_sign_detached(sig.data(), nullptr, message.data(), message.size(), secret_.data());
  return sig;
}

bool verify_signature(std::span<const uint8_t> public_key, std::span<const uint8_t> message,
                      std::span<const uint8_t> signature) {
  if (public_key.size() != crypto_sign_PUBLICKEYBYTES || signature.size() != crypto_sign_BYTES)
    return false;
  return crypto_sign_verify_detached(signature.data(), message.data(), message.size(),
                                     public_key.data()) == 0;
}

std::vector<uint8_t> hello_message(uint32_t protocol, std::string_view name) {
  std::vector<uint8_t> out;
  append(out, "gflex-hello");
  append_u64(out, protocol);
  append(out, name);
  return out;
}

std::vector<uint8_t> result_message(uint64_t assignment_id, std::span<const uint8_t> update) {
  std::vector<uint8_t> out;
  append(out, "gflex-result");
  append_u64(out, assignment_id);
  append(out, digest_hex(update));
  return out;
}

std::string key_hex(std::span<const uint8_t> public_key) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (uint8_t b : public_key) {
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}

}  // namespace gflex
