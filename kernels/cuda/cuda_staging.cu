/// @file
/// The pinned staging ring of the CUDA backend's `upload` (see cuda_staging.hpp): pinned
/// memory is what lets a host-to-device copy run asynchronously, and the ring bounds how much
/// of it a backend holds.

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstring>

#include "cuda_check.hpp"
#include "cuda_staging.hpp"

namespace gflex::kernels::detail {

void staging_ring::init() {
  for (staging_slot& slot : slots_) {
    // No timing: these events only order host reuse after the DMA, and timing costs.
    GFLEX_CUDA_CHECK(cudaEventCreateWithFlags(&slot.done, cudaEventDisableTiming));
  }
}

void staging_ring::upload(cudaStream_t stream, const void* src, void* dst, size_t count) {
  const auto* from = static_cast<const char*>(src);
  auto* to = static_cast<char*>(dst);
  while (count > 0) {
    const size_t chunk = std::min(count, k_staging_chunk);
    staging_slot& slot = slots_[next_slot_];
    next_slot_ = (next_slot_ + 1) % k_staging_slots;
    if (slot.pending) {
      // The slot's previous DMA must have read the buffer before we overwrite it.
      GFLEX_CUDA_CHECK(cudaEventSynchronize(slot.done));
      slot.pending = false;
    }
    if (slot.capacity < chunk) {
      // Grown in powers of two (up to the chunk size) so that a run of slightly growing
      // uploads does not re-pin memory each time; pinning is slow.
      size_t capacity = std::max<size_t>(slot.capacity, 4096);
      while (capacity < chunk) capacity *= 2;
      capacity = std::min(capacity, k_staging_chunk);
      if (slot.host != nullptr) GFLEX_CUDA_CHECK(cudaFreeHost(slot.host));
      slot.host = nullptr;
      slot.capacity = 0;
      GFLEX_CUDA_CHECK(cudaMallocHost(&slot.host, capacity));
      slot.capacity = capacity;
    }
    std::memcpy(slot.host, from, chunk);
    GFLEX_CUDA_CHECK(cudaMemcpyAsync(to, slot.host, chunk, cudaMemcpyHostToDevice, stream));
    GFLEX_CUDA_CHECK(cudaEventRecord(slot.done, stream));
    slot.pending = true;
    from += chunk;
    to += chunk;
    count -= chunk;
  }
}

void staging_ring::release() noexcept {
  // Staging buffers may still feed a DMA: wait for each slot's last copy before unpinning.
  for (staging_slot& slot : slots_) {
    if (slot.pending && cudaEventSynchronize(slot.done) != cudaSuccess) (void)cudaGetLastError();
    slot.pending = false;
    if (slot.host != nullptr && cudaFreeHost(slot.host) != cudaSuccess) (void)cudaGetLastError();
    slot.host = nullptr;
    slot.capacity = 0;
    if (slot.done != nullptr && cudaEventDestroy(slot.done) != cudaSuccess)
      (void)cudaGetLastError();
    slot.done = nullptr;
  }
}

}  // namespace gflex::kernels::detail
