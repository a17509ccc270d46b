#pragma once
/// @file
/// Assignments a node no longer wants computed, shared by its uplink and its workers. A
/// worker runs an assignment in one handler on its own thread, so a message cannot reach it
/// mid-computation; it looks here between steps instead. The uplink cancels what its job
/// aborts and, when the core ends the node's session, everything still running: the core
/// has already given that work to another node, and a worker that went on computing it
/// would hold the model's memory while the next session's work arrives.

#include <cstdint>
#include <deque>
#include <map>
#include <mutex>

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

  static constexpr size_t max_entries = 4096;

 private:
  mutable std::mutex mutex_;
  std::map<uint64_t, uint64_t> ids_;  ///< Cancelled ids, each with the count it was cancelled at.
  /// The ids with their counts in the order they were cancelled (forgotten ones too): an entry
  /// whose count is not its id's in ids_ is one forgotten (or cancelled again) since.
  std::deque<std::pair<uint64_t, uint64_t>> order_;
  uint64_t count_ = 0;
};

}  // namespace gflex
