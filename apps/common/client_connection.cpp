#include "client_connection.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "core_address.hpp"
#include "gflex/runtime/secret_file.hpp"

namespace gflex::app {

namespace {

// The API key: from --api-key-file (a file only its owner may read), else GFLEX_API_KEY.
expected<std::string> api_key_of(const connection_flags& f) {
  if (f.api_key_file.empty()) {
    const char* env = std::getenv("GFLEX_API_KEY");
    return std::string(env != nullptr ? env : "");
  }
  auto key = read_secret_file(f.api_key_file);
  if (!key) {
    std::string why = "--api-key-file: ";  // appended: GCC 12 warns on "lit" + string here
    why.append(key.error().message());
    return error(key.error().code(), why);
  }
  return key;
}

}  // namespace

expected<void> check_core_cert_file(const std::string& file, const std::string& what) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int why = errno;
    return error(errc::io_error,
                 what + " " + file + ": " +
                     (why == ENOENT ? std::string("no such file")
                                    : "cannot be read (" + std::string(std::strerror(why)) + ")"));
  }
  struct stat st {};
  const bool directory = ::fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
  ::close(fd);
  if (directory) return error(errc::io_error, what + " " + file + ": is a directory");
  return {};
}

void add_connection_flags(CLI::App* cmd, connection_flags& f) {
  cmd->add_option("--core", f.core,
                  "the core's HOST:PORT (a core of several servers: every one's, "
                  "comma-separated; the first that answers is used)")
      ->capture_default_str();
  cmd->add_option("--api-key-file", f.api_key_file,
                  "file holding the API key (default: $GFLEX_API_KEY)");
  cmd->add_option("--core-cert", f.core_cert,
                  "the core's certificate bundle, its core-cert.pem (default: $GFLEX_CORE_CERT)");
  cmd->add_flag("--insecure", f.insecure, "plain TCP, unencrypted (a core run with --insecure)");
}

int connect_core(const connection_flags& f, std::optional<client>& out) {
  auto addresses = parse_host_ports(f.core, "--core");
  if (!addresses) {
    spdlog::error("{}", addresses.error().message());
    return 2;
  }
  client_options options;
  auto key = api_key_of(f);
  if (!key) {
    spdlog::error("{}", key.error().message());
    return 2;
  }
  options.api_key = std::move(*key);
  options.core_cert = f.core_cert;
  const char* cert_from = "--core-cert";
  if (options.core_cert.empty())
    if (const char* env = std::getenv("GFLEX_CORE_CERT")) {
      options.core_cert = env;
      cert_from = "GFLEX_CORE_CERT";
    }
  options.insecure = f.insecure;
  if (!f.insecure && !options.core_cert.empty())
    if (auto ok = check_core_cert_file(options.core_cert.string(), cert_from); !ok) {
      spdlog::error("{}", ok.error().message());
      return 2;
    }
  if (f.insecure)
    spdlog::warn(
        "--insecure: the link to the core is NOT encrypted, and this client cannot tell "
        "the core from an impostor");
  // A core of several: the first core that answers is used. A follower answers reads and
  // names the leader for the rest (the client goes there); a core that is down is skipped.
  // Each connection is given the other addresses: a client that follows a job (`--wait`)
  // goes on to them once its core is gone, and every client once its core follows and
  // cannot pass a request on (the leader it names is gone, or it cannot read the replicated
  // state, a key's check included): only a connection's failure is left to this loop.
  auto connect_to = [&](size_t i) {
    auto o = options;
    for (size_t j = 0; j < addresses->size(); ++j)
      if (j != i) o.other_cores.emplace_back((*addresses)[j].host, (*addresses)[j].port);
    return client::connect((*addresses)[i].host, (*addresses)[i].port, o);
  };
  auto c = connect_to(0);
  for (size_t i = 1; i < addresses->size() && !c && c.error().code() == errc::io_error; ++i)
    c = connect_to(i);
  if (!c) {
    spdlog::error("{}", c.error().message());
    return c.error().code() == errc::io_error ? 1 : 2;
  }
  out.emplace(std::move(*c));
  return 0;
}

}  // namespace gflex::app
