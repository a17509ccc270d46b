#pragma once
/// @file
/// How a node's compute is laid out: which devices each worker's replica group spans, how
/// many workers there are, and what the node tells the core about its GPUs. Decided once at
/// node start from the node's flags and what the machine has.

#include <string>
#include <vector>

#include "gflex/gflex.hpp"
#include "gflex/job_status.hpp"
#include "gflex/runtime/error.hpp"

namespace gflex {

struct compute_plan {
  /// Backend names of one worker's replica group: {"cpu"} or {"cuda:0", "cuda:2"}.
  std::vector<std::string> ranks;
  /// Worker actors: --workers on the CPU, --streams-per-gpu on GPUs (each worker has its
  /// own stream on every GPU of the group, so one worker's copies overlap another's compute).
  int workers = 1;
  /// The GPUs, measured (empty on the CPU).
  std::vector<gpu_status> gpus;
};

/// Resolves --backend (auto, cpu, cuda, cuda:N), --gpus, --streams-per-gpu and
/// --gpu-memory-limit against the machine. `auto` uses every GPU found, or says once why
/// there is none and serves on the CPU. GPUs are calibrated (GEMM rate, copy bandwidth) and
/// their memory limit applied. Errors name the flag at fault.
expected<compute_plan> plan_compute(const node_config& config);

}  // namespace gflex
