/// @file
/// The replica group of CUDA ranks: NCCL's all-reduce across a node's GPUs.
///
/// Design:
/// - One NCCL communicator per rank, made together with ncclCommInitAll over the ranks'
///   device ordinals (one process drives every GPU of the node from one thread, so the
///   single-process clique is exactly what we need; no unique id to exchange).
/// - all_reduce_sum enqueues one in-place ncclAllReduce per rank on that rank's own stream
///   (backend::native_stream), inside ncclGroupStart/End: from a single thread, ungrouped
///   calls would block in the first rank's call waiting for the others. Being on the ranks'
///   streams, the reduction is ordered after the gradients each rank computed and before the
///   optimiser step enqueued next, with no host synchronisation.
/// - A single rank takes the NCCL path too where NCCL is built, so that a one-GPU machine runs
///   (and tests) the code eight GPUs run. Without NCCL only one rank is possible, and its
///   all-reduce is the identity.

#include <cuda_runtime.h>

#include <chrono>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "cuda_check.hpp"
#include "cuda_replica_group.hpp"

namespace gflex::kernels::detail {

namespace {

std::string rank_count(size_t n) {
  return std::to_string(n) + (n == 1 ? " rank" : " ranks");
}

/// One buffer per rank, or the caller has a bug.
void check_buffers(const std::vector<float*>& buffers, size_t ranks) {
  if (buffers.size() != ranks)
    throw compute_error(
        gflex::error(errc::invalid_argument, "all_reduce_sum: " + std::to_string(buffers.size()) +
                                                 " buffers for a group of " + rank_count(ranks)));
}

/// Restores the calling thread's current device when it goes out of scope: NCCL switches
/// devices internally, and the caller's choice is per thread. Never throws.
class current_device_keeper {
 public:
  current_device_keeper() noexcept {
    if (cudaGetDevice(&device_) != cudaSuccess) {
      (void)cudaGetLastError();
      device_ = -1;
    }
  }
  ~current_device_keeper() {
    if (device_ >= 0 && cudaSetDevice(device_) != cudaSuccess) (void)cudaGetLastError();
  }
  current_device_keeper(const current_device_keeper&) = delete;
  current_device_keeper& operator=(const current_device_keeper&) = delete;

 private:
  int device_ = -1;
};

#ifdef GFLEX_HAVE_NCCL

/// "nccl 2.28.9" from ncclGetVersion's code (X*10000 + Y*100 + Z since 2.9; X*1000 + Y*100 +
/// Z before).
std::string nccl_version() {
  int code = 0;
  if (ncclGetVersion(&code) != ncclSuccess) return "nccl";
  const bool old_scheme = code < 10000;
  const int major = old_scheme ? code / 1000 : code / 10000;
  const int minor = old_scheme ? (code % 1000) / 100 : (code % 10000) / 100;
  const int patch = code % 100;
  return "nccl " + std::to_string(major) + "." + std::to_string(minor) + "." +
         std::to_string(patch);
}

/// NCCL is not safe to call on independent communicators of one device from several threads
/// at once, and workers of one node (--streams-per-gpu) hold separate cliques over the same
/// GPUs, each in its own thread: their making, launches and ending take turns.
std::mutex& nccl_calls() {
  static std::mutex m;
  return m;
}

/// How long a group being destroyed waits for its ranks' queued work before it takes them
/// for hung and aborts its communicators.
constexpr std::chrono::seconds k_drain_limit{10};

class nccl_replica_group final : public replica_group {
 public:
  /// Throws compute_error if NCCL cannot set up the clique.
  explicit nccl_replica_group(std::vector<std::unique_ptr<backend>> ranks)
      : ranks_(std::move(ranks)), comms_(ranks_.size(), nullptr) {
    std::vector<int> ordinals;
    for (const auto& r : ranks_) ordinals.push_back(r->where().index);
    current_device_keeper keeper;
    std::lock_guard lock(nccl_calls());
    // On failure the state of a partly made clique is NCCL's (its group cleanup releases what
    // it can); destroying handles it may already have freed would be worse than a leak, so a
    // throwing constructor (whose destructor never runs) leaves them alone.
    GFLEX_NCCL_CHECK(
        ncclCommInitAll(comms_.data(), static_cast<int>(ranks_.size()), ordinals.data()));
    description_ = nccl_version() + ", " + rank_count(ranks_.size());
  }

  ~nccl_replica_group() override {
    current_device_keeper keeper;
    // Destroying a communicator with a collective still queued on a stream would free what
    // the kernel uses: wait for every rank first. A rank that fails (a sticky device error)
    // may never finish its part, and its peers' collectives then spin for ever, so the wait
    // polls, without blocking, for every rank's queue to drain and no communicator to report
    // an error, within k_drain_limit; otherwise abort rather than destroy, as destroy would
    // wait for the collective for ever.
    bool healthy = drained();
    for (const auto& r : ranks_) {
      if (!healthy) break;
      try {
        r->synchronize();  // drained: returns at once, and surfaces an error it missed
      } catch (const compute_error&) {
        healthy = false;
      }
    }
    std::lock_guard lock(nccl_calls());
    for (ncclComm_t comm : comms_) {
      if (comm == nullptr) continue;
      (void)(healthy ? ncclCommDestroy(comm) : ncclCommAbort(comm));
    }
    (void)cudaGetLastError();
  }

  nccl_replica_group(const nccl_replica_group&) = delete;
  nccl_replica_group& operator=(const nccl_replica_group&) = delete;

