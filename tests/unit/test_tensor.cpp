#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "gflex/runtime/tensor.hpp"

using namespace gflex;

TEST_SUITE("tensor") {
  TEST_CASE("shape, size and element access") {
    auto t = tensor::zeros({3, 4}, dtype::f32);
    CHECK(t.rank() == 2);
    CHECK(t.numel() == 12);
    CHECK(t.nbytes() == 48);
    CHECK(t.on_host());
    CHECK(reinterpret_cast<uintptr_t>(t.raw()) % 64 == 0);
    for (float v : t.span<float>()) CHECK(v == 0.0f);
    t.span<float>()[5] = 2.5f;
    auto copy = t.clone();
    t.span<float>()[5] = 1.0f;
    CHECK(copy.span<float>()[5] == 2.5f);
  }

  TEST_CASE("reshape keeps memory and checks the element count") {
    auto t = tensor::zeros({2, 6}, dtype::i32);
    auto r = t.reshape({3, 4});
    REQUIRE(r.has_value());
    CHECK(r->raw() == t.raw());
    auto bad = t.reshape({5, 5});
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().code() == errc::shape_mismatch);
    CHECK(bad.error().message().find("[2, 6]") != std::string::npos);
  }

  TEST_CASE("checked_numel rejects negative extents and overflow") {
    CHECK(*checked_numel({}) == 1);
    CHECK(*checked_numel({0, 5}) == 0);
    CHECK(checked_numel({-1, 3}).error().code() == errc::invalid_argument);
    CHECK_FALSE(checked_numel({int64_t{1} << 31, int64_t{1} << 31}).has_value());
    CHECK_FALSE(checked_numel({10, 10}, 99).has_value());
  }

  TEST_CASE("first_non_finite finds NaN and infinity") {
    float ok[] = {1.0f, -2.0f, 0.0f};
    CHECK(first_non_finite(ok) == -1);
    float nan[] = {1.0f, std::numeric_limits<float>::quiet_NaN(), 0.0f};
    CHECK(first_non_finite(nan) == 1);
    float inf[] = {1.0f, 2.0f, -std::numeric_limits<float>::infinity()};
    CHECK(first_non_finite(inf) == 2);
  }
}
