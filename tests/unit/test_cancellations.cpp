/// @file
/// The node's list of assignments it no longer wants computed: bounded, and what it forgets
/// first is what it was told longest ago (stale aborts of assignments that had ended), never
/// the one cancelled now; and the assignments its workers hold, cancelled together when the
/// uplink that handed them out is restarted.

#include <doctest/doctest.h>

#include <cstdint>

#include "cancellations.hpp"

using namespace gflex;

TEST_SUITE("cancellations") {
  TEST_CASE("past the bound the longest remembered goes, not the smallest id") {
    cancellations c;
    // Stale aborts (their assignments had ended: no worker forgets them) of large ids, then
    // the live one, of a small id (ids are random).
    for (uint64_t i = 0; i + 1 < cancellations::max_entries; ++i) c.cancel((uint64_t{1} << 63) + i);
    c.cancel(5);
    c.cancel(uint64_t{1} << 62);                  // one more: the bound is passed
    CHECK(c.cancelled(5));                        // before, the smallest id went: the live one
    CHECK_FALSE(c.cancelled(uint64_t{1} << 63));  // the oldest went
    CHECK(c.cancelled(uint64_t{1} << 62));
    c.forget(5);
    CHECK_FALSE(c.cancelled(5));
    // Forgetting and cancelling again and again keeps it bounded and answering.
    for (uint64_t i = 0; i < 5 * cancellations::max_entries; ++i) {
      c.cancel(1000 + i);
      c.forget(1000 + i);
    }
    c.cancel(7);
    CHECK(c.cancelled(7));
    // An id cancelled, forgotten and cancelled again stays while it is among the newest.
    cancellations d;
    d.cancel(9);
    d.forget(9);
    for (uint64_t i = 0; i < cancellations::max_entries; ++i) d.cancel(100 + i);
    d.cancel(9);
    for (uint64_t i = 0; i < cancellations::max_entries / 2; ++i) {
      d.cancel(1u << 20 | i);
      d.forget(1u << 20 | i);
    }
    CHECK(d.cancelled(9));
  }

  TEST_CASE("what the workers hold is cancelled at once, what they answered not") {
    // A restarted uplink cancelled only the assignments computing: one whose shard was still
    // coming ran every step once it came, for an uplink that was gone.
    cancellations c;
    c.hold(1);
    c.hold(2);
    c.hold(2);  // a re-computation of one's own work beside it
    c.hold(3);
    c.release(2);
    c.release(3);
    c.release(4);  // never held: nothing changes
    c.cancel_held();
    CHECK(c.cancelled(1));
    CHECK(c.cancelled(2));  // still held once
    CHECK_FALSE(c.cancelled(3));
    CHECK_FALSE(c.cancelled(4));
    c.release(1);
    c.release(2);
    c.forget(1);
    c.forget(2);
    c.cancel_held();
    CHECK_FALSE(c.cancelled(1));
    CHECK_FALSE(c.cancelled(2));
  }
}
