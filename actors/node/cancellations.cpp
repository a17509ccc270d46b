#include "cancellations.hpp"

namespace gflex {

void cancellations::cancel(uint64_t id) {
  std::lock_guard lock(mutex_);
  if (ids_.size() >= max_entries) ids_.erase(ids_.begin());
  ids_.insert(id);
}

bool cancellations::cancelled(uint64_t id) const {
  std::lock_guard lock(mutex_);
  return ids_.count(id) > 0;
}

void cancellations::forget(uint64_t id) {
  std::lock_guard lock(mutex_);
  ids_.erase(id);
}

}  // namespace gflex
