#pragma once
/// @file
/// One process at a time in a data directory. Two cores on one directory both led: both ran
/// the jobs they found, both wrote the ledger's head, and each one's start removed the blob
/// files the other had written and not yet committed.

#include <filesystem>
#include <string_view>

#include "gflex/runtime/error.hpp"

namespace gflex {

/// An exclusive hold on a directory, released when the lock is destroyed or the process
/// ends (a SIGKILLed holder leaves nothing to clean up). It is an advisory lock (flock) on
/// the file `gflex.lock` in the directory, which holds the holder's pid for the message.
class dir_lock {
 public:
  /// Creates `dir` if it is missing and takes it. Refused with errc::unavailable, naming
  /// the directory, `holder` ("gflex-core") and the other holder's pid, when another open
  /// lock holds it, in this process or another; errc::io_error when the file cannot be made.
  static expected<dir_lock> acquire(const std::filesystem::path& dir, std::string_view holder);

  dir_lock(dir_lock&& other) noexcept;
  dir_lock& operator=(dir_lock&& other) noexcept;
  dir_lock(const dir_lock&) = delete;
  dir_lock& operator=(const dir_lock&) = delete;
  ~dir_lock();

 private:
  explicit dir_lock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

}  // namespace gflex
