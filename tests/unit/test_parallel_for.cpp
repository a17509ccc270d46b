/// The CPU backend's fork-join pool (kernels/src/parallel_for.hpp): a loop body that throws
/// (std::bad_alloc where host memory is short) on any thread is thrown to the caller once
/// every chunk has ended, and the pool goes on working. Thrown on a worker thread, it ended
/// the node's process (std::terminate), and the worker's own catch never saw it.

#include <doctest/doctest.h>

#include <atomic>
#include <new>
#include <stdexcept>

#include "../../kernels/src/parallel_for.hpp"

using gflex::kernels::parallel_for;

TEST_SUITE("parallel_for") {
  TEST_CASE("a body that throws on any thread is thrown to the caller, and the pool goes on") {
    parallel_for pool(4);
    REQUIRE(pool.threads() == 4);
    const int64_t n = 4 * 1024;
    for (int64_t thrower : {int64_t{0}, n - 1}) {  // the caller's chunk, a worker thread's
      CAPTURE(thrower);
      std::atomic<int64_t> done{0};
      bool thrown = false;
      try {
        pool.run(n, 1, 0, [&](int64_t begin, int64_t end) {
          if (begin <= thrower && thrower < end) throw std::bad_alloc();
          done += end - begin;
        });
      } catch (const std::bad_alloc&) {
        thrown = true;
      }
      CHECK(thrown);
      CHECK(done.load() == n - n / 4);  // the other three chunks ran to their end
      std::atomic<int64_t> sum{0};
      pool.run(n, 1, 0, [&](int64_t begin, int64_t end) { sum += end - begin; });
      CHECK(sum.load() == n);
    }
  }
}
