#pragma once
/// @file
/// Single-process training: a workload, a backend, epochs of shuffled mini-batches with
/// AdamW, evaluation on the test split after each epoch. It is `gflex train`, the baseline
/// that distributed jobs are measured against, and what a worker runs for a local round.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "gflex/kernels/backend.hpp"
#include "gflex/kernels/workload.hpp"
#include "gflex/runtime/dataset.hpp"
#include "gflex/runtime/error.hpp"

namespace gflex::kernels {

/// What to train and how.
struct train_options {
  int epochs = 10;
  int64_t batch_size = 128;
  uint64_t seed = 1;
  adamw_config optimizer{};
  /// Cosine decay of the learning rate to `final_lr_fraction` of its start over the run.
  bool cosine_schedule = true;
  float final_lr_fraction = 0.05f;
  /// Stop after this many steps in total (0: no limit); for tests and benchmarks.
  int64_t max_steps = 0;
  /// Skip evaluation on the test split (benchmarks that time training steps only).
  bool evaluate = true;
  /// Steps left out of `train_report::steady_samples_per_s`: the first steps pay once for
  /// what later ones reuse (a GPU's first launches of each kernel, cuDNN's algorithm timing,
  /// a recorded pass). A benchmark leaves out as many as its peer does (0: none).
  int64_t warmup_steps = 0;
};

/// Figures of one epoch.
struct epoch_report {
  int epoch = 0;
  double train_loss = 0.0;
  double train_accuracy = 0.0;
  double test_loss = 0.0;
  double test_accuracy = 0.0;
  double train_s = 0.0;  ///< Seconds spent in training steps (no evaluation).
  int64_t samples = 0;
};

/// Figures of a whole run.
struct train_report {
  std::vector<epoch_report> epochs;
  double test_accuracy = 0.0;  ///< After the last epoch (0 when evaluation is off).
  double samples_per_s = 0.0;  ///< Training samples per second of training-step time.
  double wall_s = 0.0;         ///< Whole run, evaluation included.
  int64_t samples = 0;
  int64_t steps = 0;
  double gemm_flops = 0.0;  ///< GEMM floating-point operations of all training steps.
  double train_s = 0.0;
  /// Training samples per second after the first `train_options::warmup_steps` steps (the
  /// device synchronised at the boundary); `samples_per_s` where none are left out, 0 where
  /// the run had no step past them.
  double steady_samples_per_s = 0.0;
  int64_t steady_samples = 0;  ///< The training samples of the steps past the warm-up.
};

/// Progress as training goes: called after each step and after each evaluation.
struct train_progress {
  int epoch = 0;  ///< 1-based.
  int epochs = 0;
  int64_t step = 0;         ///< Steps done in total.
  int64_t total_steps = 0;  ///< Planned steps in total.
  double recent_loss = 0.0;
  double samples_per_s = 0.0;
  const epoch_report* finished_epoch = nullptr;  ///< Set once per epoch, after evaluation.
};

/// Trains `w` on `data` with backend `b`. Validates options, each split as check_dataset
/// does (labels in [0, classes), as many rows of features as labels, finite features) and
/// that it matches the workload (feature size, classes); a compute failure is returned as its
/// error.
expected<train_report> train(const workload& w, const dataset_splits& data, backend& b,
                             const train_options& options,
                             const std::function<void(const train_progress&)>& on_progress = {});

/// Test-split loss and accuracy of parameters `params` (host, parameter_count() floats).
/// `test` is checked as train() checks its splits.
expected<batch_stats> evaluate(const workload& w, const dataset& test, backend& b,
                               std::span<const float> params, int64_t batch_size = 1000);

}  // namespace gflex::kernels
