/// A node's chunk cache (actors/node/cache.hpp) as its workers use it: a shard prefetched on a
/// hint is fetched and decoded once, ahead, and handed over without the data server; a chunk
/// that is no shard, or a name that is no digest, is an error for whoever asks and nothing
/// for a prefetch.

#include <doctest/doctest.h>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <fstream>

#include <caf/all.hpp>

#include <atomic>
#include <chrono>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cache.hpp"
#include "configured_system.hpp"
#include "gflex/runtime/digest.hpp"
#include "gflex/runtime/shard.hpp"
#include "messages.hpp"
#include "node_metrics.hpp"
#include "temp_dir.hpp"
#include "worker.hpp"

using namespace gflex;

namespace {

// AddressSanitizer's allocator aborts on an allocation it cannot make rather than throwing
// std::bad_alloc (allocator_may_return_null=0): the case on a capped address space is
// reported as skipped under it.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool address_sanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool address_sanitized = true;
#else
constexpr bool address_sanitized = false;
#endif
#else
constexpr bool address_sanitized = false;
#endif

dataset pixels(int64_t n, int64_t first_label) {
  dataset d;
  d.classes = 10;
  d.features = tensor::empty({n, 16}, dtype::f32);
  d.labels = tensor::empty({n}, dtype::i32);
  for (int64_t i = 0; i < n * 16; ++i)
    d.features.data<float>()[i] = static_cast<float>(i % 256) * (1.0f / 255.0f);
  for (int64_t i = 0; i < n; ++i)
    d.labels.data<int32_t>()[i] = static_cast<int32_t>((first_label + i) % 10);
  return d;
}

// A data server that counts what it is asked, and answers only while `open`.
struct counting_server {
  std::map<std::string, std::vector<uint8_t>> chunks;
  std::atomic<int> asked{0};
  std::atomic<bool> open{true};
};

caf::actor spawn_server(caf::actor_system& sys, std::shared_ptr<counting_server> s) {
  return sys.spawn([s](caf::event_based_actor*) -> caf::behavior {
    return {[s](chunk_atom, const std::string& digest) -> caf::result<std::vector<uint8_t>> {
      s->asked += 1;
      auto it = s->chunks.find(digest);
      if (!s->open || it == s->chunks.end())
        return to_caf(error(errc::io_error, "no chunk " + digest + " here"));
      return it->second;
    }};
  });
}

// A data server on a slow link: its answers come one after another, each `delay` after the
// one before (or after its ask, when none is on its way).
caf::actor spawn_slow_server(caf::actor_system& sys, std::shared_ptr<counting_server> s,
                             std::chrono::milliseconds delay) {
  using deliver_atom = caf::atom_constant<caf::atom("deliver")>;
  using promise = caf::typed_response_promise<std::vector<uint8_t>>;
  auto held = std::make_shared<std::deque<std::pair<std::string, promise>>>();
  return sys.spawn([s, delay, held](caf::event_based_actor* self) -> caf::behavior {
    return {[=](chunk_atom, const std::string& digest) -> caf::result<std::vector<uint8_t>> {
              s->asked += 1;
              held->emplace_back(digest, self->make_response_promise<std::vector<uint8_t>>());
              if (held->size() == 1) self->delayed_send(self, delay, deliver_atom::value);
              return held->back().second;
            },
            [=](deliver_atom) {
              auto [digest, rp] = std::move(held->front());
              held->pop_front();
              rp.deliver(s->chunks.at(digest));
              if (!held->empty()) self->delayed_send(self, delay, deliver_atom::value);
            }};
  });
}

// A data server that never answers: the asks it holds, and how many came.
struct holding_server {
  std::vector<caf::typed_response_promise<std::vector<uint8_t>>> held;
  std::atomic<int> asked{0};
};

caf::actor spawn_holding_server(caf::actor_system& sys, std::shared_ptr<holding_server> s) {
  return sys.spawn([s](caf::event_based_actor* self) -> caf::behavior {
    return {[=](chunk_atom, const std::string&) -> caf::result<std::vector<uint8_t>> {
      s->held.push_back(self->make_response_promise<std::vector<uint8_t>>());
      s->asked += 1;
      return s->held.back();
    }};
  });
}

struct cache_fixture : test::configured_system {
  test::temp_dir dir;
  std::shared_ptr<counting_server> server = std::make_shared<counting_server>();
  caf::actor cache;
  const std::chrono::seconds timeout{10};

