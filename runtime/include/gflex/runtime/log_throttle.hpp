#pragma once
/// @file
/// A bound on the lines one log site writes, for a site a peer can make log at will (a
/// refused join, an oversized message): at most `burst` lines in each `period`, the rest
/// counted and said in one line later. A peer with no token sending 5,000 hellos a second
/// wrote about 1 MB of log a second, unrotated on many hosts, until the disk was full. The
/// metrics count every event; the log keeps a sample of them.

#include <chrono>
#include <cstdint>

namespace gflex {

class log_throttle {
 public:
  using clock = std::chrono::steady_clock;

  log_throttle(uint64_t burst, clock::duration period) : burst_(burst), period_(period) {}

  /// Whether a line may be written at `now`; if not, it is counted. Where lines of an earlier
  /// period were held back, `held_back` is their count (taken: said once), else 0.
  bool allow(clock::time_point now, uint64_t& held_back) {
    held_back = 0;
    if (now - started_ >= period_) {
      started_ = now;
      written_ = 0;
    }
    if (written_ >= burst_) {
      ++held_;
      return false;
    }
    ++written_;
    held_back = held_;
    held_ = 0;
    return true;
  }

 private:
  uint64_t burst_;
  clock::duration period_;
  clock::time_point started_{};
  uint64_t written_ = 0;
  uint64_t held_ = 0;
};

}  // namespace gflex
