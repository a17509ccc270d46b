#pragma once
/// @file
/// Assignments a node no longer wants computed, shared by its uplink and its workers. A
/// worker runs an assignment in one handler on its own thread, so a message cannot reach it
/// mid-computation; it looks here between steps instead. The uplink cancels what its job
/// aborts and, when the core ends the node's session, everything still running: the core
/// has already given that work to another node, and a worker that went on computing it
/// would hold the model's memory while the next session's work arrives.

#include <cstdint>
#include <mutex>
#include <set>

namespace gflex {

class cancellations {
 public:
  /// Marks `id` cancelled (at most `max_entries` are remembered; past that, one is dropped).
  void cancel(uint64_t id);
  /// Whether `id` is cancelled.
  bool cancelled(uint64_t id) const;
  /// Forgets `id` (its assignment has ended).
  void forget(uint64_t id);

  static constexpr size_t max_entries = 4096;

 private:
  mutable std::mutex mutex_;
  std::set<uint64_t> ids_;
};

}  // namespace gflex
