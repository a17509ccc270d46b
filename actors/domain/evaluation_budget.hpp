#pragma once
/// @file
/// How much of its test split the core evaluates a job on. The core evaluates every job's
/// model on its own CPU, which all jobs share: a user's model may ask up to 2e12 FLOPs of a
/// sample's forward pass (model_limits::max_forward_flops), and 10,000 test samples of it
/// held that CPU for days. Past the budget, an evaluation takes as many test samples as fit,
/// spread evenly over the split, and the job's status says how many.

#include <cstdint>

namespace gflex {

/// FLOPs of forward passes one evaluation of one job may take: about half a minute of a
/// server CPU's core. The shipped models evaluate their whole test splits within it
/// (fashion-cnn: 8.5e10, the lm: about 1e11).
inline constexpr double core_evaluation_flops = 1e12;

/// Test samples one evaluation takes: all `test_samples` where their forward passes of
/// `forward_flops` each fit `budget`, else as many as fit, at least one (none of an empty
/// split).
int64_t evaluation_samples(double forward_flops, int64_t test_samples,
                           double budget = core_evaluation_flops);

}  // namespace gflex
