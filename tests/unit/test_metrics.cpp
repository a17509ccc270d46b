// The process's Prometheus metrics (<gflex/runtime/metrics.hpp>): what they render, that
// /metrics serves them over HTTP, and the refusal of a malformed address.

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "gflex/runtime/metrics.hpp"

using namespace gflex;

namespace {

/// GET /metrics from 127.0.0.1:port with a plain socket: the whole response.
std::string http_get_metrics(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  const std::string req = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  REQUIRE(::write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size()));
  std::string out;
  char buf[4096];
  ssize_t n = 0;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

}  // namespace

TEST_SUITE("metrics") {
  TEST_CASE("counters, gauges and histograms render in the text exposition") {
    auto sent = metrics::counter_of("gflex_test_things_total", "Things, by kind", {{"kind", "a"}});
    auto other = metrics::counter_of("gflex_test_things_total", "ignored", {{"kind", "b"}});
    sent.inc();
    sent.inc(2);
    other.inc();
    // The same name and labels are the same metric.
    CHECK(metrics::counter_of("gflex_test_things_total", "", {{"kind", "a"}}).value() == 3);
    auto level = metrics::gauge_of("gflex_test_level", "A level");
    level.set(5);
    level.dec(2);
    auto took =
        metrics::histogram_of("gflex_test_took_seconds", "Durations", metrics::seconds_buckets());
    took.observe(0.003);
    took.observe(7);
    const std::string text = metrics::render();
    CHECK(text.find("# HELP gflex_test_things_total Things, by kind") != std::string::npos);
    CHECK(text.find("# TYPE gflex_test_things_total counter") != std::string::npos);
    CHECK(text.find("gflex_test_things_total{kind=\"a\"} 3") != std::string::npos);
    CHECK(text.find("gflex_test_things_total{kind=\"b\"} 1") != std::string::npos);
    CHECK(text.find("gflex_test_level 3") != std::string::npos);
    CHECK(text.find("gflex_test_took_seconds_count 2") != std::string::npos);
    CHECK(text.find("gflex_test_took_seconds_bucket{le=\"0.005\"} 1") != std::string::npos);
    CHECK(text.find("gflex_test_took_seconds_bucket{le=\"10\"} 2") != std::string::npos);
  }

  TEST_CASE("/metrics is served over HTTP; a malformed address is refused") {
    for (const char* bad : {"", "9464", "localhost:", ":9464", "127.0.0.1:70000", "h:12x"}) {
      auto r = metrics::serve(bad);
      REQUIRE_FALSE(r.has_value());
      CHECK(r.error().code() == errc::invalid_argument);
    }
    auto port = metrics::serve("127.0.0.1:0");
    REQUIRE(port.has_value());
    CHECK(*port > 0);
    metrics::counter_of("gflex_test_served_total", "Served").inc(42);
    const std::string response = http_get_metrics(*port);
    CHECK(response.rfind("HTTP/1.", 0) == 0);
    CHECK(response.find(" 200 ") != std::string::npos);
    CHECK(response.find("gflex_test_served_total 42") != std::string::npos);
    // One endpoint per process.
    auto again = metrics::serve("127.0.0.1:0");
    REQUIRE_FALSE(again.has_value());
    CHECK(again.error().message() == "metrics are served already");
  }
}