  cache_fixture() {
    cache = spawn_cache(sys, dir.path());
    self->send(cache, serve_atom::value, spawn_server(sys, server));
  }
  ~cache_fixture() { self->send_exit(cache, caf::exit_reason::user_shutdown); }

  std::string add(std::vector<uint8_t> bytes) {
    auto digest = digest_hex(bytes);
    server->chunks[digest] = std::move(bytes);
    return digest;
  }

  expected<std::shared_ptr<const dataset>> shard(const std::string& digest) {
    expected<std::shared_ptr<const dataset>> out = error(errc::io_error, "no answer");
    self->request(cache, timeout, shard_atom::value, digest)
        .receive([&](decoded_shard& d) { out = d.data; },
                 [&](caf::error& e) { out = from_caf(e); });
    return out;
  }

  // Whether the cache answered the chunk `digest` with its bytes.
  bool fetch(const std::string& digest) {
    bool ok = false;
    self->request(cache, timeout, chunk_atom::value, digest)
        .receive([&](std::vector<uint8_t>& b) { ok = digest_hex(b) == digest; },
                 [&](caf::error& e) { FAIL(sys.render(e)); });
    return ok;
  }
  // Whether the chunk `digest` has its file on disk.
  bool holds(const std::string& digest) const {
    return std::filesystem::exists(dir.path() / digest);
  }

