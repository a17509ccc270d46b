#include "gflex/runtime/replicated_store.hpp"

#include <fcntl.h>
#include <httplib.h>
#include <sodium.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <future>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "gflex/runtime/digest.hpp"
#include "gflex/runtime/etcd_client.hpp"
#include "gflex/runtime/http_server.hpp"
#include "gflex/runtime/log_throttle.hpp"

namespace gflex {

namespace {

using clock_type = std::chrono::steady_clock;

constexpr std::string_view data_prefix = "/gflex/data/";
constexpr std::string_view member_prefix = "/gflex/member/";
constexpr std::string_view leader_key = "/gflex/leader";
constexpr std::string_view writer_key = "/gflex/writer";

// The chunk service's threads, and the most of them that serve GETs at once (503 past it):
// two cores joining at once each fetched every chunk from the first peer in key order, a GET
// of a checkpoint lasting as long as its transfer, and with both threads taken the leader's
// PUTs waited, made no progress, and the leader took a healthy core out of the membership
// after its lease's TTL and 5 s. The threads beyond the GETs' are the PUTs' and touches'.
constexpr int chunk_service_threads = 6;
constexpr int chunk_gets_at_once = 4;

// How long a fetch asks again, every quarter second, while every core that holds a chunk is
// busy serving others (503) before it gives up.
constexpr auto fetch_busy_bound = std::chrono::seconds(120);
// What a chunk service's refusal (403) of this core's bearer means: its core's operator.key,
// from which the bearer is derived, is not this one's (a core made with its own `gflex-core
// init` rather than given a copy of the first core's data directory's key).
constexpr std::string_view operator_keys_differ =
    "its chunk service refuses this core's key: the cores' operator.key files differ (every "
    "core of several needs a copy of the same DATA_DIR/operator.key)";

// A value kept as a chunk: this marker, the value's size (8 bytes, little-endian), then its
// digest (64 hex). No value the core stores begins with a NUL and "gflex-chunk".
constexpr char chunk_marker[13] = {'\0', 'g', 'f', 'l', 'e', 'x', '-',
                                   'c',  'h', 'u', 'n', 'k', '\0'};

struct chunk_ref {
  uint64_t size = 0;
  std::string digest;
};

// The bytes of a chunk's reference in etcd (see encode_chunk_ref).
constexpr size_t chunk_ref_size = sizeof chunk_marker + 8 + 64;

std::optional<chunk_ref> as_chunk_ref(std::span<const uint8_t> v) {
  if (v.size() != chunk_ref_size || std::memcmp(v.data(), chunk_marker, sizeof chunk_marker))
    return std::nullopt;
  chunk_ref r;
  std::memcpy(&r.size, v.data() + sizeof chunk_marker, 8);
  r.digest.assign(reinterpret_cast<const char*>(v.data()) + sizeof chunk_marker + 8, 64);
  if (!is_digest_hex(r.digest)) return std::nullopt;
  return r;
}

std::vector<uint8_t> encode_chunk_ref(const chunk_ref& r) {
  std::vector<uint8_t> out(chunk_ref_size);
  std::memcpy(out.data(), chunk_marker, sizeof chunk_marker);
  std::memcpy(out.data() + sizeof chunk_marker, &r.size, 8);
  std::memcpy(out.data() + sizeof chunk_marker + 8, r.digest.data(), 64);
  return out;
}

std::string text_of(const std::vector<uint8_t>& v) {
  return std::string(v.begin(), v.end());
}

std::vector<uint8_t> bytes_of(std::string_view s) {
  return {s.begin(), s.end()};
}

bool valid_core_id(const std::string& id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' && c != ':' &&
        c != '_')
      return false;
  return true;
}

// Whether a chunk's file is there. std::filesystem::exists throws where stat fails for
// another reason than absence (EIO, ELOOP, EACCES): on the chunk service's thread that was
// a 500 instead of a resignation, and on the lease's thread the end of the process. Such a
// file counts as absent: writing it again either mends it or fails, and the failure is
// handled where it comes.
bool chunk_file_present(const std::filesystem::path& file) {
  std::error_code ec;
  return std::filesystem::exists(file, ec) && !ec;
}

// Writes a chunk file durably under its digest (a temporary file, synced, renamed).
expected<void> write_chunk(const std::filesystem::path& dir, const std::string& digest,
                           std::span<const uint8_t> bytes) {
  const auto file = dir / digest;
  std::error_code exists_ec;
  if (std::filesystem::exists(file, exists_ec)) {
    // Written again: it is young again, so the garbage collection (which spares young
    // chunks) cannot take it before the commit that names it lands.
    std::filesystem::last_write_time(file, std::filesystem::file_time_type::clock::now(),
                                     exists_ec);
    return {};
  }
  const auto tmp = dir / (digest + ".tmp" + std::to_string(::getpid()) + "-" +
                          std::to_string(std::hash<std::thread::id>{}(std::this_thread::get_id())));
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    return error(errc::io_error, "cannot write " + tmp.string() + ": " + std::strerror(errno));
  size_t at = 0;
  while (at < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + at, std::min<size_t>(bytes.size() - at, 1u << 30));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      ::unlink(tmp.c_str());
      return error(errc::io_error, "cannot write " + tmp.string() + ": " + std::strerror(errno));
    }
    at += static_cast<size_t>(n);
  }
  // Closed whether or not the sync failed: left open, the unlinked file kept its blocks.
  const bool synced = ::fsync(fd) == 0;
  if (::close(fd) != 0 || !synced) {
    ::unlink(tmp.c_str());
    return error(errc::io_error, "cannot sync " + tmp.string());
  }
  std::error_code ec;
  std::filesystem::rename(tmp, file, ec);
  if (ec) {
    ::unlink(tmp.c_str());
    return error(errc::io_error, "cannot rename " + tmp.string() + ": " + ec.message());
  }
  // The rename is durable only once the directory is synced: a core acknowledged a chunk
  // (and the leader committed a reference to it) whose file a power loss could take back.
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0 || ::fsync(dfd) != 0) {
    if (dfd >= 0) ::close(dfd);
    return error(errc::io_error, "cannot sync " + dir.string());
  }
  ::close(dfd);
  return {};
}

// The chunk's bytes from this core's file; none when it lacks the file, or when the file is
// damaged (`damaged` is then set).
std::optional<std::vector<uint8_t>> read_chunk(const std::filesystem::path& dir, const chunk_ref& r,
                                               bool& damaged) {
  damaged = false;
  std::ifstream in(dir / r.digest, std::ios::binary);
  if (!in) return std::nullopt;
  std::vector<uint8_t> bytes(r.size);
  in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  // A damaged file (cut short, or of other contents) is one this core lacks: the chunk is
  // fetched from another, as the LMDB store checks its blobs on every read.
  if (static_cast<uint64_t>(in.gcount()) != r.size || in.peek() != EOF ||
      digest_hex(bytes) != r.digest) {
    damaged = true;
    return std::nullopt;
  }
  return bytes;
}

std::pair<std::string, int> split_host_port(const std::string& address) {
  auto colon = address.rfind(':');
  if (colon == std::string::npos) return {address, 0};
  try {
    return {address.substr(0, colon), std::stoi(address.substr(colon + 1))};
  } catch (const std::exception&) {
    return {address, 0};
  }
}

// A listen address that is every address of the machine (or none): nothing another machine
// can be sent to.
bool every_address(const std::string& host) {
  return host.empty() || host == "0.0.0.0" || host == "::" || host == "[::]" || host == "*";
}

// The header every chunk request names the core it is meant for in, and every refusal of
// one meant for another core names the core that answered in. Two cores given one chunk
// address (--chunk-listen 127.0.0.1:7401 on each machine, or one --chunk-advertise copied to
// every core) each reached its own chunk service where it meant the other's: the leader's
// push to a follower was taken by the leader's own service, which held the chunk, and the
// follower was counted as holding every chunk while it held none.
constexpr const char* core_header = "Gflex-Core-Id";

// The core a chunk service's refusal (421) names, as words for a log line or an error.
std::string answering_core(const httplib::Response& r) {
  const std::string id = r.get_header_value(core_header);
  return valid_core_id(id) ? "core " + id + "'s chunk service" : "another core's chunk service";
}

}  // namespace

struct replicated_store::impl {
  replication_config config;
  std::function<void()> on_lost;
  std::string bearer;  // "Bearer <hex digest of the secret>"

  mutable std::mutex etcd_mutex;  // guards `etcd` (one client; the store actor and campaign)
  mutable std::optional<etcd_client> etcd;

  // The chunk service's GETs being served (chunk_gets_at_once); declared before the service,
  // whose answers still being sent hold slots until it has stopped.
  std::atomic<int> gets_serving{0};
  std::unique_ptr<http::server> chunks;
  std::string advertise;  // HOST:PORT other cores fetch this core's chunks at

