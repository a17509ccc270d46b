#pragma once
/// @file
/// What clients see of jobs and nodes. Plain structs, free of CAF, so that a trainer that
/// embeds the runtime includes no actor headers.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "gflex/runtime/enum_names.hpp"
#include "gflex/runtime/error.hpp"

namespace gflex {

/// Where a job is in its life. Values match schemas/job.capnp's JobState (they are stored).
enum class job_state : uint8_t {
  queued = 0,     ///< Accepted, waiting for its first round.
  running = 1,    ///< Handing out and committing rounds.
  paused = 2,     ///< Waiting for credits or workers; it goes on by itself.
  done = 3,       ///< Every round committed.
  failed = 4,     ///< Ended by an error; `detail` says which.
  cancelled = 5,  ///< Ended by its owner or the operator.
};

template <>
std::span<const enum_name<job_state>> enum_names<job_state>() noexcept;

/// "queued", "running", "paused", "done", "failed" or "cancelled".
const char* to_string(job_state state) noexcept;

/// Whether a job in `state` will change no more (done, failed, cancelled).
inline bool is_terminal(job_state state) {
  return state == job_state::done || state == job_state::failed || state == job_state::cancelled;
}

/// The tier a node joined with. Core-tier nodes are the platform's own machines: their
/// results are trusted and they re-compute others' results. Values travel in a node's hello.
enum class node_tier : uint8_t { community = 0, core = 1 };

template <>
std::span<const enum_name<node_tier>> enum_names<node_tier>() noexcept;

/// "community" or "core".
const char* to_string(node_tier tier) noexcept;

/// The tier named `text` ("community" or "core"); anything else is errc::invalid_argument.
expected<node_tier> parse_node_tier(std::string_view text);

/// One committed round of a job, as its curves show it.
struct round_point {
  int64_t round = 0;  ///< 1-based.
  double train_loss = 0.0;
  double test_loss = 0.0;      ///< The last evaluation's, when this round was not evaluated.
  double test_accuracy = 0.0;  ///< Likewise.
  bool evaluated = false;      ///< Whether the test split was evaluated after this round.
  double elapsed_s = 0.0;      ///< Running time when it was committed.
};

/// The state of a job as the core reports it.
struct job_status {
  std::string job_id;
  std::string name;
  std::string workload;
  /// Who submitted it and may see and change it: an account (user/NAME) or "operator".
  std::string owner;
  job_state state = job_state::queued;
  /// Why the job is waiting or failed, in words; empty when there is nothing to say.
  std::string detail;
  int64_t round = 0;   ///< Rounds committed.
  int64_t rounds = 0;  ///< Rounds planned.
  double test_accuracy = 0.0;
  double test_loss = 0.0;  ///< Per sample (per token for a language model), nats.
  /// The test samples each evaluation takes, of the `test_samples` the test split has: fewer
  /// where the model's forward passes over all of them would pass the core's evaluation
  /// budget (core_evaluation_flops). 0 until the job has run.
  int64_t tested_samples = 0;
  int64_t test_samples = 0;
  double train_loss = 0.0;
  int64_t nodes = 0;            ///< Distinct nodes whose results the last round used.
  uint64_t bytes_sent = 0;      ///< Parameters sent to workers, bytes.
  uint64_t bytes_received = 0;  ///< Updates received from workers, bytes.
  double elapsed_s = 0.0;       ///< Running time so far.
  /// When it was submitted, in Unix seconds of the core that took it (0 in records written
  /// before it was kept): its [market] deadline_h counts from there.
  int64_t submitted_unix = 0;
  /// The id its client gave the submission (empty: none given): a submit of the same owner
  /// with it again is answered with this job. Kept in the record; not sent to clients.
  std::string submission;
  double eta_s = -1.0;            ///< Estimated seconds to completion; negative when unknown.
  uint64_t late_results = 0;      ///< Results that arrived after their round closed.
  uint64_t rejected_results = 0;  ///< Results refused by the checks or by verification.
  uint64_t verified_results = 0;  ///< Results re-computed on core-tier workers and matched.
  uint64_t rollbacks = 0;         ///< Applied rounds undone because a result failed verification.
  uint64_t screened_results = 0;  ///< Results that did not look typical of their round.
  /// Sampled results used without their re-computation, no core-tier worker being free (a
  /// core run with --unverified accept): reduced assurance.
  uint64_t unverified_results = 0;
  double compute_s = 0.0;    ///< Compute seconds of the results of committed rounds.
  double recompute_s = 0.0;  ///< Compute seconds spent re-computing results.
  // Cost, for a job with an account (all credits in micro-credits).
  std::string account;        ///< The paying account; empty for an unmetered job.
  int64_t budget = 0;         ///< The most the job may spend (its spec's, plus top-ups).
  int64_t credits_spent = 0;  ///< Paid to nodes and the platform for committed rounds.
  int64_t credits_held = 0;   ///< In escrow for the rounds under way.
  double device_hours = 0.0;  ///< Device time paid for.
  /// What the paid device time would cost at the core's cloud reference price (micro).
  int64_t cloud_cost = 0;
  /// The committed rounds, oldest first; past `max_history` points every other older one is
  /// dropped, so a long job keeps its curve's shape. Only the status of one job carries it
  /// whole (client::status); the list of jobs keeps only its last evaluated round, which
  /// says what round its test figures are of (see list_entry).
  std::vector<round_point> history;
  static constexpr size_t max_history = 1024;
};

/// Adds a committed round to `history`, thinning the older half when it is full.
void add_round(std::vector<round_point>& history, const round_point& p);

/// Drops the points after `round` (rounds a crash or a failed verification took back).
void trim_history(std::vector<round_point>& history, int64_t round);

/// The round whose evaluation `s`'s test figures are (0: none in its history). A job
/// evaluated every N rounds that ended between two evaluations (cancelled, failed) shows
/// figures of a round before its last.
int64_t tested_round(const job_status& s);

/// `s` as the list of jobs shows it: its history cut to its last evaluated round, so the
/// list stays small and still tells a job not yet evaluated (its test accuracy of 0 is no
/// figure) from one evaluated at 0.
job_status list_entry(job_status s);

/// A node as the core's registry sees it, with its reputation.
/// A GPU as its node measured it at start.
struct gpu_status {
  int32_t ordinal = 0;
  std::string name;                ///< "NVIDIA H100 80GB HBM3"
  std::string compute_capability;  ///< "9.0"
  uint64_t memory_bytes = 0;       ///< Total device memory.
  uint64_t memory_limit = 0;       ///< The node's --gpu-memory-limit (0: none).
  int32_t sm_count = 0;
  double gemm_tflops = 0.0;  ///< Achieved FP32 GEMM rate (cuBLAS, 4096^3).
  double h2d_gbps = 0.0;     ///< Achieved host-to-device copy rate from pinned memory.
};

struct node_status {
  std::string node_id;
  std::string name;
  std::string device;
  uint32_t workers = 0;
  std::vector<gpu_status> gpus;  ///< Empty for a node serving on its CPU.
  double last_seen_s = 0.0;      ///< Seconds since its last heartbeat.
  node_tier tier = node_tier::community;
  double score = 0.5;          ///< Beta reputation (good + 1) / (good + bad + 2), decayed.
  int64_t streak = 0;          ///< Results accepted since it was last caught.
  uint64_t validated = 0;      ///< Results applied in committed rounds (and credited).
  uint64_t verified = 0;       ///< Of those, re-computed by a core-tier worker and matched.
  uint64_t rejected = 0;       ///< Results refused by the checks or by verification.
  bool flagged = false;        ///< Caught at least once; it gets no more work.
  double credited_s = 0.0;     ///< Compute seconds credited for validated results.
  int64_t earned = 0;          ///< Micro-credits paid for validated results.
  uint64_t dropped = 0;        ///< Messages its session refused (outside its interface, forged).
  std::string last_rejection;  ///< Why its last rejected result was refused.
};

}  // namespace gflex
