#pragma once
/// @file
/// The process-wide device memory budget behind set_cuda_memory_limit / cuda_memory_in_use:
/// every device allocation of a CUDA backend (tensors, cuDNN workspace, scratch) reserves its
/// bytes here before CUDA is asked, and gives them back when it is freed. Private to the CUDA
/// backend; plain C++ (no CUDA types), defined in cuda_devices.cu.

#include <cstdint>
#include <string>

namespace gflex::kernels::detail {

/// Devices with an ordinal below this are accounted; allocations on higher ordinals (no node
/// has that many) are neither counted nor capped.
inline constexpr int k_max_accounted_devices = 64;

/// Reserves `bytes` on device `ordinal` against its --gpu-memory-limit. Throws compute_error
/// (errc::device_error, "<what>: out of device memory (--gpu-memory-limit N bytes on cuda:K,
/// M in use)") when the reservation would pass the limit; reserves nothing then.
void reserve_device_memory(int ordinal, uint64_t bytes, const std::string& what);

/// Gives back bytes reserved with reserve_device_memory. Never throws.
void release_device_memory(int ordinal, uint64_t bytes) noexcept;

/// The cap set with set_cuda_memory_limit (0: none).
uint64_t device_memory_limit(int ordinal) noexcept;

}  // namespace gflex::kernels::detail
