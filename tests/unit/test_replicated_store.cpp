/// @file
/// The replicated store against a real etcd server (Debian's etcd-server, started here on
/// loopback ports in a temporary directory): values and chunks, leadership, fencing, the
/// chunk service's refusals. Skipped, saying so, where etcd is not installed.

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <utility>

#include "captured_log.hpp"
#include "gflex/runtime/digest.hpp"
#include "gflex/runtime/etcd_client.hpp"
#include "gflex/runtime/replicated_store.hpp"
#include "running_core.hpp"
#include "temp_dir.hpp"

using namespace gflex;

namespace {

bool etcd_installed() {
  return std::filesystem::exists("/usr/bin/etcd");
}

// A TCP socket bound to a free loopback port: (descriptor, port).
std::pair<int, int> bound_socket() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    throw std::runtime_error("no free loopback port");
  return {fd, ntohs(addr.sin_port)};
}

// `n` distinct loopback ports free now: every socket stays bound until all are chosen, so no
// two are the same.
std::vector<int> free_ports(size_t n) {
  std::vector<std::pair<int, int>> bound;
  for (size_t i = 0; i < n; ++i) bound.push_back(bound_socket());
  std::vector<int> ports;
  for (auto [fd, port] : bound) {
    ::close(fd);
    ports.push_back(port);
  }
  return ports;
}

// One etcd member in `dir`, killed (SIGKILL) and reaped when the test ends.
class etcd_server {
 public:
  // Started again, on other ports, when it exits at start: the ports free_ports chose are
  // free only until they are bound, and a test running beside this one (CI runs four) may
  // take one first, for a listener or as an outgoing connection's own port.
  explicit etcd_server(const std::filesystem::path& dir) {
    for (int attempt = 1; attempt <= 5; ++attempt) {
      if (start(dir)) return;
      MESSAGE("etcd exited at start (attempt " << attempt << "): " << last_line(dir / "etcd.log"));
      std::filesystem::remove_all(dir / "etcd");
    }
  }
  ~etcd_server() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  std::string endpoint() const { return "127.0.0.1:" + std::to_string(client_port_); }
  /// Stops (SIGSTOP) or resumes (SIGCONT) the member: its connections stay open, silent.
  void freeze(bool frozen) const {
    if (pid_ > 0) ::kill(pid_, frozen ? SIGSTOP : SIGCONT);
  }

 private:
  // Ready when it answers: true. False when it exited first; given up (the test then fails on
  // its first request) when it takes over 20 s.
  bool start(const std::filesystem::path& dir) {
    const auto ports = free_ports(2);
    client_port_ = ports[0];
    const int peer_port = ports[1];
    const std::string client = "http://127.0.0.1:" + std::to_string(client_port_);
    const std::string peer = "http://127.0.0.1:" + std::to_string(peer_port);
    const std::string data = (dir / "etcd").string();
    const std::string log = (dir / "etcd.log").string();
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ == 0) {
      // Killed with the test's process, should that crash before it reaps etcd.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(1);
      FILE* out = std::freopen(log.c_str(), "w", stderr);
      (void)out;
      ::execl("/usr/bin/etcd", "etcd", "--name", "e1", "--data-dir", data.c_str(),
              "--listen-client-urls", client.c_str(), "--advertise-client-urls", client.c_str(),
              "--listen-peer-urls", peer.c_str(), "--initial-advertise-peer-urls", peer.c_str(),
              "--initial-cluster", ("e1=" + peer).c_str(), nullptr);
      ::_exit(127);
    }
    auto c = etcd_client::make(endpoint());
    for (int i = 0; i < 200; ++i) {
      if (c->revision()) return true;
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return true;
  }

  static std::string last_line(const std::filesystem::path& file) {
    std::ifstream in(file);
    std::string line, last;
    while (std::getline(in, line))
      if (!line.empty()) last = line;
    return last.empty() ? "(its log is empty)" : last;
  }

  pid_t pid_ = -1;
  int client_port_ = 0;
};

