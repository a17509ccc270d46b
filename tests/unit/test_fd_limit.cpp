#include <doctest/doctest.h>
#include <sys/resource.h>

#include <string>

#include "captured_log.hpp"
#include "gflex/runtime/fd_limit.hpp"

using namespace gflex;

namespace {

// The process's limit on open files as the test found it, put back when the test ends (also
// when a REQUIRE ends it early), so that the tests after it run with the limit they expect.
struct saved_fd_limit {
  rlimit at_start{};
  saved_fd_limit() { REQUIRE(::getrlimit(RLIMIT_NOFILE, &at_start) == 0); }
  ~saved_fd_limit() { ::setrlimit(RLIMIT_NOFILE, &at_start); }
};

rlimit fd_limit_now() {
  rlimit now{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &now) == 0);
  return now;
}

}  // namespace

TEST_SUITE("fd_limit") {
  TEST_CASE("a lowered soft limit on open files is raised to the hard limit, and logged") {
    saved_fd_limit saved;
    const rlimit low{64, saved.at_start.rlim_max};
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &low) == 0);
    test::captured_log log;
    const fd_limit got = raise_fd_limit();
    const rlimit now = fd_limit_now();
    CHECK(now.rlim_cur == saved.at_start.rlim_max);
    CHECK(now.rlim_max == saved.at_start.rlim_max);
    CHECK(got.before == 64);
    CHECK(got.soft == saved.at_start.rlim_max);
    CHECK(got.hard == saved.at_start.rlim_max);
    CHECK(got.enough);
    CHECK(log.count("open files: at most " + std::to_string(saved.at_start.rlim_max) +
                    " (RLIMIT_NOFILE, raised from 64)") == 1);
    CHECK(log.count("fewer than") == 0);
  }

  TEST_CASE("a hard limit below what is wanted is warned about, with how to raise it") {
    saved_fd_limit saved;
    const rlimit low{64, saved.at_start.rlim_max};
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &low) == 0);
    test::captured_log log;
    const uint64_t wanted = saved.at_start.rlim_max + 1;
    const fd_limit got = raise_fd_limit(wanted, "10,000 nodes");
    CHECK(fd_limit_now().rlim_cur == saved.at_start.rlim_max);
    CHECK(got.soft == saved.at_start.rlim_max);
    CHECK_FALSE(got.enough);
    const std::string text = log.text();
    CHECK(text.find("fewer than the " + std::to_string(wanted) + " wanted for 10,000 nodes") !=
          std::string::npos);
    CHECK(text.find("ulimit -Hn " + std::to_string(wanted)) != std::string::npos);
    CHECK(text.find("LimitNOFILE=" + std::to_string(wanted)) != std::string::npos);
  }

  TEST_CASE("a soft limit already at the hard limit is left as it is") {
    saved_fd_limit saved;
    const rlimit full{saved.at_start.rlim_max, saved.at_start.rlim_max};
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &full) == 0);
    test::captured_log log;
    const fd_limit got = raise_fd_limit(1024, "a test");
    CHECK(got.before == saved.at_start.rlim_max);
    CHECK(got.soft == saved.at_start.rlim_max);
    CHECK(got.enough);
    CHECK(fd_limit_now().rlim_cur == saved.at_start.rlim_max);
    CHECK(log.count("open files: at most " + std::to_string(saved.at_start.rlim_max) +
                    " (RLIMIT_NOFILE)") == 1);
  }
}
