#pragma once
/// @file
/// The replica group of CUDA ranks, for make_replica_group (kernels/src/replica_group.cpp).
/// Private to gflex::kernels; plain C++ (no CUDA or NCCL types), so that the CPU-side sources
/// can include it in builds with GFLEX_HAVE_CUDA. Defined in cuda_replica_group.cu.

#include <memory>
#include <vector>

#include "gflex/kernels/backend.hpp"
#include "gflex/kernels/replica_group.hpp"
#include "gflex/runtime/error.hpp"

namespace gflex::kernels::detail {

/// A group over CUDA backends on distinct devices, all-reducing with NCCL (one communicator
/// per rank, made with ncclCommInitAll over the ranks' ordinals). errc::invalid_argument for
/// an empty group, a null rank, a rank that is not a CUDA backend, or two ranks on one device;
/// errc::no_device for more than one rank in a build without NCCL (one rank needs no NCCL:
/// its all-reduce is the identity); errc::device_error if NCCL fails to set up.
expected<std::unique_ptr<replica_group>> make_cuda_replica_group(
    std::vector<std::unique_ptr<backend>> ranks);

}  // namespace gflex::kernels::detail
