/// @file
/// What counts against a node's --max-hours (actors/node/compute_clock.hpp): every
/// assignment's time, however it ended, and the running ones' so far. Only finished,
/// successful work counted: a node whose work was all taken back computed for ever.

#include <doctest/doctest.h>

#include <chrono>

#include "compute_clock.hpp"

using namespace gflex;
using namespace std::chrono_literals;

TEST_SUITE("compute clock") {
  TEST_CASE("ended assignments count whatever their end; running ones count so far") {
    compute_clock clock;
    const auto t0 = compute_clock::clock_type::time_point{} + 1000s;
    CHECK(clock.seconds(t0) == 0.0);
    clock.start(1, t0);
    clock.start(2, t0 + 10s);
    // Both running: 30 s and 20 s so far.
    CHECK(clock.seconds(t0 + 30s) == doctest::Approx(50.0));
    // 1 is taken back by its job at 40 s: its 40 s stay counted.
    clock.stop(1, t0 + 40s);
    CHECK(clock.seconds(t0 + 40s) == doctest::Approx(70.0));
    CHECK(clock.seconds(t0 + 100s) == doctest::Approx(40.0 + 90.0));
    clock.stop(2, t0 + 100s);
    CHECK(clock.seconds(t0 + 500s) == doctest::Approx(130.0));
    // An id that is not running changes nothing, nor does stopping one twice.
    clock.stop(2, t0 + 600s);
    clock.stop(99, t0 + 600s);
    CHECK(clock.seconds(t0 + 700s) == doctest::Approx(130.0));
    // The same id twice at once (a re-computation of one's own work) counts twice.
    clock.start(3, t0 + 700s);
    clock.start(3, t0 + 700s);
    CHECK(clock.seconds(t0 + 710s) == doctest::Approx(150.0));
  }
}
