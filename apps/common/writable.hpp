#pragma once
/// @file
/// Whether an output file the user named can be written, checked before the work that fills
/// it: a script told "failed" (exit 1) after a whole run or a download retries it, and a
/// submitted job is paid for again.

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "gflex/runtime/error.hpp"

namespace gflex::app {

/// Whether `file` can be written, its content left. A file the probe makes is removed at
/// once: a submit refused after the probe left an empty one behind, read as its summary.
inline bool json_writable(const std::string& file) {
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd >= 0) {
    ::close(fd);
    ::unlink(file.c_str());
    return true;
  }
  if (errno != EEXIST) return false;
  std::ofstream out(file, std::ios::app);  // there already: opened without a change
  return static_cast<bool>(out);
}

/// Whether `file` can be written as write_file_atomically writes it (a file beside it first,
/// then renamed): tried with such a file, removed at once.
inline expected<void> file_writable(const std::string& file, const std::string& flag) {
  std::error_code ec;
  if (std::filesystem::is_directory(file, ec))
    return error(errc::io_error, flag + " " + file + ": is a directory");
  const std::string probe = file + ".probe." + std::to_string(::getpid());
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0)
    return error(errc::io_error,
                 flag + " " + file + ": cannot be written (" + std::strerror(errno) + ")");
  ::close(fd);
  ::unlink(probe.c_str());
  return {};
}

}  // namespace gflex::app
