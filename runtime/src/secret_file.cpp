#include "gflex/runtime/secret_file.hpp"

#include "synced_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace gflex {

std::string foreign_owner(unsigned owner) {
  return "is owned by uid " + std::to_string(owner) + ", not by this user (uid " +
         std::to_string(::geteuid()) +
         ") or root: its owner may read or replace it; chown it to this user";
}

expected<std::string> read_secret_file(const std::filesystem::path& file) {
  // One open file for every check and the read, so that nothing swaps the file between.
  // O_NONBLOCK: opening a FIFO no one writes would wait in open(2) for ever, before the check
  // below could refuse it; a regular file's reads are not changed by it.
  int fd = ::open(file.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
  // A link is not followed (whoever may change it could point it elsewhere): said so, not
  // as "too many levels of symbolic links" (ELOOP), which a single link seemed not to be.
  if (fd < 0 && errno == ELOOP)
    return error(errc::invalid_argument,
                 file.string() +
                     " is a symbolic link: a secret file must be a regular file (give the path "
                     "of the file itself)");
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
  // Mode 0600 keeps out everyone but the owner: a file another user owns (a root-run core
  // given a directory of someone else's) is theirs to read or replace.
  if (st.st_uid != ::geteuid() && st.st_uid != 0) {
    ::close(fd);
    return error(errc::invalid_argument, file.string() + " " + foreign_owner(st.st_uid));
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
  return detail::write_synced(file, bytes, static_cast<mode_t>(mode), false, true);
}

}  // namespace gflex
