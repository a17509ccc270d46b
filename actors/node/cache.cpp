#include "cache.hpp"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <new>
#include <tuple>
#include <utility>
#include <vector>

#include "gflex/runtime/checkpoint.hpp"
#include "gflex/runtime/digest.hpp"
#include "gflex/runtime/shard.hpp"
#include "messages.hpp"
#include "node_metrics.hpp"

namespace gflex {

namespace {

using chunk_handler = std::function<void(expected<std::vector<uint8_t>>)>;

/// Chunk requests the cache keeps out to the core at once; the rest wait here. The core
/// serves a node 4 chunks at once and lets 64 more wait, and disconnects a node that asks for
/// more (docs/SECURITY.md): a node of many workers, each asking for its shard and prefetching
/// the next at a round's start, would pass that over any link slower than loopback. Two more
/// than the core serves keep the link busy; more only waited at the core with their 120 s
/// timeouts running: 16 chunks of 8 MiB on a link of 1 MB/s timed out from the twelfth on,
/// each one asked again behind the late answers still on the wire, and every assignment on
/// the node failed.
constexpr size_t max_chunk_requests = 6;

/// Chunks come one after another over the node's one link: the sixth request out waits for
/// five chunks ahead of it (40 MiB: 2 minutes at 3 Mbit/s). A request timed from its send
/// failed behind answers still arriving, and its own bytes, late, were thrown away, and so on
/// for every later one: the node never caught up. Requests fail when no chunk has come for
/// cache_state::silence (2 minutes); each has a hard bound too.
constexpr auto chunk_request_bound = std::chrono::minutes(30);

using cache_tick_atom = caf::atom_constant<caf::atom("ctick")>;

// A chunk file on disk: its size, and when it was last used (a count of uses).
struct chunk_file {
  uint64_t bytes = 0;
  uint64_t used = 0;
};

struct cache_state {
  std::filesystem::path dir;
  /// The most bytes the chunk files may take on disk (0: no bound); the least recently used
  /// go first. The volunteer's disk is theirs: chunks of every data set a node had served
  /// stayed for good.
  uint64_t limit = 0;
  /// What the chunk files leave free of their file system: the least recently used go, and a
  /// chunk that cannot have room is served from memory, not written. Within --cache-limit
  /// (10 GB by default) a node filled a volunteer's small disk: their own programs then
  /// failed for want of space, and so did every chunk write after.
  uint64_t keep_free = 0;
  std::chrono::steady_clock::time_point said_full{};  // when a chunk was last left unwritten
  std::map<std::string, chunk_file> files;            // by digest
  uint64_t on_disk = 0;                               // bytes of `files`
  uint64_t uses = 0;
  caf::actor server;
  /// Who named the server (the uplink), told as chunks arrive from it; when it last was.
  caf::actor listener;
  std::chrono::steady_clock::time_point last_told{};
  /// Chunk requests to the server not yet answered, by a number of their own: a session
  /// that ends leaves its requests unanswered (until their timeout), so a new server fails
  /// them at once and frees their slots. Each with the digest it asks for.
  std::map<uint64_t, std::pair<std::string, chunk_handler>> out;
  uint64_t last_request = 0;
  /// When a chunk (or an error) last came from the server, or a request went out while none
  /// was; whether a check of it is due.
  std::chrono::steady_clock::time_point progress{};
  bool watching = false;
  std::chrono::milliseconds silence{};
  std::deque<std::pair<std::string, chunk_handler>> waiting;  ///< For a request slot.
  /// Decoded shards nobody has asked for yet (prefetched), oldest first.
  std::deque<std::pair<std::string, std::shared_ptr<const dataset>>> ready;
  /// Shards being fetched or decoded, with the workers waiting for each (none for a
  /// prefetch nobody has asked for yet).
  struct pending_decode {
    std::vector<caf::response_promise> waiting;
    bool ahead = false;  ///< Started by a prefetch.
  };
  std::map<std::string, pending_decode> decoding;
  static inline const char* name = "cache";
};

using cache_actor_type = caf::stateful_actor<cache_state>;

void request_chunk(cache_actor_type* self, const std::string& digest, chunk_handler done);

// Checks the requests out again soon: a fifth of `silence`, at most 5 s.
void watch(cache_actor_type* self) {
  self->delayed_send(
      self, std::min<std::chrono::milliseconds>(std::chrono::seconds(5), self->state.silence / 5),
      cache_tick_atom::value);
}
chunk_handler take_request(cache_actor_type* self, uint64_t id);
void ask_waiting(cache_actor_type* self);
void requests_ended(cache_actor_type* self);

// Forgets the file of `digest` and removes it from disk.
void remove_chunk_file(cache_state& st, const std::string& digest) {
  std::error_code ec;
  std::filesystem::remove(st.dir / digest, ec);
  if (auto it = st.files.find(digest); it != st.files.end()) {
    st.on_disk -= it->second.bytes;
    st.files.erase(it);
  }
}

// Removes the least recently used chunk files, never `keep` (just written), until the files
// fit the limit.
void evict_past_limit(cache_state& st, const std::string& keep) {
  while (st.limit > 0 && st.on_disk > st.limit) {
    auto oldest = st.files.end();
    for (auto it = st.files.begin(); it != st.files.end(); ++it)
      if (it->first != keep && (oldest == st.files.end() || it->second.used < oldest->second.used))
        oldest = it;
    if (oldest == st.files.end()) return;
    spdlog::debug("cache: {} removed, the least recently used chunk (the cache is past {} bytes)",
                  oldest->first.substr(0, 12), st.limit);
    remove_chunk_file(st, std::string(oldest->first));
  }
}

// Whether `bytes` more fit the chunk directory's file system with `keep_free` left: the least
// recently used chunk files go while they do not. True when the free space is not known.
bool make_room(cache_state& st, uint64_t bytes) {
  if (st.keep_free == 0) return true;
  for (;;) {
    std::error_code ec;
    const auto space = std::filesystem::space(st.dir, ec);
    if (ec || space.available >= bytes + st.keep_free) return true;
    auto oldest = st.files.end();
    for (auto it = st.files.begin(); it != st.files.end(); ++it)
      if (oldest == st.files.end() || it->second.used < oldest->second.used) oldest = it;
    if (oldest == st.files.end()) return false;
    spdlog::debug("cache: {} removed, the least recently used chunk (the disk has {} bytes free)",
                  oldest->first.substr(0, 12), space.available);
    remove_chunk_file(st, std::string(oldest->first));
  }
}

// Notes a chunk file written (or found) on disk, used now.
void note_chunk_file(cache_state& st, const std::string& digest, uint64_t bytes) {
  auto& f = st.files[digest];
  st.on_disk += bytes - f.bytes;
  f.bytes = bytes;
  f.used = ++st.uses;
  evict_past_limit(st, digest);
}

// The chunk from disk when its file is intact, else from the data server (kept on disk).
// `done` runs on this actor, now or when the server answers.
void fetch_chunk(cache_actor_type* self, const std::string& digest, chunk_handler done) {
  auto& st = self->state;
  auto file = st.dir / digest;
  if (auto bytes = read_file(file); bytes) {
    if (digest_hex(*bytes) == digest) {
      if (auto it = st.files.find(digest); it != st.files.end()) it->second.used = ++st.uses;
      // Its time on disk is when it was last used, the order a restarted node trims in.
      std::error_code ec;
      std::filesystem::last_write_time(file, std::filesystem::file_time_type::clock::now(), ec);
      return done(std::move(*bytes));
    }
    spdlog::warn("cache: {} is damaged; fetching it again", file.string());
    remove_chunk_file(st, digest);
  }
  request_chunk(self, digest, std::move(done));
}

// Tells the listener that the server sent something, at most once a second.
void tell_heard(cache_actor_type* self) {
  auto& st = self->state;
  const auto now = std::chrono::steady_clock::now();
  if (!st.listener || now - st.last_told < std::chrono::seconds(1)) return;
  st.last_told = now;
  self->send(st.listener, heard_atom::value);
}

// A data chunk the core did not serve: its data server lacks it, is slow or restarting, the
// session it was asked of ended, or the node has joined none yet. The worker passes the error
// on to its job, which takes io_error for the node's own fault and cools the node down, and
// unavailable for the core's (as the uplink says of a parameter chunk it did not get).
error not_served(const std::string& digest, const std::string& why) {
  return error(errc::unavailable,
               "the core did not serve data chunk " + digest.substr(0, 16) + " (" + why + ")");
}

// A chunk request's failure in the job's terms: CAF's (a timeout, the session gone) and the
// core's own io_error ("no chunk ... here") are the core's failure to serve; the session's
// refusals of the node's ask (not one of its chunks, too many asks) stay as they are.
error chunk_failure(caf::actor_system& sys, const std::string& digest, const caf::error& e) {
  if (e.category() != error_category) return not_served(digest, sys.render(e));
  auto err = from_caf(e);
  if (err.code() == errc::io_error || err.code() == errc::unavailable)
    return not_served(digest, err.message());
  return err;
}

// Asks the server for the chunk when a request slot is free, else queues the ask.
void request_chunk(cache_actor_type* self, const std::string& digest, chunk_handler done) {
  auto& st = self->state;
  if (st.out.size() >= max_chunk_requests) {
    st.waiting.emplace_back(digest, std::move(done));
    return;
  }
  if (!st.server) return done(not_served(digest, "no data server yet: not joined"));
  const uint64_t id = ++st.last_request;
  if (st.out.empty()) st.progress = std::chrono::steady_clock::now();
  st.out.emplace(id, std::pair{digest, std::move(done)});
  if (!std::exchange(st.watching, true)) watch(self);
  if (st.out.size() == 1 && st.listener) self->send(st.listener, heard_atom::value, uint64_t{1});
  const auto file = st.dir / digest;
  self->request(st.server, chunk_request_bound, chunk_atom::value, digest)
      .then(
          [=](std::vector<uint8_t>& bytes) {
            self->state.progress = std::chrono::steady_clock::now();
            // Failed already (its session ended, or no chunk came for a while), it is kept
            // all the same: the next ask of it is served from disk.
            auto handler = take_request(self, id);
            node_metrics::bytes("in", "chunk").inc(static_cast<double>(bytes.size()));
            tell_heard(self);
            if (digest_hex(bytes) != digest) {
              if (handler)
                handler(error(errc::malformed_message, "chunk " + digest + " failed verification"));
              return;
            }
            // Checked against its digest when read again: not synced.
            auto& st = self->state;
            if (!make_room(st, bytes.size())) {
              const auto now = std::chrono::steady_clock::now();
              if (now - st.said_full >= std::chrono::minutes(1)) {
                st.said_full = now;
                spdlog::warn(
                    "cache: the disk of {} has under {} bytes free beside the chunk files: "
                    "chunks are served from memory, not kept (fetched again when used again)",
                    st.dir.string(), st.keep_free);
              }
            } else if (auto ok = write_file_atomically(file, bytes, file_sync::no); !ok) {
              spdlog::warn("cache: {}", ok.error().message());
            } else {
              note_chunk_file(st, digest, bytes.size());
            }
            if (handler) handler(std::move(bytes));
          },
          [=](caf::error& e) {
            self->state.progress = std::chrono::steady_clock::now();
            if (auto handler = take_request(self, id))
              handler(chunk_failure(self->system(), digest, e));
          });
}

// The handler of request `id` if it is still out (empty if not), its slot given to the next
// ask waiting.
chunk_handler take_request(cache_actor_type* self, uint64_t id) {
  auto& st = self->state;
  auto it = st.out.find(id);
  if (it == st.out.end()) return {};
  chunk_handler handler = std::move(it->second.second);
  st.out.erase(it);
  requests_ended(self);
  return handler;
}

// After requests out ended (answered, or failed): the asks waiting take their slots, and the
// listener hears when none is out any more.
void requests_ended(cache_actor_type* self) {
  ask_waiting(self);
  auto& st = self->state;
  if (st.out.empty() && st.listener) self->send(st.listener, heard_atom::value, uint64_t{0});
}

// Sends the asks waiting for a slot, as many as there are slots.
void ask_waiting(cache_actor_type* self) {
  auto& st = self->state;
  while (st.out.size() < max_chunk_requests && !st.waiting.empty()) {
    auto ask = std::move(st.waiting.front());
    st.waiting.pop_front();
    request_chunk(self, ask.first, std::move(ask.second));
  }
}

// Fetches and decodes a shard once however many ask; those waiting get it when it is done, a
// prefetch that nobody waits for yet leaves it in `ready`.
void decode_shard_for(cache_actor_type* self, const std::string& digest) {
  fetch_chunk(self, digest, [=](expected<std::vector<uint8_t>> bytes) {
    // Decoded (four times the bytes) where host memory may be short: the exception ended the
    // cache, whose waiting workers were never answered (a promise dropped with its actor is
    // not), each waited out its whole timeout, and the restarted cache did it again.
    expected<dataset> decoded = error(errc::device_error, "not decoded");
    try {
      decoded = bytes ? decode_shard(*bytes) : expected<dataset>(bytes.error());
    } catch (const std::bad_alloc&) {
      decoded = error(errc::device_error,
                      "out of host memory decoding shard " + digest.substr(0, 12) + " (" +
                          std::to_string(bytes ? bytes->size() : 0) + " bytes)");
    }
    auto& st = self->state;
    auto waiting = std::move(st.decoding[digest].waiting);
    st.decoding.erase(digest);
    if (!decoded) {
      if (waiting.empty())
        spdlog::debug("cache: prefetching shard {}: {}", digest.substr(0, 12),
                      decoded.error().message());
      for (auto& rp : waiting) rp.deliver(to_caf(decoded.error()));
      return;
    }
    auto shared = std::make_shared<const dataset>(std::move(*decoded));
    if (waiting.empty()) {
      st.ready.emplace_back(digest, std::move(shared));
      auto held = [&] {
        size_t bytes = 0;
        for (const auto& r : st.ready) bytes += r.second->features.nbytes();
        return bytes;
      };
      while (st.ready.size() > prefetched_shards ||
             (st.ready.size() > 1 && held() > prefetched_bytes))
        st.ready.pop_front();
      return;
    }
    for (auto& rp : waiting) rp.deliver(decoded_shard{shared});
  });
}

// When this process started (near enough: when its libraries were loaded).
const auto process_started = std::filesystem::file_time_type::clock::now();

// The chunk files a cache finds on disk, in the order they were last used (written or read).
// Whether `name`, last written at `written`, is the temporary file of a chunk whose writer
// (write_file_atomically: DIGEST.tmp.PID) is gone: killed while it wrote, it left the file,
// which no limit counted. One of this process's pid written before this process started is a
// dead predecessor's: a node in a container has the same pid (often 1) at every start, and
// its files were kept for good.
bool left_by_a_dead_writer(const std::string& name, std::filesystem::file_time_type written) {
  constexpr std::string_view tmp = ".tmp.";
  if (name.size() <= 64 + tmp.size() || !is_digest_hex(name.substr(0, 64)) ||
      name.compare(64, tmp.size(), tmp) != 0)
    return false;
  const std::string pid_text = name.substr(64 + tmp.size());
  if (pid_text.size() > 9 || !std::all_of(pid_text.begin(), pid_text.end(), ::isdigit))
    return false;
  const pid_t pid = static_cast<pid_t>(std::stol(pid_text));
  // A second's margin: a file's time is the kernel's coarse clock, some milliseconds behind.
  if (pid == ::getpid()) return written < process_started - std::chrono::seconds(1);
  return pid <= 0 || (::kill(pid, 0) != 0 && errno == ESRCH);
}

void scan_chunk_files(cache_state& st) {
  std::vector<std::tuple<std::filesystem::file_time_type, std::string, uint64_t>> found;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(st.dir, ec)) {
    const auto name = entry.path().filename().string();
    std::error_code entry_ec;
    if (left_by_a_dead_writer(name, entry.last_write_time(entry_ec)) && !entry_ec) {
      std::filesystem::remove(entry.path(), entry_ec);
      continue;
    }
    if (!is_digest_hex(name) || !entry.is_regular_file(entry_ec)) continue;
    const auto bytes = entry.file_size(entry_ec);
    const auto written = entry.last_write_time(entry_ec);
    if (!entry_ec) found.emplace_back(written, name, bytes);
  }
  std::sort(found.begin(), found.end());
  for (const auto& [written, name, bytes] : found) {
    st.files[name] = {bytes, ++st.uses};
    st.on_disk += bytes;
  }
  evict_past_limit(st, "");
}

caf::behavior cache_actor(cache_actor_type* self, std::filesystem::path dir, uint64_t limit,
                          std::chrono::milliseconds silence, uint64_t keep_free) {
  self->state.silence = silence;
  self->state.keep_free = keep_free;
  std::error_code ec;
  // Users' data on a volunteer's disk: the owner's alone, as each chunk file is.
  if (std::filesystem::create_directories(dir, ec))
    std::filesystem::permissions(dir, std::filesystem::perms::owner_all, ec);
  self->state.dir = std::move(dir);
  self->state.limit = limit;
  scan_chunk_files(self->state);
  return {
      [=](serve_atom, caf::actor& server) {
        auto& st = self->state;
        st.listener = caf::actor_cast<caf::actor>(self->current_sender());
        if (server == st.server) return;
        st.server = std::move(server);
        // The requests to the last server will not be answered: failed now, not after their
        // timeout, so that they hold no slot (nor a worker waiting for its shard).
        auto stale = std::move(st.out);
        st.out.clear();
        // So were those waiting for a slot: the last session's workers' shards and prefetches,
        // whose chunks the new session has granted none of. Sent to it, each was a chunk that
        // none of the node's assignments named, counted against an honest node as a hostile
        // message. Failed, their workers ask again under the new session if they still need
        // them.
        auto queued = std::move(st.waiting);
        st.waiting.clear();
        for (auto& [id, ask] : stale)
          ask.second(not_served(ask.first, "the session it was asked of ended"));
        for (auto& ask : queued)
          ask.second(not_served(ask.first, "the session it was asked for ended"));
        if (!stale.empty()) requests_ended(self);
      },
      // Requests out while no chunk has come for `silence`: failed (the server, or the link,
      // is stuck).
      [=](cache_tick_atom) {
        auto& st = self->state;
        st.watching = false;
        if (st.out.empty()) return;
        if (std::chrono::steady_clock::now() - st.progress >= st.silence) {
          auto stuck = std::move(st.out);
          st.out.clear();
          for (auto& [id, ask] : stuck)
            ask.second(error(errc::unavailable, "no chunk came from the core for " +
                                                    std::to_string(st.silence.count() / 1000) +
                                                    " s"));
          requests_ended(self);
        }
        if (!st.out.empty() && !std::exchange(st.watching, true)) watch(self);
      },
      [=](chunk_atom, const std::string& digest) -> caf::result<std::vector<uint8_t>> {
        if (!is_digest_hex(digest))
          return to_caf(error(errc::invalid_argument, "not a chunk digest"));
        auto rp = self->make_response_promise<std::vector<uint8_t>>();
        fetch_chunk(self, digest, [=](expected<std::vector<uint8_t>> bytes) mutable {
          if (bytes)
            rp.deliver(std::move(*bytes));
          else
            rp.deliver(to_caf(bytes.error()));
        });
        return rp;
      },
      [=](shard_atom, const std::string& digest) -> caf::result<decoded_shard> {
        if (!is_digest_hex(digest))
          return to_caf(error(errc::invalid_argument, "not a chunk digest"));
        auto& st = self->state;
        auto it = std::find_if(st.ready.begin(), st.ready.end(),
                               [&](const auto& r) { return r.first == digest; });
        if (it != st.ready.end()) {
          decoded_shard out{std::move(it->second)};
          st.ready.erase(it);  // the worker keeps it from here on
          node_metrics::shards("prefetched").inc();
          return out;
        }
        auto rp = self->make_response_promise<decoded_shard>();
        auto [pending, fresh] = st.decoding.try_emplace(digest);
        pending->second.waiting.push_back(rp);
        node_metrics::shards(pending->second.ahead ? "prefetched" : "fetched").inc();
        if (fresh) decode_shard_for(self, digest);
        return rp;
      },
      [=](prefetch_atom, const std::string& digest) {
        auto& st = self->state;
        if (!is_digest_hex(digest) || st.decoding.count(digest) > 0) return;
        for (const auto& r : st.ready)
          if (r.first == digest) return;
        st.decoding[digest].ahead = true;  // nobody waits yet
        decode_shard_for(self, digest);
      },
  };
}

}  // namespace

caf::actor spawn_cache(caf::actor_system& sys, const std::filesystem::path& dir,
                       uint64_t limit_bytes, std::chrono::milliseconds silence,
                       uint64_t keep_free_bytes) {
  return sys.spawn<caf::detached>(cache_actor, dir, limit_bytes, silence, keep_free_bytes);
}

}  // namespace gflex
