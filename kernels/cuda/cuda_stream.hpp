#pragma once
/// @file
/// The CUDA backend's stream and the guard that makes a device current: the backend's stream
/// is shared with the deleters of the tensors it allocated, which run on arbitrary threads,
/// possibly after the backend is gone. Private to the CUDA backend; header-only.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

#include "cuda_check.hpp"
#include "cuda_memory.hpp"

namespace gflex::kernels::detail {

/// Makes `ordinal` the calling thread's device for the lifetime of the guard and restores the
/// previous one after; for code that runs on arbitrary threads (tensor deleters). Never
/// throws: errors are ignored and cleared from the runtime's last-error slot.
class device_guard {
 public:
  explicit device_guard(int ordinal) noexcept {
    if (cudaGetDevice(&previous_) != cudaSuccess) {
      (void)cudaGetLastError();
      previous_ = -1;
    }
    if (previous_ == ordinal) {
      previous_ = -1;  // already current: nothing to switch or restore
    } else if (cudaSetDevice(ordinal) != cudaSuccess) {
      (void)cudaGetLastError();
      previous_ = -1;
    }
  }
  ~device_guard() {
    if (previous_ >= 0 && cudaSetDevice(previous_) != cudaSuccess) (void)cudaGetLastError();
  }
  device_guard(const device_guard&) = delete;
  device_guard& operator=(const device_guard&) = delete;

 private:
  int previous_ = -1;
};

/// The backend's stream, shared between the backend and the deleters of the tensors it
/// allocated: a tensor may be freed after its backend is gone, and stream-ordered frees need
/// a live stream.
class stream_owner {
 public:
  stream_owner(int ordinal, bool pooled) : ordinal_(ordinal), pooled_(pooled) {
    GFLEX_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  ~stream_owner() {
    free_deferred();
    device_guard guard(ordinal_);
    // Returns at once; pending work still completes before the stream's resources go.
    if (cudaStreamDestroy(stream_) != cudaSuccess) (void)cudaGetLastError();
  }
  stream_owner(const stream_owner&) = delete;
  stream_owner& operator=(const stream_owner&) = delete;

  cudaStream_t stream() const noexcept { return stream_; }
  bool pooled() const noexcept { return pooled_; }

  /// Frees `bytes` of memory from `allocate_device`, ordered after all work enqueued so far,
  /// and gives the bytes back to the device's budget. Never throws (it runs in a deleter); a
  /// failure can only leak, and is cleared so that it does not surface as an unrelated launch
  /// error later.
  /// While the stream records (a CUDA graph capture), the free is kept for
  /// free_deferred(): captured, it would become a graph node freeing memory the graph does
  /// not own, which invalidates the capture and leaks the memory.
  void free(void* memory, uint64_t bytes) const noexcept {
    if (memory == nullptr) return;
    {
      device_guard guard(ordinal_);
      cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
      if (cudaStreamIsCapturing(stream_, &capture) != cudaSuccess) (void)cudaGetLastError();
      if (capture != cudaStreamCaptureStatusNone) {
        try {
          std::lock_guard lock(deferred_mutex_);
          deferred_.emplace_back(memory, bytes);
        } catch (...) {
          // No memory to note it in: it leaks, as a failed free would.
        }
        return;
      }
      const cudaError_t status = pooled_ ? cudaFreeAsync(memory, stream_) : cudaFree(memory);
      if (status != cudaSuccess) (void)cudaGetLastError();
    }
    // Given back as soon as the free is enqueued: the pool itself keeps the memory from a new
    // owner until this stream's work on it is done.
    release_device_memory(ordinal_, bytes);
  }

  /// Frees what free() kept while the stream recorded, and says how many: the backend calls
  /// it when a recording ends, and drops a recording that saw any (its work may use them).
  size_t free_deferred() const noexcept {
    std::vector<std::pair<void*, uint64_t>> kept;
    {
      std::lock_guard lock(deferred_mutex_);
      kept.swap(deferred_);
    }
    for (const auto& [memory, bytes] : kept) free(memory, bytes);
    return kept.size();
  }

 private:
  int ordinal_;
  bool pooled_;
  cudaStream_t stream_ = nullptr;
  mutable std::mutex deferred_mutex_;
  mutable std::vector<std::pair<void*, uint64_t>> deferred_;
};

}  // namespace gflex::kernels::detail
