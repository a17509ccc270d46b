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
#include "gflex/kernels/workload.hpp"
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

/// One optimiser step of a group's replicas (one model per rank, made with max_batch at least
/// ceil(batch / size), holding the same parameters) on a batch in host memory: rank r takes
/// rows [r * share, (r + 1) * share) with share = ceil(batch / size), computes its part of the
/// whole batch's mean-loss gradient, the all-reduce adds the parts, and every rank applies the
/// same step, so the replicas stay identical. A rank left without rows (a batch smaller than
/// the group) contributes zeros.
void replica_step(replica_group& group, const std::vector<std::unique_ptr<model>>& replicas,
                  const float* features, const int32_t* labels, int64_t batch);

/// replica_step on a batch given as row numbers of data already held by every rank:
/// `features[r]` is the data in rank r's memory ([data_rows, feature_dim]), `rows` and
/// `labels` (host memory) the batch's row numbers and labels, split between the ranks as
/// replica_step splits a host batch. Each rank gathers its rows where it computes (see
/// model::backward_rows); the step is bit for bit replica_step's on the same rows.
void replica_step_rows(replica_group& group, const std::vector<std::unique_ptr<model>>& replicas,
                       const std::vector<const float*>& features, int64_t data_rows,
                       const int32_t* rows, const int32_t* labels, int64_t batch);

}  // namespace gflex::kernels
