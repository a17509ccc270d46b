#include "cache.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <deque>
#include <functional>
#include <map>
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
/// the next at a round's start, would pass that over any link slower than loopback.
constexpr size_t max_chunk_requests = 16;

struct cache_state {
  std::filesystem::path dir;
  caf::actor server;
  /// Chunk requests to the server not yet answered, by a number of their own: a session
  /// that ends leaves its requests unanswered (until their timeout), so a new server fails
  /// them at once and frees their slots.
  std::map<uint64_t, chunk_handler> out;
  uint64_t last_request = 0;
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
chunk_handler take_request(cache_actor_type* self, uint64_t id);
void ask_waiting(cache_actor_type* self);

// The chunk from disk when its file is intact, else from the data server (kept on disk).
// `done` runs on this actor, now or when the server answers.
void fetch_chunk(cache_actor_type* self, const std::string& digest, chunk_handler done) {
  auto file = self->state.dir / digest;
  if (auto bytes = read_file(file); bytes) {
    if (digest_hex(*bytes) == digest) return done(std::move(*bytes));
    spdlog::warn("cache: {} is damaged; fetching it again", file.string());
    std::error_code ec;
    std::filesystem::remove(file, ec);
  }
  request_chunk(self, digest, std::move(done));
}

// Asks the server for the chunk when a request slot is free, else queues the ask.
void request_chunk(cache_actor_type* self, const std::string& digest, chunk_handler done) {
  auto& st = self->state;
  if (st.out.size() >= max_chunk_requests) {
    st.waiting.emplace_back(digest, std::move(done));
    return;
  }
  if (!st.server) return done(error(errc::io_error, "no data server yet (not joined)"));
  const uint64_t id = ++st.last_request;
  st.out.emplace(id, std::move(done));
  const auto file = st.dir / digest;
  self->request(st.server, std::chrono::seconds(120), chunk_atom::value, digest)
      .then(
          [=](std::vector<uint8_t>& bytes) {
            auto handler = take_request(self, id);
            if (!handler) return;  // failed already: its session ended
            node_metrics::bytes("in", "chunk").inc(static_cast<double>(bytes.size()));
            if (digest_hex(bytes) != digest)
              return handler(
                  error(errc::malformed_message, "chunk " + digest + " failed verification"));
            if (auto ok = write_file_atomically(file, bytes); !ok)
              spdlog::warn("cache: {}", ok.error().message());
            handler(std::move(bytes));
          },
          [=](caf::error& e) {
            if (auto handler = take_request(self, id)) handler(from_caf(e));
          });
}

// The handler of request `id` if it is still out (empty if not), its slot given to the next
// ask waiting.
chunk_handler take_request(cache_actor_type* self, uint64_t id) {
  auto& st = self->state;
  auto it = st.out.find(id);
  if (it == st.out.end()) return {};
  chunk_handler handler = std::move(it->second);
  st.out.erase(it);
  ask_waiting(self);
  return handler;
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
    expected<dataset> decoded = bytes ? decode_shard(*bytes) : expected<dataset>(bytes.error());
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

caf::behavior cache_actor(cache_actor_type* self, std::filesystem::path dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  self->state.dir = std::move(dir);
  return {
      [=](serve_atom, caf::actor& server) {
        auto& st = self->state;
        if (server == st.server) return;
        st.server = std::move(server);
        // The requests to the last server will not be answered: failed now, not after their
        // timeout, so that they hold no slot (nor a worker waiting for its shard).
        auto stale = std::move(st.out);
        st.out.clear();
        for (auto& [id, handler] : stale)
          handler(error(errc::io_error, "the session the chunk was asked of ended"));
        ask_waiting(self);
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

caf::actor spawn_cache(caf::actor_system& sys, const std::filesystem::path& dir) {
  return sys.spawn<caf::detached>(cache_actor, dir);
}

}  // namespace gflex
