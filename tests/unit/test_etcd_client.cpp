/// @file
/// etcd's answers read by the client: an answer of the wrong shape (a field of another
/// type, an int64 that is not one) is the request's error, never an exception. The client
/// runs on the lease's renewal thread, where an exception ended the core. The "etcd" here
/// is an HTTP server on loopback that answers what each case gives it.

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <string>
#include <thread>

#include "gflex/runtime/etcd_client.hpp"

using namespace gflex;

namespace {

// Answers every POST with `body` (status 200), or with `status` and `body`.
struct fake_etcd {
  httplib::Server server;
  std::thread thread;
  int port = 0;
  std::mutex mutex;
  std::string body = "{}";
  int status = 200;

  fake_etcd() {
    server.Post(R"(/v3/.*)", [this](const httplib::Request&, httplib::Response& res) {
      std::lock_guard lock(mutex);
      res.status = status;
      res.set_content(body, "application/json");
    });
    port = server.bind_to_any_port("127.0.0.1");
    thread = std::thread([this] { server.listen_after_bind(); });
  }
  ~fake_etcd() {
    server.stop();
    thread.join();
  }
  void answer(std::string b, int s = 200) {
    std::lock_guard lock(mutex);
    body = std::move(b);
    status = s;
  }
  etcd_client client() {
    auto c = etcd_client::make("127.0.0.1:" + std::to_string(port));
    REQUIRE(c.has_value());
    return std::move(*c);
  }
};

// Answers every request as etcd's JSON gateway answers an error: chunked, with a trailer
// (Grpc-Trailer-Content-Type), which cpp-httplib's server cannot send. With `cut_short`,
// the connection closes partway through the body instead.
struct trailer_etcd {
  int listener = -1;
  int port = 0;
  std::atomic<bool> stopping{false};
  std::atomic<bool> cut_short{false};
  std::thread thread;

  explicit trailer_etcd(std::string body) {
    listener = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    REQUIRE(::listen(listener, 4) == 0);
    port = ntohs(addr.sin_port);
    thread = std::thread([this, body = std::move(body)] {
      while (!stopping) {
        pollfd p{listener, POLLIN, 0};
        if (::poll(&p, 1, 50) <= 0) continue;
        const int fd = ::accept(listener, nullptr, nullptr);
        if (fd < 0) continue;
        // The request: its headers, then as many bytes as its Content-Length says.
        std::string in;
        char buf[4096];
        size_t need = std::string::npos;
        while (need == std::string::npos || in.size() < need) {
          const ssize_t n = ::read(fd, buf, sizeof buf);
          if (n <= 0) break;
          in.append(buf, static_cast<size_t>(n));
          if (const auto end = in.find("\r\n\r\n");
              need == std::string::npos && end != std::string::npos) {
            const auto at = in.find("Content-Length: ");
            need = end + 4 + (at == std::string::npos ? 0 : std::stoul(in.substr(at + 16)));
          }
        }
        char size[16];
        std::snprintf(size, sizeof size, "%zx", body.size());
        std::string out =
            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
            "Trailer: Grpc-Trailer-Content-Type\r\nTransfer-Encoding: chunked\r\n\r\n" +
            std::string(size) + "\r\n" +
            (cut_short ? body.substr(0, body.size() / 2)
                       : body + "\r\n0\r\nGrpc-Trailer-Content-Type: application/grpc\r\n\r\n");
        (void)!::write(fd, out.data(), out.size());
        ::close(fd);
      }
    });
  }
  ~trailer_etcd() {
    stopping = true;
    thread.join();
    ::close(listener);
  }
};

}  // namespace

