#pragma once
/// @file
/// The process-wide host memory budget behind set_host_memory_limit / host_memory_in_use:
/// what the CPU backend's allocations (a model's parameters, optimiser state, activations
/// and gradients) may hold together. It is the host's counterpart of the CUDA budget, so that
/// a job asking for more than a volunteer's machine has fails as one assignment, with a
/// clear error, instead of ending the node in the kernel's out-of-memory killer.

#include <cstdint>
#include <string>

namespace gflex::kernels::detail {

/// Reserves `bytes` for `what`; throws compute_error (errc::device_error, "<what>: out of
/// host memory (--memory-limit N bytes, M in use)") past the limit, reserving nothing.
void reserve_host_memory(uint64_t bytes, const std::string& what);

/// Gives back what reserve_host_memory took. Never throws (it runs in a deleter).
void release_host_memory(uint64_t bytes) noexcept;

}  // namespace gflex::kernels::detail
