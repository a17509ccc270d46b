#pragma once
/// @file
/// What clients see of jobs and nodes. Plain structs, free of CAF, so that a trainer that
/// embeds the runtime includes no actor headers.

#include <cstdint>
#include <string>
#include <string_view>

namespace gflex {

/// The state of a job as the core reports it.
struct job_status {
  std::string job_id;
  std::string name;
  std::string workload;
  /// queued, running, paused, done, failed or cancelled.
  std::string state = "queued";
  /// Why the job is waiting or failed, in words; empty when there is nothing to say.
  std::string detail;
  int64_t round = 0;   ///< Rounds committed.
  int64_t rounds = 0;  ///< Rounds planned.
  double test_accuracy = 0.0;
  double train_loss = 0.0;
  int64_t nodes = 0;              ///< Distinct nodes whose results the last round used.
  uint64_t bytes_sent = 0;        ///< Parameters sent to workers, bytes.
  uint64_t bytes_received = 0;    ///< Updates received from workers, bytes.
  double elapsed_s = 0.0;         ///< Running time so far.
  double eta_s = -1.0;            ///< Estimated seconds to completion; negative when unknown.
  uint64_t late_results = 0;      ///< Results that arrived after their round closed.
  uint64_t rejected_results = 0;  ///< Results refused by validation.
};

/// A node as the core's registry sees it.
struct node_status {
  std::string node_id;
  std::string name;
  std::string device;
  uint32_t workers = 0;
  double last_seen_s = 0.0;  ///< Seconds since its last heartbeat.
};

/// Whether a job in `state` will change no more (done, failed, cancelled).
inline bool is_terminal(std::string_view state) {
  return state == "done" || state == "failed" || state == "cancelled";
}

}  // namespace gflex
