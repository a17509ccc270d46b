#include "routed_messages.hpp"

#include <dlfcn.h>
#include <spdlog/spdlog.h>
#include <caf/binary_deserializer.hpp>
#include <caf/io/basp/instance.hpp>
#include <caf/io/system_messages.hpp>

#include <atomic>

#include "interposition.hpp"

namespace gflex {

namespace {

std::atomic<uint64_t> refused{0};

// caf::io::basp::instance::handle(execution_unit*, new_data_msg&, header&, bool)
constexpr const char* handle_symbol =
    "_ZN3caf2io4basp8instance6handleEPNS_14execution_unitERNS0_12new_data_msgERNS1_6headerEb";

}  // namespace

uint64_t forged_sources_refused() {
  return refused.load();
}

expected<void> routed_message_check_in_effect() {
  return interposed_here(handle_symbol, reinterpret_cast<const void*>(&forged_sources_refused),
                         "the check of routed messages' sources");
}

}  // namespace gflex

// The executable's definition comes first in symbol lookup, so the broker's calls (through
// the PLT) land here. A routed message's payload starts with its source and destination
// nodes; one whose source is this process closes its connection (as a malformed message
// does, by BASP's own path), and everything else goes on to CAF's definition unchanged.
caf::io::basp::connection_state caf::io::basp::instance::handle(execution_unit* ctx,
                                                                new_data_msg& dm, header& hdr,
                                                                bool is_payload) {
  using fn = connection_state (*)(instance*, execution_unit*, new_data_msg&, header&, bool);
  static fn real = reinterpret_cast<fn>(dlsym(RTLD_NEXT, gflex::handle_symbol));
  if (is_payload && hdr.operation == message_type::routed_message) {
    binary_deserializer source{ctx, dm.buf};
    node_id source_node, dest_node;
    if (!source(source_node, dest_node) && source_node == this_node()) {
      gflex::refused.fetch_add(1);
      spdlog::warn("closed a connection whose peer sent a message as this process's own actor {}",
                   hdr.source_actor);
      return malformed_basp_message;
    }
  }
  return real(this, ctx, dm, hdr, is_payload);
}
