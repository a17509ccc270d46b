#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <vector>

#include "gflex/runtime/tcp_probe.hpp"

using namespace gflex;

namespace {

// A loopback listener that never accepts, with an accept queue of one: once it is full, the
// kernel drops further connection requests, as a machine that is off does.
struct listener {
  int fd = -1;
  uint16_t port = 0;
  std::vector<int> fillers;
  listener() {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    socklen_t len = sizeof a;
    REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    port = ntohs(a.sin_port);
    REQUIRE(::listen(fd, 0) == 0);
  }
  void fill() {
    for (int i = 0; i < 3; ++i) {
      const int c = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = htons(port);
      (void)::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a);
      fillers.push_back(c);
    }
    ::usleep(100 * 1000);
  }
  ~listener() {
    for (int c : fillers) ::close(c);
    ::close(fd);
  }
};

}  // namespace

TEST_SUITE("tcp probe") {
  TEST_CASE("an address that answers, one that refuses, and one that drops: each told in time") {
    // CAF connects with a blocking connect(): a core machine that was off held a client or a
    // node for the kernel's SYN retries (about 2 minutes) before it tried the next core.
    listener open;
    CHECK(probe_tcp("127.0.0.1", open.port).has_value());

    uint16_t closed = 0;
    {
      listener gone;  // a port just let go: nothing listens there
      closed = gone.port;
    }
    auto refused = probe_tcp("127.0.0.1", closed);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().code() == errc::unavailable);
    CHECK(refused.error().message().find("refused") != std::string::npos);

    listener full;
    full.fill();
    const auto start = std::chrono::steady_clock::now();
    auto dropped = probe_tcp("127.0.0.1", full.port, std::chrono::milliseconds(500));
    const auto took = std::chrono::steady_clock::now() - start;
    REQUIRE_FALSE(dropped.has_value());
    CHECK_MESSAGE(dropped.error().message().find("no answer in 500 ms") != std::string::npos,
                  dropped.error().message());
    CHECK(took < std::chrono::seconds(2));

    auto unresolved = probe_tcp("no-such-host.invalid", 7400);
    REQUIRE_FALSE(unresolved.has_value());
    CHECK(unresolved.error().message().find("cannot resolve") != std::string::npos);
  }
}
