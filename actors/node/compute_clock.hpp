#pragma once
/// @file
/// The compute time a node's workers have given (`--max-hours`): every assignment's, from its
/// start to its end whatever the end (done, failed, taken back by its job, diverged), and the
/// running ones' so far. Only finished, successful work was counted: a node whose work was
/// all taken back (slow, or outrun by backups) computed for ever, and one long assignment
/// begun under the limit ran past it unseen. Shared by the workers (each on its own thread)
/// and the node supervisor, which makes the node leave once it is spent. Counted per run of
/// the node: a node started again counts afresh.

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>

namespace gflex {

class compute_clock {
 public:
  using clock_type = std::chrono::steady_clock;

  /// Assignment `id` starts now.
  void start(uint64_t id, clock_type::time_point now = clock_type::now());
  /// Assignment `id` ended, however: its time is counted for good.
  void stop(uint64_t id, clock_type::time_point now = clock_type::now());
  /// Seconds given: the ended assignments' and the running ones' until `now`.
  double seconds(clock_type::time_point now = clock_type::now()) const;

 private:
  mutable std::mutex mutex_;
  double ended_s_ = 0.0;
  std::multimap<uint64_t, clock_type::time_point> running_;
};

}  // namespace gflex
