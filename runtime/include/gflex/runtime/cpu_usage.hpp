#pragma once
/// @file
/// How busy the machine is with other work: what `gflex-node --idle-only` looks at before
/// taking an assignment. Linux only (/proc).

#include <chrono>
#include <cstdint>
#include <optional>

namespace gflex {

/// Samples /proc/stat (all CPUs) and /proc/self/stat (this process) and reports the share of
/// the machine's CPU time that other processes used between two samples.
class cpu_monitor {
 public:
  cpu_monitor();

  /// The fraction in [0, 1] of all CPUs' time spent by processes other than this one, since
  /// the previous call (or construction) when that was at most `max_age` ago; else over a
  /// fresh window of `probe` (waited for here). A window shorter than `min_window` is waited
  /// out to that length first. nullopt when /proc cannot be read. Averaged since a call hours
  /// ago, a node idle overnight took work while its owner's build kept every CPU busy; over a
  /// window of a few milliseconds (assignments back to back) /proc/stat had moved by no clock
  /// tick, nothing was known, and the work was taken however busy the machine.
  std::optional<double> others_busy(
      std::chrono::steady_clock::duration max_age = std::chrono::seconds(5),
      std::chrono::steady_clock::duration probe = std::chrono::milliseconds(500),
      std::chrono::steady_clock::duration min_window = std::chrono::milliseconds(100));

 private:
  struct sample {
    uint64_t busy = 0;   // machine, clock ticks
    uint64_t total = 0;  // machine, clock ticks
    uint64_t self = 0;   // this process, clock ticks
    bool ok = false;
  };
  static sample take();
  sample last_;
  std::chrono::steady_clock::time_point last_at_;
};

}  // namespace gflex