  int size() const override { return static_cast<int>(ranks_.size()); }
  backend& rank(int r) override { return *ranks_.at(static_cast<size_t>(r)); }

  void all_reduce_sum(const std::vector<float*>& buffers, int64_t n) override {
    check_buffers(buffers, ranks_.size());
    if (n <= 0) return;
    current_device_keeper keeper;
    // Workers of one node (--streams-per-gpu) hold separate cliques over the same GPUs and
    // call this from their own threads. Enqueued in different orders on different GPUs, two
    // cliques' collectives could each wait for a peer kernel queued behind the other's: one
    // launch at a time keeps the order the same on every GPU (NCCL's advice for several
    // communicators per device). Launching takes microseconds; the reductions still overlap.
    std::lock_guard lock(nccl_calls());
    GFLEX_NCCL_CHECK(ncclGroupStart());
    // A failed call inside the group must still be followed by ncclGroupEnd, which then
    // discards the whole group (launching part of a collective would hang the other ranks).
    ncclResult_t first_failure = ncclSuccess;
    for (size_t r = 0; r < ranks_.size() && first_failure == ncclSuccess; ++r) {
      auto* stream = static_cast<cudaStream_t>(ranks_[r]->native_stream());
      first_failure = ncclAllReduce(buffers[r], buffers[r], static_cast<size_t>(n), ncclFloat,
                                    ncclSum, comms_[r], stream);
    }
    const ncclResult_t group = ncclGroupEnd();
    if (first_failure != ncclSuccess)
      throw_nccl_error(first_failure, "ncclAllReduce", __FILE__, __LINE__);
    if (group != ncclSuccess) throw_nccl_error(group, "ncclGroupEnd", __FILE__, __LINE__);
  }

  std::string describe() const override { return description_; }

 private:
  /// Whether every rank's stream finished its queued work, with no communicator reporting an
  /// error, within k_drain_limit.
  bool drained() const noexcept {
    const auto deadline = std::chrono::steady_clock::now() + k_drain_limit;
    for (size_t r = 0; r < ranks_.size(); ++r) {
      if (cudaSetDevice(ranks_[r]->where().index) != cudaSuccess) return false;
      auto* stream = static_cast<cudaStream_t>(ranks_[r]->native_stream());
      for (;;) {
        const cudaError_t status = cudaStreamQuery(stream);
        if (status == cudaSuccess) break;
        if (status != cudaErrorNotReady) return false;
        for (ncclComm_t comm : comms_) {
          ncclResult_t async = ncclSuccess;
          if (comm != nullptr && (ncclCommGetAsyncError(comm, &async) != ncclSuccess ||
                                  (async != ncclSuccess && async != ncclInProgress)))
            return false;
        }
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
    return true;
  }

  std::vector<std::unique_ptr<backend>> ranks_;
  std::vector<ncclComm_t> comms_;  ///< comms_[r] drives ranks_[r]'s device.
  std::string description_;
};

#else

/// One CUDA rank in a build without NCCL: the all-reduce of one buffer is the buffer.
class single_cuda_replica_group final : public replica_group {
 public:
  explicit single_cuda_replica_group(std::unique_ptr<backend> rank) : rank_(std::move(rank)) {}

  int size() const override { return 1; }
  backend& rank(int r) override {
    if (r != 0)
      throw compute_error(gflex::error(errc::invalid_argument,
                                       "rank " + std::to_string(r) + " of a group of 1 rank"));
    return *rank_;
  }

  void all_reduce_sum(const std::vector<float*>& buffers, int64_t) override {
    check_buffers(buffers, 1);
  }

  std::string describe() const override { return "identity (built without NCCL), 1 rank"; }

 private:
  std::unique_ptr<backend> rank_;
};

#endif

}  // namespace

expected<std::unique_ptr<replica_group>> make_cuda_replica_group(
    std::vector<std::unique_ptr<backend>> ranks) {
  if (ranks.empty()) return gflex::error(errc::invalid_argument, "a replica group needs a rank");
  std::set<int> ordinals;
  for (size_t r = 0; r < ranks.size(); ++r) {
    if (!ranks[r])
      return gflex::error(errc::invalid_argument,
                          "replica group rank " + std::to_string(r) + " has no backend");
    const device where = ranks[r]->where();
    if (where.kind != device_kind::cuda || ranks[r]->native_stream() == nullptr)
      return gflex::error(errc::invalid_argument,
                          "a replica group's ranks must all be CPUs or all GPUs (rank " +
                              std::to_string(r) + " is not a CUDA backend)");
    if (!ordinals.insert(where.index).second)
      return gflex::error(errc::invalid_argument,
                          "replica group ranks must be on distinct devices (cuda:" +
                              std::to_string(where.index) + " appears twice)");
  }
#ifdef GFLEX_HAVE_NCCL
  try {
    return std::unique_ptr<replica_group>(std::make_unique<nccl_replica_group>(std::move(ranks)));
  } catch (const compute_error& e) {
    return e.err();
  }
#else
  if (ranks.size() > 1)
    return gflex::error(errc::no_device,
                        "a replica group of " + rank_count(ranks.size()) +
                            " needs NCCL, and this build of gflex was built without NCCL");
  return std::unique_ptr<replica_group>(
      std::make_unique<single_cuda_replica_group>(std::move(ranks.front())));
#endif
}

}  // namespace gflex::kernels::detail
