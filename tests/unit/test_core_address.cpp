/// @file
/// HOST:PORT flags as the apps read them (apps/common/core_address.hpp): IPv6 addresses in
/// brackets.

#include <doctest/doctest.h>

#include <string>
#include <utility>
#include <vector>

#include "core_address.hpp"

using namespace gflex;
using gflex::app::host_port;
using gflex::app::parse_host_port;

TEST_SUITE("core address") {
  TEST_CASE("an IPv6 address in brackets is read without them") {
    // Kept, "[::1]" reached getaddrinfo, httplib and CAF as a host name none could find, and
    // the failure read as a port in use (exit 1: restarted for ever).
    auto loopback = parse_host_port("[::1]:9464", "--metrics-listen");
    REQUIRE(loopback.has_value());
    CHECK(loopback->host == "::1");
    CHECK(loopback->port == 9464);
    auto doc = parse_host_port("[2001:db8::1]:7400", "--listen");
    REQUIRE(doc.has_value());
    CHECK(doc->host == "2001:db8::1");
    CHECK(app::to_string(*doc) == "[2001:db8::1]:7400");
  }

  TEST_CASE("the forms that worked before still do") {
    for (const auto& [text, host] : std::vector<std::pair<std::string, std::string>>{
             {"127.0.0.1:7400", "127.0.0.1"},
             {"core.example.org:7400", "core.example.org"},
             {":::7400", "::"},
             {"::1:7400", "::1"}}) {
      CAPTURE(text);
      auto parsed = parse_host_port(text, "--listen");
      REQUIRE(parsed.has_value());
      CHECK(parsed->host == host);
      CHECK(parsed->port == 7400);
    }
  }

  TEST_CASE("a malformed IPv6 address is refused naming the flag") {
    for (const std::string text : {"2001:db8::7400", "[::1:7400", "[::1]7400", "::1]:7400",
                                   "[]:7400", "[[::1]]:7400", "[::1]:0"}) {
      CAPTURE(text);
      auto parsed = parse_host_port(text, "--http-listen");
      REQUIRE_FALSE(parsed.has_value());
      CHECK(parsed.error().code() == errc::invalid_argument);
      CHECK(parsed.error().message().find("--http-listen") != std::string::npos);
    }
  }
}
