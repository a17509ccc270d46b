#include <doctest/doctest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "captured_log.hpp"
#include "gflex/gflex.hpp"
#include "gflex/runtime/tls_credentials.hpp"
#include "temp_dir.hpp"

using namespace gflex;

namespace {

// A loopback port where a program takes each connection and says nothing, as the kernel of
// a frozen core (SIGSTOP) does for it. With `answer_probes`, it answers every connection
// but one that opens a TLS handshake: a core frozen just after the client probed it.
class silent_listener {
 public:
  explicit silent_listener(bool answer_probes) : answer_probes_(answer_probes) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    socklen_t len = sizeof a;
    REQUIRE(::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    port_ = ntohs(a.sin_port);
    REQUIRE(::listen(fd_, 16) == 0);
    thread_ = std::thread([this] { serve(); });
  }
  ~silent_listener() {
    stop_ = true;
    thread_.join();
    release();
    ::close(fd_);
  }
  silent_listener(const silent_listener&) = delete;
  silent_listener& operator=(const silent_listener&) = delete;

  uint16_t port() const { return port_; }

  // Closes the connections held so far: a TLS handshake CAF still waits on fails, and the
  // client's network thread, which polled it, goes quiet.
  void release() {
    std::lock_guard<std::mutex> guard(mutex_);
    for (int c : held_) ::close(c);
    held_.clear();
  }

 private:
  void serve() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      if (answer_probes_ && !opens_tls_handshake(c)) {
        (void)::send(c, "?", 1, MSG_NOSIGNAL);
        ::close(c);
        continue;
      }
      std::lock_guard<std::mutex> guard(mutex_);
      held_.push_back(c);
    }
  }

  // Whether the first byte on `c` (waited for up to 2 s) begins a TLS handshake record.
  static bool opens_tls_handshake(int c) {
    pollfd p{c, POLLIN, 0};
    if (::poll(&p, 1, 2000) <= 0) return false;
    unsigned char first = 0;
    return ::recv(c, &first, 1, MSG_PEEK) == 1 && first == 0x16;
  }

  int fd_ = -1;
  uint16_t port_ = 0;
  bool answer_probes_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mutex_;
  std::vector<int> held_;
};

// A client's key and the bundle of a core made for the test: TLS, as a client dials by
// default.
struct tls_link {
  test::temp_dir dir;
  client_options options;
  tls_link() {
    REQUIRE(create_core_credentials(dir.path()).has_value());
    options.api_key = "any key: no core reads it";
    options.core_cert = core_tls_files::in(dir.path()).bundle;
  }
};

// What client::connect to `at` came to, run on a thread of its own: an error message, or
// nothing when it had not returned within `bound`. A connect still out then is let go on by
// closing the listener's connections, so that the test can end.
struct outcome {
  bool returned = false;
  std::string message;
};
outcome connect_within(silent_listener& at, const client_options& options,
                       std::chrono::seconds bound) {
  auto done = std::make_shared<std::promise<std::string>>();
  auto result = done->get_future();
  std::thread([done, port = at.port(), options] {
    auto c = client::connect("127.0.0.1", port, options);
    done->set_value(c ? std::string("connected") : c.error().message());
  }).detach();
  outcome out;
  out.returned = result.wait_for(bound) == std::future_status::ready;
  if (!out.returned) {
    at.release();
    if (result.wait_for(std::chrono::seconds(30)) != std::future_status::ready) return out;
  }
  out.message = result.get();
  return out;
}

}  // namespace

TEST_SUITE("client connect timeout") {
  // CAF 0.17 waits for a core's handshake for ever; over TLS, a connection whose handshake
  // had no answer kept the actor system from stopping, and `gflex status` hung for good.
  TEST_CASE("a core that takes the connection and never answers is given up on, naming it") {
    tls_link link;
    silent_listener frozen(false);
    const auto o = connect_within(frozen, link.options, std::chrono::seconds(20));
    CHECK_MESSAGE(o.returned, "client::connect did not return within 20 s");
    CHECK(o.message == "cannot reach the core at 127.0.0.1:" + std::to_string(frozen.port()) +
                           ": took the connection but did not answer within 10 s (is the core "
                           "frozen or stopped, or is another program listening there?)");
  }

  // The probe passed, and the core froze before its TLS handshake: CAF cannot cancel that
  // dial, and the client returns all the same, leaving the actor system to the process.
  TEST_CASE("a core that freezes after its probe is given up on within the handshake's bound") {
    tls_link link;
    test::captured_log log(spdlog::level::warn);
    silent_listener frozen(true);
    const auto o = connect_within(frozen, link.options, std::chrono::seconds(20));
    CHECK_MESSAGE(o.returned, "client::connect did not return within 20 s");
    CHECK(o.message == "cannot reach the core at 127.0.0.1:" + std::to_string(frozen.port()) +
                           ": took the connection but did not finish its handshake within 10 s "
                           "(is the core frozen or stopped?)");
    CHECK(log.count("the TLS handshake with 127.0.0.1:" + std::to_string(frozen.port()) +
                    " is left pending") == 1);
  }
}
