#include "synced_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace gflex::detail {

expected<void> write_synced(const std::filesystem::path& file, std::span<const uint8_t> bytes,
                            mode_t mode, bool replace, bool sync) {
  const auto tmp = file.string() + ".tmp." + std::to_string(::getpid());
  auto failed = [&](const std::string& what) -> expected<void> {
    const int saved = errno;
    ::unlink(tmp.c_str());
    return error(errc::io_error, file.string() + ": " + what + " (" + std::strerror(saved) + ")");
  };
  ::unlink(tmp.c_str());  // a crash's leftover of this pid
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) return failed("cannot create");
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
  const auto dir = file.parent_path().empty() ? std::filesystem::path(".") : file.parent_path();
  if (const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return {};
}

}  // namespace gflex::detail
