/// @file
/// etcd's answers read by the client: an answer of the wrong shape (a field of another
/// type, an int64 that is not one) is the request's error, never an exception. The client
/// runs on the lease's renewal thread, where an exception ended the core. The "etcd" here
/// is an HTTP server on loopback that answers what each case gives it.

#include <doctest/doctest.h>
#include <httplib.h>

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
