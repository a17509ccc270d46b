#pragma once
/// @file
/// A bound on the lines one log site writes, for a site a peer can make log at will (a
/// refused join, an oversized message): at most `burst` lines in each `period`, the rest
/// counted and said in one line later. A peer with no token sending 5,000 hellos a second
/// wrote about 1 MB of log a second, unrotated on many hosts, until the disk was full. The
/// metrics count every event; the log keeps a sample of them.

#include <chrono>
#include <cstdint>
#include <mutex>

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

/// A log_throttle for a site any thread reaches (code every broker or scheduler thread runs,
/// with the throttle a function-local static): allow() under a lock, at the time it is called.
class locked_log_throttle {
 public:
  locked_log_throttle(uint64_t burst, log_throttle::clock::duration period)
      : throttle_(burst, period) {}

  /// As log_throttle::allow, now.
  bool allow(uint64_t& held_back) {
    std::lock_guard lock(mutex_);
    return throttle_.allow(log_throttle::clock::now(), held_back);
  }

 private:
  std::mutex mutex_;
  log_throttle throttle_;
};

}  // namespace gflex
