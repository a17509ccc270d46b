#include "gflex/runtime/dir_lock.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

namespace gflex {

namespace {

// The pid the holder wrote, or "?" (it may be between its lock and its write).
std::string holder_pid(int fd) {
  char buf[32] = {};
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  std::string pid;
  for (ssize_t i = 0; i < n && buf[i] >= '0' && buf[i] <= '9'; ++i) pid += buf[i];
  return pid.empty() ? std::string("?") : pid;
}

}  // namespace

expected<dir_lock> dir_lock::acquire(const std::filesystem::path& dir, std::string_view holder) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec)
    return error(errc::io_error, dir.string() + ": cannot create directory (" + ec.message() + ")");
  const auto file = dir / "gflex.lock";
  // O_CLOEXEC: a program this process starts must not keep the directory held after it ends.
  int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0)
    return error(errc::io_error, file.string() + ": cannot open (" + std::strerror(errno) + ")");
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    if (err == EWOULDBLOCK) {
      auto pid = holder_pid(fd);
      ::close(fd);
      return error(errc::unavailable,
                   dir.string() + " is in use by another " + std::string(holder) + " (pid " + pid +
                       "): one data directory serves one " + std::string(holder) +
                       " at a time; give this one its own --data-dir");
    }
    ::close(fd);
    return error(errc::io_error, file.string() + ": cannot lock (" + std::strerror(err) + ")");
  }
  // The pid is only for the refusal's message: a failed write leaves the lock held.
  const auto pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) == 0) (void)!::pwrite(fd, pid.data(), pid.size(), 0);
  return dir_lock(fd);
}

dir_lock::dir_lock(dir_lock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

dir_lock& dir_lock::operator=(dir_lock&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

dir_lock::~dir_lock() {
  if (fd_ >= 0) ::close(fd_);  // closing the only descriptor releases the flock
}

}  // namespace gflex
