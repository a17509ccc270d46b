/// @file
/// HOST:PORT flags as the apps read them (apps/common/core_address.hpp): IPv6 addresses in
/// brackets, and a core's listening flags that name one port twice.

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
    CHECK(app::address_text(*doc) == "[2001:db8::1]:7400");
  }

  TEST_CASE("the forms that worked before still do") {
    for (const auto& form : std::vector<std::pair<std::string, std::string>>{
             {"127.0.0.1:7400", "127.0.0.1"},
             {"core.example.org:7400", "core.example.org"},
             {":::7400", "::"},
             {"::1:7400", "::1"}}) {
      // Named, not bound: clang refuses a structured binding in doctest's CAPTURE.
      const std::string& text = form.first;
      const std::string& host = form.second;
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

  TEST_CASE("two listening flags on one port are refused, naming both") {
    auto at = [](const std::string& text) { return *parse_host_port(text, "x"); };
    using listens = std::vector<std::pair<std::string, host_port>>;
    auto clash = app::check_distinct_listens(listens{{"--listen", at("127.0.0.1:7400")},
                                                     {"--metrics-listen", at("127.0.0.1:9464")},
                                                     {"--http-listen", at("0.0.0.0:7400")}});
    REQUIRE_FALSE(clash.has_value());
    CHECK(clash.error().code() == errc::invalid_argument);
    const std::string why = clash.error().message();
    CHECK(why.find("--listen 127.0.0.1:7400") != std::string::npos);
    CHECK(why.find("--http-listen 0.0.0.0:7400") != std::string::npos);
    CHECK_FALSE(app::check_distinct_listens(listens{{"--listen", at("localhost:7400")},
                                                    {"--chunk-listen", at("127.0.0.1:7400")}})
                    .has_value());
    CHECK_FALSE(app::check_distinct_listens(
                    listens{{"--listen", at("[::]:7400")}, {"--metrics-listen", at("[::1]:7400")}})
                    .has_value());
    // Other ports, or other addresses of the machine on one port, are fine.
    CHECK(app::check_distinct_listens(listens{{"--listen", at("127.0.0.1:7400")},
                                              {"--metrics-listen", at("127.0.0.1:9464")}})
              .has_value());
    CHECK(app::check_distinct_listens(
              listens{{"--listen", at("10.0.0.1:7400")}, {"--http-listen", at("127.0.0.1:7400")}})
              .has_value());
  }
}
