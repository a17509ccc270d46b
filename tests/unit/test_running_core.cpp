/// @file
/// The ports running_core.hpp hands out to tests that restart a core on the same port.

#include <doctest/doctest.h>

#include <cstdint>
#include <fstream>
#include <set>

#include "running_core.hpp"

TEST_SUITE("running core") {
  TEST_CASE("a port for a restarted core lies below the ephemeral range and is given once") {
    // bind(0) gave a port of the ephemeral range: another test process's bind(0) took it while
    // the first core was down, and the second core could not listen on it.
    int ephemeral_low = 32768;
    std::ifstream("/proc/sys/net/ipv4/ip_local_port_range") >> ephemeral_low;
    std::set<uint16_t> ports;
    for (int i = 0; i < 50; ++i) {
      const uint16_t port = gflex::test::free_loopback_port();
      CHECK(port > 1024);
      CHECK(port < ephemeral_low);
      CHECK(ports.insert(port).second);
    }
  }
}
