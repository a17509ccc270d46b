#pragma once
/// @file
/// When the job supervisor stops restarting a job whose actor keeps stopping. Counted only
/// within a minute, a job that threw at the same round every 25 s (a round that takes its
/// nodes longer than that to compute) was restarted for ever: each time its nodes computed
/// the round again, unpaid, while its status said running.

#include <chrono>
#include <cstdint>
#include <deque>
#include <string>

namespace gflex {

class restart_budget {
 public:
  using clock = std::chrono::steady_clock;
  /// Restarts allowed within `window`, and in a row with no round committed between them,
  /// however far apart.
  static constexpr int in_window = 3;
  static constexpr std::chrono::seconds window{60};
  static constexpr int without_progress = 5;

  /// Notes a stop at `now` of a job whose last committed round is `round`: true when it may
  /// be restarted once more, false when it is to be failed (why_not() says why).
  bool allow(clock::time_point now, int64_t round);
  /// Why the last allow() said no, in words for the job's status.
  std::string why_not() const { return why_not_; }

 private:
  std::deque<clock::time_point> recent_;
  int64_t stalled_round_ = -1;
  int stalled_ = 0;  // restarts since a round was last committed
  std::string why_not_;
};

}  // namespace gflex