// An HTTP proxy in front of etcd whose requests to `path` take `delay` longer while `slow` is
// set: reads of ranges as reading a large store whole does, or lease renewals as a member
// cut off without a reset (its connections stay open, and nothing comes back for long).
// Clearing `slow` sends the requests held back on at once; `held` counts them.
class slow_path_proxy {
 public:
  slow_path_proxy(const std::string& etcd_endpoint, std::string path,
                  std::chrono::milliseconds delay) {
    const auto colon = etcd_endpoint.rfind(':');
    const std::string host = etcd_endpoint.substr(0, colon);
    const int port = std::stoi(etcd_endpoint.substr(colon + 1));
    server_.Post(R"(/.*)", [=, this](const httplib::Request& req, httplib::Response& res) {
      if (slow && req.path == path) {
        ++held;
        for (auto waited = std::chrono::milliseconds(0); waited < delay && !stopping_ && slow;
             waited += std::chrono::milliseconds(50))
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        --held;
      }
      httplib::Client etcd(host, port);
      auto r = etcd.Post(req.path, req.body, "application/json");
      if (!r) {
        res.status = 502;
        return;
      }
      res.status = r->status;
      res.set_content(r->body, "application/json");
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~slow_path_proxy() {
    stopping_ = true;
    server_.stop();
    thread_.join();
  }
  std::string endpoint() const { return "127.0.0.1:" + std::to_string(port_); }
  std::atomic<bool> slow{false};
  std::atomic<int> held{0};

 private:
  std::atomic<bool> stopping_{false};
  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
};

// An answer of etcd's: its status (0 for none) and body.
struct etcd_answer {
  int status = 0;
  std::string body;
};

// POSTs `body` to etcd at host:port. etcd's gateway sends its error answers chunked with a
// trailer, which cpp-httplib 0.11 fails on after the whole body (as etcd_client.cpp says):
// such an answer is taken as it came.
etcd_answer post_to_etcd(const std::string& host, int port, const std::string& path,
                         const std::string& body) {
  httplib::Client etcd(host, port);
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.body = body;
  req.headers = {{"Content-Type", "application/json"}};
  etcd_answer a;
  req.content_receiver = [&a](const char* data, size_t n, uint64_t, uint64_t) {
    a.body.append(data, n);
    return true;
  };
  httplib::Response res;
  httplib::Error error = httplib::Error::Success;
  if (etcd.send(req, res, error) || (error == httplib::Error::Read && res.status > 0))
    a.status = res.status;
  return a;
}

// An HTTP proxy in front of etcd that loses the answer of the next transaction once told:
// `lose_answer` sends it on first (it lands; the core hears 502), `hold` keeps it back
// (the core hears 502; `release` sends it late, as etcd applies a proposal it took before
// the core's request timed out).
class lossy_txn_proxy {
 public:
  enum class mode { pass, lose_answer, hold };

  explicit lossy_txn_proxy(const std::string& etcd_endpoint) {
    const auto colon = etcd_endpoint.rfind(':');
    host_ = etcd_endpoint.substr(0, colon);
    port_etcd_ = std::stoi(etcd_endpoint.substr(colon + 1));
    server_.Post(R"(/.*)", [this](const httplib::Request& req, httplib::Response& res) {
      const mode m = req.path == "/v3/kv/txn" ? next.exchange(mode::pass) : mode::pass;
      if (m == mode::hold) {
        std::lock_guard lock(mutex_);
        held_ = req.body;
        res.status = 502;
        return;
      }
      auto r = forward(req.path, req.body);
      res.status = r.status == 0 || m == mode::lose_answer ? 502 : r.status;
      if (r.status != 0 && m == mode::pass) res.set_content(r.body, "application/json");
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~lossy_txn_proxy() {
    server_.stop();
    thread_.join();
  }
  std::string endpoint() const { return "127.0.0.1:" + std::to_string(port_); }
  /// Sends the held transaction to etcd now: etcd's answer.
  std::string release() {
    std::lock_guard lock(mutex_);
    auto r = forward("/v3/kv/txn", held_);
    return r.status != 0 ? r.body : "(etcd did not answer)";
  }
  std::atomic<mode> next{mode::pass};

 private:
  etcd_answer forward(const std::string& path, const std::string& body) {
    return post_to_etcd(host_, port_etcd_, path, body);
  }
  httplib::Server server_;
  std::thread thread_;
  std::string host_;
  int port_etcd_ = 0;
  int port_ = 0;
  std::mutex mutex_;
  std::string held_;
};

replication_config config_of(const etcd_server& etcd, const test::temp_dir& dir,
                             const std::string& id) {
  replication_config c;
  c.endpoints = etcd.endpoint();
  c.core_id = id;
  c.chunk_listen = "127.0.0.1:0";
  c.chunk_dir = dir / ("chunks-" + id);
  c.secret = "the operator key";
  c.core_address = "127.0.0.1:7400";
  c.lease_ttl_s = 2;
  c.chunk_threshold = 1024;
  return c;
}

std::vector<uint8_t> bytes(const std::string& s) {
  return {s.begin(), s.end()};
}

std::vector<uint8_t> large(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 7 + (i >> 9));
  return v;
}

// Core `id`'s store on `etcd`, its chunks in dir/chunks-ID; leading once `lead`.
std::unique_ptr<replicated_store> member_of(const etcd_server& etcd, const test::temp_dir& dir,
                                            const std::string& id, bool lead = false) {
  auto s = replicated_store::start(config_of(etcd, dir, id), [] {});
  REQUIRE_MESSAGE(s.has_value(), s.error().message());
  if (lead) {
    std::atomic<int> stop{0};
    REQUIRE(*(*s)->campaign(stop, {}));
  }
  return std::move(*s);
}

// Commits one large value (a checkpoint, in a chunk) on `leader`: the outcome, and the
// seconds it took.
std::pair<expected<void>, double> commit_checkpoint(replicated_store& leader,
                                                    const std::vector<uint8_t>& checkpoint) {
  std::vector<store_write> batch = {{"ckpt/1", checkpoint}};
  const auto began = std::chrono::steady_clock::now();
  auto committed = leader.commit(batch);
  return {std::move(committed),
          std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count()};
}

// A member that takes connections and never reads them, as a frozen process does (the kernel
// completes the handshake), registered under a lease of its own of 2 s that nobody renews;
// its listening socket, to close.
int frozen_member(const etcd_server& etcd) {
  const auto bound = bound_socket();
  REQUIRE(::listen(bound.first, 4) == 0);
  auto admin = etcd_client::make(etcd.endpoint());
  auto lease = admin->grant_lease(2);
  REQUIRE(lease.has_value());
  etcd_op member{"/gflex/member/frozen", bytes("127.0.0.1:" + std::to_string(bound.second)),
                 *lease};
  REQUIRE(admin->txn({}, {&member, 1}).has_value());
  return bound.first;
}

// A core started with `config` that has won the leadership (the test fails otherwise).
std::unique_ptr<replicated_store> leading(const replication_config& config) {
  auto a = replicated_store::start(config, [] {});
  REQUIRE_MESSAGE(a.has_value(), a.error().message());
  std::atomic<int> stop{0};
  auto led = (*a)->campaign(stop, {});
  REQUIRE(led.has_value());
  REQUIRE(*led);
  return std::move(*a);
}

// The digest of `text`, as the chunk service names a chunk of those bytes.
std::string digest_of(const std::string& text) {
  return digest_hex(std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
}

// The chunk service's credential for the operator key config_of gives the cores.
std::string chunk_bearer() {
  return "Bearer " +
         digest_hex(std::span(reinterpret_cast<const uint8_t*>("the operator key"), 16));
}

// Raises or clears etcd's NOSPACE alarm, as etcd raises it once its space quota is full:
// while raised, etcd refuses every write (HTTP 429, "mvcc: database space exceeded") and
// still answers reads, lease renewals and revocations.
void space_alarm(const etcd_server& etcd, bool raised) {
  const std::string endpoint = etcd.endpoint();
  httplib::Client c("127.0.0.1", std::stoi(endpoint.substr(endpoint.rfind(':') + 1)));
  auto header = c.Post("/v3/kv/range", R"({"key": "AA=="})", "application/json");
  REQUIRE(header);
  const std::string field = "\"member_id\":\"";
  const auto at = header->body.find(field);
  REQUIRE(at != std::string::npos);
  const auto from = at + field.size();
  const std::string member = header->body.substr(from, header->body.find('"', from) - from);
  auto r = c.Post("/v3/maintenance/alarm",
                  std::string(R"({"action": ")") + (raised ? "ACTIVATE" : "DEACTIVATE") +
                      R"(", "memberID": ")" + member + R"(", "alarm": "NOSPACE"})",
                  "application/json");
  REQUIRE(r);
  REQUIRE_MESSAGE(r->status == 200, r->body);
}

// One core "a" over its own etcd, and a client of its chunk service.
struct chunk_service_of_one {
  test::temp_dir dir;
  etcd_server etcd{dir.path()};
  std::unique_ptr<replicated_store> a = started();
  httplib::Client client{"127.0.0.1", a->chunk_port()};

  std::unique_ptr<replicated_store> started() {
    auto s = replicated_store::start(config_of(etcd, dir, "a"), [] {});
    REQUIRE(s.has_value());
    return std::move(*s);
  }
};

}  // namespace

TEST_SUITE("replicated_store") {
  TEST_CASE("values and chunks round-trip; a later core fetches the chunks it lacks" *
            doctest::skip(!etcd_installed())) {
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    auto a = replicated_store::start(config_of(etcd, dir, "a"), [] {});
    if (!a) MESSAGE(a.error().message());
    REQUIRE(a.has_value());
    std::atomic<int> stop{0};
    auto led = (*a)->campaign(stop, {});
    REQUIRE(led.has_value());
    REQUIRE(*led);
    const auto checkpoint = large(100000, 3);
    std::vector<store_write> batch = {
        {"job/1", bytes("record")}, {"ckpt/1", checkpoint}, {"job/2", bytes("other")}};
    REQUIRE((*a)->commit(batch).has_value());
    std::vector<store_write> erase = {{"job/2", std::nullopt}};
    REQUIRE((*a)->commit(erase).has_value());
    auto v = (*a)->get("ckpt/1");
    REQUIRE(v.has_value());
    REQUIRE(v->has_value());
    CHECK(**v == checkpoint);
    CHECK_FALSE((*a)->get("job/2")->has_value());
    // etcd holds a reference, not the bytes.
    auto raw = etcd_client::make(etcd.endpoint())->range("/gflex/data/ckpt/1", false);
    REQUIRE(raw.has_value());
    REQUIRE(raw->size() == 1);
    CHECK(raw->front().value.size() < 100);
    std::vector<std::string> keys;
    REQUIRE((*a)->scan("",
                       [&](std::string_view k, std::span<const uint8_t>) {
                         keys.emplace_back(k);
                         return true;
                       })
                .has_value());
    CHECK(keys == std::vector<std::string>{"ckpt/1", "job/1"});
    CHECK(*(*a)->keys("") == keys);  // the same keys, no chunk read
    CHECK(*(*a)->keys("job/") == std::vector<std::string>{"job/1"});
    // Scanning for some keys reads only their values: with the checkpoint's chunk gone from
    // the only core, a scan of everything fails and a scan of the job's record does not.
    const auto chunk = dir / "chunks-a" / digest_hex(checkpoint);
    std::filesystem::rename(chunk, dir / "aside");
    CHECK_FALSE((*a)->scan("", [](std::string_view, std::span<const uint8_t>) { return true; }));
    keys.clear();
    REQUIRE((*a)->scan_ending("", "job/1",
                              [&](std::string_view k, std::span<const uint8_t>) {
                                keys.emplace_back(k);
                                return true;
                              })
                .has_value());
    CHECK(keys == std::vector<std::string>{"job/1"});
    std::filesystem::rename(dir / "aside", chunk);

    // A second core joins: it fetches the checkpoint's chunk from the first, and the first
    // pushes it the next one before committing.
    auto b = replicated_store::start(config_of(etcd, dir, "b"), [] {});
    REQUIRE(b.has_value());
    CHECK(std::filesystem::exists(dir / "chunks-b" / digest_hex(checkpoint)));
    const auto next = large(50000, 9);
    std::vector<store_write> more = {{"ckpt/1", next}};
    REQUIRE((*a)->commit(more).has_value());
    CHECK(std::filesystem::exists(dir / "chunks-b" / digest_hex(next)));
    CHECK(**(*b)->get("ckpt/1") == next);
    // A damaged copy (of the right size) is fetched again from another core, not served.
    auto damaged = next;
    damaged[100] ^= 1;
    {
      std::ofstream out(dir / "chunks-b" / digest_hex(next), std::ios::binary | std::ios::trunc);
      out.write(reinterpret_cast<const char*>(damaged.data()),
                static_cast<std::streamsize>(damaged.size()));
    }
    CHECK(**(*b)->get("ckpt/1") == next);
    CHECK(**(*b)->get("ckpt/1") == next);  // and kept, mended
  }

  TEST_CASE("a batch of many values under the chunk threshold commits: past a bound, chunks" *
            doctest::skip(!etcd_installed())) {
    // A data set's manifest and its shards are stored in one batch, and every value under
    // the threshold went into the transaction: a set of many shards of nearly 64 KiB was one
    // transaction over etcd's request limit (1.5 MiB by default), refused whole, where a
    // one-server core stored it.
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    auto config = config_of(etcd, dir, "a");
    config.chunk_threshold = size_t{64} << 10;
    auto a = leading(config);
    auto follower = config_of(etcd, dir, "b");
    follower.chunk_threshold = config.chunk_threshold;
    auto b = replicated_store::start(follower, [] {});
    REQUIRE(b.has_value());
    std::vector<store_write> batch = {{"set/manifest", bytes("64 shards")}};
    for (int i = 0; i < 64; ++i)
      batch.push_back({"set/shard/" + std::to_string(i), large(60 << 10, static_cast<uint8_t>(i))});
    auto committed = a->commit(batch);
    REQUIRE_MESSAGE(committed.has_value(), committed.error().message());

    // etcd holds at most inline_limit bytes of the values, and references to the others,
    // whose chunks were pushed to the follower before the commit.
    auto raw = etcd_client::make(etcd.endpoint())->range("/gflex/data/set/", true);
    REQUIRE(raw.has_value());
    REQUIRE(raw->size() == batch.size());
    size_t in_etcd = 0, chunks = 0;
    for (const auto& kv : *raw) {
      const auto& w = *std::find_if(batch.begin(), batch.end(), [&](const store_write& w) {
        return "/gflex/data/" + w.key == kv.key;
      });
      if (kv.value == *w.value) {
        in_etcd += kv.value.size();
        continue;
      }
      ++chunks;
      CHECK_MESSAGE(std::filesystem::exists(follower.chunk_dir / digest_hex(*w.value)),
                    w.key << "'s chunk is not on the follower");
    }
    CHECK(in_etcd <= config.inline_limit);
    CHECK(chunks >= 64 - config.inline_limit / (60 << 10));
    CHECK(**a->get("set/manifest") == bytes("64 shards"));
    for (const auto& w : batch) {
      CHECK(**a->get(w.key) == *w.value);
      CHECK(**(*b)->get(w.key) == *w.value);
    }
  }

  TEST_CASE("one leader; a follower cannot commit; a deposed leader is fenced off" *
            doctest::skip(!etcd_installed())) {
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    std::atomic<int> lost_a{0};
    auto a = replicated_store::start(config_of(etcd, dir, "a"), [&] { ++lost_a; });
    REQUIRE(a.has_value());
    auto b = replicated_store::start(config_of(etcd, dir, "b"), [] {});
    REQUIRE(b.has_value());
    std::atomic<int> stop{0};
    REQUIRE(*(*a)->campaign(stop, {}));
    CHECK(*(*a)->leader() == "a 127.0.0.1:7400");

    // b follows: its campaign goes on until told to stop, and it cannot commit.
    std::string followed;
    std::thread stopper([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));
      stop = 1;
    });
    auto led = (*b)->campaign(stop, [&](const std::string& l) { followed = l; });
    stopper.join();
    REQUIRE(led.has_value());
    CHECK_FALSE(*led);
    CHECK(followed == "a 127.0.0.1:7400");
    std::vector<store_write> w = {{"k", bytes("from b")}};
    auto refused = (*b)->commit(w);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().code() == errc::permission_denied);

    // a's lease ends (as when it is cut off longer than its TTL); b takes over. a's next
    // commit must not land, and a is told it lost the leadership.
    auto admin = etcd_client::make(etcd.endpoint());
    auto leader = admin->range("/gflex/leader", false);
    REQUIRE(leader.has_value());
    REQUIRE(leader->size() == 1);
    REQUIRE(admin->revoke(leader->front().lease).has_value());
    stop = 0;
    REQUIRE(*(*b)->campaign(stop, {}));
    std::vector<store_write> from_b = {{"k", bytes("from b, the leader")}};
    REQUIRE((*b)->commit(from_b).has_value());
    std::vector<store_write> from_a = {{"k", bytes("from a, deposed")}};
    auto fenced = (*a)->commit(from_a);
    REQUIRE_FALSE(fenced.has_value());
    CHECK(fenced.error().code() == errc::permission_denied);
    CHECK(lost_a.load() == 1);
    CHECK(**(*b)->get("k") == bytes("from b, the leader"));
    auto writer = admin->range("/gflex/writer", false);
    REQUIRE(writer.has_value());
    CHECK(
        std::string(writer->front().value.begin(), writer->front().value.end()).starts_with("b "));
  }

