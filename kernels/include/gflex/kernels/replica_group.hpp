#pragma once
/// @file
/// A node's devices acting as one: one backend per device (each with its own stream) and a
/// sum all-reduce across them. On GPUs the all-reduce is NCCL's, enqueued on each rank's
/// stream; on CPU ranks it is a host sum. A single rank takes the same path (an all-reduce of
/// one is the identity), so one GPU and eight run the same code.

#include <memory>
#include <string>
#include <vector>

#include "gflex/kernels/backend.hpp"
#include "gflex/runtime/error.hpp"

namespace gflex::kernels {

class replica_group {
 public:
  virtual ~replica_group() = default;
  virtual int size() const = 0;
  virtual backend& rank(int r) = 0;
  /// buffers[r] (n floats in rank r's memory) becomes the sum over all ranks, in place. On
  /// GPUs it is enqueued on every rank's stream (ordered after the work already enqueued there)
  /// and returns without waiting.
  virtual void all_reduce_sum(const std::vector<float*>& buffers, int64_t n) = 0;
  /// "nccl 2.28.9, 2 ranks" / "host, 1 rank".
  virtual std::string describe() const = 0;
};

/// A group over `ranks`: all CPU backends (host sum), or all CUDA backends on distinct devices
/// (NCCL; errc::no_device if this build has no NCCL and there is more than one rank). Mixed or
/// empty groups are errc::invalid_argument.
expected<std::unique_ptr<replica_group>> make_replica_group(
    std::vector<std::unique_ptr<backend>> ranks);

}  // namespace gflex::kernels
