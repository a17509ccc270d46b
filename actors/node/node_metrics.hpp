#pragma once
/// @file
/// A node's Prometheus metrics (served by `gflex-node --metrics-listen`): names, help texts
/// and label values in one place. No label takes a job id or a node name.

#include <string>

#include "gflex/runtime/metrics.hpp"

namespace gflex::node_metrics {

/// Assignments this node's workers ended: "done" (a result sent), "failed", or "cancelled"
/// (taken back by their job while they ran).
inline metrics::counter assignments(const char* outcome) {
  return metrics::counter_of("gflex_node_assignments_total",
                             "Assignments ended by this node's workers, by outcome",
                             {{"outcome", outcome}});
}

/// Shards the cache handed to workers, by `source`: "prefetched" (fetched and decoded while a
/// worker computed the assignment before, on the job's hint) or "fetched" (the worker waited).
inline metrics::counter shards(const char* source) {
  return metrics::counter_of("gflex_node_shards_total",
                             "Decoded shards handed to workers, by whether they were prefetched",
                             {{"source", source}});
}

inline const metrics::histogram& step_duration() {
  static const auto h =
      metrics::histogram_of("gflex_node_step_duration_seconds",
                            "Wall time of one local training step (an assignment's "
                            "compute time over its steps)",
                            metrics::seconds_buckets());
  return h;
}

inline const metrics::gauge& samples_per_second() {
  static const auto g = metrics::gauge_of("gflex_node_samples_per_second",
                                          "Training samples per second in the last assignment");
  return g;
}

inline const metrics::counter& compute_seconds() {
  static const auto c = metrics::counter_of("gflex_node_compute_seconds_total",
                                            "Seconds spent computing assignments");
  return c;
}

/// What the core has paid this node for validated results, in credits (it asks about every
/// 5 s while connected).
inline const metrics::gauge& credits_earned() {
  static const auto g = metrics::gauge_of(
      "gflex_node_credits_earned", "Credits the core has paid this node for validated results");
  return g;
}

/// A GPU's memory (NVML), by `what`: "total", "used" (by every process on the device) and
/// "ours" (held by this node's backends). `gpu` is its CUDA ordinal.
inline metrics::gauge gpu_memory_bytes(const std::string& gpu, const char* what) {
  return metrics::gauge_of("gflex_node_gpu_memory_bytes", "GPU memory: total, used, ours",
                           {{"gpu", gpu}, {"what", what}});
}

/// Share of NVML's last sample period a GPU was busy, by `what`: "compute" (a kernel ran)
/// or "memory" (device memory was read or written).
inline metrics::gauge gpu_utilization(const std::string& gpu, const char* what) {
  return metrics::gauge_of("gflex_node_gpu_utilization_ratio",
                           "Share of the last sample period a GPU computed or moved memory",
                           {{"gpu", gpu}, {"what", what}});
}

/// Payload bytes: "in" (data chunks fetched, parameters, parameter chunks) and "out" (updates
/// sent, update chunks served).
inline metrics::counter bytes(const char* direction, const char* kind) {
  return metrics::counter_of("gflex_node_payload_bytes_total",
                             "Payload bytes received and sent, by kind",
                             {{"direction", direction}, {"kind", kind}});
}

}  // namespace gflex::node_metrics