  std::atomic<int64_t> lease{0};
  std::atomic<bool> member_ready{false};  // registered and holding every committed chunk
  // A commit whose pushes began before this core registered passed it by, and may land after
  // join()'s last read of the references (catch_up). Under catch_up_mutex: the revision this
  // core's member key was put at while such a commit may still land (0 once none can), and
  // /gflex/writer's revision as of the last read of the references whose chunks it fetched.
  std::mutex catch_up_mutex;
  int64_t registered_unsettled = 0;
  int64_t references_read_at = 0;
  // This core could not store a chunk pushed to it (a full or failed disk): it left the
  // membership, so that the leader's commits go on without it (they waited for it, failed,
  // and failed every job's round), and joins again, fetching what it lacks, once it can.
  std::atomic<bool> resigned{false};
  std::atomic<bool> leading{false};
  std::atomic<int64_t> leader_revision{0};  // /gflex/leader's revision while this core leads
  // Under etcd_mutex: /gflex/writer's revision after this core's last commit (none until
  // read, after each campaign won). Every commit compares it, so a commit whose answer was
  // lost can land later only before the next one: see settle_lost_commit.
  std::optional<int64_t> writer_revision;
  uint64_t commits_sent = 0;  // under etcd_mutex: makes each commit's writer record unique
  // Under etcd_mutex: commits etcd refuses come at the rate of the rounds; one line in 30 s.
  log_throttle refusals_logged{1, std::chrono::seconds(30)};
  int64_t compacted_to = 0;  // under etcd_mutex: the last compaction's
  // The chunks of the commit in flight (written and being pushed, not yet named): the
  // garbage collection spares them, and their temporary files.
  mutable std::mutex committing_mutex;
  std::multiset<std::string> committing;
  mutable std::atomic<int64_t> chunk_bytes{0};  // in the chunk directory

  std::atomic<bool> stopping{false};
  // The caller's stop flag (its stop signal's) while start() joins, null once it has: a core
  // told to stop as it joined (its chunks to fetch, gigabytes; a core id to wait for) went on
  // until it had joined. Read on start()'s thread only.
  const std::atomic<int>* start_stop = nullptr;
  std::thread lease_thread;
  // When this core's lease ends at the latest, in steady-clock nanoseconds: its TTL after the
  // last renewal etcd took (counted from when it was sent). A renewal waits for etcd up to
  // its read timeout on each endpoint (5 s each): a leader cut off silently went on leading
  // that long past its lease, while a follower led too. The watch ends the leadership at the
  // deadline, whatever the renewal waits for.
  std::atomic<int64_t> lease_deadline{0};
  std::thread lease_watch;
  // Chunk files are collected on a thread of their own: collecting reads every value under
  // the data prefix (the ledger's entries grow for good), and run on the renewing thread it
  // held the renewals back past the lease's TTL, and the leader ended itself. The same thread
  // fetches the chunks of a commit that passed this core by as it joined (catch_up).
  std::thread garbage_thread;

  ~impl() {
    stopping = true;
    if (lease_thread.joinable()) lease_thread.join();
    if (lease_watch.joinable()) lease_watch.join();
    if (garbage_thread.joinable()) garbage_thread.join();
    // A core that stops gives its lease back, and with it its leader and member keys: kept
    // to the end of their TTL, followers sent clients to a core that had stopped and no
    // node could join anywhere, at every planned restart. (A core that lost its leadership
    // ends with _Exit and never comes here; its lease is no longer its own.)
    leading = false;
    if (const int64_t id = lease.load(); id != 0 && etcd) {
      std::lock_guard lock(etcd_mutex);
      if (auto gone = etcd->revoke(id); !gone)
        spdlog::warn("replication: core {} could not give its lease back: {}", config.core_id,
                     gone.error().message());
    }
  }

  // Whether this core is to stop: it is being destroyed (a rejoin on the lease thread, a
  // catch-up on the garbage thread), or its caller's stop flag is set (start()).
  bool stop_asked() const { return stopping || (start_stop != nullptr && start_stop->load() != 0); }

  // The error of a join or fetch a stop cut short.
  error stopped(const std::string& during) const {
    return error(errc::unavailable,
                 "core " + config.core_id + " stopped while " + during + ": a stop was asked");
  }

  // Another live core, as its member record says.
  struct member {
    std::string id;
    std::string address;  // its chunk service's
    int64_t lease = 0;    // the lease its record is under
  };

  // The other live cores.
  expected<std::vector<member>> peers() const {
    std::lock_guard lock(etcd_mutex);
    auto kvs = etcd->range(member_prefix, true);
    if (!kvs) return kvs.error();
    std::vector<member> out;
    for (auto& kv : *kvs) {
      std::string id = kv.key.substr(member_prefix.size());
      if (id != config.core_id) out.push_back({std::move(id), text_of(kv.value), kv.lease});
    }
    return out;
  }

  bool is_member(const std::string& id) const {
    std::lock_guard lock(etcd_mutex);
    auto kvs = etcd->range(std::string(member_prefix) + id, false);
    return !kvs || !kvs->empty();  // when etcd cannot say, keep trying
  }

  // The leader key's revision when it holds `record` under this core's lease (this core put
  // it); none otherwise, or when etcd cannot say.
  std::optional<int64_t> own_leader_key(const std::string& record) const {
    std::lock_guard lock(etcd_mutex);
    auto kvs = etcd->range(leader_key, false);
    if (!kvs || kvs->empty()) return std::nullopt;
    const auto& kv = kvs->front();
    if (kv.lease == 0 || kv.lease != lease.load() || text_of(kv.value) != record)
      return std::nullopt;
    return kv.mod_revision;
  }

  // Pushes a chunk to every other live core, to all at once; a core that cannot take it is
  // tried again until it does, leaves, or is taken out of the membership (push_chunk_to): a
  // committed value is on every core that is a member when it commits.
  expected<void> push_chunk(const std::string& digest, std::span<const uint8_t> bytes) {
    auto others = peers();
    if (!others) return others.error();
    std::vector<std::future<expected<void>>> pushes;
    for (const auto& m : *others)
      pushes.push_back(std::async(std::launch::async, [this, &digest, bytes, &m] {
        return push_chunk_to(m, digest, bytes);
      }));
    expected<void> all;
    for (auto& p : pushes)
      if (auto ok = p.get(); !ok && all) all = ok.error();
    return all;
  }

  // The headers of a request to core `to`'s chunk service: the shared secret, and the core
  // the request is meant for (core_header).
  httplib::Headers chunk_headers(const std::string& to) const {
    return {{"Authorization", bearer}, {core_header, to}};
  }

  // A client of another core's chunk service, answers awaited up to `read_s` seconds.
  static httplib::Client client_of(const std::string& address, time_t read_s) {
    auto [host, port] = split_host_port(address);
    httplib::Client c(host, port);
    c.set_tcp_nodelay(true);  // see etcd_client.cpp
    c.set_connection_timeout(1, 0);
    c.set_read_timeout(read_s, 0);
    return c;
  }

  // Tells every other core that the chunk is still wanted (its age starts again there);
  // one that no longer holds it is sent it again.
  expected<void> keep_chunk(const std::string& digest, std::span<const uint8_t> bytes) {
    auto others = peers();
    if (!others) return others.error();
    for (const auto& m : *others) {
      auto c = client_of(m.address, 5);
      auto r = c.Post("/touch/" + digest, chunk_headers(m.id), "", "text/plain");
      if (r && r->status == 204) continue;
      if (auto ok = push_chunk_to(m, digest, bytes); !ok) return ok;
    }
    return {};
  }

