#pragma once
/// @file
/// The ring of pinned host buffers that the CUDA backend's `upload` stages through: the
/// caller's memory is copied into a slot and the DMA runs from there, so an upload returns
/// before the transfer is done and the caller may reuse its buffer at once. Private to the
/// CUDA backend.

#include <cuda_runtime.h>

#include <array>
#include <cstddef>

namespace gflex::kernels::detail {

/// Pinned staging buffers of `upload`, and the most one copy stages at once. Four slots let
/// the host fill one while up to three DMAs are in flight; 16 MiB chunks keep a large upload
/// pipelined (memcpy of chunk i+1 overlaps the DMA of chunk i) and bound the pinned memory
/// per backend to 64 MiB, however large the tensors.
inline constexpr int k_staging_slots = 4;
inline constexpr size_t k_staging_chunk = size_t{16} << 20;

/// k_staging_slots pinned buffers used in turn, each with the event recorded behind its last
/// copy; a slot is reused only after that event has fired. Every call needs the owner's
/// device current on the calling thread. The owner calls release() before the ring goes
/// away: it knows which device to make current for it.
class staging_ring {
 public:
  staging_ring() = default;
  staging_ring(const staging_ring&) = delete;
  staging_ring& operator=(const staging_ring&) = delete;

  /// Creates each slot's event; the buffers are pinned on first use. Throws compute_error on
  /// failure, having made only what release() frees.
  void init();

  /// Copies `count` bytes from host memory `src` to device memory `dst` on `stream`, in chunks
  /// of at most k_staging_chunk through the slots in turn. Returns once the last chunk is
  /// enqueued; `src` may be reused at once.
  void upload(cudaStream_t stream, const void* src, void* dst, size_t count);

  /// Waits for each slot's last copy, then unpins its buffer and destroys its event; safe on a
  /// partly initialised ring, and again after a release. Never throws.
  void release() noexcept;

 private:
  /// One pinned staging buffer and the event behind its last copy.
  struct staging_slot {
    void* host = nullptr;
    size_t capacity = 0;
    cudaEvent_t done = nullptr;
    bool pending = false;  ///< A copy from `host` was enqueued and `done` recorded after it.
  };

  std::array<staging_slot, k_staging_slots> slots_{};
  int next_slot_ = 0;
};

}  // namespace gflex::kernels::detail
