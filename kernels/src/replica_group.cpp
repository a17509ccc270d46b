/// @file
/// Replica groups of CPU ranks (a host sum), and the dispatch to the NCCL group for CUDA
/// ranks.

#include "gflex/kernels/replica_group.hpp"

#ifdef GFLEX_HAVE_CUDA
#include "../cuda/cuda_replica_group.hpp"
#endif

namespace gflex::kernels {

namespace {

/// CPU ranks share the host's memory: the all-reduce adds every other rank's buffer into
/// rank 0's and copies the sum back. One rank is the identity. Several CPU ranks in one
/// process are what tests use to run the multi-rank path without GPUs.
class host_replica_group final : public replica_group {
 public:
  explicit host_replica_group(std::vector<std::unique_ptr<backend>> ranks)
      : ranks_(std::move(ranks)) {}

  int size() const override { return static_cast<int>(ranks_.size()); }
  backend& rank(int r) override { return *ranks_.at(static_cast<size_t>(r)); }

  void all_reduce_sum(const std::vector<float*>& buffers, int64_t n) override {
    GFLEX_CHECK(buffers.size() == ranks_.size(), "all_reduce_sum: one buffer per rank");
    for (size_t r = 1; r < buffers.size(); ++r)
      ranks_[0]->axpby(n, 1.0f, buffers[r], 1.0f, buffers[0]);
    for (size_t r = 1; r < buffers.size(); ++r)
      ranks_[r]->axpby(n, 1.0f, buffers[0], 0.0f, buffers[r]);
  }

  std::string describe() const override {
    return "host, " + std::to_string(ranks_.size()) + (ranks_.size() == 1 ? " rank" : " ranks");
  }

 private:
  std::vector<std::unique_ptr<backend>> ranks_;
};

}  // namespace

namespace {

/// One step of the group, `part(r, m, first, count, loss_scale)` running rank r's backward
/// pass on rows [first, first + count) of the batch.
template <class Part>
void step_in_parts(replica_group& group, const std::vector<std::unique_ptr<model>>& replicas,
                   int64_t batch, Part&& part) {
  const int ranks = group.size();
  GFLEX_CHECK(static_cast<int>(replicas.size()) == ranks, "replica_step: one model per rank");
  GFLEX_CHECK(batch > 0, "replica_step: empty batch");
  const int64_t share = (batch + ranks - 1) / ranks;
  const int64_t n = replicas.front()->parameter_count();
  const float loss_scale = 1.0f / static_cast<float>(batch);
  std::vector<float*> gradients;
  for (int r = 0; r < ranks; ++r) {
    auto& m = *replicas[static_cast<size_t>(r)];
    const int64_t first = r * share, rows = std::max<int64_t>(0, std::min(share, batch - first));
    m.batch_part(first, rows);
    if (rows > 0)
      part(r, m, first, rows, loss_scale);
    else
      group.rank(r).fill(m.gradients(), n, 0.0f);
    gradients.push_back(m.gradients());
  }
  group.all_reduce_sum(gradients, n);
  for (const auto& m : replicas) m->apply_gradients();
}

}  // namespace

void replica_step(replica_group& group, const std::vector<std::unique_ptr<model>>& replicas,
                  const float* features, const int32_t* labels, int64_t batch) {
  step_in_parts(group, replicas, batch,
                [&](int, model& m, int64_t first, int64_t rows, float loss_scale) {
                  m.backward(features + first * m.feature_dim(), labels + first, rows, loss_scale);
                });
}

void replica_step_rows(replica_group& group, const std::vector<std::unique_ptr<model>>& replicas,
                       const std::vector<const float*>& features, int64_t data_rows,
                       const int32_t* rows, const int32_t* labels, int64_t batch) {
  GFLEX_CHECK(static_cast<int>(features.size()) == group.size(),
              "replica_step_rows: the data on every rank");
  step_in_parts(group, replicas, batch,
                [&](int r, model& m, int64_t first, int64_t count, float loss_scale) {
                  m.backward_rows(features[static_cast<size_t>(r)], data_rows, rows + first,
                                  labels + first, count, loss_scale);
                });
}

expected<std::unique_ptr<replica_group>> make_replica_group(
    std::vector<std::unique_ptr<backend>> ranks) {
  if (ranks.empty()) return error(errc::invalid_argument, "a replica group needs a rank");
  size_t cpu = 0;
  for (const auto& r : ranks) cpu += r && r->where().kind == device_kind::host ? 1 : 0;
  if (cpu == ranks.size())
    return std::unique_ptr<replica_group>(std::make_unique<host_replica_group>(std::move(ranks)));
  if (cpu != 0)
    return error(errc::invalid_argument, "a replica group's ranks must all be CPUs or all GPUs");
#ifdef GFLEX_HAVE_CUDA
  return detail::make_cuda_replica_group(std::move(ranks));
#else
  return error(errc::no_device, "this build of gflex has no CUDA backend");
#endif
}

}  // namespace gflex::kernels
