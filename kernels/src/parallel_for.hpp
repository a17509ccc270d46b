#pragma once
/// @file
/// A small fork-join pool for the CPU backend's memory-bound loops (AdamW over every
/// parameter). One core cannot pull a multi-megabyte stream through its own cache fast
/// enough; splitting it across the cores GEMM uses anyway roughly divides the time.

#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace gflex::kernels {

/// Runs a loop body over contiguous chunks of [0, n) on `threads` threads, the caller's
/// included. Workers spin briefly after each job (a training step issues the next one
/// within microseconds) and then sleep on a futex, so an idle pool costs nothing.
class parallel_for {
 public:
  explicit parallel_for(int threads);
  ~parallel_for();
  parallel_for(const parallel_for&) = delete;
  parallel_for& operator=(const parallel_for&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  /// Calls body(begin, end) over a partition of [0, n) into chunks that are multiples of
  /// `align` elements (cache-line sized chunks keep two threads off the same line), and
  /// returns when all are done. Ranges below `serial_below` run on the caller alone. An
  /// exception a body throws, on any thread, is thrown here once every chunk has ended.
  void run(int64_t n, int64_t align, int64_t serial_below,
           const std::function<void(int64_t, int64_t)>& body);

 private:
  void worker_loop(int index);
  void stop_workers();
  std::pair<int64_t, int64_t> chunk(int index) const;

  std::vector<std::thread> workers_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  const std::function<void(int64_t, int64_t)>* body_ = nullptr;
  int64_t n_ = 0;
  int64_t align_ = 1;
  std::mutex failure_mutex_;
  std::exception_ptr failure_;  ///< The first a worker thread's chunk threw (under the mutex).
};

}  // namespace gflex::kernels
