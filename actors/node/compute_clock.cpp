#include "compute_clock.hpp"

namespace gflex {

void compute_clock::start(uint64_t id, clock_type::time_point now) {
  std::lock_guard<std::mutex> lock(mutex_);
  running_.emplace(id, now);
}

void compute_clock::stop(uint64_t id, clock_type::time_point now) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = running_.find(id);
  if (it == running_.end()) return;
  ended_s_ += std::chrono::duration<double>(now - it->second).count();
  running_.erase(it);
}

double compute_clock::seconds(clock_type::time_point now) const {
  std::lock_guard<std::mutex> lock(mutex_);
  double s = ended_s_;
  for (const auto& [id, since] : running_) s += std::chrono::duration<double>(now - since).count();
  return s;
}

}  // namespace gflex
