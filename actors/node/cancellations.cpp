#include "cancellations.hpp"

namespace gflex {

void cancellations::cancel(uint64_t id) {
  std::lock_guard lock(mutex_);
  cancel_locked(id);
}

void cancellations::cancel_locked(uint64_t id) {
  if (ids_.count(id) != 0) return;
  ids_[id] = ++count_;
  order_.emplace_back(id, count_);
  // The oldest go first (ids are random: the smallest one was any of them, a live one too).
  // `order_` may name ids forgotten since: they are skipped, and it is trimmed to twice the
  // bound so that forgetting never lets it grow.
  while (ids_.size() > max_entries || order_.size() > 2 * max_entries) {
    const auto [old, at] = order_.front();
    order_.pop_front();
    if (auto it = ids_.find(old); it != ids_.end() && it->second == at) ids_.erase(it);
  }
}

bool cancellations::cancelled(uint64_t id) const {
  std::lock_guard lock(mutex_);
  return ids_.count(id) > 0;
}

void cancellations::forget(uint64_t id) {
  std::lock_guard lock(mutex_);
  ids_.erase(id);
}

void cancellations::hold(uint64_t id) {
  std::lock_guard lock(mutex_);
  held_.insert(id);
}

void cancellations::release(uint64_t id) {
  std::lock_guard lock(mutex_);
  if (auto it = held_.find(id); it != held_.end()) held_.erase(it);
}

void cancellations::cancel_held() {
  std::lock_guard lock(mutex_);
  for (uint64_t id : held_) cancel_locked(id);
}

}  // namespace gflex
