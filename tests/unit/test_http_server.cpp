/// @file
/// What the HTTP services (dashboard, /metrics, the chunk service) take before any handler
/// runs: anyone who reaches their port may send anything, and httplib reads a request's body
/// whole, decompressing it, before routing it. A read-only service refuses bodies, a service
/// with a credential checks it, and a body past the limit is refused, each before the body
/// is read (the core read gigabytes sent to its dashboard).

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include "gflex/runtime/http_server.hpp"

using namespace gflex;

namespace {

// Sends `head` (a request's line and headers, no body) and returns the status line the
// server answers within 2 s ("" if none): a server that waits for the body answers nothing.
std::string status_without_body(uint16_t port, const std::string& head) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  timeval wait{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
  REQUIRE(::send(fd, head.data(), head.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(head.size()));
  char buf[256];
  const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
  ::close(fd);
  if (n <= 0) return "";
  const std::string got(buf, static_cast<size_t>(n));
  return got.substr(0, got.find("\r\n"));
}

}  // namespace

TEST_SUITE("http server") {
  TEST_CASE("a read-only service refuses a body before reading it") {
    auto s = http::server::start(
        "127.0.0.1", 0, 2,
        [](httplib::Server& http) {
          http.Get("/", [](const httplib::Request&, httplib::Response& res) {
            res.set_content("hello", "text/plain");
          });
        },
        "a test service");
    REQUIRE(s.has_value());
    const uint16_t port = (*s)->port();
    httplib::Client c("127.0.0.1", port);
    auto get = c.Get("/");
    REQUIRE(get);
    CHECK(get->body == "hello");
    // A 10 GB body announced: refused at once, not waited for (and then kept in memory).
    CHECK(status_without_body(port,
                              "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: "
                              "10000000000\r\n\r\n") == "HTTP/1.1 405 Method Not Allowed");
    CHECK(status_without_body(port,
                              "PUT /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "
                              "chunked\r\n\r\n") == "HTTP/1.1 405 Method Not Allowed");
  }

  TEST_CASE("a service with a credential and a body limit checks both before the body") {
    http::server_limits limits;
    limits.max_body_bytes = 1024;
    limits.admit = [](const httplib::Request& req) {
      return req.get_header_value("Authorization") == "Bearer k";
    };
    auto s = http::server::start(
        "127.0.0.1", 0, 2,
        [](httplib::Server& http) {
          http.Put("/chunk", [](const httplib::Request& req, httplib::Response& res) {
            res.set_content(std::to_string(req.body.size()), "text/plain");
          });
        },
        "a test service", limits);
    REQUIRE(s.has_value());
    const uint16_t port = (*s)->port();
    CHECK(status_without_body(port,
                              "PUT /chunk HTTP/1.1\r\nHost: x\r\nContent-Length: "
                              "10000000000\r\n\r\n") == "HTTP/1.1 403 Forbidden");
    CHECK(status_without_body(port,
                              "PUT /chunk HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                              "k\r\nContent-Length: 10000000000\r\n\r\n") ==
          "HTTP/1.1 413 Payload Too Large");
    // A compressed body may decompress to any size: refused.
    CHECK(status_without_body(port,
                              "PUT /chunk HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                              "k\r\nContent-Encoding: gzip\r\nContent-Length: "
                              "100\r\n\r\n") == "HTTP/1.1 415 Unsupported Media Type");
    // A body of no stated length is not held to the limit by httplib: refused, not read.
    CHECK(status_without_body(port,
                              "PUT /chunk HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                              "k\r\nTransfer-Encoding: chunked\r\n\r\n") ==
          "HTTP/1.1 411 Length Required");
    CHECK(status_without_body(port,
                              "PUT /chunk HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                              "k\r\n\r\n") == "HTTP/1.1 411 Length Required");
    httplib::Client c("127.0.0.1", port);
    auto fine = c.Put("/chunk", {{"Authorization", "Bearer k"}}, std::string(1000, 'x'),
                      "application/octet-stream");
    REQUIRE(fine);
    CHECK(fine->status == 200);
    CHECK(fine->body == "1000");
  }

  TEST_CASE("the ranges a request asks for are ignored: one body is sent, whole") {
    // httplib sent every range asked for, each from the whole body, unbounded: 100 ranges
    // "-" of a 100 KB page were a 10 MB answer, and an 8 KiB header of them 400 times it.
    const std::string page(100000, 'p');
    auto s = http::server::start(
        "127.0.0.1", 0, 2,
        [&page](httplib::Server& http) {
          http.Get("/", [&page](const httplib::Request&, httplib::Response& res) {
            res.set_content(page, "text/plain");
          });
        },
        "a test service");
    REQUIRE(s.has_value());
    httplib::Client c("127.0.0.1", (*s)->port());
    std::string ranges = "bytes=-";
    for (int i = 0; i < 99; ++i) ranges += ",-";
    auto got = c.Get("/", {{"Range", ranges}});
    REQUIRE(got);
    CHECK(got->status == 200);
    CHECK(got->body.size() == page.size());
  }

  TEST_CASE("a service stopped as soon as it is started stops") {
    // httplib's stop() did nothing until the server's thread had marked itself running: a
    // service destroyed right after its start (a core told to stop as it starts) was joined
    // for ever. Bounded here by a watcher, not by the test's own end.
    auto done = std::make_shared<std::atomic<int>>(0);
    std::thread([done] {
      for (int i = 0; i < 200; ++i) {
        auto s = http::server::start(
            "127.0.0.1", 0, 1, [](httplib::Server&) {}, "a test service");
        if (!s) break;
        done->fetch_add(1);
      }
    }).detach();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (done->load() < 200 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    CHECK_MESSAGE(done->load() == 200, done->load() << " of 200 started and stopped in 30 s");
  }
}