  TEST_CASE("a commit whose answer was lost is settled: it landed, or it never lands" *
            doctest::skip(!etcd_installed())) {
    // etcd may apply a transaction after its answer was lost (a read timeout, a reset
    // connection, a 5xx): applied after a later commit, it wrote over it, and the ledger's
    // entry that took the same sequence number was lost.
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    lossy_txn_proxy proxy(etcd.endpoint());
    auto config = config_of(etcd, dir, "a");
    config.endpoints = proxy.endpoint();
    auto a = leading(config);
    std::vector<store_write> first = {{"k", bytes("first")}};
    REQUIRE(a->commit(first).has_value());

    // Applied, its answer lost: the commit succeeded, and the core says so.
    proxy.next = lossy_txn_proxy::mode::lose_answer;
    std::vector<store_write> landed = {{"k", bytes("landed")}};
    auto settled = a->commit(landed);
    CHECK_MESSAGE(settled.has_value(), settled.error().message());
    CHECK(**a->get("k") == bytes("landed"));

    // Held back, its answer lost: the commit failed, and it never lands, however late etcd
    // is sent it.
    proxy.next = lossy_txn_proxy::mode::hold;
    std::vector<store_write> late = {{"k", bytes("late")}};
    auto failed = a->commit(late);
    REQUIRE_FALSE(failed.has_value());
    CHECK(failed.error().code() == errc::unavailable);
    std::vector<store_write> after = {{"k", bytes("after")}};
    REQUIRE(a->commit(after).has_value());
    const std::string answer = proxy.release();
    CHECK_MESSAGE(answer.find("\"succeeded\":true") == std::string::npos, answer);
    CHECK(**a->get("k") == bytes("after"));
    // Still the leader, committing.
    std::vector<store_write> next = {{"k", bytes("next")}};
    CHECK(a->commit(next).has_value());
  }

  TEST_CASE("a commit sent again to another member after its answer was lost landed" *
            doctest::skip(!etcd_installed())) {
    // The client sends a transaction a member answered 5xx (or not in time) to the next
    // member. Where the first had applied it, the copy's compare failed on the revision the
    // commit itself moved, and the core said "nothing of it was written": an unmetered job
    // then ended, failed, over a round its store held.
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    lossy_txn_proxy proxy(etcd.endpoint());
    auto config = config_of(etcd, dir, "a");
    config.endpoints = proxy.endpoint() + "," + etcd.endpoint();
    auto a = leading(config);
    std::vector<store_write> first = {{"k", bytes("first")}};
    REQUIRE(a->commit(first).has_value());
    proxy.next = lossy_txn_proxy::mode::lose_answer;  // applied through the proxy, then 502
    std::vector<store_write> landed = {{"k", bytes("landed")}};
    auto settled = a->commit(landed);
    CHECK_MESSAGE(settled.has_value(), settled.error().message());
    CHECK(**a->get("k") == bytes("landed"));
    std::vector<store_write> next = {{"k", bytes("next")}};  // still leading, committing
    CHECK(a->commit(next).has_value());
    CHECK(**a->get("k") == bytes("next"));
  }

  TEST_CASE("a commit etcd refuses fails at once; one that cannot be settled ends the lead" *
            doctest::skip(!etcd_installed())) {
    // etcd refuses every write once its space quota is full (its NOSPACE alarm). A refused
    // commit was settled as one whose answer was lost (etcd's refusals never reached the
    // core: cpp-httplib failed on their trailer), and its barriers, refused as well, were
    // sent again without a pause and without an end: the leader held the store's lock for
    // good while its lease was renewed (no other core could lead), and every job stalled.
    test::temp_dir dir;
    etcd_server etcd(dir.path());

    // A commit on a thread of its own, waited for up to `limit_s`: one still waiting then
    // fails the test, and the alarm is cleared so that it ends. Its outcome, and its seconds.
    auto bounded_commit = [&etcd](replicated_store& leader, const std::string& value, int limit_s) {
      auto f = std::async(std::launch::async, [&leader, value] {
        std::vector<store_write> w = {{"k", bytes(value)}};
        const auto began = std::chrono::steady_clock::now();
        auto r = leader.commit(w);
        return std::pair<expected<void>, double>(
            std::move(r),
            std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count());
      });
      if (f.wait_for(std::chrono::seconds(limit_s)) != std::future_status::ready) {
        FAIL_CHECK("the commit of \"" << value << "\" has not answered after " << limit_s << " s");
        space_alarm(etcd, false);
      }
      return f.get();
    };

    // Refused outright, as etcd answers (no proxy between): the commit fails at once, saying
    // why, and the core still leads.
    {
      std::atomic<int> lost{0};
      auto started = replicated_store::start(config_of(etcd, dir, "a"), [&] { ++lost; });
      REQUIRE_MESSAGE(started.has_value(), started.error().message());
      replicated_store& a = **started;
      std::atomic<int> stop{0};
      REQUIRE(*a.campaign(stop, {}));
      REQUIRE(bounded_commit(a, "first", 10).first.has_value());
      space_alarm(etcd, true);
      for (const char* value : {"refused", "refused again"}) {
        CAPTURE(value);
        // (no structured binding: clang cannot capture one in doctest's message lambda)
        const auto outcome = bounded_commit(a, value, 10);
        const auto& refused = outcome.first;
        const double took_s = outcome.second;
        REQUIRE_FALSE(refused.has_value());
        CHECK(refused.error().code() == errc::store_error);
        CHECK_MESSAGE(
            refused.error().message().find("database space exceeded") != std::string::npos,
            refused.error().message());
        CHECK(took_s < 2);
      }
      CHECK(lost.load() == 0);
      CHECK(*a.leader() == "a 127.0.0.1:7400");
      space_alarm(etcd, false);
      auto after = bounded_commit(a, "after", 10);
      CHECK_MESSAGE(after.first.has_value(), after.first.error().message());
      CHECK(**a.get("k") == bytes("after"));
    }

    // Refused, but its answer lost on the way (the core hears 502): it is settled with
    // barriers, which etcd refuses too. Tried again with pauses, and given up after twice
    // the lease's TTL (2 s) with the leadership, whose lease is given back.
    lossy_txn_proxy proxy(etcd.endpoint());
    auto config = config_of(etcd, dir, "b");
    config.endpoints = proxy.endpoint();
    std::atomic<int> lost{0};
    auto started = replicated_store::start(config, [&] { ++lost; });
    REQUIRE_MESSAGE(started.has_value(), started.error().message());
    replicated_store& b = **started;
    std::atomic<int> stop{0};
    REQUIRE(*b.campaign(stop, {}));
    space_alarm(etcd, true);
    proxy.next = lossy_txn_proxy::mode::lose_answer;
    const auto outcome = bounded_commit(b, "unsettled", 15);
    const auto& unsettled = outcome.first;
    const double took_s = outcome.second;
    REQUIRE_FALSE(unsettled.has_value());
    CHECK_MESSAGE(unsettled.error().message().find("gave up the leadership") != std::string::npos,
                  unsettled.error().message());
    CHECK(took_s >= 3.5);
    CHECK(took_s < 7);
    CHECK(lost.load() == 1);
    auto admin = etcd_client::make(etcd.endpoint());
    CHECK(admin->range("/gflex/leader", false)->empty());
    std::vector<store_write> deposed = {{"k", bytes("deposed")}};
    CHECK(b.commit(deposed).error().code() == errc::permission_denied);
    space_alarm(etcd, false);
    CHECK(**b.get("k") == bytes("after"));
  }

  TEST_CASE("a core id another live core holds is refused; once its lease ends it is free" *
            doctest::skip(!etcd_installed())) {
    // Two cores given the same --core-id wrote over each other's member record: the leader
    // pushed chunks to neither (it leaves its own id out), and after a failover the survivor
    // could not read the checkpoints.
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    auto a = member_of(etcd, dir, "a", true);
    auto twin_config = config_of(etcd, dir, "a");
    twin_config.chunk_dir = dir / "chunks-twin";
    const auto began = std::chrono::steady_clock::now();
    auto twin = replicated_store::start(twin_config, [] {});
    const double took_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
    REQUIRE_FALSE_MESSAGE(twin.has_value(), "a second core \"a\" started beside the first");
    CHECK(twin.error().code() == errc::invalid_argument);
    CHECK_MESSAGE(twin.error().message().find("core id \"a\" is taken") != std::string::npos,
                  twin.error().message());
    CHECK(took_s < 10);  // twice the holder's lease's time left (under 2 s) and 4 s

    // The first keeps its record and its work: a core that joins fetches its checkpoint.
    auto admin = etcd_client::make(etcd.endpoint());
    auto member = admin->range("/gflex/member/a", false);
    REQUIRE(member.has_value());
    REQUIRE(member->size() == 1);
    CHECK(std::string(member->front().value.begin(), member->front().value.end()) ==
          "127.0.0.1:" + std::to_string(a->chunk_port()));
    const auto checkpoint = large(100000, 5);
    REQUIRE(commit_checkpoint(*a, checkpoint).first.has_value());
    auto b = member_of(etcd, dir, "b");
    CHECK(**b->get("ckpt/1") == checkpoint);

    // Once the first has stopped (its lease given back), the id is free.
    a.reset();
    auto again = replicated_store::start(twin_config, [] {});
    REQUIRE_MESSAGE(again.has_value(), again.error().message());
    CHECK(**(*again)->get("ckpt/1") == checkpoint);

    // A core killed keeps its record until its lease lapses, nobody renewing it: the core
    // started again in its place waits for that, and joins.
    auto lapsing = admin->grant_lease(2);
    REQUIRE(lapsing.has_value());
    etcd_op killed{"/gflex/member/c", bytes("127.0.0.1:1"), *lapsing};
    REQUIRE(admin->txn({}, {&killed, 1}).has_value());
    auto c = replicated_store::start(config_of(etcd, dir, "c"), [] {});
    REQUIRE_MESSAGE(c.has_value(), c.error().message());
    auto record = admin->range("/gflex/member/c", false);
    REQUIRE(record.has_value());
    REQUIRE(record->size() == 1);
    CHECK(record->front().lease != *lapsing);
  }

  TEST_CASE("a leader that stops gives its lease back: its keys go at once" *
            doctest::skip(!etcd_installed())) {
    // Kept to the end of their TTL, followers sent clients to a core that had stopped, and
    // nodes could join nowhere, at every planned restart of the leader.
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    auto a = member_of(etcd, dir, "a", true);
    auto b = member_of(etcd, dir, "b");
    auto admin = etcd_client::make(etcd.endpoint());
    REQUIRE(admin->range("/gflex/leader", false)->size() == 1);
    a.reset();  // the core's clean stop
    CHECK(admin->range("/gflex/leader", false)->empty());
    CHECK(admin->range("/gflex/member/a", false)->empty());
    const auto began = std::chrono::steady_clock::now();
    std::atomic<int> stop{0};
    REQUIRE(*b->campaign(stop, {}));
    CHECK(std::chrono::steady_clock::now() - began < std::chrono::milliseconds(500));
  }

