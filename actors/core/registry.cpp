#include "registry.hpp"

#include <spdlog/spdlog.h>

#include <chrono>
#include <map>
#include <set>

#include "core_metrics.hpp"
#include "gflex/runtime/identity.hpp"
#include "messages.hpp"
#include "node_session.hpp"
#include "reputation.hpp"

namespace gflex {

namespace {

using clock_type = std::chrono::steady_clock;

struct node_entry {
  std::string name;
  std::string device;
  std::vector<gpu_status> gpus;
  node_session_internal session;
  std::vector<caf::actor> workers;  // the session's worker handles, one per compute slot
  std::string address;              // where it connected from
  uint64_t dropped = 0;             // messages its session refused, as of its last heartbeat
  clock_type::time_point last_seen;
  uint8_t tier = 0;
  int64_t price = 0;
  double throughput = 0.0;
  std::vector<uint8_t> public_key;
  std::string token_id;  // the join token it was admitted with this time (its record's id)
};

struct registry_state {
  std::chrono::steady_clock::time_point mailbox_noted{};  // core_metrics::note_mailbox
  std::map<std::string, node_entry> nodes;
  std::map<caf::actor_addr, std::string> by_session;   // a session's node id
  std::map<std::vector<uint8_t>, std::string> by_key;  // a joined node's id by its public key
  uint64_t next_id = 1;
  caf::actor market;
  caf::actor data_server;
  caf::actor reputation;                   // told by the core supervisor (update_atom "reputation")
  std::map<std::string, int> per_address;  // live sessions per address
  /// Join tokens revoked since this registry started: a node admitted with one just before
  /// its revocation, whose hello reaches the registry after it, is refused, not joined.
  std::set<std::string> revoked_tokens;
  static inline const char* name = "registry";

