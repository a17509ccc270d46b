#pragma once
/// @file
/// The process's limit on open files. Every connection is a descriptor: a core holds one per
/// node and client. At the usual soft limit of 1,024 a core's accept() fails with EMFILE near
/// 1,000 nodes, and CAF 0.17's acceptor then leaves the connection waiting in the backlog:
/// epoll reports the listener ready again at once, and the multiplexer thread, which carries
/// every node's and client's messages, spins on it.

#include <cstdint>
#include <string_view>

namespace gflex {

/// The limit on open files (RLIMIT_NOFILE) before and after raise_fd_limit.
struct fd_limit {
  uint64_t before = 0;  ///< The soft limit the process started with.
  uint64_t soft = 0;    ///< The soft limit it runs with now: how many descriptors it may open.
  uint64_t hard = 0;    ///< The hard limit, the most the soft one may be raised to unprivileged.
  bool enough = true;   ///< Whether `soft` reaches what the caller wanted.
};

/// Raises this process's soft limit on open files to its hard limit and logs the limit it runs
/// with. When that is below `wanted`, it warns, saying what needs them (`needed_for`, e.g.
/// "10,000 nodes, one each") and how to raise the hard limit. It never fails: when the limit
/// cannot be read or raised, it warns and the process runs on with the limit it has.
fd_limit raise_fd_limit(uint64_t wanted = 0, std::string_view needed_for = {});

}  // namespace gflex
