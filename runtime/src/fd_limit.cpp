#include "gflex/runtime/fd_limit.hpp"

#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstring>

namespace gflex {

fd_limit raise_fd_limit(uint64_t wanted, std::string_view needed_for) {
  fd_limit out;
  rlimit now{};
  if (::getrlimit(RLIMIT_NOFILE, &now) != 0) {
    spdlog::warn("cannot read the limit on open files (RLIMIT_NOFILE): {}", std::strerror(errno));
    out.enough = wanted == 0;
    return out;
  }
  out.before = out.soft = now.rlim_cur;
  out.hard = now.rlim_max;
  // Raising the soft limit is safe here: nothing in the process waits with select(), whose
  // fd_set holds descriptors below 1,024 only (CAF's multiplexer uses epoll, Debian's
  // cpp-httplib poll). systemd leaves services at a soft 1,024 under a hard 524,288 for the
  // programs that do, expecting the others to raise it themselves.
  if (now.rlim_cur < now.rlim_max) {
    rlimit raised{now.rlim_max, now.rlim_max};
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0)
      out.soft = now.rlim_max;
    else
      // A hard limit of "unlimited" is refused on some systems (Linux caps it at
      // fs.nr_open); the process runs on with what it has.
      spdlog::warn("cannot raise the limit on open files from {} to {}: {}", now.rlim_cur,
                   now.rlim_max, std::strerror(errno));
  }
  out.enough = out.soft >= wanted;
  if (out.soft == out.before)
    spdlog::info("open files: at most {} (RLIMIT_NOFILE)", out.soft);
  else
    spdlog::info("open files: at most {} (RLIMIT_NOFILE, raised from {})", out.soft, out.before);
  if (!out.enough)
    spdlog::warn(
        "open files: at most {}, fewer than the {} wanted for {}: raise the hard limit (as "
        "root: `ulimit -Hn {}` in the shell that starts it, LimitNOFILE={} in its systemd unit, "
        "or nofile in /etc/security/limits.conf)",
        out.soft, wanted, needed_for.empty() ? std::string_view("this process") : needed_for,
        wanted, wanted);
  return out;
}

}  // namespace gflex
