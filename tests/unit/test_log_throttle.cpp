// A log site a peer can make write at will keeps to its bound, and says how many lines it
// held back once it writes again.
#include <doctest/doctest.h>

#include <chrono>

#include "gflex/runtime/log_throttle.hpp"

using namespace gflex;

TEST_SUITE("log throttle") {
  TEST_CASE("at most `burst` lines a period; the rest are counted and said once") {
    log_throttle t(3, std::chrono::seconds(10));
    const auto start = log_throttle::clock::now();
    uint64_t held = 99;
    int written = 0;
    for (int i = 0; i < 1000; ++i)
      if (t.allow(start + std::chrono::milliseconds(i), held)) ++written;
    CHECK(written == 3);
    // The next period: a line again, which carries the count of those held back.
    CHECK(t.allow(start + std::chrono::seconds(11), held));
    CHECK(held == 997);
    CHECK(t.allow(start + std::chrono::seconds(11), held));
    CHECK(held == 0);  // said once
  }
}
