/// @file
/// When a job whose actor keeps stopping is failed rather than restarted: four stops within
/// a minute, or six at one round with none committed between, however far apart.

#include <doctest/doctest.h>

#include "restart_budget.hpp"

using namespace gflex;
using namespace std::chrono_literals;

TEST_SUITE("restart budget") {
  TEST_CASE("four stops within a minute fail the job") {
    restart_budget b;
    const auto t = restart_budget::clock::now();
    CHECK(b.allow(t, 2));
    CHECK(b.allow(t + 1s, 3));
    CHECK(b.allow(t + 2s, 4));
    CHECK_FALSE(b.allow(t + 3s, 5));
    CHECK(b.why_not() == "stopped 4 times within 60 s");
  }

  TEST_CASE("stops far apart at one round fail the job; a round committed between does not") {
    // Only stops within a minute were counted: a job that threw at the same round every
    // 25 s was restarted for ever, its nodes computing that round again each time, unpaid.
    restart_budget b;
    auto t = restart_budget::clock::now();
    for (int i = 0; i < 5; ++i) {
      t += 25s;
      CHECK(b.allow(t, 7));
    }
    t += 25s;
    CHECK_FALSE(b.allow(t, 7));
    CHECK(b.why_not() == "stopped 6 times at round 7 with no round committed between");

    restart_budget progressing;
    auto u = restart_budget::clock::now();
    for (int64_t round = 0; round < 20; ++round) {
      u += 25s;
      CHECK(progressing.allow(u, round));
    }
  }
}
