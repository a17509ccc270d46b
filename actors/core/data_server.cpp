#include "data_server.hpp"

#include "core_metrics.hpp"
#include "data_catalog.hpp"
#include "gflex/runtime/digest.hpp"
#include "messages.hpp"

namespace gflex {

namespace {

// '<at most 80 characters of name>', built by appends (GCC 12 warns falsely on operator+).
std::string quoted(const std::string& name) {
  std::string out = "'";
  out.append(name, 0, 80);
  out += '\'';
  return out;
}

caf::behavior data_server_actor(caf::event_based_actor*, std::shared_ptr<data_catalog> catalog) {
  return {
      [=](chunk_atom, const std::string& digest) -> caf::result<std::vector<uint8_t>> {
        if (!is_digest_hex(digest))
          return to_caf(error(errc::invalid_argument, quoted(digest) + " is not a chunk digest"));
        auto bytes = catalog->chunk(digest);
        if (!bytes) return to_caf(error(errc::io_error, "no chunk " + digest + " here"));
        core_metrics::bytes("out", "chunk").inc(static_cast<double>(bytes->size()));
        return *bytes;
      },
  };
}

}  // namespace

caf::actor spawn_data_server(caf::actor_system& sys, std::shared_ptr<data_catalog> catalog) {
  return sys.spawn(data_server_actor, std::move(catalog));
}

}  // namespace gflex
