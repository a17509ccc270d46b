#pragma once
/// @file
/// The front door of a core that follows, in a core of several servers (docs/FAILURES.md):
/// published on the core's address while another core leads, it answers reads from the
/// replicated state and sends everything else to the leader.
///
/// Protocol (the same messages as the leader's front door, core_supervisor.hpp):
/// - (auth_atom, api_key, link) -> client_welcome: a client's session, as on the leader; the
///   key is checked by a gatekeeper over the replicated store.
/// - Through the session: status and jobs (the caller's jobs, or every job for the operator)
///   answered from the jobs' records as of their last committed round; nodes (the operator)
///   answered from the node records: every node identity known, its tier, reputation and
///   earnings (which nodes are connected only the leader knows: `last_seen_s` is -1).
/// - Anything else, a node's hello included: errc::not_leader, whose message ends with the
///   leader's address ("... is at HOST:PORT"); a client sends the request there
///   (gflex::client does so by itself, and goes on to its other cores when that leader
///   cannot be reached) and a node tries its next core. With no leader at the moment:
///   errc::unavailable.
/// - A read of the replicated state that fails (this core cut off from etcd while clients
///   still reach it), a key's check included: errc::not_leader naming the leader it last
///   knew, as above, or with none errc::unavailable ("... follows and no core leads as far as
///   it knows ...; try another core"), never the store's own error, which a client took as
///   final. A key the gatekeeper refuses stays refused (errc::permission_denied).
/// Like the leader's door it is guarded (boundary.hpp): a peer's exit messages and forged
/// system messages are dropped.

#include <caf/fwd.hpp>

#include <memory>
#include <mutex>
#include <string>

namespace gflex {

/// The leader as a follower last heard of it ("ID ADDRESS"; empty: none leads), written by
/// the campaign's thread and read by the door.
class leader_record {
 public:
  void set(std::string record) {
    std::lock_guard lock(mutex_);
    record_ = std::move(record);
  }
  std::string get() const {
    std::lock_guard lock(mutex_);
    return record_;
  }

 private:
  mutable std::mutex mutex_;
  std::string record_;
};

/// Spawns the door of the follower `core_id`, reading through `store` (a store actor over the
/// replicated store) and checking keys with `gate` (a gatekeeper over it).
caf::actor spawn_follower_door(caf::actor_system& sys, std::string core_id, caf::actor store,
                               caf::actor gate, std::shared_ptr<const leader_record> leader);

}  // namespace gflex