  // A registry that stops (and is restarted: its nodes join the new one) takes its nodes off
  // the count: they were counted again as they joined again.
  ~registry_state() {
    for (const auto& [id, n] : nodes)
      core_metrics::nodes(n.tier == static_cast<uint8_t>(node_tier::core)).dec();
  }
};

caf::behavior registry_actor(caf::stateful_actor<registry_state>* self, caf::actor market,
                             caf::actor data_server, registry_config config) {
  self->state.market = std::move(market);
  self->state.data_server = std::move(data_server);
  // Node ids carry the registry's incarnation, so that a restarted registry never reuses an
  // id the market may still hold.
  std::string prefix = "n";
  if (config.incarnation != 0) {
    prefix += std::to_string(config.incarnation);
    prefix += '-';
  }
  auto remove_node = [=](const std::string& node_id, const std::string& why) {
    auto& nodes = self->state.nodes;
    auto it = nodes.find(node_id);
    if (it == nodes.end()) return;
    // A node that said bye is no cause for alarm; one that vanished may be.
    spdlog::log(why == std::string_view("left") ? spdlog::level::info : spdlog::level::warn,
                "node {} ({}) {}: its work goes back to the market", node_id, it->second.name, why);
    self->demonitor(it->second.session.address());
    self->state.by_session.erase(it->second.session.address());
    if (auto k = self->state.by_key.find(it->second.public_key);
        k != self->state.by_key.end() && k->second == node_id)
      self->state.by_key.erase(k);
    // Its session ends (the node's uplink sees that and joins again when it can).
    self->send_exit(it->second.session, caf::exit_reason::user_shutdown);
    core_metrics::nodes(it->second.tier == static_cast<uint8_t>(node_tier::core)).dec();
    if (--self->state.per_address[it->second.address] <= 0)
      self->state.per_address.erase(it->second.address);
    nodes.erase(it);
    self->send(self->state.market, withdraw_atom::value, node_id);
  };
  // Nodes' actors answer what they do not understand with an error message; that must not
  // stop the registry (CAF's default error handler would).
  self->set_error_handler([](caf::error&) {});
  // Found through an index: a thousand nodes lost at once are a thousand down messages.
  self->set_down_handler([=](const caf::down_msg& down) {
    auto it = self->state.by_session.find(down.source);
    if (it != self->state.by_session.end())
      remove_node(std::string(it->second), down.reason ? "is unreachable" : "left");
  });
  self->delayed_send(self, std::chrono::milliseconds(config.lease_ms / 4 + 1), tick_atom::value);
  return {
      [=](hello_atom, node_hello& hello, std::string& address,
          std::string& token_id) -> caf::result<node_welcome> {
        auto& st = self->state;
        if (!token_id.empty() && st.revoked_tokens.count(token_id) != 0)
          return to_caf(error(errc::permission_denied, "join token " + token_id + " was revoked"));
        // Nodes in the core's own process (embedded) are the operator's: not bounded.
        if (address != "local" &&
            st.per_address[address] >= static_cast<int>(config.max_per_address)) {
          if (st.per_address[address] == 0) st.per_address.erase(address);
          return to_caf(error(errc::limit_exceeded,
                              "too many nodes connected from " + address + " (at most " +
                                  std::to_string(config.max_per_address) + ", --max-per-address)"));
        }
        // One session per node key: the key is the node (its reputation, its earnings, its
        // token's binding), and a key joined many times over held as many sessions, workers
        // and market slots. A second process on the same key is most often a second node
        // started in the same data directory; it is refused (and retries, so that a node
        // restarted before its old session's lease ran out gets in once it has).
        if (!hello.public_key.empty()) {
          if (auto k = st.by_key.find(hello.public_key); k != st.by_key.end()) {
            const auto& held = st.nodes.at(k->second);
            return to_caf(error(errc::limit_exceeded,
                                "node key " + key_hex(hello.public_key).substr(0, 16) +
                                    " is already joined as " + k->second + " (" + held.name +
                                    ") from " + held.address +
                                    "; each node needs its own --data-dir, which holds its key"));
          }
        }
        std::string id = prefix + std::to_string(st.next_id++);
        session_identity who{id, hello.name, key_hex(hello.public_key), hello.tier, hello.workers};
        auto spawned = spawn_node_session(self->system(), who, config.limits, hello.uplink,
                                          caf::actor_cast<caf::actor>(self), st.data_server);
        self->monitor(spawned.session);
        st.by_session[spawned.session.address()] = id;
        st.per_address[address] += 1;
        node_entry entry;
        entry.name = hello.name;
        entry.device = hello.device;
        entry.gpus = hello.gpus;
        entry.session = spawned.session;
        entry.workers = spawned.workers;
        entry.address = address;
        entry.last_seen = clock_type::now();
        entry.tier = hello.tier;
        entry.price = hello.price;
        entry.throughput = hello.throughput;
        entry.public_key = hello.public_key;
        entry.token_id = std::move(token_id);
        st.nodes[id] = std::move(entry);
        if (!hello.public_key.empty()) st.by_key[hello.public_key] = id;
        std::vector<worker_slot> slots;
        for (auto& w : spawned.workers)
          slots.push_back(
              {w, id, hello.name, hello.tier, hello.price, hello.throughput, hello.public_key});
        self->send(st.market, offer_atom::value, id, std::move(slots));
        const bool core_tier = hello.tier == static_cast<uint8_t>(node_tier::core);
        core_metrics::joins(core_tier).inc();
        core_metrics::nodes(core_tier).inc();
        spdlog::info(
            "node {} joined as {} from {} with {} worker(s) on {}, asking {} credits per "
            "device-hour for {:.0f} samples/s",
            hello.name, id, address, hello.workers, hello.device,
            static_cast<double>(hello.price) / 1e6, hello.throughput);
        return node_welcome{protocol_version, id, config.heartbeat_ms,
                            caf::actor_cast<node_session_actor>(spawned.session),
                            config.limits.payload_chunk_bytes};
      },
      // From a session: the node it speaks for is alive.
      [=](beat_atom, const std::string& node_id, uint64_t dropped) {
        core_metrics::note_mailbox(self, "registry");
        core_metrics::heartbeats().inc();
        auto it = self->state.nodes.find(node_id);
        if (it == self->state.nodes.end()) return;
        it->second.last_seen = clock_type::now();
        it->second.dropped = dropped;
      },
      // From a session: what its node has earned, from the reputation tracker's record.
      [=](earned_atom, const std::string& name) -> caf::result<int64_t> {
        if (!self->state.reputation) return int64_t{0};
        auto rp = self->make_response_promise<int64_t>();
        self->request(self->state.reputation, std::chrono::seconds(10), earned_atom::value, name)
            .then([=](int64_t micro) mutable { rp.deliver(micro); },
                  [=](caf::error& e) mutable { rp.deliver(std::move(e)); });
        return rp;
      },
      [=](tick_atom) {
        auto now = clock_type::now();
        std::vector<std::pair<std::string, int64_t>> expired;  // with its silence, ms
        for (const auto& [id, node] : self->state.nodes) {
          const auto silent =
              std::chrono::duration_cast<std::chrono::milliseconds>(now - node.last_seen);
          if (silent > std::chrono::milliseconds(config.lease_ms))
            expired.emplace_back(id, silent.count());
        }
        for (const auto& [id, silent_ms] : expired)
          remove_node(id, "missed its heartbeats (silent for " + std::to_string(silent_ms) +
                              " ms, lease " + std::to_string(config.lease_ms) + " ms)");
        self->delayed_send(self, std::chrono::milliseconds(config.lease_ms / 4 + 1),
                           tick_atom::value);
      },
      // A sibling was restarted by the core supervisor: use the new one. A new market gets
      // every known node's workers again; nodes get a new data server for their caches.
      [=](update_atom, const std::string& role, caf::actor& replacement) {
        auto& st = self->state;
        if (role == "market") {
          st.market = replacement;
          for (const auto& [id, node] : st.nodes) {
            std::vector<worker_slot> slots;
            for (const auto& w : node.workers)
              slots.push_back(
                  {w, id, node.name, node.tier, node.price, node.throughput, node.public_key});
            self->send(st.market, offer_atom::value, id, std::move(slots));
          }
        } else if (role == "reputation") {
          st.reputation = replacement;
        } else if (role == "data_server") {
          st.data_server = replacement;
          for (const auto& [id, node] : st.nodes)
            self->send(node.session, serve_atom::value, st.data_server);
        }
      },
      // From a session: a measured rate, for the market's prices.
      [=](rate_atom, const std::string& name, const std::string& workload, double rate) {
        self->send(self->state.market, rate_atom::value, name, workload, rate);
      },
      // From the core supervisor: join token `token_id` was revoked. The nodes admitted with
      // it are shut out now, not at their next join, which may be days away: their sessions
      // end, and their rejoins with it are refused. A node whose key the token also admitted
      // once, but that joined with another token this time (tokens rotated after a leak),
      // stays. Answers how many were taken out.
      [=](revoke_atom, const std::string& token_id) -> int64_t {
        self->state.revoked_tokens.insert(token_id);
        std::vector<std::string> ids;
        for (const auto& [id, node] : self->state.nodes)
          if (node.token_id == token_id) ids.push_back(id);
        for (const auto& id : ids)
          remove_node(id, "was admitted with join token " + token_id + ", which is revoked");
        return static_cast<int64_t>(ids.size());
      },
      [=](nodes_atom) -> std::vector<node_status> {
        std::vector<node_status> out;
        auto now = clock_type::now();
        for (const auto& [id, node] : self->state.nodes) {
          node_status s;
          s.node_id = id;
          s.name = node.name;
          s.device = node.device;
          s.gpus = node.gpus;
          s.workers = static_cast<uint32_t>(node.workers.size());
          s.last_seen_s = std::chrono::duration<double>(now - node.last_seen).count();
          s.tier = node.tier == static_cast<uint8_t>(node_tier::core) ? node_tier::core
                                                                      : node_tier::community;
          s.dropped = node.dropped;
          out.push_back(std::move(s));
        }
        return out;
      },
  };
}

}  // namespace

caf::actor spawn_registry(caf::actor_system& sys, caf::actor market, caf::actor data_server,
                          registry_config config) {
  return sys.spawn(registry_actor, std::move(market), std::move(data_server), config);
}

}  // namespace gflex
