#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

#include "gflex/runtime/dir_lock.hpp"
#include "temp_dir.hpp"

using namespace gflex;

TEST_SUITE("dir_lock") {
  TEST_CASE("a data directory is held by one holder at a time, and free again after") {
    test::temp_dir dir;
    const auto data = dir.path() / "core";  // made by the lock
    {
      auto first = dir_lock::acquire(data, "gflex-core");
      REQUIRE(first.has_value());
      std::ifstream pid_file(data / "gflex.lock");
      std::string pid;
      pid_file >> pid;
      CHECK(pid == std::to_string(::getpid()));

      auto second = dir_lock::acquire(data, "gflex-core");
      REQUIRE_FALSE(second.has_value());
      CHECK(second.error().code() == errc::unavailable);
      const auto& message = second.error().message();
      CHECK(message.find(data.string() + " is in use by another gflex-core (pid " + pid + ")") !=
            std::string::npos);
      CHECK(message.find("--data-dir") != std::string::npos);

      dir_lock moved = std::move(*first);  // the hold moves with the lock
      CHECK_FALSE(dir_lock::acquire(data, "gflex-core").has_value());
    }
    CHECK(dir_lock::acquire(data, "gflex-core").has_value());
  }

  TEST_CASE("a directory that cannot be made is an io_error naming it") {
    auto lock = dir_lock::acquire("/proc/gflex-cannot-exist", "gflex-core");
    REQUIRE_FALSE(lock.has_value());
    CHECK(lock.error().code() == errc::io_error);
    CHECK(lock.error().message().find("/proc/gflex-cannot-exist") != std::string::npos);
  }
}