  void wait_until_asked(int times) {
    for (int i = 0; i < 500 && server->asked < times; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    REQUIRE(server->asked == times);
  }
};

}  // namespace

TEST_SUITE("node cache") {
  TEST_CASE_FIXTURE(cache_fixture, "a prefetched shard is handed over without the server") {
    const auto first = add(encode_shard(pixels(30, 0), 0, 30));
    const auto next = add(encode_shard(pixels(20, 3), 0, 20));
    const double prefetched = node_metrics::shards("prefetched").value();
    const double fetched = node_metrics::shards("fetched").value();

    auto a = shard(first);  // nothing ahead: fetched and decoded while the worker waits
    REQUIRE_MESSAGE(a.has_value(), a.error().message());
    CHECK((*a)->size() == 30);
    CHECK(node_metrics::shards("fetched").value() == fetched + 1);

    self->send(cache, prefetch_atom::value, next);
    wait_until_asked(2);
    server->open = false;  // from here on only what the cache holds can answer
    // Decoding follows the fetch on the cache's thread; asking now waits for it if need be.
    auto b = shard(next);
    REQUIRE_MESSAGE(b.has_value(), b.error().message());
    CHECK((*b)->size() == 20);
    CHECK((*b)->labels.data<int32_t>()[0] == 3);
    CHECK((*b)->features.data<float>()[17] == doctest::Approx(17.0f / 255.0f));
    CHECK(node_metrics::shards("prefetched").value() == prefetched + 1);
    // A prefetch of a shard already fetched or held costs the server nothing more.
    self->send(cache, prefetch_atom::value, next);
    auto again = shard(next);  // read back from disk, where the fetch left it
    REQUIRE(again.has_value());
    CHECK((*again)->size() == 20);
    CHECK(server->asked == 2);
  }

  TEST_CASE_FIXTURE(cache_fixture, "prefetched shards nobody asks for are dropped, oldest first") {
    // Two more than the cache holds: whether or not the newest is still on its way when it
    // is asked for, the oldest has been dropped by then.
    std::vector<std::string> digests;
    for (int64_t k = 0; k < static_cast<int64_t>(prefetched_shards) + 2; ++k)
      digests.push_back(add(encode_shard(pixels(4 + k, k), 0, 4 + k)));
    for (const auto& d : digests) self->send(cache, prefetch_atom::value, d);
    const double prefetched = node_metrics::shards("prefetched").value();
    const double fetched = node_metrics::shards("fetched").value();
    auto last = shard(digests.back());
    REQUIRE(last.has_value());
    CHECK(node_metrics::shards("prefetched").value() == prefetched + 1);
    // The oldest is read back from disk on demand; the one before the newest is still held.
    auto first = shard(digests.front());
    REQUIRE(first.has_value());
    CHECK((*first)->size() == 4);
    CHECK(node_metrics::shards("fetched").value() == fetched + 1);
    auto kept = shard(digests[digests.size() - 2]);
    REQUIRE(kept.has_value());
    CHECK(node_metrics::shards("prefetched").value() == prefetched + 2);
    CHECK(server->asked == static_cast<int>(digests.size()));
  }

  TEST_CASE_FIXTURE(cache_fixture,
                    "who named the server hears that chunks came from it, once a second") {
    // The uplink takes a core whose answers are late as lost unless it hears from it: data set
    // chunks arriving on a slow link are a sign of life.
    REQUIRE(shard(add(encode_shard(pixels(5, 0), 0, 5))).has_value());
    REQUIRE(shard(add(encode_shard(pixels(6, 0), 0, 6))).has_value());
    int heard = 0;
    for (int i = 0; i < 2; ++i)
      self->receive([&](heard_atom) { ++heard; },
                    caf::after(std::chrono::milliseconds(300)) >> [] {});
    CHECK(heard == 1);  // two chunks within a second: one word
    // And when its requests out became some, or none: the uplink does not take a core with
    // a chunk on its way as lost.
    std::vector<uint64_t> out;
    for (int i = 0; i < 4; ++i)
      self->receive([&](heard_atom, uint64_t n) { out.push_back(n); },
                    caf::after(std::chrono::milliseconds(300)) >> [] {});
    CHECK(out == std::vector<uint64_t>{1, 0, 1, 0});
  }

  TEST_CASE_FIXTURE(cache_fixture, "a chunk that comes after its request failed is kept") {
    // On a slow link a chunk can come after its request failed (its session ended, or no
    // chunk came for a while): its bytes, verified, were thrown away, and the next ask of it
    // downloaded it again behind the others, to fail the same way.
    auto slow = std::make_shared<counting_server>();
    const auto digest = add(encode_shard(pixels(7, 0), 0, 7));
    slow->chunks = server->chunks;
    self->send(cache, serve_atom::value,
               spawn_slow_server(sys, slow, std::chrono::milliseconds(600)));
    caf::anon_send(cache, shard_atom::value, digest);  // its answer: an error, below
    for (int i = 0; i < 500 && slow->asked < 1; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    REQUIRE(slow->asked == 1);
    server->open = false;  // the next session's server has nothing
    self->send(cache, serve_atom::value, spawn_server(sys, server));
    std::this_thread::sleep_for(std::chrono::milliseconds(1200));  // the slow answer came
    auto again = shard(digest);
    REQUIRE_MESSAGE(again.has_value(), again.error().message());
    CHECK((*again)->size() == 7);
    CHECK(server->asked == 0);  // from disk
  }

  TEST_CASE("a chunk request waits while chunks come, and fails once none has for a while") {
    // Timed from its send, the sixth request out timed out behind five chunks still arriving
    // on a slow link (40 MiB: 2 minutes at 3 Mbit/s), and so did every later one. Here the
    // silence is 1 s, chunks come every 0.4 s, and the last of six is asked after 2.4 s.
    test::configured_system s;
    test::temp_dir dir;
    auto server = std::make_shared<counting_server>();
    std::vector<std::string> digests;
    for (int i = 0; i < 6; ++i) {
      auto bytes = encode_shard(pixels(3 + i, 0), 0, 3 + i);
      digests.push_back(digest_hex(bytes));
      server->chunks[digests.back()] = std::move(bytes);
    }
    auto cache = spawn_cache(s.sys, dir.path(), 0, std::chrono::milliseconds(1000));
    auto slow = spawn_slow_server(s.sys, server, std::chrono::milliseconds(400));
    s.self->send(cache, serve_atom::value, slow);
    for (int i = 0; i < 5; ++i) s.self->send(cache, prefetch_atom::value, digests[size_t(i)]);
    std::optional<std::string> failed;
    s.self->request(cache, std::chrono::seconds(20), shard_atom::value, digests.back())
        .receive([&](decoded_shard& d) { CHECK(d.data->size() == 8); },
                 [&](caf::error& e) { failed = from_caf(e).message(); });
    CHECK_MESSAGE(!failed, *failed);
    CHECK(server->asked == 6);
    // A server that answers nothing: the request fails after about the silence.
    auto stuck = std::make_shared<counting_server>();
    auto extra = encode_shard(pixels(20, 0), 0, 20);
    const auto extra_digest = digest_hex(extra);
    stuck->chunks[extra_digest] = std::move(extra);
    auto stuck_server = spawn_slow_server(s.sys, stuck, std::chrono::hours(1));
    s.self->send(cache, serve_atom::value, stuck_server);
    const auto asked_at = std::chrono::steady_clock::now();
    s.self->request(cache, std::chrono::seconds(20), shard_atom::value, extra_digest)
        .receive([&](decoded_shard&) { FAIL("a stuck server's chunk came"); },
                 [&](caf::error& e) { failed = from_caf(e).message(); });
    REQUIRE(failed);
    CHECK(failed->find("no chunk came from the core for 1 s") != std::string::npos);
    CHECK(std::chrono::steady_clock::now() - asked_at < std::chrono::seconds(5));
    for (auto& a : {cache, slow, stuck_server})
      s.self->send_exit(a, caf::exit_reason::user_shutdown);  // the stuck one's timer: 1 h
  }

  TEST_CASE("a data chunk the core does not serve is unavailable, not the node's fault") {
    // CAF's errors (the data server gone, a timeout) became io_error, which the job takes
    // for the node's own fault: honest nodes were cooled down while the core restarted its
    // data server or lacked a chunk.
    test::configured_system s;
    test::temp_dir dir;
    auto cache = spawn_cache(s.sys, dir.path());
    auto ask = [&](const std::string& digest) {
      error out(errc::io_error, "no answer");
      s.self->request(cache, std::chrono::seconds(10), chunk_atom::value, digest)
          .receive([&](std::vector<uint8_t>&) { out = error(errc::io_error, "served"); },
                   [&](caf::error& e) { out = from_caf(e); });
      return out;
    };
    const std::string digest(64, 'b');
    auto not_joined = ask(digest);  // no data server yet
    CHECK_MESSAGE(not_joined.code() == errc::unavailable, not_joined.message());
    auto dead = s.sys.spawn([](caf::event_based_actor*) -> caf::behavior {
      return {[](chunk_atom, const std::string&) { return std::vector<uint8_t>{}; }};
    });
    s.self->send_exit(dead, caf::exit_reason::kill);
    s.self->wait_for(dead);
    s.self->send(cache, serve_atom::value, dead);
    auto gone = ask(digest);
    CHECK_MESSAGE(gone.code() == errc::unavailable, gone.message());
    CHECK(gone.message().find("the core did not serve data chunk bbbb") != std::string::npos);
    // The session's refusal of the node's own ask stays what it is.
    auto refusing = s.sys.spawn([](caf::event_based_actor*) -> caf::behavior {
      return {[](chunk_atom, const std::string&) -> caf::result<std::vector<uint8_t>> {
        return to_caf(error(errc::permission_denied, "chunk is not one of this node's"));
      }};
    });
    s.self->send(cache, serve_atom::value, refusing);
    auto refused = ask(digest);
    CHECK_MESSAGE(refused.code() == errc::permission_denied, refused.message());
    for (auto& a : {cache, refusing}) s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a chunk's temporary file that a killed node left is removed when the cache starts") {
    // A node killed while it wrote a chunk left DIGEST.tmp.PID, which nothing removed nor
    // counted against --cache-limit: disk use grew past the limit with every kill.
    test::configured_system s;
    test::temp_dir dir;
    const std::string digest(64, 'a');
    const auto left = dir.path() / (digest + ".tmp.999999999");  // no such process
    const auto own = dir.path() / (digest + ".tmp." + std::to_string(::getpid()));
    // Of this process's pid, but written before it started: a predecessor's (a node in a
    // container is pid 1 at every start, and its files were kept for good).
    const auto before = dir.path() / (std::string(64, 'b') + ".tmp." + std::to_string(::getpid()));
    const auto other = dir.path() / "notes.tmp.1";  // not the cache's to remove
    for (const auto& f : {left, own, before, other}) std::ofstream(f) << std::string(1024, 'x');
    std::filesystem::last_write_time(
        before, std::filesystem::file_time_type::clock::now() - std::chrono::hours(1));
    auto cache = spawn_cache(s.sys, dir.path(), 512 << 10);
    s.self->request(cache, std::chrono::seconds(10), chunk_atom::value, std::string("x"))
        .receive([](std::vector<uint8_t>&) {}, [](caf::error&) {});  // it has started
    CHECK_FALSE(std::filesystem::exists(left));
    CHECK_FALSE(std::filesystem::exists(before));
    CHECK(std::filesystem::exists(own));  // this process is writing it
    CHECK(std::filesystem::exists(other));
    s.self->send_exit(cache, caf::exit_reason::user_shutdown);
  }

  TEST_CASE_FIXTURE(cache_fixture, "a chunk that is no shard, or no digest, is an error") {
    const auto junk = add({1, 2, 3, 4, 5, 6, 7, 8});
    self->send(cache, prefetch_atom::value, junk);  // fails quietly: nobody waits for it
    self->send(cache, prefetch_atom::value, std::string("../../etc/passwd"));
    wait_until_asked(1);
    auto bad = shard(junk);
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().code() == errc::malformed_message);
    auto not_digest = shard("../../etc/passwd");
    REQUIRE_FALSE(not_digest.has_value());
    CHECK(not_digest.error().code() == errc::invalid_argument);
    auto missing = shard(std::string(64, 'a'));
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().code() == errc::unavailable);  // the core's to serve
    // The cache still serves what it can.
    const auto good = add(encode_shard(pixels(5, 0), 0, 5));
    auto ok = shard(good);
    REQUIRE_MESSAGE(ok.has_value(), ok.error().message());
    CHECK((*ok)->size() == 5);
  }

