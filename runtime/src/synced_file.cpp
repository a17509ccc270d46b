#include "synced_file.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace gflex::detail {

namespace {

// Removes the temporary files that writers of `file` which are no longer running left (a
// crash, a kill between the create and the rename): a secret (an operator or node key)
// stayed in one, mode 0600 but for good, unless a later writer happened to get the same pid.
// One whose pid runs (this process's, or another's that reused it) is left.
void remove_dead_writers_files(const std::filesystem::path& file) {
  const std::string prefix = file.filename().string() + ".tmp.";
  const auto dir = file.parent_path().empty() ? std::filesystem::path(".") : file.parent_path();
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string pid_text = name.substr(prefix.size());
    if (pid_text.size() > 9 || pid_text.find_first_not_of("0123456789") != std::string::npos)
      continue;
    const pid_t pid = static_cast<pid_t>(std::stol(pid_text));
    if (pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH) ::unlink(e.path().c_str());
  }
}

}  // namespace

expected<void> write_synced(const std::filesystem::path& file, std::span<const uint8_t> bytes,
                            mode_t mode, bool replace, bool sync) {
  const auto tmp = file.string() + ".tmp." + std::to_string(::getpid());
  auto failed = [&](const std::string& what) -> expected<void> {
    const int saved = errno;
    ::unlink(tmp.c_str());
    return error(errc::io_error, file.string() + ": " + what + " (" + std::strerror(saved) + ")");
  };
  ::unlink(tmp.c_str());  // a crash's leftover of this pid
  remove_dead_writers_files(file);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) return failed("cannot create");
  // open() takes the process's umask off `mode`: a core's public certificates, asked for as
  // 0644, came out 0600 under a service's UMask=0077, and a node's service running as
  // another user could not read the copy it was given.
  if (::fchmod(fd, mode) != 0) {
    const int saved = errno;
    ::close(fd);
    errno = saved;
    return failed("cannot set its mode");
  }
  for (size_t at = 0; at < bytes.size();) {
    const ssize_t n = ::write(fd, bytes.data() + at, bytes.size() - at);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = ENOSPC;
      ::close(fd);
      return failed("cannot write");
    }
    at += static_cast<size_t>(n);
  }
  if (sync && ::fsync(fd) != 0) {
    ::close(fd);
    return failed("cannot sync");
  }
  if (::close(fd) != 0) return failed("cannot write");
  if (replace) {
    if (::rename(tmp.c_str(), file.c_str()) != 0) return failed("cannot write");
  } else {
    // link, not rename: it fails when the name exists, as O_EXCL does.
    if (::link(tmp.c_str(), file.c_str()) != 0) return failed("cannot create");
    ::unlink(tmp.c_str());
  }
  if (!sync) return {};
  // A directory that cannot be synced fails the write, as the file's own sync does: taken for
  // done, a key or a certificate said written could be gone after a power loss. A file made
  // new is removed again (a retry would find it there); one replaced is left, and said not
  // durable.
  const auto dir = file.parent_path().empty() ? std::filesystem::path(".") : file.parent_path();
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0 || ::fsync(dfd) != 0) {
    const int saved = errno;
    if (dfd >= 0) ::close(dfd);
    if (!replace) ::unlink(file.c_str());
    errno = saved;
    return failed("cannot sync its directory");
  }
  ::close(dfd);
  return {};
}

}  // namespace gflex::detail
