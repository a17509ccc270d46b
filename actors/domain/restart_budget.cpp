#include "restart_budget.hpp"

namespace gflex {

bool restart_budget::allow(clock::time_point now, int64_t round) {
  while (!recent_.empty() && now - recent_.front() > window) recent_.pop_front();
  if (round != stalled_round_) {
    stalled_round_ = round;
    stalled_ = 0;
  }
  if (static_cast<int>(recent_.size()) >= in_window) {
    why_not_ = "stopped " + std::to_string(in_window + 1) + " times within " +
               std::to_string(window.count()) + " s";
    return false;
  }
  if (stalled_ >= without_progress) {
    why_not_ = "stopped " + std::to_string(without_progress + 1) + " times at round " +
               std::to_string(round) + " with no round committed between";
    return false;
  }
  recent_.push_back(now);
  ++stalled_;
  return true;
}

}  // namespace gflex
