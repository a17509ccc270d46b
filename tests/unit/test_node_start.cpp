/// A node that could not start (actors/node/node_supervisor.hpp): its exit code says whether
/// starting again may work, which is what a service manager restarts by.

#include <doctest/doctest.h>

#include "node_supervisor.hpp"

using namespace gflex;

TEST_SUITE("node start") {
  TEST_CASE("a device or file that failed at start is restarted; settings are final") {
    // Every failure was exit 2, which the unit never restarts: a GPU out of memory at a
    // restart (another program held it) kept the node down until someone noticed.
    CHECK(start_failure_exit_code(error(errc::device_error, "out of device memory")) == 1);
    CHECK(start_failure_exit_code(error(errc::io_error, "node.key: cannot read")) == 1);
    CHECK(start_failure_exit_code(error(errc::unavailable, "NCCL")) == 1);
    CHECK(start_failure_exit_code(error(errc::invalid_argument, "--workers")) == 2);
    CHECK(start_failure_exit_code(error(errc::no_device, "no CUDA device")) == 2);
  }
}
