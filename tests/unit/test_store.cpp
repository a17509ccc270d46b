#include <doctest/doctest.h>

#include <string>

#include "gflex/runtime/store.hpp"
#include "temp_dir.hpp"

using namespace gflex;

namespace {
std::vector<uint8_t> bytes(const std::string& s) { return {s.begin(), s.end()}; }
}  // namespace

TEST_SUITE("store") {
  TEST_CASE("put, get, batch commit and prefix scan on a real LMDB file") {
    test::temp_dir dir;
    {
      auto s = store::open(dir.path());
      REQUIRE(s.has_value());
      REQUIRE(s->put("job/1", bytes("a")).has_value());
      std::vector<store_write> batch = {{"job/2", bytes("b")}, {"job/3", bytes("c")},
                                        {"round/1", bytes("r")}, {"job/1", std::nullopt}};
      REQUIRE(s->commit(batch).has_value());
      auto missing = s->get("job/1");
      REQUIRE(missing.has_value());
      CHECK_FALSE(missing->has_value());
    }
    // Reopen: what was committed is there.
    auto s = store::open(dir.path());
    REQUIRE(s.has_value());
    auto v = s->get("job/3");
    REQUIRE(v.has_value());
    REQUIRE(v->has_value());
    CHECK(**v == bytes("c"));
    std::vector<std::string> keys;
    REQUIRE(s->scan("job/", [&](std::string_view k, std::span<const uint8_t>) {
                keys.emplace_back(k);
                return true;
              }).has_value());
    CHECK(keys == std::vector<std::string>{"job/2", "job/3"});
  }

  TEST_CASE("a failed batch changes nothing") {
    test::temp_dir dir;
    auto s = store::open(dir.path());
    REQUIRE(s.has_value());
    REQUIRE(s->put("k", bytes("old")).has_value());
    // LMDB refuses empty keys: the whole batch, including the valid write, must roll back.
    std::vector<store_write> batch = {{"k", bytes("new")}, {"", bytes("x")}};
    auto r = s->commit(batch);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code() == errc::store_error);
    CHECK(**s->get("k") == bytes("old"));
  }

  TEST_CASE("an unusable directory is a clear error") {
    auto s = store::open("/proc/gflex-cannot-exist");
    REQUIRE_FALSE(s.has_value());
    CHECK(s.error().message().find("/proc/gflex-cannot-exist") != std::string::npos);
  }
}
