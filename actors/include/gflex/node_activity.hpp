#pragma once
/// @file
/// What a node tells the program that runs it about its work, free of CAF (gflex-node draws
/// its status line from it).

#include <cstdint>
#include <string>

namespace gflex {

/// What a node is doing, as it tells the program that runs it (gflex-node's status line).
struct node_activity {
  enum class kind {
    joined,     ///< The core admitted the node: `node_id`, and the `workers` it runs.
    lost,       ///< The link to the core or the node's session ended; it joins again.
    started,    ///< A worker took an assignment: `job_id`, `round`, `verify`.
    done,       ///< ... and sent its result: also `samples_per_s`, `compute_s`.
    failed,     ///< ... or could not compute it (it goes back to its job).
    cancelled,  ///< ... or its job took it back while it ran (a backup won, the round closed).
    earned,     ///< The core says what it has paid the node so far: `earned`.
    stopping,   ///< The node stops (run_node ends the process right after).
  };
  kind what = kind::joined;
  std::string node_id;
  std::string job_id;
  int64_t round = 0;    ///< 1-based.
  bool verify = false;  ///< A re-computation of another node's result.
  double samples_per_s = 0.0;
  double compute_s = 0.0;
  int64_t earned = 0;  ///< Micro-credits.
  int workers = 0;     ///< Compute slots: on GPUs, groups times streams, not `--workers`.
};

}  // namespace gflex
