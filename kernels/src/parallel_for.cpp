#include "parallel_for.hpp"

#include <algorithm>
#include <mutex>
#include <utility>

#if defined(__x86_64__)
#include <immintrin.h>
#define GFLEX_PAUSE() _mm_pause()
#else
#define GFLEX_PAUSE() ((void)0)
#endif

namespace gflex::kernels {

namespace {
// About 50 microseconds of polling before a worker sleeps.
constexpr int spin_iterations = 0;
}  // namespace

parallel_for::parallel_for(int threads) {
  // A thread that cannot be made (EAGAIN: a container's pid limit) throws; the ones made
  // before it are stopped and joined first, or destroying them joinable ended the process.
  try {
    for (int i = 1; i < std::max(threads, 1); ++i)
      workers_.emplace_back([this, i] { worker_loop(i); });
  } catch (...) {
    stop_workers();
    throw;
  }
}

parallel_for::~parallel_for() {
  stop_workers();
}

void parallel_for::stop_workers() {
  stop_.store(true, std::memory_order_release);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  generation_.notify_all();
  for (auto& w : workers_) w.join();
  workers_.clear();
}

std::pair<int64_t, int64_t> parallel_for::chunk(int index) const {
  int64_t units = (n_ + align_ - 1) / align_;
  int64_t per = (units + threads() - 1) / threads();
  int64_t begin = std::min(n_, index * per * align_);
  int64_t end = std::min(n_, (index + 1) * per * align_);
  return {begin, end};
}

void parallel_for::run(int64_t n, int64_t align, int64_t serial_below,
                       const std::function<void(int64_t, int64_t)>& body) {
  if (workers_.empty() || n < serial_below) {
    if (n > 0) body(0, n);
    return;
  }
  body_ = &body;
  n_ = n;
  align_ = std::max<int64_t>(align, 1);
  // Cleared before the workers start: cleared after, a worker's exception set meanwhile was lost.
  failure_ = nullptr;
  pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  generation_.notify_all();
  auto [begin, end] = chunk(0);
  // A body may throw (std::bad_alloc where host memory is short): the caller's chunk's
  // exception waits for the other threads, which still run the body, and any thread's is
  // thrown here. Thrown on a worker thread, it ended the process (std::terminate); thrown
  // past the wait, the others ran on in a body that was gone.
  std::exception_ptr own;
  try {
    if (begin < end) body(begin, end);
  } catch (...) {
    own = std::current_exception();
  }
  for (int i = 0; i < spin_iterations && pending_.load(std::memory_order_acquire) != 0; ++i)
    GFLEX_PAUSE();
  for (int left; (left = pending_.load(std::memory_order_acquire)) != 0;)
    pending_.wait(left, std::memory_order_acquire);
  if (own) std::rethrow_exception(own);
  if (failure_) std::rethrow_exception(std::exchange(failure_, nullptr));
}

void parallel_for::worker_loop(int index) {
  uint64_t seen = 0;
  for (;;) {
    for (int i = 0; i < spin_iterations && generation_.load(std::memory_order_acquire) == seen; ++i)
      GFLEX_PAUSE();
    generation_.wait(seen, std::memory_order_acquire);
    seen = generation_.load(std::memory_order_acquire);
    if (stop_.load(std::memory_order_acquire)) return;
    auto [begin, end] = chunk(index);
    try {
      if (begin < end) (*body_)(begin, end);
    } catch (...) {
      std::lock_guard lock(failure_mutex_);
      if (!failure_) failure_ = std::current_exception();
    }
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_one();
  }
}

}  // namespace gflex::kernels
