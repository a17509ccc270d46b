#pragma once
/// @file
/// What a pipeline's `train` stage does, free of CAF: gathers the samples it is fed, pushes
/// them as a data set, submits the job and follows it. The stage's actor (pipeline.cpp) calls
/// it from its own thread; every call may block on the core.

#include <chrono>
#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "gflex/pipeline.hpp"

namespace gflex::pipeline::detail {

class train_driver {
 public:
  /// Checks the options and the spec (with its [data] table added) and plans its model;
  /// throws std::runtime_error naming what is wrong.
  explicit train_driver(train_options options);

  /// Continues after a restart from a checkpoint (what checkpoint() returned): the job is
  /// followed again, rounds up to the one last emitted are not emitted twice.
  void resume(const std::string& checkpoint);

  /// Takes a batch's samples while fewer than max_samples are held; later ones are dropped
  /// (counted). Throws on a batch whose sample size differs from the first one's.
  void absorb(const sample_batch& batch);
  bool full() const { return rows_ >= options_.max_samples; }
  bool submitted() const { return !job_id_.empty(); }
  int64_t dropped() const { return dropped_; }

  /// Pushes the samples as the data set and submits the job (throws on refusal). A lost link
  /// to the core is ridden out for up to 2 minutes, as in poll().
  void submit();

  /// Polls the job once: appends an update when a round was committed since the last one
  /// emitted. Returns true when the job is done; throws when it failed or was cancelled, or
  /// when the link to the core has been lost for over 2 minutes (a shorter loss is ridden
  /// out: the next poll asks again).
  bool poll(std::vector<round_update>& out);

  /// Cancels the job submitted, if any (a failed run's); an error is logged, not thrown.
  void cancel();

  /// "JOB_ID ROUND": what resume() needs.
  std::string checkpoint() const;

  /// Called in a poll between the status asked and the parameters fetched (tests use it to
  /// have rounds committed in between).
  std::function<void(const job_status&)> between_asks;

  /// Sends the spec to the core; client::submit when empty (tests use it to lose the answer).
  std::function<expected<std::string>(const std::string& spec)> send_submit;

 private:
  train_options options_;
  int64_t parameters_ = 0;
  int64_t feature_dim_ = 0;  ///< Values per sample the model takes.
  int64_t workers_ = 1;      ///< The job's workers a round: the data set has a shard for each.
  int64_t sample_values_ = 0;
  int64_t rows_ = 0;
  int64_t batches_ = 0;
  int64_t dropped_ = 0;
  std::vector<float> train_x_, test_x_;
  std::vector<int32_t> train_y_, test_y_;
  std::string spec_;
  std::string job_name_;  ///< The spec's [job] name.
  std::string job_id_;
  int64_t last_round_ = 0;
  /// The job's paused detail last logged (empty: not paused at the last poll).
  std::string paused_detail_;
  /// Since when polls have failed for a lost link (none: the last one was answered).
  std::chrono::steady_clock::time_point lost_since_{};

  /// Whether following goes on after `e` (a lost link, for up to link_loss_patience).
  bool rides_out(const error& e);

  /// After a submit whose answer was lost (`lost`): the job it may have made, found among
  /// those not in `before` with the spec's name; `lost` where there is none.
  expected<std::string> find_submitted(const std::set<std::string>& before, const error& lost);
};

}  // namespace gflex::pipeline::detail
