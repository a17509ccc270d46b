#pragma once
/// @file
/// How busy the machine is with other work: what `gflex-node --idle-only` looks at before
/// taking an assignment. Linux only (/proc).

#include <cstdint>
#include <optional>

namespace gflex {

/// Samples /proc/stat (all CPUs) and /proc/self/stat (this process) and reports the share of
/// the machine's CPU time that other processes used between two samples.
class cpu_monitor {
 public:
  cpu_monitor();

  /// The fraction in [0, 1] of all CPUs' time, since the previous call (or construction),
  /// spent by processes other than this one; nullopt when /proc cannot be read.
  std::optional<double> others_busy();

 private:
  struct sample {
    uint64_t busy = 0;   // machine, clock ticks
    uint64_t total = 0;  // machine, clock ticks
    uint64_t self = 0;   // this process, clock ticks
    bool ok = false;
  };
  static sample take();
  sample last_;
};

}  // namespace gflex