  TEST_CASE_FIXTURE(cache_fixture,
                    "the chunk files keep to --cache-limit, least recently used out") {
    // Every chunk a node fetched stayed on the volunteer's disk for good.
    std::vector<std::string> digests;
    for (int i = 0; i < 6; ++i) digests.push_back(add(std::vector<uint8_t>(1000, uint8_t(i))));
    self->send_exit(cache, caf::exit_reason::user_shutdown);
    cache = spawn_cache(sys, dir.path(), 3500);  // three chunks fit
    self->send(cache, serve_atom::value, spawn_server(sys, server));
    auto on_disk = [&] {
      std::vector<std::string> names;
      uint64_t bytes = 0;
      for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
        names.push_back(e.path().filename().string());
        bytes += e.file_size();
      }
      return std::make_pair(names, bytes);
    };
    for (int i = 0; i < 3; ++i) REQUIRE(fetch(digests[i]));
    CHECK(on_disk().second == 3000);
    REQUIRE(fetch(digests[0]));  // read back from disk: now the most recently used
    CHECK(server->asked == 3);
    REQUIRE(fetch(digests[3]));  // the fourth pushes out the least recently used: 1
    CHECK(on_disk().second <= 3500);
    CHECK(holds(digests[0]));
    CHECK_FALSE(holds(digests[1]));
    CHECK(holds(digests[2]));
    CHECK(holds(digests[3]));
    for (int i = 4; i < 6; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(30));  // past the clock's grain
      REQUIRE(fetch(digests[i]));
    }
    CHECK(on_disk().first.size() == 3);
    CHECK(on_disk().second <= 3500);
    // A node started again with a smaller bound trims what it finds, oldest written first.
    self->send_exit(cache, caf::exit_reason::user_shutdown);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    cache = spawn_cache(sys, dir.path(), 1500);
    self->send(cache, serve_atom::value, spawn_server(sys, server));
    const int asked = server->asked;
    REQUIRE(fetch(digests[5]));  // the newest, still there
    CHECK(server->asked == asked);
    CHECK(on_disk().first.size() == 1);
  }

  TEST_CASE_FIXTURE(cache_fixture,
                    "the chunk files leave the disk's reserve free: the oldest go and then none "
                    "is kept") {
    // Within --cache-limit (10 GB by default) a node filled a volunteer's small disk: their
    // own programs failed for want of space, and so did every chunk write after.
    std::vector<std::string> digests;
    for (int i = 0; i < 3; ++i) digests.push_back(add(std::vector<uint8_t>(1000, uint8_t(i))));
    REQUIRE(fetch(digests[0]));
    REQUIRE(fetch(digests[1]));
    CHECK(holds(digests[0]));
    CHECK(holds(digests[1]));
    // Started again asked to leave more than the disk has free: no chunk fits.
    self->send_exit(cache, caf::exit_reason::user_shutdown);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const auto free_now = std::filesystem::space(dir.path()).available;
    cache =
        spawn_cache(sys, dir.path(), 0, std::chrono::minutes(2), free_now + (uint64_t{1} << 40));
    self->send(cache, serve_atom::value, spawn_server(sys, server));
    const int asked = server->asked;
    REQUIRE(fetch(digests[2]));  // served all the same, from memory
    CHECK(server->asked == asked + 1);
    CHECK_FALSE(holds(digests[0]));  // the files there went first
    CHECK_FALSE(holds(digests[1]));
    CHECK_FALSE(holds(digests[2]));  // and it was not written
    REQUIRE(fetch(digests[2]));      // so it is fetched again
    CHECK(server->asked == asked + 2);
  }

  TEST_CASE("asks the last session never took are not sent to the next one") {
    // Asks waiting for a request slot went to the new session, which had granted none of
    // their chunks: each counted as a hostile message of an honest node, 120 a reconnect on a
    // node of 64 workers.
    test::configured_system s;
    test::temp_dir dir;
    caf::actor test = caf::actor_cast<caf::actor>(s.self);
    auto old_server = std::make_shared<holding_server>();
    auto new_server = std::make_shared<counting_server>();
    auto cache = spawn_cache(s.sys, dir.path());
    auto old_door = spawn_holding_server(s.sys, old_server);
    auto new_door = spawn_server(s.sys, new_server);
    s.self->send(cache, serve_atom::value, old_door);
    // Eight asks: six out to the old session (the cache's slots), two waiting for a slot.
    std::vector<std::string> digests;
    for (int i = 0; i < 8; ++i) {
      std::vector<uint8_t> bytes(100, static_cast<uint8_t>(i));
      digests.push_back(digest_hex(bytes));
      new_server->chunks[digests.back()] = std::move(bytes);
      s.sys.spawn([=](caf::event_based_actor* asker) -> caf::behavior {
        const std::string digest = digests.back();
        asker->request(cache, std::chrono::seconds(10), chunk_atom::value, digest)
            .then(
                [=](std::vector<uint8_t>&) {
                  asker->send(test, digest, std::string("served"));
                  asker->quit();
                },
                [=](caf::error& e) {
                  asker->send(test, digest, from_caf(e).message());
                  asker->quit();
                });
        return {[](int) {}};
      });
    }
    for (int i = 0; i < 500 && old_server->asked < 6; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the last two ask too
    REQUIRE(old_server->asked == 6);
    s.self->send(cache, serve_atom::value, new_door);  // a reconnect
    std::map<std::string, std::string> answers;
    for (int i = 0; i < 8; ++i)
      s.self->receive([&](std::string& digest, std::string& what) { answers[digest] = what; },
                      caf::after(std::chrono::seconds(10)) >> [] {});
    REQUIRE(answers.size() == 8);
    for (const auto& d : digests) {
      CAPTURE(d);
      CAPTURE(answers[d]);
      CHECK(answers[d].find("the core did not serve data chunk") != std::string::npos);
    }
    CHECK(new_server->asked.load() == 0);
    for (const auto& x : {cache, old_door, new_door})
      s.self->send_exit(x, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a worker waiting for its shard is answered at once when its cache is restarted") {
    // A cache that stops drops the promises it holds unanswered (CAF 0.17 sends nothing for
    // them): the node supervisor handed the workers its replacement, and each worker that
    // had asked the old one for a shard held its slot for the ask's 30 minutes.
    test::configured_system s;
    test::temp_dir dir;
    auto server = std::make_shared<holding_server>();
    auto data_server = spawn_holding_server(s.sys, server);
    auto cache = spawn_cache(s.sys, dir.path());
    s.self->send(cache, serve_atom::value, data_server);
    worker_config config;
    auto worker = spawn_worker(s.sys, config, cache);
    assignment a;
    a.id = 1;
    a.job_id = "job-1";
    a.shard = std::string(64, 'a');
    auto answer = s.self->request(worker, std::chrono::seconds(10), assign_atom::value, a);
    for (int i = 0; i < 500 && server->asked < 1; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    REQUIRE(server->asked == 1);  // the cache waits for the shard's chunk
    // The cache dies (a defect) and the node supervisor restarts it.
    s.self->send_exit(cache, caf::exit_reason::kill);
    auto replacement = spawn_cache(s.sys, dir.path());
    s.self->send(replacement, serve_atom::value, data_server);  // as the uplink does
    s.self->send(worker, update_atom::value, std::string("cache"), replacement);
    const auto since = std::chrono::steady_clock::now();
    error got;
    std::move(answer).receive([](assignment_result&) { FAIL("computed without its shard"); },
                              [&](caf::error& e) { got = from_caf(e, &s.sys); });
    CHECK_MESSAGE(got.code() == errc::unavailable, got.message());
    CHECK_MESSAGE(got.message().find("cache") != std::string::npos, got.message());
    CHECK(std::chrono::steady_clock::now() - since < std::chrono::seconds(5));
    // An assignment after the restart asks the new cache.
    a.id = 2;
    auto second = s.self->request(worker, std::chrono::seconds(10), assign_atom::value, a);
    for (int i = 0; i < 500 && server->asked < 2; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    CHECK(server->asked == 2);
    for (const auto& x : {worker, replacement, data_server})
      s.self->send_exit(x, caf::exit_reason::user_shutdown);
    std::move(second).receive([](assignment_result&) {}, [](caf::error&) {});
  }

  TEST_CASE("a shard the host has no memory to decode is an error for its workers at once" *
            doctest::skip(address_sanitized)) {
    // std::bad_alloc in the decode ended the cache: its waiting workers were never answered
    // (each waited out its timeout), and the restarted cache did it again. Run in a child
    // whose address space is capped once the shard's bytes are in.
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      int code = 1;
      {
        cache_fixture f;
        const int64_t n = int64_t{1} << 22;  // 64 MiB of bytes, 256 MiB decoded
        const auto digest = f.add(encode_shard(pixels(n, 0), 0, n));
        std::ifstream statm("/proc/self/statm");
        size_t pages = 0;
        statm >> pages;
        const rlim_t cap = static_cast<rlim_t>(pages) * ::sysconf(_SC_PAGESIZE) + (160u << 20);
        rlimit limit{cap, cap};
        ::setrlimit(RLIMIT_AS, &limit);
        auto got = f.shard(digest);
        if (!got && got.error().message().find("out of host memory") != std::string::npos)
          code = 0;
        else
          std::fprintf(stderr, "answer: %s\n", got ? "decoded" : got.error().message().c_str());
        rlimit none{RLIM_INFINITY, RLIM_INFINITY};
        ::setrlimit(RLIMIT_AS, &none);
        f.self->request(f.cache, f.timeout, shard_atom::value, std::string(64, '0'))
            .receive([](decoded_shard&) {}, [&](caf::error&) {});  // answered: the cache lives
      }
      ::_exit(code);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    CHECK_MESSAGE(WEXITSTATUS(status) == 0, "the decode's lack of memory was not answered");
  }
}