TEST_SUITE("etcd client") {
  TEST_CASE("answers of the wrong shape are errors of their request, not exceptions") {
    fake_etcd etcd;
    auto c = etcd.client();
    const std::string key = "k";
    etcd_op put;
    put.key = "k";
    put.value = std::vector<uint8_t>{1};

    etcd.answer(R"({"header": {"revision": "12"}, "kvs": [{"key": "aw==", "value": "AQ=="}]})");
    auto good = c.range(key, false);
    REQUIRE(good.has_value());  // the well-formed answer is read
    REQUIRE(good->size() == 1);
    CHECK(good->front().key == "k");
    auto rev = c.revision();
    REQUIRE(rev.has_value());
    CHECK(*rev == 12);

    struct bad {
      const char* body;
      const char* what;
    };
    for (const bad& b : {bad{R"({"ID": "12x"})", "an int64 with trailing bytes"},
                         bad{R"({"ID": "lots"})", "an int64 that is a word"},
                         bad{R"({"ID": "99999999999999999999"})", "an int64 out of range"},
                         bad{R"({"ID": [1]})", "an int64 that is an array"},
                         bad{R"({"error": 7, "ID": "1"})", "an error that is a number"}}) {
      CAPTURE(b.what);
      etcd.answer(b.body);
      auto lease = c.grant_lease(5);
      REQUIRE_FALSE(lease.has_value());
      CHECK(lease.error().code() == errc::malformed_message);
    }
    etcd.answer(R"({"result": {"TTL": {"n": 5}}})");
    auto alive = c.keep_alive(1);
    REQUIRE_FALSE(alive.has_value());
    CHECK(alive.error().code() == errc::malformed_message);
    etcd.answer(R"({"result": "ok"})");
    CHECK_FALSE(c.keep_alive(1).has_value());

    etcd.answer(R"({"succeeded": "yes"})");
    auto txn = c.txn({}, {&put, 1});
    REQUIRE_FALSE(txn.has_value());
    CHECK(txn.error().code() == errc::malformed_message);
    CHECK(txn.error().message().find("/v3/kv/txn") != std::string::npos);
    etcd.answer(R"({"header": {"revision": "x"}})");
    CHECK_FALSE(c.txn({}, {&put, 1}).has_value());

    for (const char* body : {R"({"kvs": [{"key": 5}]})", R"({"kvs": ["aw=="]})",
                             R"({"kvs": [{"key": "aw==", "mod_revision": "-"}]})"}) {
      CAPTURE(body);
      etcd.answer(body);
      auto r = c.range(key, true);
      REQUIRE_FALSE(r.has_value());
      CHECK(r.error().code() == errc::malformed_message);
    }
    etcd.answer(R"({"header": {"revision": true}})");
    CHECK_FALSE(c.revision().has_value());

    // A refusal whose message is not a string is still a refusal, with the body shown.
    etcd.answer(R"({"message": 3})", 400);
    auto refused = c.range(key, false);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().code() == errc::store_error);
    CHECK(refused.error().message().find("\"message\": 3") != std::string::npos);
  }
}

TEST_SUITE("etcd client") {
  TEST_CASE("a refusal is errc::store_error only where no member asked before may have applied") {
    // A leader's commit that etcd refused outright (a 4xx) wrote nothing and is not settled;
    // one that a member answered 5xx, or not in time, may still land, even where the next
    // member refused it: that one must be settled, not taken for a refusal.
    fake_etcd first, second;
    auto c = etcd_client::make("127.0.0.1:" + std::to_string(first.port) +
                               ",127.0.0.1:" + std::to_string(second.port));
    REQUIRE(c.has_value());
    etcd_op put{"k", std::vector<uint8_t>{1}, 0};
    const std::string no_space =
        R"({"error":"etcdserver: mvcc: database space exceeded",)"
        R"("message":"etcdserver: mvcc: database space exceeded","code":8})";

    first.answer(no_space, 429);
    auto refused = c->txn({}, {&put, 1});
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().code() == errc::store_error);
    CHECK(refused.error().message().find("database space exceeded") != std::string::npos);

    // The member that answered 503 may have proposed it: not a refusal. (The client asks
    // the member that answered last first, and the next one after a 5xx.)
    first.answer(R"({"message": "etcdserver: leader changed"})", 503);
    second.answer(no_space, 429);
    auto unsure = c->txn({}, {&put, 1});
    REQUIRE_FALSE(unsure.has_value());
    CHECK(unsure.error().code() == errc::unavailable);
    CHECK(unsure.error().message().find("database space exceeded") != std::string::npos);

    // 408 is gRPC's Canceled: etcd may apply a proposal whose request was cancelled. The next
    // member is asked, as after a 5xx.
    second.answer(R"({"message": "context canceled"})", 408);
    first.answer(R"({"header": {"revision": "7"}, "succeeded": true})");
    auto applied = c->txn({}, {&put, 1});
    REQUIRE_MESSAGE(applied.has_value(), applied.error().message());
    CHECK(applied->succeeded);
    CHECK(applied->revision == 7);
    first.answer(R"({"message": "context canceled"})", 408);
    second.answer(no_space, 429);
    auto after_cancel = c->txn({}, {&put, 1});
    REQUIRE_FALSE(after_cancel.has_value());
    CHECK(after_cancel.error().code() == errc::unavailable);
  }

  TEST_CASE("etcd's refusals are read, trailer and all") {
    // etcd's gateway sends every error answer chunked, with a trailer; cpp-httplib 0.11
    // fails such an answer after its body (Error::Read). No refusal reached the client's
    // callers: a full space quota's 429 on every commit was "no etcd member answered", an
    // answer lost, and the leader settled it with barriers that etcd refused as well.
    trailer_etcd etcd(R"({"error":"etcdserver: mvcc: database space exceeded",)"
                      R"("message":"etcdserver: mvcc: database space exceeded","code":8})");
    auto c = etcd_client::make("127.0.0.1:" + std::to_string(etcd.port));
    REQUIRE(c.has_value());
    etcd_op put{"k", std::vector<uint8_t>{1}, 0};
    auto refused = c->txn({}, {&put, 1});
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().code() == errc::store_error);
    CHECK_MESSAGE(refused.error().message() ==
                      "etcd refused /v3/kv/txn: etcdserver: mvcc: database space exceeded",
                  refused.error().message());
    // An answer cut short is none: its body is no whole JSON object.
    etcd.cut_short = true;
    auto lost = c->txn({}, {&put, 1});
    REQUIRE_FALSE(lost.has_value());
    CHECK(lost.error().code() == errc::unavailable);
  }
}
