/// @file
/// How long a job leaves a node out after its work failed there: doubling with each failure
/// in a row, and from the start again once a result of the node's is taken.

#include <doctest/doctest.h>

#include "leave_out_backoff.hpp"

using namespace gflex;
using namespace std::chrono_literals;

TEST_SUITE("leave out backoff") {
  TEST_CASE("failures in a row double the time out, up to half an hour") {
    leave_out_backoff b;
    const auto t = leave_out_backoff::clock::now();
    b.failed(t, 10s);
    CHECK(b.until() == t + 10s);
    b.failed(t, 10s);
    CHECK(b.until() == t + 20s);
    for (int i = 0; i < 20; ++i) b.failed(t, 10s);
    CHECK(b.until() == t + 30min);
  }

  TEST_CASE("a result taken ends the row") {
    // Counted over the job's life, eight slow rounds among hundreds of good ones left a
    // volunteer out for half an hour at each slow round after.
    leave_out_backoff b;
    const auto t = leave_out_backoff::clock::now();
    for (int i = 0; i < 8; ++i) b.failed(t, 10s);
    b.succeeded();
    b.failed(t, 10s);
    CHECK(b.until() == t + 10s);
  }
}
