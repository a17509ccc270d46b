#include "cache.hpp"

#include <spdlog/spdlog.h>

#include "gflex/runtime/checkpoint.hpp"
#include "gflex/runtime/digest.hpp"
#include "messages.hpp"
#include "node_metrics.hpp"

namespace gflex {

namespace {

struct cache_state {
  std::filesystem::path dir;
  caf::actor server;
  static inline const char* name = "cache";
};

caf::behavior cache_actor(caf::stateful_actor<cache_state>* self, std::filesystem::path dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  self->state.dir = std::move(dir);
  return {
      [=](serve_atom, caf::actor& server) { self->state.server = std::move(server); },
      [=](chunk_atom, const std::string& digest) -> caf::result<std::vector<uint8_t>> {
        if (!is_digest_hex(digest))
          return to_caf(error(errc::invalid_argument, "not a chunk digest"));
        auto file = self->state.dir / digest;
        if (auto bytes = read_file(file); bytes) {
          if (digest_hex(*bytes) == digest) return std::move(*bytes);
          spdlog::warn("cache: {} is damaged; fetching it again", file.string());
          std::error_code ec;
          std::filesystem::remove(file, ec);
        }
        if (!self->state.server)
          return to_caf(error(errc::io_error, "no data server yet (not joined)"));
        auto rp = self->make_response_promise<std::vector<uint8_t>>();
        self->request(self->state.server, std::chrono::seconds(120), chunk_atom::value, digest)
            .then(
                [=](std::vector<uint8_t>& bytes) mutable {
                  node_metrics::bytes("in", "chunk").inc(static_cast<double>(bytes.size()));
                  if (digest_hex(bytes) != digest) {
                    rp.deliver(to_caf(error(errc::malformed_message,
                                            "chunk " + digest + " failed verification")));
                    return;
                  }
                  if (auto ok = write_file_atomically(file, bytes); !ok)
                    spdlog::warn("cache: {}", ok.error().message());
                  {
                    rp.deliver(std::move(bytes));
                    return;
                  }
                },
                [=](caf::error& e) mutable { rp.deliver(e); });
        return rp;
      },
  };
}

}  // namespace

caf::actor spawn_cache(caf::actor_system& sys, const std::filesystem::path& dir) {
  return sys.spawn<caf::detached>(cache_actor, dir);
}

}  // namespace gflex