  // Pushes a chunk to member `m`, tried again every 0.25 s until it takes it or leaves. One
  // still registered (its lease renewed) that has not taken it within the lease's TTL and 5 s
  // of the last try that got further into the chunk than any before (its chunk service
  // unreachable from here: a firewall, a wrong advertised address, a link cut between the two
  // cores only) is taken out of the membership (evict), and the commit goes on without it:
  // waited for, it failed every commit, and with them every job's round. It sees its record
  // gone and joins again, fetching what it lacks (renew_leases).
  expected<void> push_chunk_to(const member& m, const std::string& digest,
                               std::span<const uint8_t> bytes) {
    const auto& id = m.id;
    auto [host, port] = split_host_port(m.address);
    const auto bound = std::chrono::seconds(config.lease_ttl_s + 5);
    auto give_up = clock_type::now() + bound;
    size_t furthest = 0;  // the most bytes of the chunk one try sent
    for (;;) {
      httplib::Client c(host, port);
      c.set_tcp_nodelay(true);  // see etcd_client.cpp
      c.set_connection_timeout(1, 0);
      c.set_write_timeout(30, 0);
      c.set_read_timeout(30, 0);
      const httplib::Headers h = chunk_headers(id);
      std::atomic<size_t> sent{0};
      // A core cut off or frozen mid-push would hold the commit for the socket's timeouts:
      // while the push runs, the core's membership is looked at every third of the lease,
      // and a push to a core that left is cut short (stop() is httplib's way to abort a
      // request from another thread). A large chunk to a live core takes as long as it takes.
      auto push = std::async(std::launch::async, [&] {
        return c.Put(
            "/chunk/" + digest, h, bytes.size(),
            [&](size_t offset, size_t length, httplib::DataSink& sink) {
              const size_t n = std::min<size_t>(length, size_t{1} << 20);
              if (!sink.write(reinterpret_cast<const char*>(bytes.data()) + offset, n))
                return false;
              sent = offset + n;
              return true;
            },
            "application/octet-stream");
      });
      const auto look = std::chrono::milliseconds(config.lease_ttl_s * 1000 / 3);
      bool left = false;
      while (push.wait_for(look) != std::future_status::ready)
        if (!left && !is_member(id)) {
          left = true;
          c.stop();
        }
      auto r = push.get();
      if (r && r->status == 204) return {};
      if (r && r->status == 403)
        // Its chunk service refuses this core's credentials: tried again, it would refuse
        // again, and every commit waited the whole bound first.
        return evict(m, std::string(operator_keys_differ));
      if (r && r->status == 421)
        // Another core's chunk service answers at m's address: m holds nothing pushed there,
        // and tried again, the push would only be refused again.
        return evict(m, "its chunk service address " + m.address + " reaches " +
                            answering_core(*r) +
                            ", not its own: two cores are given one chunk address (give each "
                            "its own --chunk-listen, or --chunk-advertise)");
      if (!is_member(id)) {
        spdlog::warn("replication: core {} left before taking chunk {}", id, digest.substr(0, 12));
        return {};
      }
      // A try cut short after it got further than any before (a transient error late in a
      // long transfer) is given the whole bound again.
      if (sent.load() > furthest) {
        furthest = sent.load();
        give_up = clock_type::now() + bound;
      }
      if (clock_type::now() > give_up)
        return evict(
            m, "it did not take chunk " + digest.substr(0, 12) + " of " +
                   std::to_string(bytes.size()) + " bytes within " + std::to_string(bound.count()) +
                   " s (" +
                   (r ? "HTTP " + std::to_string(r->status) : httplib::to_string(r.error())) + ")");
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
  }

  // Takes member `m` out of the membership: deletes its member record, only while it is under
  // the lease it was read under (a core that has joined again since keeps its new record).
  // Fails only where etcd cannot be asked.
  expected<void> evict(const member& m, const std::string& why) {
    const std::string key = std::string(member_prefix) + m.id;
    etcd_compare same{key, etcd_compare::target::lease, 0, {}, m.lease};
    etcd_op gone{key, std::nullopt, 0};
    expected<etcd_txn_result> r = error(errc::unavailable, "");
    {
      std::lock_guard lock(etcd_mutex);
      r = etcd->txn({&same, 1}, {&gone, 1});
    }
    if (!r)
      return error(errc::unavailable,
                   "core " + m.id + " at " + m.address + ": " + why +
                       ", and it cannot be taken out of the membership: " + r.error().message());
    if (r->succeeded)
      spdlog::error(
          "replication: core {} (chunk service at {}) is taken out of the membership: {}; the "
          "commit goes on without it, and it joins again, fetching what it lacks",
          m.id, m.address, why);
    else
      spdlog::warn("replication: core {} left or joined again before taking a chunk ({})", m.id,
                   why);
    return {};
  }

  // GETs `path` with `c`, cut short (httplib's stop()) once a stop is asked: a core that sends
  // slowly or not at all held a stopping core for the read timeout (60 s) at each chunk.
  httplib::Result get_unless_stopped(httplib::Client& c, const std::string& path,
                                     const httplib::Headers& headers) const {
    auto got = std::async(std::launch::async, [&] { return c.Get(path, headers); });
    // Asked again at each look: a stop that comes before the request has its socket does
    // nothing.
    while (got.wait_for(std::chrono::milliseconds(50)) != std::future_status::ready)
      if (stop_asked()) c.stop();
    return got.get();
  }

  // Fetches a chunk this core lacks from the other cores, in their key order. A core busy
  // serving others (503: its GETs at chunk_gets_at_once) is passed for the next; where a
  // busy one may be the only holder, they are all asked again every quarter second, up to
  // fetch_busy_bound. A stop (stop_asked) ends it, a GET in flight included.
  expected<std::vector<uint8_t>> fetch_chunk(const chunk_ref& ref) const {
    const auto give_up = clock_type::now() + fetch_busy_bound;
    const std::string what = "fetching chunk " + ref.digest.substr(0, 12);
    for (;;) {
      auto others = peers();
      if (!others) return others.error();
      bool busy = false;
      for (const auto& [id, address, member_lease] : *others) {
        if (stop_asked()) return stopped(what);
        auto c = client_of(address, 60);
        auto r = get_unless_stopped(c, "/chunk/" + ref.digest, chunk_headers(id));
        if (stop_asked()) return stopped(what);
        if (r && r->status == 503) {
          busy = true;
          continue;
        }
        if (r && r->status == 403) {
          spdlog::warn("replication: core {} refused to serve chunk {}: {}", id,
                       ref.digest.substr(0, 12), operator_keys_differ);
          continue;
        }
        if (r && r->status == 421) {
          spdlog::warn(
              "replication: core {}'s chunk service address {} reaches {}, not its own: two "
              "cores are given one chunk address (give each its own --chunk-listen, or "
              "--chunk-advertise)",
              id, address, answering_core(*r));
          continue;
        }
        if (!r || r->status != 200 || r->body.size() != ref.size) continue;
        std::span<const uint8_t> body(reinterpret_cast<const uint8_t*>(r->body.data()),
                                      r->body.size());
        if (digest_hex(body) != ref.digest) {
          spdlog::warn("replication: core {} sent chunk {} with other contents", id,
                       ref.digest.substr(0, 12));
          continue;
        }
        if (auto ok = write_chunk(config.chunk_dir, ref.digest, body); !ok) return ok.error();
        chunk_bytes_add(body.size());
        return std::vector<uint8_t>(body.begin(), body.end());
      }
      if (!busy) break;
      if (clock_type::now() > give_up)
        return error(errc::unavailable,
                     "no core could serve chunk " + ref.digest + " within " +
                         std::to_string(fetch_busy_bound.count()) +
                         " s: those that may hold it were busy serving other cores");
      for (int i = 0; i < 5 && !stop_asked(); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return error(errc::unavailable, "no core holds chunk " + ref.digest);
  }

  void chunk_bytes_add(size_t n) const { chunk_bytes += static_cast<int64_t>(n); }

  expected<std::vector<uint8_t>> resolve(std::vector<uint8_t> value) const {
    auto ref = as_chunk_ref(value);
    if (!ref) return value;
    bool damaged = false;
    if (auto local = read_chunk(config.chunk_dir, *ref, damaged)) return std::move(*local);
    if (damaged) {
      spdlog::warn("replication: chunk file {} is damaged; fetching it from another core",
                   ref->digest.substr(0, 12));
      std::error_code ec;
      const auto size = std::filesystem::file_size(config.chunk_dir / ref->digest, ec);
      if (std::filesystem::remove(config.chunk_dir / ref->digest, ec) && size > 0)
        chunk_bytes -= static_cast<int64_t>(size);
    }
    return fetch_chunk(*ref);
  }

  std::string member_key() const { return std::string(member_prefix) + config.core_id; }

  // The error of a core id another live core holds (`holder`: its member record).
  error id_taken(const etcd_kv& holder) const {
    return error(errc::invalid_argument,
                 "core id \"" + config.core_id + "\" is taken: another live core holds " +
                     member_key() + " (its chunk service at " + text_of(holder.value) +
                     "); give each core its own --core-id");
  }

  // Waits until no other core holds this core's member key: it is absent, or under `own`
  // (this core's lease before, 0 for none). A key under another lease is another core's
  // (two cores given the same --core-id wrote over each other's record, the leader pushed
  // chunks to neither of them, and after a failover the survivor could not read the
  // checkpoints), or that of this core's last run, which stopped without giving its lease
  // back (killed): that lease lapses, nobody renewing it, and is waited for. A lease seen
  // renewed (its time left grows; a live core renews every third of its TTL), or a key put
  // again under another lease, or one without a lease, is a live core's:
  // errc::invalid_argument, as for a key still there long after its lease should have ended.
  expected<void> wait_for_member_key(int64_t own) {
    int64_t holder_lease = 0;
    int64_t least_left = 0;  // the holder's lease's least time left seen, in seconds
    clock_type::time_point deadline;
    for (bool first = true;; first = false) {
      if (stop_asked()) return stopped("waiting for core id \"" + config.core_id + "\"");
      std::vector<etcd_kv> kvs;
      int64_t left = -1;  // unknown
      {
        std::lock_guard lock(etcd_mutex);
        auto r = etcd->range(member_key(), false);
        if (!r) return r.error();
        kvs = std::move(*r);
        if (!kvs.empty() && kvs.front().lease != 0 && kvs.front().lease != own)
          if (auto ttl = etcd->time_to_live(kvs.front().lease)) left = *ttl;
      }
      if (kvs.empty() || (own != 0 && kvs.front().lease == own)) return {};
      const etcd_kv& holder = kvs.front();
      if (holder.lease == 0 || (!first && holder.lease != holder_lease)) return id_taken(holder);
      if (first) {
        holder_lease = holder.lease;
        least_left = left >= 0 ? left : config.lease_ttl_s;
        // Twice the time left and 4 s: etcd says whole seconds (rounded down), ends an
        // expired lease within a second or so, and gives a lease a whole TTL again where
        // another of its members takes over its leadership. A live core's renewal is seen
        // sooner where its TTL is over 2 s.
        deadline = clock_type::now() + std::chrono::seconds(2 * least_left + 4);
        spdlog::warn(
            "replication: core id {} is held by lease {:x} ({} s left; chunk service at {}): "
            "waiting for it to lapse, as a killed core's does, or to be renewed, as a live "
            "core's is",
            config.core_id, holder.lease, least_left, text_of(holder.value));
      } else if (left > least_left || clock_type::now() >= deadline) {
        return id_taken(holder);
      } else if (left >= 0) {
        least_left = left;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }

  // Puts this core's member record under lease `id`, where no other core holds the key: it
  // is created, or replaced where it is under `own` (this core's lease before). The revision
  // it was put at. Under etcd_mutex.
  expected<int64_t> claim_member_key(int64_t id, int64_t own) {
    etcd_op put{member_key(), bytes_of(advertise), id};
    etcd_compare absent{member_key(), etcd_compare::target::create_revision, 0, {}};
    auto r = etcd->txn({&absent, 1}, {&put, 1});
    if (!r) return r.error();
    if (r->succeeded) return r->revision;
    if (own != 0) {
      etcd_compare ours{member_key(), etcd_compare::target::lease, 0, {}, own};
      r = etcd->txn({&ours, 1}, {&put, 1});
      if (!r) return r.error();
      if (r->succeeded) return r->revision;
    }
    // Taken since it was looked at: by a core that has just joined.
    auto kvs = etcd->range(member_key(), false);
    if (kvs && !kvs->empty()) return id_taken(kvs->front());
    return error(errc::unavailable, "core id \"" + config.core_id +
                                        "\": its member key changed while this core joined");
  }

  // Registers this core as a member under a fresh lease, then fetches every chunk committed
  // values name that it lacks; only then may it campaign. A core id another live core holds
  // is refused (errc::invalid_argument, naming it).
  expected<void> join() {
    member_ready = false;
    const int64_t own = lease.load();
    if (auto free = wait_for_member_key(own); !free) return free.error();
    int64_t id = 0;
    int64_t registered = 0;  // the revision the member key was put at
    {
      std::lock_guard lock(etcd_mutex);
      const auto asked = clock_type::now();
      auto l = etcd->grant_lease(config.lease_ttl_s);
      if (l) extend_lease_deadline(asked);
      if (!l) return l.error();
      id = *l;
      auto claimed = claim_member_key(id, own);
      if (!claimed) {
        (void)etcd->revoke(id);  // holds nothing; left, it would only lapse
        return claimed.error();
      }
      registered = *claimed;
    }
    lease = id;
    // Nothing else renews the lease while the committed values are read and the chunks come
    // (the renewing thread is this one, or not started yet): renewed here, or a read or a
    // fetch longer than the lease (a large store, a large checkpoint) ends the membership it
    // is for, and the leader's pushes pass this core by.
    std::atomic<bool> fetching{true};
    std::thread renewing([this, id, &fetching] {
      auto client = renewal_client();
      if (!client) return;
      const auto period = std::chrono::milliseconds(config.lease_ttl_s * 1000 / 3);
      auto next = clock_type::now() + period;
      while (fetching && !stopping) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        if (clock_type::now() < next) continue;
        next = clock_type::now() + period;
        (void)client->keep_alive(id);
      }
    });
    struct stop_renewing {
      std::atomic<bool>& fetching;
      std::thread& renewing;
      ~stop_renewing() {
        fetching = false;
        renewing.join();
      }
    } stop{fetching, renewing};
    // The leader chose whom to push a commit's chunks to as its pushes began: a commit whose
    // pushes began before this core's member key existed passed it by, and may land after the
    // references were read. Once it has what a read names, this core looks at /gflex/writer
    // (every commit moves it): where a commit landed since, it reads the references again and
    // fetches what they name that it lacks, until a read names nothing new. The chunks of
    // commits whose pushes began after the key existed were pushed here, so under a steady
    // stream of commits the second read finds nothing new; a core that finds something new at
    // every read is not being pushed to, and gives up, as a failed join does.
    auto read = committed_references();
    if (!read) return read.error();
    std::set<std::string> looked_at;  // the digests fetched, found held, or passed over
    size_t counts[4] = {};            // by chunk_fetch
    for (int reads = 1;; ++reads) {
      size_t fresh = 0;
      for (const auto& [key, ref] : read->refs) {
        if (stop_asked()) return stopped("joining (fetching the chunks it lacks)");
        if (reads > 1 &&
            (looked_at.count(ref.digest) || chunk_file_present(config.chunk_dir / ref.digest)))
          continue;
        looked_at.insert(ref.digest);
        ++fresh;
        auto got = fetch_named(key, ref);
        if (!got) return got.error();
        ++counts[static_cast<int>(*got)];
      }
      if (reads > 1 && fresh == 0) break;
      auto writer = writer_mod_revision();
      if (!writer) return writer.error();
      if (*writer == read->writer) break;  // nothing committed since the read
      if (reads == max_reference_reads) {
        spdlog::error(
            "replication: core {} cannot join: each of {} reads of the committed references "
            "named chunks it lacked, committed since it registered and not pushed to it (a "
            "leader that cannot reach its chunk service at {} commits without it); it leaves the "
            "membership",
            config.core_id, reads, advertise);
        leave_membership();
        return error(errc::unavailable,
                     "core " + config.core_id + " cannot join: each of " + std::to_string(reads) +
                         " reads of the committed references named chunks it lacked");
      }
      read = committed_references();
      if (!read) return read.error();
    }
    spdlog::info(
        "replication: core {} is a member ({} chunk(s) named, {} fetched, {} no longer named, {} "
        "held by no live core)",
        config.core_id, read->refs.size(), counts[static_cast<int>(chunk_fetch::fetched)],
        counts[static_cast<int>(chunk_fetch::unnamed)],
        counts[static_cast<int>(chunk_fetch::lost)]);
    {
      // A last read as of a commit landed since the registration holds the one that was in
      // flight then, if any; otherwise it may land yet (catch_up).
      std::lock_guard lock(catch_up_mutex);
      registered_unsettled = read->writer > registered ? 0 : registered;
      references_read_at = read->writer;
    }
    member_ready = true;
    return {};
  }

  // Fetches the chunks of a commit whose pushes began before this core registered and that
  // landed after join()'s last read of the references: the leader had chosen whom to push to
  // without it. The leader commits one batch at a time, so only the first commit to land
  // after the registration can be such a one (a deposed leader's commit in flight never
  // lands), and every later one is pushed here: once a read of the references as of a commit
  // landed since the registration has been fetched, there is nothing more to look for. Until
  // then, looked for every quarter second (a glance at /gflex/writer): the leader that
  // committed it may be the only core that holds its chunks, and may be gone soon after. On
  // the garbage thread, as a fetch may take long; one that fails is tried again at the next
  // look.
  void catch_up() {
    int64_t registered = 0, read_at = 0;
    {
      std::lock_guard lock(catch_up_mutex);
      // A commit of another leader's can no longer land once this core leads.
      if (leading) registered_unsettled = 0;
      registered = registered_unsettled;
      read_at = references_read_at;
    }
    if (registered == 0) return;
    auto writer = writer_mod_revision();
    if (!writer || *writer == read_at) return;
    auto read = committed_references();
    if (!read) return;
    for (const auto& [key, ref] : read->refs) {
      if (chunk_file_present(config.chunk_dir / ref.digest)) continue;
      const std::string_view name = std::string_view(key).substr(data_prefix.size());
      spdlog::info(
          "replication: core {} fetches chunk {} of {}, committed as it joined without being "
          "pushed to it",
          config.core_id, ref.digest.substr(0, 12), name);
      if (auto got = fetch_named(key, ref); !got) {
        spdlog::warn("replication: core {} cannot fetch chunk {} of {} yet: {}", config.core_id,
                     ref.digest.substr(0, 12), name, got.error().message());
        return;
      }
    }
    std::lock_guard lock(catch_up_mutex);
    if (registered_unsettled != registered) return;  // joined again meanwhile
    references_read_at = read->writer;
    if (read->writer > registered) registered_unsettled = 0;
  }

  // The most reads of the committed references one join makes (see join).
  static constexpr int max_reference_reads = 5;

  struct named_chunks {
    int64_t writer = 0;
    std::vector<std::pair<std::string, chunk_ref>> refs;  // by etcd key
  };

  // The chunks the committed values name, and /gflex/writer's revision as of the read (0
  // before the first commit).
  expected<named_chunks> committed_references() const {
    named_chunks out;
    std::lock_guard lock(etcd_mutex);
    // The writer first: the values read after it are at least as new as its revision.
    auto writer = etcd->range(writer_key, false);
    if (!writer) return writer.error();
    out.writer = writer->empty() ? 0 : writer->front().mod_revision;
    auto kvs = etcd->range(data_prefix, true);
    if (!kvs) return kvs.error();
    for (const auto& kv : *kvs)
      if (auto ref = as_chunk_ref(kv.value)) out.refs.emplace_back(kv.key, *ref);
    return out;
  }

  // /gflex/writer's revision now (0 before the first commit): a commit moves it.
  expected<int64_t> writer_mod_revision() const {
    std::lock_guard lock(etcd_mutex);
    auto kvs = etcd->range(writer_key, false);
    if (!kvs) return kvs.error();
    return kvs->empty() ? 0 : kvs->front().mod_revision;
  }

  // What join() made of a chunk a committed value named.
  enum class chunk_fetch { held, fetched, unnamed, lost };

  // Makes sure this core holds the chunk `ref` that etcd key `key` named when join() read the
  // references. join() reads them, then fetches for as long as the data sets and
  // checkpoints take (gigabytes), while later rounds replace the checkpoints and every core
  // removes the chunks no value names (garbage_age_s): a chunk no core serves any more is
  // looked for again under the key's value now. One no longer named is passed over; the one
  // named now is fetched (a commit after this core's registration pushed it here, or the
  // leader holds it). One still named that no live core holds (its only holders are gone) is
  // logged and passed over: the core joins, and a reader of the key hears that no core holds
  // its chunk (a job waits, saying its checkpoint cannot be read), until a core holding it
  // joins. Failing the join for it instead kept every core from ever joining again. A chunk
  // this core cannot write, or an etcd it cannot read, fails the join.
  expected<chunk_fetch> fetch_named(const std::string& key, chunk_ref ref) {
    const std::string_view name = std::string_view(key).substr(data_prefix.size());
    // A key replaced at each look (a job's checkpoint, every round) whose chunk is gone each
    // time would be looked at for ever.
    for (int look = 0; look < 8; ++look) {
      if (chunk_file_present(config.chunk_dir / ref.digest))
        return look == 0 ? chunk_fetch::held : chunk_fetch::fetched;
      auto got = fetch_chunk(ref);
      if (got) return chunk_fetch::fetched;
      // Cut short by a stop, it says nothing of who holds the chunk.
      if (got.error().code() != errc::unavailable || stop_asked()) return got.error();
      std::vector<etcd_kv> now;
      {
        std::lock_guard lock(etcd_mutex);
        auto kvs = etcd->range(key, false);
        if (!kvs) return kvs.error();
        now = std::move(*kvs);
      }
      const auto named = now.empty() ? std::nullopt : as_chunk_ref(now.front().value);
      if (!named) {
        spdlog::info("replication: chunk {} of {} is no longer named; not fetched",
                     ref.digest.substr(0, 12), name);
        return chunk_fetch::unnamed;
      }
      if (named->digest == ref.digest) {
        spdlog::error(
            "replication: core {} joins without chunk {} of {}, which is still named: {}; "
            "reading {} fails until a core that holds the chunk joins",
            config.core_id, ref.digest, name, got.error().message(), name);
        return chunk_fetch::lost;
      }
      spdlog::info("replication: {} was replaced while core {} joined; fetching its chunk {}", name,
                   config.core_id, named->digest.substr(0, 12));
      ref = *named;
    }
    spdlog::error(
        "replication: core {} cannot fetch the chunk of {}: replaced at every look, and each "
        "one gone; {} is read from the other cores when asked for",
        config.core_id, name, name);
    return chunk_fetch::lost;
  }

  // Leaves the membership (a follower only: a leader's own failed write fails its commit):
  // the member key goes, and the leader's pushes pass this core by.
  void resign(const std::string& why) {
    if (leading) return;
    member_ready = false;
    resigned = true;
    spdlog::error(
        "replication: core {} cannot store {}: it leaves the membership, and joins again once "
        "it can",
        config.core_id, why);
    leave_membership();
  }

  // Deletes this core's member record: only under its own lease, never another core's of the
  // same id that holds the key (a join refused for that leaves through here).
  void leave_membership() {
    std::lock_guard lock(etcd_mutex);
    etcd_compare ours{member_key(), etcd_compare::target::lease, 0, {}, lease.load()};
    etcd_op gone{member_key(), std::nullopt, 0};
    if (auto r = etcd->txn({&ours, 1}, {&gone, 1}); !r)
      spdlog::warn("replication: core {} cannot leave the membership: {}", config.core_id,
                   r.error().message());
  }

  // While this core is a member: looks for a commit that passed it by as it joined every
  // quarter second (catch_up), and collects garbage every garbage_period_s (no more often than
  // every 0.5 s).
  void tend_chunks() {
    const auto period = std::max(std::chrono::milliseconds(500),
                                 std::chrono::milliseconds(config.garbage_period_s * 1000));
    const auto look = std::chrono::milliseconds(250);
    auto next = clock_type::now() + period;
    auto next_look = clock_type::now() + look;
    while (!stopping) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      if (clock_type::now() >= next_look) {
        if (member_ready) catch_up();
        next_look = clock_type::now() + look;
      }
      if (clock_type::now() < next) continue;
      if (member_ready) collect_garbage();
      next = clock_type::now() + period;
    }
  }

  // Removes the chunk files no committed value names (an older round's checkpoint), and
  // temporary files a crash left. Young files are spared: a chunk is pushed before the
  // commit that names it, and the commit may not have landed yet.
  void collect_garbage() {
    std::set<std::string> live;
    {
      std::lock_guard lock(etcd_mutex);
      auto kvs = etcd->range(data_prefix, true);
      if (!kvs) return;
      for (const auto& kv : *kvs)
        if (auto ref = as_chunk_ref(kv.value)) live.insert(ref->digest);
    }
    const auto cutoff =
        std::filesystem::file_time_type::clock::now() - std::chrono::seconds(config.garbage_age_s);
    std::error_code ec;
    size_t removed = 0;
    std::lock_guard committing_lock(committing_mutex);
    for (const auto& f : std::filesystem::directory_iterator(config.chunk_dir, ec)) {
      const std::string name = f.path().filename().string();
      if (live.count(name) || committing.count(name.substr(0, 64)) ||
          f.last_write_time(ec) > cutoff || ec)
        continue;
      const auto size = f.is_regular_file(ec) ? f.file_size(ec) : 0;
      if (std::filesystem::remove(f.path(), ec) && is_digest_hex(name)) {
        chunk_bytes -= static_cast<int64_t>(size);
        ++removed;
      }
    }
    if (removed > 0) spdlog::debug("replication: removed {} unused chunk(s)", removed);
  }

  // Renews the lease every third of its TTL. A leader that cannot renew it within the TTL
  // (or hears that it expired) has lost it; a follower joins again.
  // A renewal sent at `sent` was taken: the lease holds until at least its TTL after.
  void extend_lease_deadline(clock_type::time_point sent) {
    lease_deadline = (sent + std::chrono::seconds(config.lease_ttl_s)).time_since_epoch().count();
  }

  // Ends the leadership once the lease may have ended (lease_deadline).
  void watch_lease() {
    while (!stopping) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      if (!leading || clock_type::now().time_since_epoch().count() < lease_deadline.load())
        continue;
      if (leading.exchange(false)) {
        spdlog::error("replication: core {} has not renewed its leader lease within its TTL",
                      config.core_id);
        if (on_lost) on_lost();
      }
    }
  }

  // The client lease renewals are sent with. A silent member (a power loss, a partition: no
  // reset) held a renewal for the whole read timeout (5 s) before the next member was asked,
  // past the lease's TTL: the leader ended itself, and the followers' leases lapsed too. A
  // renewal is cheap for etcd: a member that has not answered within a sixth of the TTL (at
  // least half a second) is passed over.
  expected<etcd_client> renewal_client() const {
    return etcd_client::make(config.endpoints,
                             std::max(std::chrono::milliseconds(500),
                                      std::chrono::milliseconds(config.lease_ttl_s * 1000 / 6)));
  }

  // Whether this core's member record is there under its lease; true where etcd cannot say.
  bool own_member_key(etcd_client& client) const {
    auto kvs = client.range(member_key(), false);
    return !kvs || (!kvs->empty() && kvs->front().lease == lease.load());
  }

  void renew_leases() {
    auto client = renewal_client();
    if (!client) return;
    auto last_ok = clock_type::now();
    auto next_rejoin = clock_type::now();
    const auto period = std::chrono::milliseconds(config.lease_ttl_s * 1000 / 3);
    while (!stopping) {
      auto next = clock_type::now() + period;
      while (!stopping && clock_type::now() < next)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      if (stopping) return;
      const auto sent = clock_type::now();
      auto left = client->keep_alive(lease);
      if (left && *left > 0) extend_lease_deadline(sent);
      const bool expired = (left && *left <= 0) ||
                           clock_type::now() - last_ok > std::chrono::seconds(config.lease_ttl_s);
      if (left && *left > 0) {
        last_ok = clock_type::now();
        if (!resigned && !leading && member_ready && !own_member_key(*client)) {
          // The leader took this core out of the membership (its pushes here failed): the
          // commits since went on without it, and it lacks their chunks. It joins again, as
          // after resigning, fetching them.
          member_ready = false;
          resigned = true;
          spdlog::error(
              "replication: core {} was taken out of the membership (the leader could not push "
              "chunks to its chunk service at {}); it joins again",
              config.core_id, advertise);
        }
        if (resigned && !leading && last_ok >= next_rejoin) {
          next_rejoin = last_ok + std::chrono::seconds(5);
          if (auto ok = join(); ok) {
            resigned = false;
            spdlog::info("replication: core {} is a member again", config.core_id);
          } else {
            spdlog::warn("replication: core {} cannot join again yet: {}", config.core_id,
                         ok.error().message());
            leave_membership();  // its key, put as it joined: pushes would wait for it
          }
        }
        continue;
      }
      if (!expired) continue;  // etcd unreachable for now; the lease may still hold
      if (leading.exchange(false)) {
        spdlog::error("replication: core {} lost its leader lease", config.core_id);
        if (on_lost) on_lost();
        return;
      }
      spdlog::warn("replication: core {} lost its membership lease; joining again", config.core_id);
      while (!stopping) {
        auto ok = join();
        if (ok) break;
        spdlog::warn("replication: joining again failed: {}", ok.error().message());
        std::this_thread::sleep_for(std::chrono::seconds(1));
      }
      last_ok = clock_type::now();
    }
  }

  expected<void> fenced_commit(std::span<const store_write> writes) {
    if (!leading)
      return error(errc::permission_denied, "this core does not lead: it cannot commit");
    std::vector<etcd_op> ops;
    ops.reserve(writes.size() + 1);
    // The batch's chunks, spared by the garbage collection until the commit has landed (or
    // failed): their pushes may take longer than an unnamed chunk may live.
    std::vector<std::string> digests;
    struct spared {
      impl& self;
      std::vector<std::string>& digests;
      ~spared() {
        std::lock_guard lock(self.committing_mutex);
        for (const auto& d : digests) self.committing.erase(self.committing.find(d));
      }
    } spare{*this, digests};
    const auto pushes_began = clock_type::now();
    // The batch's values kept in etcd, in bytes: past config.inline_limit, the transaction
    // could pass etcd's request limit (a data set's shards, each under the threshold, are
    // stored in one batch), and further values go to chunks. One no longer than a reference
    // stays in etcd: as a chunk it would take more there, not less.
    size_t inline_bytes = 0;
    std::vector<bool> chunked(writes.size(), false);
    for (size_t i = 0; i < writes.size(); ++i) {
      const auto& w = writes[i];
      if (w.key.empty()) return error(errc::store_error, "empty store key");
      etcd_op op{std::string(data_prefix) + w.key, std::nullopt, 0};
      chunked[i] = w.value && (w.value->size() >= config.chunk_threshold ||
                               (w.value->size() > chunk_ref_size &&
                                inline_bytes + w.value->size() > config.inline_limit));
      if (chunked[i]) {
        chunk_ref ref{w.value->size(), digest_hex(*w.value)};
        {
          std::lock_guard lock(committing_mutex);
          committing.insert(ref.digest);
          digests.push_back(ref.digest);
        }
        const bool had = chunk_file_present(config.chunk_dir / ref.digest);
        if (auto ok = write_chunk(config.chunk_dir, ref.digest, *w.value); !ok) return ok;
        if (!had) chunk_bytes_add(w.value->size());
        if (auto ok = push_chunk(ref.digest, *w.value); !ok) return ok;
        op.value = encode_chunk_ref(ref);
      } else {
        if (w.value) inline_bytes += w.value->size();
        op.value = w.value;
      }
      ops.push_back(std::move(op));
    }
    // The other cores remove a chunk nothing names once it is their `garbage_age_s` old (not
    // this core's to know): where the pushes took over a second, the first may be gone there
    // before the commit names it.
    if (!digests.empty() && clock_type::now() - pushes_began > std::chrono::seconds(1))
      for (size_t i = 0; i < writes.size(); ++i)
        if (chunked[i])
          if (auto ok = keep_chunk(digest_hex(*writes[i].value), *writes[i].value); !ok) return ok;
    const int64_t fence = leader_revision;
    std::lock_guard lock(etcd_mutex);
    if (!writer_revision) {
      auto kvs = etcd->range(writer_key, false);
      if (!kvs) return kvs.error();
      writer_revision = kvs->empty() ? 0 : kvs->front().mod_revision;
    }
    const int64_t before = *writer_revision;
    const std::string mark =
        config.core_id + " " + std::to_string(fence) + " " + std::to_string(++commits_sent);
    ops.push_back({std::string(writer_key), bytes_of(mark), 0});
    const etcd_compare compares[2] = {
        {std::string(leader_key), etcd_compare::target::mod_revision, fence, {}},
        {std::string(writer_key), etcd_compare::target::mod_revision, before, {}}};
    auto r = etcd->txn(compares, ops);
    if (!r && r.error().code() == errc::store_error) {
      // etcd refused it outright (an HTTP 4xx: its space quota is full, say): nothing of it
      // was written, and it can never land, so there is nothing to settle (a barrier would
      // be refused as well) and /gflex/writer keeps its revision. The store answers at once,
      // and is the leader still: no other core could commit either.
      uint64_t held_back = 0;
      if (refusals_logged.allow(clock_type::now(), held_back))
        spdlog::error(
            "replication: etcd refuses the commits of core {}, and nothing of them is "
            "written: {}{}",
            config.core_id, r.error().message(),
            held_back == 0 ? "" : " (" + std::to_string(held_back) + " more since the last line)");
      return error(errc::store_error,
                   "etcd refused the commit; nothing of it was written: " + r.error().message());
    }
    if (!r) return settle_lost_commit(mark, fence, before, r.error());
    if (r->succeeded) writer_revision = r->revision;
    if (r->succeeded && r->revision - compacted_to > 2 * config.kept_revisions) {
      // Once every kept_revisions commits or so: what was replaced long ago goes.
      const int64_t to = r->revision - config.kept_revisions;
      if (auto ok = etcd->compact(to); ok)
        compacted_to = to;
      else
        spdlog::warn("replication: cannot compact etcd to revision {}: {}", to,
                     ok.error().message());
    }
    if (!r->succeeded) {
      writer_revision.reset();
      // The client sends a transaction that a member answered 5xx, or not in time, to the
      // next member: where the first had applied it, this copy's compare failed on the
      // revision the commit itself moved. The writer record says so.
      if (auto w = etcd->range(writer_key, false);
          w && !w->empty() && text_of(w->front().value) == mark) {
        writer_revision = w->front().mod_revision;
        spdlog::info("replication: a commit sent again to another member had landed");
        return {};
      }
      if (auto kvs = etcd->range(leader_key, false);
          kvs && !kvs->empty() && kvs->front().mod_revision == fence)
        // Still this core's leadership: only the writer's revision moved, which no commit
        // of this core's leaves unsettled. Nothing of this batch was written.
        return error(errc::store_error,
                     "the commit was refused: /gflex/writer changed under this core; "
                     "nothing of it was written");
      return fenced_off();
    }
    return {};
  }

  error fenced_off() {
    if (leading.exchange(false)) {
      spdlog::error("replication: core {} is no longer the leader: its commit was fenced off",
                    config.core_id);
      if (on_lost) on_lost();
    }
    return error(errc::permission_denied,
                 "this core no longer leads (its lease lapsed or another core leads)");
  }

  // A commit (writer record `mark`, compared against the writer's revision `before`) whose
  // answer was lost: a read timeout, a reset connection, a 5xx from a member that may have
  // proposed it. etcd may still apply it later, after a later commit of this core's: the
  // ledger then gave the same sequence number to two entries, and a round could be paid
  // twice. Made definite here before the caller hears anything: either it landed (the writer
  // holds `mark`), or a barrier (a write of the writer alone, under the same compares) took
  // the revision first, and it can never land. Under etcd_mutex, so the store answers
  // nothing else meanwhile: a barrier that fails is sent again after a pause (0.1 s,
  // doubling to 1 s), and the whole is given up, with the leadership, after twice the
  // lease's TTL (see give_up_leadership). etcd refusing every barrier (its space quota full
  // after the commit's answer was lost) held the leader here for good, without a pause: its
  // lease renewed, no other core could lead, and every job stalled.
  expected<void> settle_lost_commit(const std::string& mark, int64_t fence, int64_t before,
                                    const error& lost) {
    const std::string barrier_prefix = mark + " barrier ";
    const auto began = clock_type::now();
    const auto limit = std::chrono::seconds(2 * config.lease_ttl_s);
    auto pause = std::chrono::milliseconds(100);
    auto wait = [&] {
      std::this_thread::sleep_for(pause);
      pause = std::min(2 * pause, std::chrono::milliseconds(1000));
    };
    std::optional<error> last;  // the last barrier's or read's failure
    bool fence_moved = false;   // a barrier was answered, its compares failing
    for (int barrier = 1; leading && !stopping;) {
      if (clock_type::now() - began > limit)
        return give_up_leadership(
            "a commit whose answer was lost (" + lost.message() + ") is not settled after " +
            std::to_string(limit.count()) + " s (" +
            (last ? last->message() : std::string("no barrier was answered")) + ")");
      auto kvs = etcd->range(writer_key, false);
      if (!kvs) {
        last = kvs.error();
        wait();
        continue;
      }
      const int64_t now = kvs->empty() ? 0 : kvs->front().mod_revision;
      if (now != before) {
        writer_revision = now;
        const std::string written = kvs->empty() ? "" : text_of(kvs->front().value);
        if (written == mark) {
          spdlog::info("replication: a commit whose answer was lost ({}) landed", lost.message());
          return {};
        }
        if (written.starts_with(barrier_prefix))
          return error(errc::unavailable,
                       "the commit failed, and nothing of it was written: " + lost.message());
        writer_revision.reset();
        return fenced_off();  // another core wrote: this one no longer leads
      }
      if (fence_moved) {
        // The writer is where it was, and a barrier under the same compares failed: the
        // leader key moved, and the commit (comparing it too) can never land.
        writer_revision.reset();
        return fenced_off();
      }
      etcd_op op{std::string(writer_key), bytes_of(barrier_prefix + std::to_string(barrier++)), 0};
      const etcd_compare compares[2] = {
          {std::string(leader_key), etcd_compare::target::mod_revision, fence, {}},
          {std::string(writer_key), etcd_compare::target::mod_revision, before, {}}};
      // Its outcome is read back above.
      if (auto r = etcd->txn(compares, {&op, 1}); !r) {
        if (r.error().code() == errc::store_error && !(last && last->code() == errc::store_error))
          spdlog::error(
              "replication: core {} cannot settle a commit whose answer was lost: etcd refuses "
              "its barrier ({}); trying again for up to {} s",
              config.core_id, r.error().message(), limit.count());
        last = r.error();
        wait();
      } else if (!r->succeeded) {
        fence_moved = true;
      }
    }
    writer_revision.reset();
    return error(errc::permission_denied,
                 "this core no longer leads, and whether its last commit landed is not known "
                 "here (" +
                     lost.message() + "); the next leader reads what etcd holds");
  }

  // Ends this core's leadership, which it cannot go on with (`why`), and gives its lease back:
  // the leader key goes with it, so another core may lead at once (etcd takes a lease's
  // revocation even with its space quota full), and a commit fenced on that key never lands.
  // Given back before `on_lost`, which may end the process, through the renewals' client:
  // it waits for a member a sixth of the TTL, so `on_lost` comes soon whatever etcd does. A
  // core that lives on joins again, under a new lease, as a follower (its renewals find the
  // old one gone). Under etcd_mutex.
  error give_up_leadership(const std::string& why) {
    writer_revision.reset();
    member_ready = false;  // no campaign on the lease given back: joined again first
    if (leading.exchange(false)) {
      spdlog::error("replication: core {} gives up the leadership: {}", config.core_id, why);
      auto client = renewal_client();
      auto gone = client ? client->revoke(lease.load()) : expected<void>(client.error());
      if (!gone)
        spdlog::warn("replication: core {} could not give its lease back: {}", config.core_id,
                     gone.error().message());
      if (on_lost) on_lost();
    }
    return error(errc::unavailable, "this core gave up the leadership: " + why);
  }
};

replicated_store::replicated_store(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
replicated_store::~replicated_store() = default;

expected<std::unique_ptr<replicated_store>> replicated_store::start(replication_config config,
                                                                    std::function<void()> on_lost,
                                                                    const std::atomic<int>* stop) {
  if (!valid_core_id(config.core_id))
    return error(errc::invalid_argument,
                 "core id \"" + config.core_id +
                     "\" must be 1 to 128 letters, digits, '-', '.', ':' or '_'");
  if (config.lease_ttl_s < 2) return error(errc::invalid_argument, "lease TTL under 2 s");
  // Both addresses are given to other machines: the core's to the followers, which send
  // clients' writes to the leader; the chunk service's to the other cores.
  if (auto [host, port] = split_host_port(config.core_address); every_address(host) || port <= 0)
    return error(errc::invalid_argument,
                 "\"" + config.core_address +
                     "\" is no address another machine can reach this core at (the other cores "
                     "send clients there when it leads): give --advertise HOST:PORT");
  if (config.chunk_advertise.empty() && every_address(split_host_port(config.chunk_listen).first))
    return error(errc::invalid_argument,
                 "--chunk-listen \"" + config.chunk_listen +
                     "\": the other cores fetch chunks at this address; give one they reach "
                     "this core at, not every address, or give it with --chunk-advertise");
  // Written into this core's member record as it is: the other cores push every chunk there.
  if (!config.chunk_advertise.empty()) {
    const auto colon = config.chunk_advertise.rfind(':');
    const std::string port_text =
        colon == std::string::npos ? "" : config.chunk_advertise.substr(colon + 1);
    const bool numeric = !port_text.empty() && port_text.size() <= 5 &&
                         port_text.find_first_not_of("0123456789") == std::string::npos;
    const int port = numeric ? std::stoi(port_text) : 0;
    const std::string host =
        colon == std::string::npos ? "" : config.chunk_advertise.substr(0, colon);
    if (host.empty() || port <= 0 || port > 65535 || every_address(host))
      return error(errc::invalid_argument,
                   "--chunk-advertise \"" + config.chunk_advertise +
                       "\" is no HOST:PORT the other cores can reach this core's chunk service "
                       "at (a host, not every address, and a port from 1 to 65535)");
  }
  auto p = std::make_unique<impl>();
  auto client = etcd_client::make(config.endpoints);
  if (!client) return client.error();
  p->etcd.emplace(std::move(*client));
  std::error_code ec;
  std::filesystem::create_directories(config.chunk_dir, ec);
  if (ec)
    return error(errc::io_error, "cannot make " + config.chunk_dir.string() + ": " + ec.message());
  for (const auto& f : std::filesystem::directory_iterator(config.chunk_dir, ec))
    if (f.is_regular_file() && is_digest_hex(f.path().filename().string()))
      p->chunk_bytes += static_cast<int64_t>(f.file_size());
  p->bearer =
      "Bearer " + digest_hex(std::span(reinterpret_cast<const uint8_t*>(config.secret.data()),
                                       config.secret.size()));
  auto [host, port] = split_host_port(config.chunk_listen);
  if (port < 0 || port > 65535 || host.empty())
    return error(errc::invalid_argument,
                 "chunk service address \"" + config.chunk_listen + "\" is not HOST:PORT");
  impl* self = p.get();
  // Set before the service starts: its handlers read it.
  p->config = std::move(config);
  const auto& bearer = p->bearer;
  // Every request carries the key, checked (in constant time) before a body is read; a
  // chunk is at most a checkpoint (4 GiB).
  http::server_limits limits;
  limits.max_body_bytes = size_t{4} << 30;
  limits.admit = [&bearer](const httplib::Request& req) {
    const std::string given = req.get_header_value("Authorization");
    return given.size() == bearer.size() &&
           sodium_memcmp(given.data(), bearer.data(), bearer.size()) == 0;
  };
  // A request meant for another core (core_header) is refused, naming this one: served, it
  // would tell the sender that core holds what only this one does. One that names no core (a
  // tool, a core of an earlier version) is served.
  auto misdirected = [self](const httplib::Request& req, httplib::Response& res) {
    const std::string meant = req.get_header_value(core_header);
    if (meant.empty() || meant == self->config.core_id) return false;
    res.status = 421;
    res.set_header(core_header, self->config.core_id);
    res.set_content("this is the chunk service of core " + self->config.core_id +
                        ", not of the core the request is meant for: two cores are given one "
                        "chunk address (--chunk-listen, --chunk-advertise)",
                    "text/plain");
    return true;
  };
  auto server = http::server::start(
      host, static_cast<uint16_t>(port), chunk_service_threads,
      [self, misdirected](httplib::Server& http) {
        http.Put(R"(/chunk/([0-9a-f]{64}))", [self, misdirected](const httplib::Request& req,
                                                                 httplib::Response& res) {
          if (misdirected(req, res)) return;
          const std::string digest = req.matches[1];
          std::span<const uint8_t> body(reinterpret_cast<const uint8_t*>(req.body.data()),
                                        req.body.size());
          if (digest_hex(body) != digest) {
            res.status = 400;
            res.set_content("the chunk's contents do not match its digest", "text/plain");
            return;
          }
          // Under the garbage collection's lock: a chunk it had found old and was about to
          // remove was touched and acknowledged meanwhile, then removed, and the leader
          // counted this core as holding it. A file of another size (a damaged copy) is
          // written again, not acknowledged as it is.
          bool had = false;
          {
            std::lock_guard lock(self->committing_mutex);
            const auto file = self->config.chunk_dir / digest;
            std::error_code ec;
            const auto size = std::filesystem::file_size(file, ec);
            if (!ec && size == body.size()) {
              std::filesystem::last_write_time(file, std::filesystem::file_time_type::clock::now(),
                                               ec);
              had = !ec;
            } else if (!ec && std::filesystem::remove(file, ec)) {
              self->chunk_bytes -= static_cast<int64_t>(size);
            }
          }
          if (auto written =
                  had ? expected<void>{} : write_chunk(self->config.chunk_dir, digest, body);
              !written) {
            // Out of the membership before the answer: the leader, seeing this core
            // gone, commits without it.
            self->resign("chunk " + digest.substr(0, 12) + " (" + written.error().message() + ")");
            res.status = 507;
            res.set_content("this core cannot store the chunk: it left the membership",
                            "text/plain");
            return;
          }
          if (!had) self->chunk_bytes_add(body.size());
          res.status = 204;
        });
        // The leader's word, before a commit whose pushes took long, that a chunk it pushed
        // is still wanted: kept (its age starts again) if here, else 404 and pushed again.
        http.Post(R"(/touch/([0-9a-f]{64}))", [self, misdirected](const httplib::Request& req,
                                                                  httplib::Response& res) {
          if (misdirected(req, res)) return;
          // Under the garbage collection's lock, as a PUT: touched between its look at the
          // file's age and its removal, the chunk was confirmed, then removed.
          std::lock_guard lock(self->committing_mutex);
          std::error_code ec;
          std::filesystem::last_write_time(self->config.chunk_dir / std::string(req.matches[1]),
                                           std::filesystem::file_time_type::clock::now(), ec);
          res.status = ec ? 404 : 204;
        });
        http.Get(R"(/chunk/([0-9a-f]{64}))", [self, misdirected](const httplib::Request& req,
                                                                 httplib::Response& res) {
          if (misdirected(req, res)) return;
          // A slot among chunk_gets_at_once, held until the answer is sent (the provider
          // keeps it, and httplib sends the body after this handler returns); past them, the
          // fetcher asks the next core, and the PUTs keep threads of their own.
          struct get_slot {
            // A constructor of its own: make_shared's parenthesized aggregate initialization
            // is C++20 that clang does not have yet.
            explicit get_slot(std::atomic<int>& counter) : serving(counter) {}
            std::atomic<int>& serving;
            ~get_slot() { --serving; }
          };
          if (self->gets_serving.fetch_add(1) >= chunk_gets_at_once) {
            --self->gets_serving;
            res.status = 503;
            res.set_header("Retry-After", "1");
            res.set_content("this core's chunk service is busy serving other cores", "text/plain");
            return;
          }
          auto slot = std::make_shared<get_slot>(self->gets_serving);
          const auto file = self->config.chunk_dir / std::string(req.matches[1]);
          auto in = std::make_shared<std::ifstream>(file, std::ios::binary);
          std::error_code ec;
          const auto size = std::filesystem::file_size(file, ec);
          if (!*in || ec) {
            res.status = 404;
            return;
          }
          // Sent from the file a MiB at a time: read whole first, each of the GETs held a
          // checkpoint in memory. A file cut short meanwhile ends the answer early, which the
          // fetcher takes for a failure, as a wrong digest.
          res.set_content_provider(
              size, "application/octet-stream",
              [in, slot](size_t offset, size_t length, httplib::DataSink& sink) {
                std::vector<char> buf(std::min<size_t>(length, size_t{1} << 20));
                in->seekg(static_cast<std::streamoff>(offset));
                in->read(buf.data(), static_cast<std::streamsize>(buf.size()));
                const auto n = in->gcount();
                return n > 0 && sink.write(buf.data(), static_cast<size_t>(n));
              });
        });
      },
      "the chunk service", std::move(limits));
  if (!server) return server.error();
  p->chunks = std::move(*server);
  p->advertise = p->config.chunk_advertise.empty() ? host + ":" + std::to_string(p->chunks->port())
                                                   : p->config.chunk_advertise;
  p->on_lost = std::move(on_lost);
  // An address another core's chunk service answers at (one --chunk-advertise copied to
  // every core) is refused before this core joins: the leader would push this core's chunks
  // there. An address this machine cannot reach itself at (NAT without hairpinning) says
  // nothing here; the leader's pushes find a clash it cannot see (cores each given one
  // loopback address).
  {
    auto c = impl::client_of(p->advertise, 2);
    auto r = c.Get("/chunk/" + std::string(64, '0'), p->chunk_headers(p->config.core_id));
    if (r && r->status == 421)
      return error(
          errc::invalid_argument,
          std::string(p->config.chunk_advertise.empty() ? "--chunk-listen" : "--chunk-advertise") +
              " \"" + p->advertise + "\" reaches " + answering_core(*r) +
              ", not this core's: give each core its own chunk address");
  }
  p->start_stop = stop;
  if (auto ok = p->join(); !ok) return ok.error();
  p->start_stop = nullptr;  // the caller's flag may not outlive the start
  p->lease_thread = std::thread([self] { self->renew_leases(); });
  p->lease_watch = std::thread([self] { self->watch_lease(); });
  p->garbage_thread = std::thread([self] { self->tend_chunks(); });
  return std::unique_ptr<replicated_store>(new replicated_store(std::move(p)));
}

expected<bool> replicated_store::campaign(
    const std::atomic<int>& stop, const std::function<void(const std::string&)>& on_follow) {
  auto& p = *impl_;
  std::string seen = "\x01";  // no record seen yet
  while (stop.load() == 0) {
    // Only on a lease known to hold for half its TTL more: one whose last renewal (or grant)
    // was sent longer ago may have ended, and a leader on it was deposed by its own watch at
    // once (its process ended), or led on a lease etcd had let go.
    const auto half_ttl = std::chrono::milliseconds(p.config.lease_ttl_s * 500);
    const bool lease_sound =
        (clock_type::now() + half_ttl).time_since_epoch().count() < p.lease_deadline.load();
    if (p.member_ready && lease_sound) {
      const std::string record = p.config.core_id + " " + p.config.core_address;
      etcd_compare none{std::string(leader_key), etcd_compare::target::create_revision, 0, {}};
      etcd_op take{std::string(leader_key), bytes_of(record), p.lease.load()};
      expected<etcd_txn_result> r = error(errc::unavailable, "");
      {
        std::lock_guard lock(p.etcd_mutex);
        r = p.etcd->txn({&none, 1}, {&take, 1});
      }
      if (r && r->succeeded) {
        p.leader_revision = r->revision;
        {
          std::lock_guard lock(p.etcd_mutex);
          p.writer_revision.reset();
        }
        p.leading = true;
        spdlog::info("replication: core {} leads (lease {:x}, revision {})", p.config.core_id,
                     p.lease.load(), r->revision);
        return true;
      }
      // The key may be ours already: a campaign whose transaction etcd applied but whose
      // answer was lost (a read timeout, a reset connection, a 5xx after the apply) fails its
      // compare when tried again. Under this core's own lease nobody else can take it, so
      // without this no core would ever lead while this one lives.
      if (auto ours = p.own_leader_key(record)) {
        p.leader_revision = *ours;
        {
          std::lock_guard lock(p.etcd_mutex);
          p.writer_revision.reset();
        }
        p.leading = true;
        spdlog::info(
            "replication: core {} leads (lease {:x}, revision {}; its campaign's answer "
            "was lost)",
            p.config.core_id, p.lease.load(), *ours);
        return true;
      }
      auto current = leader();
      if (current && *current != seen) {
        seen = *current;
        if (on_follow) on_follow(seen);
      }
    }
    for (int i = 0; i < 20 && stop.load() == 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

expected<std::string> replicated_store::leader() const {
  std::lock_guard lock(impl_->etcd_mutex);
  auto kvs = impl_->etcd->range(leader_key, false);
  if (!kvs) return kvs.error();
  return kvs->empty() ? std::string() : text_of(kvs->front().value);
}

expected<void> replicated_store::commit(std::span<const store_write> writes) {
  return impl_->fenced_commit(writes);
}

expected<std::optional<std::vector<uint8_t>>> replicated_store::get(std::string_view key) const {
  std::vector<etcd_kv> kvs;
  {
    std::lock_guard lock(impl_->etcd_mutex);
    auto r = impl_->etcd->range(std::string(data_prefix) + std::string(key), false);
    if (!r) return r.error();
    kvs = std::move(*r);
  }
  if (kvs.empty()) return std::optional<std::vector<uint8_t>>{};
  auto v = impl_->resolve(std::move(kvs.front().value));
  if (!v) return v.error();
  return std::optional<std::vector<uint8_t>>(std::move(*v));
}

expected<void> replicated_store::scan(
    std::string_view prefix,
    const std::function<bool(std::string_view, std::span<const uint8_t>)>& fn) const {
  return scan_ending(prefix, "", fn);
}

expected<void> replicated_store::scan_ending(
    std::string_view prefix, std::string_view suffix,
    const std::function<bool(std::string_view, std::span<const uint8_t>)>& fn) const {
  std::vector<etcd_kv> kvs;
  {
    std::lock_guard lock(impl_->etcd_mutex);
    auto r = impl_->etcd->range(std::string(data_prefix) + std::string(prefix), true);
    if (!r) return r.error();
    kvs = std::move(*r);
  }
  for (auto& kv : kvs) {
    if (!kv.key.ends_with(suffix)) continue;
    auto v = impl_->resolve(std::move(kv.value));
    if (!v) return v.error();
    if (!fn(std::string_view(kv.key).substr(data_prefix.size()), *v)) break;
  }
  return {};
}

expected<std::vector<std::string>> replicated_store::keys(std::string_view prefix) const {
  std::vector<etcd_kv> kvs;
  {
    std::lock_guard lock(impl_->etcd_mutex);
    auto r = impl_->etcd->range(std::string(data_prefix) + std::string(prefix), true);
    if (!r) return r.error();
    kvs = std::move(*r);
  }
  std::vector<std::string> out;
  out.reserve(kvs.size());
  for (const auto& kv : kvs) out.push_back(kv.key.substr(data_prefix.size()));
  return out;
}

int64_t replicated_store::used_bytes() const {
  return impl_->chunk_bytes.load();
}

uint16_t replicated_store::chunk_port() const {
  return impl_->chunks->port();
}

expected<void> check_single_core_state(const std::filesystem::path& data_dir,
                                       const std::string& endpoints) {
  const auto file = data_dir / "data.mdb";
  std::error_code ec;
  const bool there = std::filesystem::exists(file, ec);
  if (ec) return error(errc::io_error, file.string() + ": " + ec.message());
  if (!there) return {};  // opened, LMDB would make it
  std::vector<std::string> keys;
  {
    auto lmdb = store::open(data_dir);
    if (!lmdb)
      return error(lmdb.error().code(),
                   "cannot tell whether " + file.string() + " holds a core's state, which a " +
                       "core on etcd would not use: " + lmdb.error().message());
    auto listed = lmdb->keys("");
    if (!listed) return listed.error();
    keys = std::move(*listed);
  }
  if (keys.empty()) return {};
  // What kinds of records they are, by their keys' first part ("ledger/", "user/").
  std::set<std::string> kinds;
  for (const auto& k : keys) {
    if (kinds.size() == 12) break;
    const auto slash = k.find('/');
    kinds.insert(slash == std::string::npos ? k : k.substr(0, slash + 1));
  }
  std::string records = std::to_string(keys.size()) + " record(s) of a one-server core (";
  for (const auto& k : kinds) records += (k == *kinds.begin() ? "" : ", ") + k;
  records += ")";
  auto client = etcd_client::make(endpoints);
  if (!client) return client.error();
  auto held = client->range(data_prefix, true);
  if (!held)
    return error(errc::unavailable, "cannot read etcd at " + endpoints + " (" +
                                        held.error().message() + ") to see whether it holds " +
                                        "a core's state beside what " + file.string() + " holds");
  if (!held->empty()) {
    spdlog::warn(
        "{} holds {}; this core keeps its state in etcd at {} ({} key(s) under {}) and does "
        "not use them",
        file.string(), records, endpoints, held->size(), data_prefix);
    return {};
  }
  return error(
      errc::invalid_argument,
      file.string() + " holds " + records + ": its accounts, API keys, ledger, tokens and " +
          "jobs; etcd at " + endpoints + " holds no core's state (nothing under " +
          std::string(data_prefix) + "). Started with --store etcd://, this core would " +
          "start empty, without them. To go on with that state, run the core without " +
          "--store; to start a core of several afresh, move data.mdb, lock.mdb and blobs/ " +
          "out of " + data_dir.string() + " (keep the credentials and operator.key): nothing " +
          "copies a one-server core's state into etcd yet (docs/FAILURES.md, \"A core of " +
          "several servers\")");
}

expected<std::string> etcd_endpoints_of(const std::string& store_url) {
  constexpr std::string_view scheme = "etcd://";
  if (store_url.rfind(scheme, 0) != 0 || store_url.size() == scheme.size())
    return error(errc::invalid_argument,
                 "--store \"" + store_url + "\" is not etcd://HOST:PORT[,HOST:PORT...]");
  return store_url.substr(scheme.size());
}

}  // namespace gflex
