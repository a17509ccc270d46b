#include "routed_messages.hpp"

#include <dlfcn.h>
#include <spdlog/spdlog.h>
#include <caf/atom.hpp>
#include <caf/binary_deserializer.hpp>
#include <caf/io/basp/instance.hpp>
#include <caf/io/system_messages.hpp>
#include <caf/message_id.hpp>
#include <caf/proxy_registry.hpp>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <utility>

#include "gflex/runtime/log_throttle.hpp"
#include "interposition.hpp"

namespace gflex {

namespace {

std::atomic<uint64_t> refused{0};
std::atomic<uint64_t> dropped{0};
std::atomic<uint64_t> named_dropped{0};

std::atomic<bool> third_parties_refused{false};

// Each actor system's BASP instance (a process may hold several systems: an embedded core
// and a client), by the proxy registry it fills, once it has handled a message.
std::mutex instances_mutex;
std::map<const caf::proxy_registry*, caf::io::basp::instance*> instances;

// Guarded actors by node and id: ids count up from 1 in each actor system.
std::mutex guarded_mutex;
std::set<std::pair<caf::node_id, caf::actor_id>> guarded_ids;

bool is_guarded(const caf::node_id& node, caf::actor_id id) {
  std::lock_guard<std::mutex> lock(guarded_mutex);
  return guarded_ids.count({node, id}) != 0;
}

// caf::io::basp::instance::handle(execution_unit*, new_data_msg&, header&, bool)
constexpr const char* handle_symbol =
    "_ZN3caf2io4basp8instance6handleEPNS_14execution_unitERNS0_12new_data_msgERNS1_6headerEb";

// caf::proxy_registry::get_or_put(const node_id&, actor_id)
constexpr const char* get_or_put_symbol = "_ZN3caf14proxy_registry10get_or_putERKNS_7node_idEm";

// How CAF 0.17 names the types of (link_atom or unlink_atom, strong_actor_ptr) on the wire.
constexpr const char* link_message_types = "@<>+@atom+@strong_actor_ptr";

}  // namespace

std::atomic<uint64_t> proxies_over_bound{0};

uint64_t proxies_refused() {
  return proxies_over_bound.load();
}

uint64_t forged_sources_refused() {
  return refused.load();
}

uint64_t anonymous_responses_dropped() {
  return dropped.load();
}

uint64_t named_receiver_messages_dropped() {
  return named_dropped.load();
}

void note_guarded_actor(const caf::node_id& node, caf::actor_id id) {
  std::lock_guard<std::mutex> lock(guarded_mutex);
  guarded_ids.insert({node, id});
}

void forget_guarded_actor(const caf::node_id& node, caf::actor_id id) {
  std::lock_guard<std::mutex> lock(guarded_mutex);
  guarded_ids.erase({node, id});
}

void refuse_third_party_nodes() {
  third_parties_refused.store(true);
}

expected<void> routed_message_check_in_effect() {
  const auto* ours = reinterpret_cast<const void*>(&forged_sources_refused);
  if (auto basp = interposed_here(handle_symbol, ours, "the checks of what peers send"); !basp)
    return basp;
  return interposed_here(get_or_put_symbol, ours, "the check of actor handles' nodes");
}

}  // namespace gflex

namespace {

using caf::io::basp::connection_state;
using caf::io::basp::header;
using caf::io::basp::message_type;

// What becomes of a message for an actor of this process (its payload read up to the
// forwarding stack).
enum class verdict { pass, drop, drop_named, refuse };

verdict judge_local_message(caf::binary_deserializer& payload, const header& hdr,
                            const caf::node_id& here, std::string& why) {
  // CAF's named actors (its spawn and config servers) serve no peer of this program, and the
  // config server keeps whatever a (put_atom, key, message) gives it, for good: a peer with no
  // token and no hello grew the core's memory by up to a message's size limit a message until
  // the core was killed. Dropped, not closed: every CAF peer asks the spawn server for its
  // "info" once it has connected (for remote spawns, which this program never makes).
  if (hdr.has(header::named_receiver_flag)) return verdict::drop_named;
  if (hdr.source_actor == caf::invalid_actor_id &&
      caf::make_message_id(hdr.operation_data).is_response() &&
      gflex::is_guarded(here, hdr.dest_actor))
    return verdict::drop;
  size_t stages = 0;
  if (payload.begin_sequence(stages)) return verdict::pass;  // CAF reports it malformed
  if (stages != 0) {
    why = "a message with a forwarding stack";
    return verdict::refuse;
  }
  uint16_t zero = 1;
  std::string types;
  if (payload.begin_object(zero, types) || zero != 0 || types != gflex::link_message_types)
    return verdict::pass;
  uint64_t atom = 0;
  if (payload(atom)) return verdict::pass;
  if (atom == caf::link_atom::uint_value() || atom == caf::unlink_atom::uint_value()) {
    why = "a link message";
    return verdict::refuse;
  }
  return verdict::pass;
}

// Counts a dropped message to the named actor `name`, and logs it (at most 20 lines in 10 s:
// a peer sends as many as it likes). CAF's own question to the spawn server, which each peer
// asks once, is no warning.
void note_named_drop(caf::atom_value name) {
  gflex::named_dropped.fetch_add(1);
  if (name == caf::atom("SpawnServ")) {
    spdlog::debug("dropped a peer's message to CAF's spawn server");
    return;
  }
  static gflex::locked_log_throttle throttle{20, std::chrono::seconds(10)};
  uint64_t held_back = 0;
  if (!throttle.allow(held_back)) return;
  if (held_back > 0) spdlog::warn("{} more messages to named actors dropped unlogged", held_back);
  spdlog::warn("dropped a peer's message to the named actor {}", caf::to_string(name));
}

// Counts a connection closed for `why`, and logs it (at most 20 lines in 10 s, as above): any
// holder of a core's bundle may connect and send a bad frame in a loop, and each wrote a line.
void note_refusal(const std::string& why) {
  gflex::refused.fetch_add(1);
  static gflex::locked_log_throttle throttle{20, std::chrono::seconds(10)};
  uint64_t held_back = 0;
  if (!throttle.allow(held_back)) return;
  if (held_back > 0)
    spdlog::warn("{} more connections closed for what their peers sent unlogged", held_back);
  spdlog::warn("closed a connection whose peer sent {}", why);
}

}  // namespace

