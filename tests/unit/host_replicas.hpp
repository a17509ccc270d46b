#pragma once
/// @file
/// A replica group of one-thread CPU ranks with a model of a workload on each, for the
/// tests that check a batch split over ranks against one device.

#include <doctest/doctest.h>

#include <memory>
#include <span>
#include <vector>

#include "gflex/kernels/backend.hpp"
#include "gflex/kernels/replica_group.hpp"
#include "gflex/kernels/workload.hpp"

namespace gflex::test {

struct host_replicas {
  std::unique_ptr<kernels::replica_group> group;
  std::vector<std::unique_ptr<kernels::model>> models;
};

/// `ranks` ranks of `w`, each model holding `params` and taking its share of batches of
/// `batch` rows.
inline host_replicas make_host_replicas(const kernels::workload& w, int ranks, int64_t batch,
                                        std::span<const float> params) {
  std::vector<std::unique_ptr<kernels::backend>> backends;
  for (int r = 0; r < ranks; ++r) backends.push_back(kernels::make_cpu_backend(1));
  auto group = kernels::make_replica_group(std::move(backends));
  REQUIRE(group.has_value());
  host_replicas out{std::move(*group), {}};
  for (int r = 0; r < ranks; ++r) {
    auto m = w.instantiate(out.group->rank(r), (batch + ranks - 1) / ranks);
    REQUIRE(m.has_value());
    (*m)->load_parameters(params);
    out.models.push_back(std::move(*m));
  }
  return out;
}

}  // namespace gflex::test
