#pragma once
/// @file
/// Assignments a node no longer wants computed, shared by its uplink and its workers. A
/// worker runs an assignment in one handler on its own thread, so a message cannot reach it
/// mid-computation; it looks here between steps instead. The uplink cancels what its job
/// aborts and, when the core ends the node's session, everything still running: the core
/// has already given that work to another node, and a worker that went on computing it
/// would hold the model's memory while the next session's work arrives. It also knows which
/// assignments the workers hold (accepted and not yet answered, a shard still coming
/// included), so that the node supervisor can cancel them all when it restarts the uplink
/// that handed them out.

#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <set>

namespace gflex {

class cancellations {
 public:
  /// Marks `id` cancelled (at most `max_entries` are remembered; past that, the longest
  /// remembered goes: an abort that came after its assignment ended is never forgotten by
  /// its worker, and such stale ones are the oldest).
  void cancel(uint64_t id);
  /// Whether `id` is cancelled.
  bool cancelled(uint64_t id) const;
  /// Forgets `id` (its assignment has ended).
  void forget(uint64_t id);
  /// A worker accepted assignment `id`: held until `release(id)` (once per hold: one id may
  /// be held twice, a re-computation of one's own work beside it).
  void hold(uint64_t id);
  /// The worker that held `id` answered it, or stopped.
  void release(uint64_t id);
  /// Cancels every assignment the workers hold: the uplink that handed them out is gone, and
  /// the core has given its session's work to other nodes. Those computing stop at their next
  /// step, those still waiting for their shard before their first.
  void cancel_held();

  static constexpr size_t max_entries = 4096;

 private:
  mutable std::mutex mutex_;
  std::map<uint64_t, uint64_t> ids_;  ///< Cancelled ids, each with the count it was cancelled at.
  /// The ids with their counts in the order they were cancelled (forgotten ones too): an entry
  /// whose count is not its id's in ids_ is one forgotten (or cancelled again) since.
  std::deque<std::pair<uint64_t, uint64_t>> order_;
  uint64_t count_ = 0;
  std::multiset<uint64_t> held_;  ///< Held by workers, each once per hold.

  void cancel_locked(uint64_t id);  ///< cancel() with mutex_ held.
};

}  // namespace gflex
