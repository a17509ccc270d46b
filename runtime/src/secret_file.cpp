#include "gflex/runtime/secret_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace gflex {

expected<std::string> read_secret_file(const std::filesystem::path& file) {
  // One open file for every check and the read, so that nothing swaps the file between.
  int fd = ::open(file.c_str(), O_RDONLY | O_NOFOLLOW);
  if (fd < 0)
    return error(errc::io_error, file.string() + ": cannot open (" + std::strerror(errno) + ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return error(errc::invalid_argument, file.string() + " is not a regular file");
  }
  if ((st.st_mode & 077) != 0) {
    ::close(fd);
    return error(errc::invalid_argument, file.string() + " may be read by others; chmod 600 it");
  }
  char buf[4096];
  ssize_t n = ::read(fd, buf, sizeof buf);
  ::close(fd);
  if (n < 0) return error(errc::io_error, file.string() + ": cannot read");
  std::string text(buf, static_cast<size_t>(n));
  text = text.substr(0, text.find('\n'));
  while (!text.empty() && (text.back() == '\r' || text.back() == ' ')) text.pop_back();
  return text;
}

expected<void> write_new_file(const std::filesystem::path& file, std::span<const uint8_t> bytes,
                              int mode) {
  const auto tmp = file.string() + ".tmp." + std::to_string(::getpid());
  auto failed = [&](const std::string& what) -> expected<void> {
    const int saved = errno;
    ::unlink(tmp.c_str());
    return error(errc::io_error, file.string() + ": " + what + " (" + std::strerror(saved) + ")");
  };
  ::unlink(tmp.c_str());  // a crash's leftover of this pid
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) return failed("cannot create");
  size_t at = 0;
  while (at < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + at, bytes.size() - at);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = ENOSPC;
      ::close(fd);
      return failed("cannot write");
    }
    at += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    ::close(fd);
    return failed("cannot sync");
  }
  if (::close(fd) != 0) return failed("cannot write");
  // link, not rename: it fails when the name exists, as O_EXCL does.
  if (::link(tmp.c_str(), file.c_str()) != 0) return failed("cannot create");
  ::unlink(tmp.c_str());
  const auto dir = file.parent_path().empty() ? std::filesystem::path(".") : file.parent_path();
  if (int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return {};
}

}  // namespace gflex