  TEST_CASE("a campaign whose answer was lost still leads: the key under its lease is its own" *
            doctest::skip(!etcd_installed())) {
    // etcd applied the campaign's transaction, but its answer never came (a read timeout, a
    // reset connection): the leader key holds this core's record under this core's lease, and
    // every later compare fails. Nobody else can ever take it while this core lives.
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    auto a = replicated_store::start(config_of(etcd, dir, "a"), [] {});
    REQUIRE(a.has_value());
    auto admin = etcd_client::make(etcd.endpoint());
    auto member = admin->range("/gflex/member/a", false);
    REQUIRE(member.has_value());
    REQUIRE(member->size() == 1);
    etcd_op applied{"/gflex/leader", bytes("a 127.0.0.1:7400"), member->front().lease};
    REQUIRE(admin->txn({}, {&applied, 1}).has_value());
    std::atomic<int> stop{0};
    std::thread stopper([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(3000));
      stop = 1;
    });
    auto led = (*a)->campaign(stop, {});
    stop = 1;
    stopper.join();
    REQUIRE(led.has_value());
    CHECK_MESSAGE(*led, "a follows itself: no core leads while it lives");
    // It leads for real: its commits pass the fence on the key's revision.
    std::vector<store_write> w = {{"k", bytes("from a")}};
    CHECK((*a)->commit(w).has_value());
    // A record under another lease (another core's, or this core's before a restart) is not.
    auto b = replicated_store::start(config_of(etcd, dir, "b"), [] {});
    REQUIRE(b.has_value());
    stop = 0;
    std::thread stopper_b([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));
      stop = 1;
    });
    auto b_led = (*b)->campaign(stop, {});
    stopper_b.join();
    REQUIRE(b_led.has_value());
    CHECK_FALSE(*b_led);
  }

  TEST_CASE("a leader whose etcd goes silent stops leading within its lease's TTL" *
            doctest::skip(!etcd_installed())) {
    // Its renewal waited for etcd's answer up to the read timeout (5 s an endpoint) before it
    // looked at the lease: cut off silently, a leader went on leading past its lease, while a
    // follower could lead too.
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    std::atomic<int64_t> lost_at{0};
    auto a = replicated_store::start(config_of(etcd, dir, "a"), [&] {
      lost_at = std::chrono::steady_clock::now().time_since_epoch().count();
    });
    REQUIRE(a.has_value());
    std::atomic<int> stop{0};
    REQUIRE(*(*a)->campaign(stop, {}));
    std::this_thread::sleep_for(std::chrono::milliseconds(1000));  // a renewal or so
    const auto cut = std::chrono::steady_clock::now();
    etcd.freeze(true);
    for (int tries = 0; tries < 200 && lost_at.load() == 0; ++tries)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    etcd.freeze(false);
    REQUIRE_MESSAGE(lost_at.load() != 0, "still leading 10 s after etcd went silent");
    const double after_s =
        std::chrono::duration<double>(std::chrono::steady_clock::time_point(
                                          std::chrono::steady_clock::duration(lost_at.load())) -
                                      cut)
            .count();
    CHECK_MESSAGE(after_s <= 2.5, "it stopped leading " << after_s << " s after the cut (TTL 2 s)");
  }

  TEST_CASE("a leader whose first etcd member goes silent renews on the next and leads on" *
            doctest::skip(!etcd_installed())) {
    // A renewal waited out the whole read timeout (5 s) on the silent member before it asked
    // the next: past the lease's TTL (2 s here), the leader ended itself.
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    slow_path_proxy proxy(etcd.endpoint(), "/v3/lease/keepalive", std::chrono::seconds(10));
    auto config = config_of(etcd, dir, "a");
    config.endpoints = proxy.endpoint() + "," + etcd.endpoint();
    std::atomic<bool> lost{false};
    auto a = replicated_store::start(config, [&] { lost = true; });
    REQUIRE(a.has_value());
    std::atomic<int> stop{0};
    REQUIRE(*(*a)->campaign(stop, {}));
    std::this_thread::sleep_for(std::chrono::milliseconds(1000));
    proxy.slow = true;
    std::this_thread::sleep_for(std::chrono::milliseconds(7000));  // three TTLs and more
    CHECK_FALSE(lost.load());
    std::vector<store_write> still = {{"k", bytes("still")}};
    auto committed = (*a)->commit(still);
    CHECK_MESSAGE(committed.has_value(), committed.error().message());
  }

  TEST_CASE("a campaign waits for a lease known to hold: a slow grant's is not" *
            doctest::skip(!etcd_installed())) {
    // The grant waited 5 s for a silent member before another granted it: counted from when
    // it was asked, the lease might have ended, and the campaign won on it. The core's watch
    // deposed it at once, and its process ended.
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    const auto bound = bound_socket();  // no structured binding: doctest's macros capture
    const int silent = bound.first, silent_port = bound.second;
    REQUIRE(::listen(silent, 16) == 0);  // connections complete; nothing is ever read
    auto config = config_of(etcd, dir, "a");
    config.endpoints = "127.0.0.1:" + std::to_string(silent_port) + "," + etcd.endpoint();
    std::atomic<int> lost{0};
    auto a = replicated_store::start(config, [&] { ++lost; });
    REQUIRE_MESSAGE(a.has_value(), a.error().message());
    std::atomic<int> stop{0};
    REQUIRE(*(*a)->campaign(stop, {}));
    std::this_thread::sleep_for(std::chrono::seconds(3));
    CHECK(lost.load() == 0);
    a->reset();
    ::close(silent);
  }

  TEST_CASE("a leader whose garbage collection reads slowly keeps its lease" *
            doctest::skip(!etcd_installed())) {
    // The collection ran on the thread that renews the lease, and reads every stored value:
    // with a store large enough for that to take longer than the lease's TTL, each leader
    // ended itself within a collection period of winning.
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    slow_path_proxy proxy(etcd.endpoint(), "/v3/kv/range",
                          std::chrono::milliseconds(2500));  // TTL 2 s
    auto config = config_of(etcd, dir, "a");
    config.endpoints = proxy.endpoint();
    config.garbage_period_s = 0;
    std::atomic<bool> lost{false};
    auto a = replicated_store::start(config, [&] { lost = true; });
    REQUIRE(a.has_value());
    std::atomic<int> stop{0};
    REQUIRE(*(*a)->campaign(stop, {}));
    proxy.slow = true;
    std::this_thread::sleep_for(std::chrono::milliseconds(3500));
    CHECK_FALSE_MESSAGE(lost.load(), "the leader lost its lease while collecting garbage");
    // A core that joins meanwhile reads the committed values under its lease too: read
    // before the lease was renewed, its membership ended while it joined.
    auto joining = config_of(etcd, dir, "b");
    joining.endpoints = proxy.endpoint();
    auto b = replicated_store::start(joining, [] {});
    REQUIRE(b.has_value());
    auto member = etcd_client::make(etcd.endpoint())->range("/gflex/member/b", false);
    proxy.slow = false;
    REQUIRE(member.has_value());
    CHECK_MESSAGE(member->size() == 1, "core b is not a member once it has joined");
  }

  TEST_CASE("a follower that cannot store a chunk leaves; the leader commits; it comes back" *
            doctest::skip(!etcd_installed())) {
    // The leader retried the push until the follower's membership lapsed, which it never did
    // (its lease was renewed): every commit with a chunk failed, and with it every job's round.
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    auto a = member_of(etcd, dir, "a", true);
    auto b = member_of(etcd, dir, "b");
    // b's chunk directory becomes a file: nothing can be written there (even by root).
    std::filesystem::rename(dir / "chunks-b", dir / "chunks-b-aside");
    std::ofstream(dir / "chunks-b") << "not a directory";
    const auto checkpoint = large(100000, 5);
    const auto outcome = commit_checkpoint(*a, checkpoint);
    const auto& committed = outcome.first;
    const double took = outcome.second;
    REQUIRE_MESSAGE(committed.has_value(), committed.error().message());
    CHECK_MESSAGE(took < 3.0, "the commit took " << took << " s");
    auto admin = etcd_client::make(etcd.endpoint());
    CHECK(admin->range("/gflex/member/b", false)->empty());
    // Its disk mended, it joins again, fetching the chunk it missed.
    std::filesystem::remove(dir / "chunks-b");
    std::filesystem::rename(dir / "chunks-b-aside", dir / "chunks-b");
    bool back = false;
    for (int tries = 0; tries < 200 && !back; ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      back = admin->range("/gflex/member/b", false)->size() == 1 &&
             std::filesystem::exists(dir / "chunks-b" / digest_hex(checkpoint));
    }
    CHECK_MESSAGE(back, "core b did not join again within 10 s");
  }

  TEST_CASE("a chunk path a follower cannot stat is written over, not an exception" *
            doctest::skip(!etcd_installed())) {
    // std::filesystem::exists threw on a stat that failed for another reason than absence
    // (here ELOOP; EIO on a failing disk): the chunk service answered 500 and the leader
    // retried until its commit failed.
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    auto a = member_of(etcd, dir, "a", true);
    auto b = member_of(etcd, dir, "b");
    const auto checkpoint = large(100000, 6);
    const auto looped = dir / "chunks-b" / digest_hex(checkpoint);
    std::filesystem::create_symlink(looped, looped);  // stat: too many levels of links
    const auto outcome = commit_checkpoint(*a, checkpoint);
    const auto& committed = outcome.first;
    const double took = outcome.second;
    REQUIRE_MESSAGE(committed.has_value(), committed.error().message());
    CHECK_MESSAGE(took < 3.0, "the commit took " << took << " s");
    CHECK(std::filesystem::is_regular_file(looped));  // the chunk took the link's place
    auto read = b->get("ckpt/1");
    REQUIRE(read.has_value());
    REQUIRE(read->has_value());
    CHECK(**read == checkpoint);
  }

  TEST_CASE("a push to a core that stops reading is cut short once it leaves" *
            doctest::skip(!etcd_installed())) {
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    auto a = leading(config_of(etcd, dir, "a"));
    const int fd = frozen_member(etcd);
    // Its lease is not renewed: it lapses in 2 s, and the push must end soon after, not
    // after the socket's 30 s timeouts.
    const auto begin = std::chrono::steady_clock::now();
    std::vector<store_write> w = {{"ckpt/big", large(size_t{64} << 20, 5)}};
    REQUIRE(a->commit(w).has_value());
    const auto took = std::chrono::steady_clock::now() - begin;
    ::close(fd);
    CHECK(took < std::chrono::seconds(8));
    CHECK(took > std::chrono::milliseconds(1500));  // it did wait for the member
    CHECK(**a->get("ckpt/big") == w.front().value);
  }

  TEST_CASE("a member whose chunk service the leader cannot reach is taken out; it joins again" *
            doctest::skip(!etcd_installed())) {
    // A follower that reaches etcd but whose chunk service the leader cannot reach (a
    // firewall, a wrong advertised address) kept its membership, its lease renewed: every push
    // to it was tried for 7 s and failed the commit, and with it every job's round.
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    auto a = leading(config_of(etcd, dir, "a"));
    const auto refusing = bound_socket();  // bound, never listening: connections are refused
    auto follower = config_of(etcd, dir, "b");
    follower.chunk_advertise = "127.0.0.1:" + std::to_string(refusing.second);
    auto b = replicated_store::start(follower, [] {});
    REQUIRE_MESSAGE(b.has_value(), b.error().message());
    auto admin = etcd_client::make(etcd.endpoint());
    REQUIRE(admin.has_value());
    auto before = admin->range("/gflex/member/b", false);
    REQUIRE(before.has_value());
    REQUIRE(before->size() == 1);
    const int64_t first_lease = before->front().lease;
    const auto checkpoint = large(size_t{1} << 20, 9);
    const auto outcome = commit_checkpoint(*a, checkpoint);
    const auto& committed = outcome.first;
    const double took = outcome.second;
    REQUIRE_MESSAGE(committed.has_value(), committed.error().message());
    CHECK_MESSAGE(took < 12.0, "the commit took " << took << " s");
    // b's record under the lease it had is gone (b may be back already, under another lease).
    auto after = admin->range("/gflex/member/b", false);
    REQUIRE(after.has_value());
    CHECK((after->empty() || after->front().lease != first_lease));
    // b sees it was taken out, and joins again, fetching the chunk it lacks from a.
    const auto chunk = follower.chunk_dir / digest_hex(checkpoint);
    bool back = false;
    for (int i = 0; i < 100 && !back; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      auto now = admin->range("/gflex/member/b", false);
      back = now && !now->empty() && now->front().lease != first_lease &&
             std::filesystem::exists(chunk);
    }
    ::close(refusing.first);
    CHECK_MESSAGE(back, "b did not join again with the chunk");
    auto read = (*b)->get("ckpt/1");
    REQUIRE_MESSAGE(read.has_value(), read.error().message());
    REQUIRE(read->has_value());
    CHECK(**read == checkpoint);
  }

  TEST_CASE("a member whose operator key differs is taken out at once, saying so" *
            doctest::skip(!etcd_installed())) {
    // Each core's chunk service takes the bearer made from its own operator.key: a core made
    // with its own `gflex-core init` refused every push (403), which the leader tried for the
    // whole bound (the lease's TTL and 5 s) at every commit before taking it out, saying only
    // "HTTP 403", and a joining core's fetches ended in "no core holds chunk".
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    auto a = leading(config_of(etcd, dir, "a"));
    auto follower = config_of(etcd, dir, "b");
    follower.secret = "another operator key";
    auto b = replicated_store::start(follower, [] {});
    REQUIRE_MESSAGE(b.has_value(), b.error().message());
    test::captured_log captured;
    const auto checkpoint = large(size_t{1} << 20, 5);
    const auto outcome = commit_checkpoint(*a, checkpoint);
    const auto& committed = outcome.first;
    const double took = outcome.second;
    REQUIRE_MESSAGE(committed.has_value(), committed.error().message());
    CHECK_MESSAGE(took < 3.0, "the commit took " << took << " s");
    CHECK_MESSAGE(captured.count("the cores' operator.key files differ") > 0, captured.text());
  }

  TEST_CASE("the leader compacts etcd's history: past revisions do not pile up" *
            doctest::skip(!etcd_installed())) {
    // Every round rewrites its job's record; etcd keeps every revision until compacted and,
    // its space quota full, refuses every commit.
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    auto config = config_of(etcd, dir, "a");
    config.kept_revisions = 10;
    auto a = replicated_store::start(config, [] {});
    REQUIRE(a.has_value());
    std::atomic<int> stop{0};
    auto led = (*a)->campaign(stop, {});
    REQUIRE(led.has_value());
    REQUIRE(*led);
    auto client = etcd_client::make(etcd.endpoint());
    REQUIRE(client.has_value());
    const int64_t first = client->revision().value();
    for (int round = 1; round <= 40; ++round) {
      std::vector<store_write> w = {{"job/1/record", bytes("round " + std::to_string(round))}};
      REQUIRE((*a)->commit(w).has_value());
    }
    // The record as of the first commits is gone; the newest is there.
    CHECK_FALSE(client->range("/gflex/data/job/1/record", false, first + 1).has_value());
    CHECK(**(*a)->get("job/1/record") == bytes("round 40"));
  }

  TEST_CASE("a commit's chunks outlive their pushes, however long those take" *
            doctest::skip(!etcd_installed())) {
    // The leader removed chunk files nothing named yet once they were older than 120 s: a
    // commit whose pushes took longer (a large upload, a slow follower) lost its own chunks
    // before the transaction named them. Here every unnamed chunk goes at once, and the push
    // waits about 2 s for a member that never reads.
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    auto config = config_of(etcd, dir, "a");
    config.garbage_age_s = 0;
    config.garbage_period_s = 0;
    auto a = replicated_store::start(config, [] {});
    REQUIRE(a.has_value());
    std::atomic<int> stop{0};
    REQUIRE(*(*a)->campaign(stop, {}));
    const int fd = frozen_member(etcd);
    std::vector<store_write> w = {{"ckpt/big", large(size_t{8} << 20, 5)}};
    REQUIRE((*a)->commit(w).has_value());
    ::close(fd);
    auto back = (*a)->get("ckpt/big");
    REQUIRE_MESSAGE(back.has_value(), back.error().message());
    CHECK(**back == w.front().value);
  }

  TEST_CASE("a follower keeps a commit's chunks however long the commit's pushes take" *
            doctest::skip(!etcd_installed())) {
    // A follower removed chunks nothing named yet once they were older than its garbage age:
    // a commit whose pushes took longer had its first chunk gone from the follower before the
    // transaction named it, and was acknowledged with that chunk on the leader alone.
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    auto a = leading(config_of(etcd, dir, "a"));
    auto follower = config_of(etcd, dir, "b");
    follower.garbage_age_s = 1;
    follower.garbage_period_s = 0;  // at every renewal of its lease (every 0.67 s)
    auto b = replicated_store::start(follower, [] {});
    REQUIRE(b.has_value());
    const int fd = frozen_member(etcd);  // the first chunk's push waits about 2 s for it
    std::vector<store_write> w = {{"ckpt/x", large(100000, 7)}, {"ckpt/y", large(100000, 8)}};
    REQUIRE(a->commit(w).has_value());
    ::close(fd);
    for (const auto& write : w)
      CHECK_MESSAGE(std::filesystem::exists(follower.chunk_dir / digest_hex(*write.value)),
                    write.key << "'s chunk is not on the follower");
  }

  TEST_CASE("a core stays a member while it fetches the chunks it lacks, however long" *
            doctest::skip(!etcd_installed())) {
    // Nothing renewed a joining core's lease while it fetched: a fetch longer than the lease
    // (a large checkpoint) let its membership lapse, and the leader's pushes skipped it.
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    auto a = leading(config_of(etcd, dir, "a"));
    std::vector<store_write> w = {{"ckpt/x", large(100000, 7)}, {"ckpt/y", large(100000, 8)}};
    REQUIRE(a->commit(w).has_value());
    // A member asked first ("0slow" sorts before "a") that takes 1.5 s to say it has nothing.
    httplib::Server slow;
    slow.Get(R"(/chunk/.*)", [](const httplib::Request&, httplib::Response& res) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));
      res.status = 404;
    });
    const int slow_port = slow.bind_to_any_port("127.0.0.1");
    std::thread serving([&] { slow.listen_after_bind(); });
    auto admin = etcd_client::make(etcd.endpoint());
    auto lease = admin->grant_lease(60);
    REQUIRE(lease.has_value());
    etcd_op member{"/gflex/member/0slow", bytes("127.0.0.1:" + std::to_string(slow_port)), *lease};
    REQUIRE(admin->txn({}, {&member, 1}).has_value());
    auto b = replicated_store::start(config_of(etcd, dir, "b"), [] {});  // a 2 s lease
    slow.stop();
    serving.join();
    REQUIRE_MESSAGE(b.has_value(), b.error().message());
    auto held = admin->range("/gflex/member/b", false);
    REQUIRE(held.has_value());
    CHECK_MESSAGE(!held->empty(), "b's membership lapsed while it fetched");
  }

  TEST_CASE("a joining core passes over chunks replaced or gone meanwhile, and joins" *
            doctest::skip(!etcd_installed())) {
    // join() read the references once and fetched in key order, failing on the first chunk
    // no core served: a core added while jobs ran reached a checkpoint that later rounds had
    // replaced and every core had removed ("no core holds chunk ..."), and exited; a chunk
    // still named that no live core held kept every core from joining, for good. Here a
    // member asked first ("0peer" sorts before "a") does, at b's first fetch, what the
    // rounds and the garbage collection do meanwhile: ckpt/x is replaced, ckpt/y erased,
    // and their old chunks are removed from a; ckpt/z's chunk is gone from a while still
    // named.
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    auto a = leading(config_of(etcd, dir, "a"));
    const auto x1 = large(100000, 1), y = large(100000, 2), z = large(100000, 3);
    const auto x2 = large(100000, 4);
    std::vector<store_write> w = {{"ckpt/x", x1}, {"ckpt/y", y}, {"ckpt/z", z}};
    REQUIRE(a->commit(w).has_value());
    const auto a_chunks = dir / "chunks-a";
    std::filesystem::remove(a_chunks / digest_hex(z));
    httplib::Server peer;
    std::atomic<bool> moved{false};
    std::optional<expected<void>> replaced;
    peer.Put(R"(/chunk/.*)",
             [](const httplib::Request&, httplib::Response& res) { res.status = 204; });
    peer.Get(R"(/chunk/.*)", [&](const httplib::Request&, httplib::Response& res) {
      if (!moved.exchange(true)) {
        std::vector<store_write> later = {{"ckpt/x", x2}, {"ckpt/y", std::nullopt}};
        replaced = a->commit(later);
        std::filesystem::remove(a_chunks / digest_hex(x1));
        std::filesystem::remove(a_chunks / digest_hex(y));
      }
      res.status = 404;
    });
    const int peer_port = peer.bind_to_any_port("127.0.0.1");
    std::thread serving([&] { peer.listen_after_bind(); });
    auto admin = etcd_client::make(etcd.endpoint());
    auto lease = admin->grant_lease(60);
    REQUIRE(lease.has_value());
    etcd_op member{"/gflex/member/0peer", bytes("127.0.0.1:" + std::to_string(peer_port)), *lease};
    REQUIRE(admin->txn({}, {&member, 1}).has_value());
    auto b = replicated_store::start(config_of(etcd, dir, "b"), [] {});
    peer.stop();
    serving.join();
    REQUIRE(moved.load());
    REQUIRE(replaced.has_value());
    REQUIRE_MESSAGE(replaced->has_value(), replaced->error().message());
    REQUIRE_MESSAGE(b.has_value(), b.error().message());
    auto x = (*b)->get("ckpt/x");
    REQUIRE_MESSAGE(x.has_value(), x.error().message());
    REQUIRE(x->has_value());
    CHECK(**x == x2);
    CHECK_FALSE((*b)->get("ckpt/y")->has_value());
    // The chunk no live core holds: its key cannot be read, and says why.
    auto unreadable = (*b)->get("ckpt/z");
    REQUIRE_FALSE(unreadable.has_value());
    CHECK(unreadable.error().message().find("no core holds chunk " + digest_hex(z)) !=
          std::string::npos);
    // b may lead: it is a member holding every chunk a live core holds.
    a.reset();
    std::atomic<int> stop{0};
    auto led = (*b)->campaign(stop, {});
    REQUIRE(led.has_value());
    CHECK(*led);
  }

  TEST_CASE("a core that joins while a commit's chunks are pushed fetches them once it lands" *
            doctest::skip(!etcd_installed())) {
    // The leader chose whom to push a commit's chunks to as its pushes began, and a core that
    // registered after that read the committed references before the commit landed: it
    // joined without the commit's chunks, counted as holding them, and once the leader was
    // gone no core could read them. Here a's commit is held back on its way to etcd after
    // its pushes, and lands when b, joining, first asks a member for a chunk (after its read
    // of the references): "0peer", asked first ("0peer" sorts before "a"), lets it go.
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    slow_path_proxy proxy(etcd.endpoint(), "/v3/kv/txn", std::chrono::seconds(4));
    auto config = config_of(etcd, dir, "a");
    config.endpoints = proxy.endpoint();
    auto a = leading(config);
    const auto old = large(100000, 1), fresh = large(100000, 2);
    std::vector<store_write> first = {{"ckpt/old", old}};
    REQUIRE(a->commit(first).has_value());
    httplib::Server peer;
    std::atomic<bool> released{false};
    std::shared_future<expected<void>> committing;
    peer.Put(R"(/chunk/.*)",
             [](const httplib::Request&, httplib::Response& res) { res.status = 204; });
    peer.Get(R"(/chunk/.*)", [&](const httplib::Request&, httplib::Response& res) {
      if (!released.exchange(true)) {
        proxy.slow = false;
        committing.wait_for(std::chrono::seconds(10));
      }
      res.status = 404;
    });
    const int peer_port = peer.bind_to_any_port("127.0.0.1");
    std::thread serving([&] { peer.listen_after_bind(); });
    auto admin = etcd_client::make(etcd.endpoint());
    auto lease = admin->grant_lease(60);
    REQUIRE(lease.has_value());
    etcd_op member{"/gflex/member/0peer", bytes("127.0.0.1:" + std::to_string(peer_port)), *lease};
    REQUIRE(admin->txn({}, {&member, 1}).has_value());
    proxy.slow = true;
    committing = std::async(std::launch::async, [&] {
                   std::vector<store_write> next = {{"ckpt/new", fresh}};
                   return a->commit(next);
                 }).share();
    for (int i = 0; i < 200 && proxy.held.load() == 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    REQUIRE_MESSAGE(proxy.held.load() == 1, "a's commit did not reach etcd");
    auto b = replicated_store::start(config_of(etcd, dir, "b"), [] {});
    const auto landed = committing.get();
    peer.stop();
    serving.join();
    REQUIRE(released.load());
    REQUIRE_MESSAGE(landed.has_value(), landed.error().message());
    REQUIRE_MESSAGE(b.has_value(), b.error().message());
    CHECK_MESSAGE(std::filesystem::exists(dir / "chunks-b" / digest_hex(fresh)),
                  "b joined without the chunk of the commit that landed as it joined");
    // With a gone, b leads, and reads what a committed.
    a.reset();
    (void)admin->revoke(*lease);
    std::atomic<int> stop{0};
    auto led = (*b)->campaign(stop, {});
    REQUIRE(led.has_value());
    REQUIRE(*led);
    auto read = (*b)->get("ckpt/new");
    REQUIRE_MESSAGE(read.has_value(), read.error().message());
    REQUIRE(read->has_value());
    CHECK(**read == fresh);
  }

  TEST_CASE("a core that joined as a commit's chunks were pushed fetches them once it lands" *
            doctest::skip(!etcd_installed())) {
    // As above, but the commit lands after b has joined: no read of b's join could see it.
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    slow_path_proxy proxy(etcd.endpoint(), "/v3/kv/txn", std::chrono::seconds(4));
    auto config = config_of(etcd, dir, "a");
    config.endpoints = proxy.endpoint();
    auto a = leading(config);
    const auto fresh = large(100000, 2);
    proxy.slow = true;
    auto committing = std::async(std::launch::async, [&] {
      std::vector<store_write> w = {{"ckpt/new", fresh}};
      return a->commit(w);
    });
    for (int i = 0; i < 200 && proxy.held.load() == 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    REQUIRE_MESSAGE(proxy.held.load() == 1, "a's commit did not reach etcd");
    auto b = replicated_store::start(config_of(etcd, dir, "b"), [] {});
    proxy.slow = false;
    const auto landed = committing.get();
    REQUIRE_MESSAGE(b.has_value(), b.error().message());
    REQUIRE_MESSAGE(landed.has_value(), landed.error().message());
    const auto chunk = dir / "chunks-b" / digest_hex(fresh);
    for (int i = 0; i < 50 && !std::filesystem::exists(chunk); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    CHECK_MESSAGE(std::filesystem::exists(chunk),
                  "b lacks the chunk of the commit that landed after it joined");
    // With a gone, b leads, and reads what a committed.
    a.reset();
    std::atomic<int> stop{0};
    auto led = (*b)->campaign(stop, {});
    REQUIRE(led.has_value());
    REQUIRE(*led);
    auto read = (*b)->get("ckpt/new");
    REQUIRE_MESSAGE(read.has_value(), read.error().message());
    REQUIRE(read->has_value());
    CHECK(**read == fresh);
  }

  TEST_CASE("a core that finds chunks it lacks at every read of the references stops joining" *
            doctest::skip(!etcd_installed())) {
    // A joining core reads the references again while commits since its last read name chunks
    // it lacks; one that finds such chunks every time is not being pushed to, and gives up
    // after a few reads instead of looking for ever. Here every chunk b asks "0peer" for
    // (asked first) comes with a commit naming one more chunk, as a leader that cannot
    // push to b commits without it.
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    auto a = leading(config_of(etcd, dir, "a"));
    std::vector<store_write> w = {{"ckpt/old", large(100000, 1)}};
    for (int i = 0; i < 8; ++i)
      w.push_back({"later/" + std::to_string(i), large(100000, static_cast<uint8_t>(10 + i))});
    REQUIRE(a->commit(w).has_value());
    // The later chunks' references, taken out of etcd (their files stay on a) and put back
    // one at a time.
    auto admin = etcd_client::make(etcd.endpoint());
    auto later = admin->range("/gflex/data/later/", true);
    REQUIRE(later.has_value());
    REQUIRE(later->size() == 8);
    etcd_op erase{"/gflex/data/later/", std::nullopt, 0};
    for (const auto& kv : *later) {
      erase.key = kv.key;
      REQUIRE(admin->txn({}, {&erase, 1}).has_value());
    }
    httplib::Server peer;
    std::mutex committing;
    size_t committed = 0;
    peer.Get(R"(/chunk/.*)", [&](const httplib::Request&, httplib::Response& res) {
      std::lock_guard lock(committing);
      if (committed < later->size()) {
        auto client = etcd_client::make(etcd.endpoint());
        const etcd_op ops[2] = {
            {"/gflex/data/again/" + std::to_string(committed), later->at(committed).value, 0},
            {"/gflex/writer", bytes("a commit that passed b by"), 0}};
        if (client && client->txn({}, ops)) ++committed;
      }
      res.status = 404;
    });
    const int peer_port = peer.bind_to_any_port("127.0.0.1");
    std::thread serving([&] { peer.listen_after_bind(); });
    auto lease = admin->grant_lease(60);
    REQUIRE(lease.has_value());
    etcd_op member{"/gflex/member/0peer", bytes("127.0.0.1:" + std::to_string(peer_port)), *lease};
    REQUIRE(admin->txn({}, {&member, 1}).has_value());
    auto b = replicated_store::start(config_of(etcd, dir, "b"), [] {});
    peer.stop();
    serving.join();
    REQUIRE_FALSE(b.has_value());
    CHECK_MESSAGE(
        b.error().message().find("cannot join: each of 5 reads of the committed "
                                 "references named chunks it lacked") != std::string::npos,
        b.error().message());
    CHECK(committed == 5);
    auto held = admin->range("/gflex/member/b", false);
    REQUIRE(held.has_value());
    CHECK_MESSAGE(held->empty(), "b stayed in the membership");
  }

  TEST_CASE("the chunk service refuses a wrong secret and contents that are not their digest" *
            doctest::skip(!etcd_installed())) {
    chunk_service_of_one f;
    auto& c = f.client;
    const std::string body = "some chunk";
    const std::string digest = digest_of(body), good = chunk_bearer();
    auto no_secret = c.Put("/chunk/" + digest, body, "application/octet-stream");
    REQUIRE(no_secret);
    CHECK(no_secret->status == 403);
    auto wrong = c.Put("/chunk/" + digest, {{"Authorization", "Bearer nope"}}, body,
                       "application/octet-stream");
    REQUIRE(wrong);
    CHECK(wrong->status == 403);
    auto lie = c.Put("/chunk/" + std::string(64, 'a'), {{"Authorization", good}}, body,
                     "application/octet-stream");
    REQUIRE(lie);
    CHECK(lie->status == 400);
    CHECK_FALSE(std::filesystem::exists(f.dir / "chunks-a" / std::string(64, 'a')));
    auto read = c.Get("/chunk/" + digest, {{"Authorization", "Bearer nope"}});
    REQUIRE(read);
    CHECK(read->status == 403);
    auto fine =
        c.Put("/chunk/" + digest, {{"Authorization", good}}, body, "application/octet-stream");
    REQUIRE(fine);
    CHECK(fine->status == 204);
    auto back = c.Get("/chunk/" + digest, {{"Authorization", good}});
    REQUIRE(back);
    CHECK(back->body == body);
  }

  TEST_CASE("a damaged copy of a chunk pushed again is written again, not acknowledged" *
            doctest::skip(!etcd_installed())) {
    // An existing file was only touched: a truncated copy (a crash, a bad disk) was counted
    // as held, and after the leader's loss the new leader had no whole copy.
    chunk_service_of_one f;
    auto& c = f.client;
    const std::string body = "a chunk of some length";
    const std::string digest = digest_of(body), good = chunk_bearer();
    {
      std::ofstream damaged(f.dir / "chunks-a" / digest, std::ios::binary);
      damaged << body.substr(0, 5);
    }
    auto put =
        c.Put("/chunk/" + digest, {{"Authorization", good}}, body, "application/octet-stream");
    REQUIRE(put);
    CHECK(put->status == 204);
    auto back = c.Get("/chunk/" + digest, {{"Authorization", good}});
    REQUIRE(back);
    CHECK(back->body == body);
  }

  TEST_CASE("a one-server core's state is not left behind unsaid: on an empty etcd, refused" *
            doctest::skip(!etcd_installed())) {
    // With --store etcd:// the LMDB store in the data directory was never looked at: a
    // one-server core switched to a core of several started with no accounts, balances or
    // tokens, and nothing said why.
    test::temp_dir dir, used, fresh, emptied;
    etcd_server etcd(dir.path());
    auto single = test::local_core_config(used);
    const std::string key = test::operator_key(used);
    std::string not_opened = "the core did not start";
    const int alone =
        run_core(single, [&](local_core& core) -> expected<std::unique_ptr<core_service>> {
          auto opened = core.connect(key).create_account("user/bea");
          not_opened = opened ? "" : opened.error().message();
          return error(errc::invalid_argument, "the test is done");  // stops the core
        });
    REQUIRE(alone == 2);
    REQUIRE_MESSAGE(not_opened.empty(), not_opened);
    // The same data directory, or another, on etcd: whether the core started, and its code.
    auto on_etcd = [&](core_config config) {
      config.store_url = "etcd://" + etcd.endpoint();
      config.port = test::free_loopback_port();
      config.chunk_listen = "127.0.0.1:0";
      bool started = false;
      const int code =
          run_core(config, [&](local_core&) -> expected<std::unique_ptr<core_service>> {
            started = true;
            return error(errc::invalid_argument, "the test is done");
          });
      return std::make_pair(started, code);
    };
    const auto [used_started, used_code] = on_etcd(single);
    CHECK_FALSE(used_started);
    CHECK(used_code == 2);  // a configuration to fix: not restarted by the service
    auto admin = etcd_client::make(etcd.endpoint());
    auto members = admin->range("/gflex/member/", true);
    REQUIRE(members.has_value());
    CHECK_MESSAGE(members->empty(), "the refused core joined the cores");
    auto refused = check_single_core_state(used.path(), etcd.endpoint());
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().code() == errc::invalid_argument);
    const std::string why = refused.error().message();
    CHECK_MESSAGE(why.find((used.path() / "data.mdb").string() + " holds") != std::string::npos,
                  why);
    CHECK_MESSAGE(why.find("apikey/, ledger/") != std::string::npos, why);  // user/bea's
    CHECK_MESSAGE(
        why.find("etcd at " + etcd.endpoint() + " holds no core's state") != std::string::npos,
        why);
    CHECK_MESSAGE(why.find("without --store") != std::string::npos, why);

    // What `gflex-core init` makes is no state, nor is an LMDB store with no record (a core
    // started and stopped): such a core starts on the empty etcd.
    auto fresh_config = test::local_core_config(fresh);
    REQUIRE(check_single_core_state(fresh.path(), etcd.endpoint()).has_value());
    CHECK_FALSE(std::filesystem::exists(fresh.path() / "data.mdb"));  // not made by the check
    REQUIRE(init_core(emptied.path()).has_value());
    REQUIRE(store::open(emptied.path()).has_value());
    CHECK(check_single_core_state(emptied.path(), etcd.endpoint()).has_value());
    const auto [fresh_started, fresh_code] = on_etcd(fresh_config);
    CHECK(fresh_started);
    CHECK(fresh_code == 2);  // the starter's "the test is done"

    // Once etcd holds a core's state, the data.mdb beside it is not used, and not refused.
    etcd_op state{"/gflex/data/user/ann", bytes("a record"), 0};
    REQUIRE(admin->txn({}, {&state, 1}).has_value());
    CHECK(check_single_core_state(used.path(), etcd.endpoint()).has_value());
  }

  TEST_CASE("a chunk service listening on every address is reached at --chunk-advertise" *
            doctest::skip(!etcd_installed())) {
    // A core's config had no chunk_advertise, and --chunk-listen 0.0.0.0:PORT is refused
    // without one: a core behind NAT, or whose public address is on none of its interfaces,
    // could not serve its chunks to the other cores.
    test::temp_dir dir, data;
    etcd_server etcd(dir.path());
    auto config = test::local_core_config(data);
    config.store_url = "etcd://" + etcd.endpoint();
    config.port = test::free_loopback_port();
    const uint16_t chunk_port = test::free_loopback_port();
    config.chunk_listen = "0.0.0.0:" + std::to_string(chunk_port);
    config.chunk_advertise = "127.0.0.1:" + std::to_string(chunk_port);
    const std::string key = test::operator_key(data);
    std::string record = "the core did not start";
    int chunk_status = 0;
    const int code = run_core(config, [&](local_core&) -> expected<std::unique_ptr<core_service>> {
      // What the other cores read to push chunks here, and what answers there.
      auto members = etcd_client::make(etcd.endpoint())->range("/gflex/member/", true);
      if (members && members->size() == 1)
        record.assign(members->front().value.begin(), members->front().value.end());
      httplib::Client chunks("127.0.0.1", chunk_port);
      auto r = chunks.Get(
          "/chunk/" + std::string(64, '0'),
          httplib::Headers{
              {"Authorization",
               "Bearer " + digest_hex(std::span(reinterpret_cast<const uint8_t*>(key.data()),
                                                key.size()))}});
      chunk_status = r ? r->status : -1;
      return error(errc::invalid_argument, "the test is done");
    });
    CHECK(code == 2);  // the starter's "the test is done"
    CHECK(record == config.chunk_advertise);
    CHECK(chunk_status == 404);  // the chunk service, which holds no such chunk
  }

  TEST_CASE("a push that reaches another core's chunk service is not counted as held" *
            doctest::skip(!etcd_installed())) {
    // Cores given one chunk address (--chunk-listen 127.0.0.1:7401 on each machine) each
    // reached their own chunk service where they meant another's: the leader's push to b was
    // taken by the leader's own service, which held the chunk, and b was counted as holding
    // every chunk while it held none; once the leader was gone, no core held them. Here b's
    // record names a's chunk service, as such a b's does as seen from a.
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    auto a = leading(config_of(etcd, dir, "a"));
    auto b = member_of(etcd, dir, "b");
    auto admin = etcd_client::make(etcd.endpoint());
    auto record = admin->range("/gflex/member/b", false);
    REQUIRE(record.has_value());
    REQUIRE(record->size() == 1);
    const int64_t b_lease = record->front().lease;
    etcd_op clash{"/gflex/member/b", bytes("127.0.0.1:" + std::to_string(a->chunk_port())),
                  b_lease};
    REQUIRE(admin->txn({}, {&clash, 1}).has_value());
    const auto checkpoint = large(100000, 11);
    const auto outcome = commit_checkpoint(*a, checkpoint);
    REQUIRE_MESSAGE(outcome.first.has_value(), outcome.first.error().message());
    CHECK_MESSAGE(outcome.second < 3.0, "the commit took " << outcome.second << " s");
    // b, which holds nothing, is taken out of the membership, not counted as holding it.
    auto after = admin->range("/gflex/member/b", false);
    REQUIRE(after.has_value());
    CHECK_MESSAGE((after->empty() || after->front().lease != b_lease),
                  "a counted b as holding the chunk a's own chunk service took");
    // b joins again at its own address, fetching the chunk: it reads it once a is gone.
    const auto chunk = dir / "chunks-b" / digest_hex(checkpoint);
    bool held = false;
    for (int i = 0; i < 100 && !held; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      held = std::filesystem::exists(chunk);
    }
    CHECK_MESSAGE(held, "b did not join again with the chunk");
    a.reset();
    auto read = b->get("ckpt/1");
    REQUIRE_MESSAGE(read.has_value(), read.error().message());
    REQUIRE(read->has_value());
    CHECK(**read == checkpoint);
  }

  TEST_CASE("a chunk address that reaches another core's chunk service is refused at start" *
            doctest::skip(!etcd_installed())) {
    // One --chunk-advertise copied to every core: the leader pushed b's chunks to a's service.
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    auto a = member_of(etcd, dir, "a");
    const std::string a_address = "127.0.0.1:" + std::to_string(a->chunk_port());
    // a's chunk service serves what is meant for a, or for no core named, and refuses, naming
    // itself, what is meant for another.
    httplib::Client c("127.0.0.1", a->chunk_port());
    const std::string path = "/chunk/" + std::string(64, '0');
    auto unnamed = c.Get(path, {{"Authorization", chunk_bearer()}});
    auto for_a = c.Get(path, {{"Authorization", chunk_bearer()}, {"Gflex-Core-Id", "a"}});
    auto for_b = c.Get(path, {{"Authorization", chunk_bearer()}, {"Gflex-Core-Id", "b"}});
    REQUIRE((unnamed && for_a && for_b));
    CHECK(unnamed->status == 404);
    CHECK(for_a->status == 404);
    CHECK(for_b->status == 421);
    CHECK(for_b->get_header_value("Gflex-Core-Id") == "a");
    auto copied = config_of(etcd, dir, "b");
    copied.chunk_advertise = a_address;
    auto b = replicated_store::start(copied, [] {});
    REQUIRE_FALSE(b.has_value());
    CHECK(b.error().code() == errc::invalid_argument);
    const std::string why = b.error().message();
    CHECK_MESSAGE(why.find("--chunk-advertise \"" + a_address +
                           "\" reaches core a's chunk "
                           "service") != std::string::npos,
                  why);
    CHECK(etcd_client::make(etcd.endpoint())->range("/gflex/member/b", false)->empty());
  }

  TEST_CASE("a core told to stop as it joins stops, a fetch in flight included" *
            doctest::skip(!etcd_installed())) {
    // The join fetched every chunk it lacked (60 s of read timeout at each core asked) and
    // waited out a core id's old lease without looking at the stop signal: a core given
    // SIGTERM as it joined went on until it had joined.
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    auto a = leading(config_of(etcd, dir, "a"));
    std::vector<store_write> w = {{"ckpt/x", large(100000, 7)}};
    REQUIRE(a->commit(w).has_value());
    // A member asked first ("0slow" sorts before "a") that sends nothing until released.
    httplib::Server slow;
    std::atomic<bool> release{false};
    std::atomic<int> asked{0};
    slow.Get(R"(/chunk/.*)", [&](const httplib::Request&, httplib::Response& res) {
      ++asked;
      for (int i = 0; i < 1200 && !release; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      res.status = 404;
    });
    const int slow_port = slow.bind_to_any_port("127.0.0.1");
    std::thread serving([&] { slow.listen_after_bind(); });
    auto admin = etcd_client::make(etcd.endpoint());
    auto lease = admin->grant_lease(60);
    REQUIRE(lease.has_value());
    etcd_op member{"/gflex/member/0slow", bytes("127.0.0.1:" + std::to_string(slow_port)), *lease};
    REQUIRE(admin->txn({}, {&member, 1}).has_value());
    std::atomic<int> stop{0};
    auto joining = std::async(std::launch::async, [&] {
      return replicated_store::start(
          config_of(etcd, dir, "b"), [] {}, &stop);
    });
    for (int i = 0; i < 200 && asked == 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    REQUIRE(asked > 0);
    stop = SIGTERM;
    const bool ended = joining.wait_for(std::chrono::seconds(5)) == std::future_status::ready;
    release = true;
    auto b = joining.get();
    slow.stop();
    serving.join();
    CHECK_MESSAGE(ended, "start went on for 5 s after its stop flag was set");
    CHECK_FALSE(b.has_value());
    if (b)
      b->reset();  // joined regardless: stopped here, giving its lease back
    else
      CHECK_MESSAGE(
          b.error().message().find("core b stopped while fetching chunk") != std::string::npos,
          b.error().message());
    // It gave its lease back, and with it its member key.
    CHECK(admin->range("/gflex/member/b", false)->empty());

    // Waiting for its core id's old lease to lapse (a killed core's), it stops too.
    auto old = admin->grant_lease(30);
    REQUIRE(old.has_value());
    etcd_op held{"/gflex/member/c", bytes("127.0.0.1:1"), *old};
    REQUIRE(admin->txn({}, {&held, 1}).has_value());
    stop = 0;
    auto waiting = std::async(std::launch::async, [&] {
      return replicated_store::start(
          config_of(etcd, dir, "c"), [] {}, &stop);
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    stop = SIGINT;
    const bool waited_out = waiting.wait_for(std::chrono::seconds(3)) == std::future_status::ready;
    REQUIRE(admin->revoke(*old).has_value());  // frees it, had the stop gone unseen
    auto c = waiting.get();
    CHECK_MESSAGE(waited_out, "start waited on for 3 s after its stop flag was set");
    REQUIRE_FALSE(c.has_value());
    CHECK_MESSAGE(
        c.error().message().find("core c stopped while waiting for core id") != std::string::npos,
        c.error().message());
  }

  TEST_CASE("a core stopped while it joins again stops at once, a fetch in flight included" *
            doctest::skip(!etcd_installed())) {
    // A core taken out of the membership joins again on its lease thread, fetching what it
    // lacks; its destructor waited for that thread, so a stop waited for every fetch.
    test::temp_dir dir;
    etcd_server etcd(dir.path());
    auto a = leading(config_of(etcd, dir, "a"));
    const auto x = large(100000, 7);
    std::vector<store_write> w = {{"ckpt/x", x}};
    REQUIRE(a->commit(w).has_value());
    auto b = member_of(etcd, dir, "b");
    REQUIRE(std::filesystem::exists(dir / "chunks-b" / digest_hex(x)));
    httplib::Server slow;
    std::atomic<bool> release{false};
    std::atomic<int> asked{0};
    slow.Get(R"(/chunk/.*)", [&](const httplib::Request&, httplib::Response& res) {
      ++asked;
      for (int i = 0; i < 1200 && !release; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      res.status = 404;
    });
    const int slow_port = slow.bind_to_any_port("127.0.0.1");
    std::thread serving([&] { slow.listen_after_bind(); });
    auto admin = etcd_client::make(etcd.endpoint());
    auto lease = admin->grant_lease(60);
    REQUIRE(lease.has_value());
    etcd_op member{"/gflex/member/0slow", bytes("127.0.0.1:" + std::to_string(slow_port)), *lease};
    REQUIRE(admin->txn({}, {&member, 1}).has_value());
    // b loses its copy and is taken out: it joins again, asking "0slow" first.
    std::filesystem::remove(dir / "chunks-b" / digest_hex(x));
    etcd_op out{"/gflex/member/b", std::nullopt, 0};
    REQUIRE(admin->txn({}, {&out, 1}).has_value());
    for (int i = 0; i < 200 && asked == 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    REQUIRE(asked > 0);
    auto stopping = std::async(std::launch::async, [&] { b.reset(); });
    const bool ended = stopping.wait_for(std::chrono::seconds(5)) == std::future_status::ready;
    release = true;
    stopping.get();
    slow.stop();
    serving.join();
    CHECK_MESSAGE(ended, "the core took over 5 s to stop while it joined again");
  }

  TEST_CASE("a chunk service busy with long GETs still takes the leader's PUTs" *
            doctest::skip(!etcd_installed())) {
    // Two threads served every request: two cores joining, each fetching a checkpoint from
    // the first core in key order, held both for as long as their transfers took, and the
    // leader's pushes waited until it took the core out of the membership. GETs past a bound
    // are answered 503 now (the fetcher asks the next core), and the PUTs keep threads.
    chunk_service_of_one f;
    const auto big = large(size_t{48} << 20, 5);
    const std::string digest = digest_hex(big);
    {
      std::ofstream out(f.dir / "chunks-a" / digest, std::ios::binary);
      out.write(reinterpret_cast<const char*>(big.data()),
                static_cast<std::streamsize>(big.size()));
    }
    // Fetchers that read slowly (16 KiB every 20 ms), as cores fetching over a slow link.
    std::atomic<bool> done{false};
    std::atomic<int> reading{0};
    std::vector<std::thread> fetchers;
    const std::string request = "GET /chunk/" + digest +
                                " HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + chunk_bearer() +
                                "\r\nGflex-Core-Id: a\r\nConnection: close\r\n\r\n";
    const int port = f.a->chunk_port();
    for (int i = 0; i < 4; ++i)
      fetchers.emplace_back([&] {
        const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        int small = 64 << 10;
        ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(static_cast<uint16_t>(port));
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
            ::write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
          ::close(fd);
          return;
        }
        char buf[16 << 10];
        bool counted = false;
        while (!done) {
          if (::read(fd, buf, sizeof buf) <= 0) break;
          if (!counted) {
            counted = true;
            ++reading;
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        ::close(fd);
      });
    // All four are served at once (with two threads, two waited their turn).
    for (int i = 0; i < 200 && reading < 4; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(3, 0);
    c.set_write_timeout(3, 0);
    // Another GET is turned away at once, for the fetcher to ask the next core.
    auto turned = c.Get("/chunk/" + digest, {{"Authorization", chunk_bearer()}});
    // The leader's push is taken.
    const std::string small = "a small chunk";
    auto pushed = c.Put("/chunk/" + digest_of(small), {{"Authorization", chunk_bearer()}}, small,
                        "application/octet-stream");
    done = true;
    for (auto& t : fetchers) t.join();
    CHECK(reading.load() >= 2);  // the service was busy with long GETs
    CHECK_MESSAGE(turned, "no answer to a GET within 3 s: " << httplib::to_string(turned.error()));
    if (turned) CHECK(turned->status == 503);
    CHECK_MESSAGE(pushed, "no answer to a PUT within 3 s: " << httplib::to_string(pushed.error()));
    if (pushed) CHECK(pushed->status == 204);
  }

  TEST_CASE("bad configuration is refused before anything starts") {
    replication_config c;
    c.endpoints = "127.0.0.1:1";
    c.core_id = "bad/id";
    c.chunk_listen = "127.0.0.1:0";
    auto r = replicated_store::start(c, [] {});
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code() == errc::invalid_argument);

    // `--listen 0.0.0.0:7400` (the README's) wrote "0.0.0.0:7400" into the leader record, and
    // the followers sent every client's write there: to themselves, or to nowhere.
    c.core_id = "c1";
    c.core_address = "0.0.0.0:7400";
    auto wildcard = replicated_store::start(c, [] {});
    REQUIRE_FALSE(wildcard.has_value());
    CHECK(wildcard.error().code() == errc::invalid_argument);
    CHECK(wildcard.error().message().find("--advertise") != std::string::npos);
    c.core_address = "[::]:7400";
    CHECK_FALSE(replicated_store::start(c, [] {}).has_value());
    c.core_address = "10.0.0.1:7400";
    c.chunk_listen = "0.0.0.0:7401";  // Where the other cores would fetch chunks from.
    auto chunks = replicated_store::start(c, [] {});
    REQUIRE_FALSE(chunks.has_value());
    CHECK(chunks.error().message().find("--chunk-listen") != std::string::npos);
    // With an address to be reached at, which must be one another machine can be sent to.
    test::temp_dir chunk_dir;
    c.chunk_dir = chunk_dir.path();
    for (const char* bad : {"0.0.0.0:7401", "[::]:7401", "10.0.0.1", "10.0.0.1:", "10.0.0.1:0",
                            "10.0.0.1:x", ":7401", "10.0.0.1:70000", "10.0.0.1:123456"}) {
      c.chunk_advertise = bad;
      auto refused = replicated_store::start(c, [] {});
      REQUIRE_FALSE(refused.has_value());
      CHECK(refused.error().code() == errc::invalid_argument);
      CHECK_MESSAGE(refused.error().message().find("--chunk-advertise \"" + std::string(bad)) !=
                        std::string::npos,
                    refused.error().message());
    }
    c.chunk_listen = "0.0.0.0:0";
    c.chunk_advertise = "203.0.113.7:7401";
    auto advertised = replicated_store::start(c, [] {});  // no etcd at 127.0.0.1:1
    REQUIRE_FALSE(advertised.has_value());
    CHECK_MESSAGE(advertised.error().code() != errc::invalid_argument,
                  advertised.error().message());
    CHECK_FALSE(etcd_client::make("no-port").has_value());
    CHECK_FALSE(etcd_client::make("h:0").has_value());
    CHECK_FALSE(etcd_endpoints_of("http://127.0.0.1:2379").has_value());
    CHECK(*etcd_endpoints_of("etcd://a:1,b:2") == "a:1,b:2");
    CHECK(etcd_prefix_end("ab") == "ac");
    CHECK(etcd_prefix_end(std::string("a\xff", 2)) == "b");
  }
}
