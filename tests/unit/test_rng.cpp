#include <doctest/doctest.h>

#include "gflex/runtime/rng.hpp"

using gflex::rng;

TEST_SUITE("rng") {
  TEST_CASE("the stream is fixed by the seed, on every platform") {
    rng r(0);
    // SplitMix64's published first output for seed 0.
    CHECK(r.next() == 0xE220A8397B1DCDAFULL);
    rng a(5), b(5);
    for (int i = 0; i < 100; ++i) CHECK(a.next() == b.next());
  }

  TEST_CASE("uniform, below and normal stay in range with the right moments") {
    rng r(1);
    double sum = 0, sum2 = 0;
    const int n = 200000;
    for (int i = 0; i < n; ++i) {
      double u = r.uniform();
      REQUIRE((u >= 0.0 && u < 1.0));
      REQUIRE(r.below(7) < 7);
      double z = r.normal();
      sum += z;
      sum2 += z * z;
    }
    CHECK(sum / n == doctest::Approx(0.0).scale(1.0).epsilon(0.01));
    CHECK(sum2 / n == doctest::Approx(1.0).epsilon(0.01));
  }
}