// The executable's definition comes first in symbol lookup, so the broker's calls (through
// the PLT) land here. What the file comment names closes its connection (as a malformed
// message does, by BASP's own path) or is dropped; everything else goes on to CAF's
// definition unchanged.
caf::io::basp::connection_state caf::io::basp::instance::handle(execution_unit* ctx,
                                                                new_data_msg& dm, header& hdr,
                                                                bool is_payload) {
  using fn = connection_state (*)(instance*, execution_unit*, new_data_msg&, header&, bool);
  static fn real = reinterpret_cast<fn>(dlsym(RTLD_NEXT, gflex::handle_symbol));
  if (!is_payload || dm.buf.size() != hdr.payload_len) return real(this, ctx, dm, hdr, is_payload);
  {
    std::lock_guard<std::mutex> lock(gflex::instances_mutex);
    gflex::instances[&proxies()] = this;
  }
  binary_deserializer payload{ctx, dm.buf};
  std::string why;
  verdict v = verdict::pass;
  const bool star = gflex::third_parties_refused.load();
  // A message before the peer's handshake: BASP would take it from node `none`, whose
  // senders are null (a peer's error so sent passed for CAF's own bounce).
  const bool shaken = static_cast<bool>(tbl().lookup_direct(dm.handle));
  switch (hdr.operation) {
    case message_type::client_handshake: {
      node_id source_node;
      if (!payload(source_node) && source_node == this_node()) {
        why = "a handshake naming this process as the peer";
        v = verdict::refuse;
      }
      break;
    }
    case message_type::routed_message: {
      node_id source_node, dest_node;
      if (!shaken) {
        why = "a message before its handshake";
        v = verdict::refuse;
        break;
      }
      if (payload(source_node, dest_node)) break;
      if (source_node == none) {  // CAF names the sender's node, or its own
        why = "a routed message from no node";
        v = verdict::refuse;
      } else if (source_node == this_node()) {
        why = "a message as this process's own actor " + std::to_string(hdr.source_actor);
        v = verdict::refuse;
      } else if (star &&
                 (source_node != tbl().lookup_direct(dm.handle) || dest_node != this_node())) {
        why = "a message routed from or to another node";
        v = verdict::refuse;
      } else if (dest_node == this_node()) {
        v = judge_local_message(payload, hdr, this_node(), why);
      }
      break;
    }
    case message_type::direct_message:
      if (!shaken) {
        why = "a message before its handshake";
        v = verdict::refuse;
      } else {
        v = judge_local_message(payload, hdr, this_node(), why);
      }
      break;
    case message_type::monitor_message:
    case message_type::down_message: {
      node_id source_node, dest_node;
      if (!shaken) {
        why = "a monitor or down message before its handshake";
        v = verdict::refuse;
      } else if (star && !payload(source_node, dest_node) &&
                 (source_node != tbl().lookup_direct(dm.handle) || dest_node != this_node())) {
        why = "a monitor or down message from or to another node";
        v = verdict::refuse;
      }
      break;
    }
    default:
      break;
  }
  if (v == verdict::drop) {
    gflex::dropped.fetch_add(1);
    return connection_state::await_header;
  }
  if (v == verdict::drop_named) {
    note_named_drop(static_cast<atom_value>(hdr.dest_actor));
    return connection_state::await_header;
  }
  if (v == verdict::refuse) {
    note_refusal(why);
    return connection_state::malformed_basp_message;
  }
  return real(this, ctx, dm, hdr, is_payload);
}

// A handle on a node this process has no connection to reads as none in a process that
// refuses third parties (refuse_third_party_nodes); one of a node past max_proxies_per_node
// reads as that node's stand-in actor (overflow_actor_id), still the node's; everything else
// goes on to CAF's definition, which makes the proxy (and, for a node it did not know, a
// route and a helper actor that nothing ever removes).
caf::strong_actor_ptr caf::proxy_registry::get_or_put(const node_id& nid, actor_id aid) {
  using fn = strong_actor_ptr (*)(proxy_registry*, const node_id&, actor_id);
  static fn real = reinterpret_cast<fn>(dlsym(RTLD_NEXT, gflex::get_or_put_symbol));
  // CAF's would make no proxy for node none either, but keep an empty entry for each id for
  // good: a message of made-up handles on no node grew the registry without bound.
  if (nid == none) return nullptr;
  if (gflex::third_parties_refused.load()) {
    caf::io::basp::instance* basp = nullptr;
    {
      std::lock_guard<std::mutex> lock(gflex::instances_mutex);
      auto it = gflex::instances.find(this);
      if (it != gflex::instances.end()) basp = it->second;
    }
    if (basp == nullptr || !basp->tbl().lookup_direct(nid)) return nullptr;
  }
  if (aid != gflex::overflow_actor_id && count_proxies(nid) >= gflex::max_proxies_per_node &&
      !get(nid, aid)) {
    gflex::proxies_over_bound.fetch_add(1);
    return real(this, nid, gflex::overflow_actor_id);
  }
  return real(this, nid, aid);
}
