#pragma once
/// @file
/// A short calibration a node runs at start: how many fashion-mlp training samples per
/// second one worker's backend processes. The market divides a node's price by it, so that
/// jobs buy work, not time.

#include "gflex/kernels/backend.hpp"
#include "gflex/runtime/error.hpp"

namespace gflex::kernels {

/// Runs fashion-mlp training steps (batch 128, synthetic data: the cost does not depend on
/// the values) on `b` for about `seconds` and returns samples per second.
expected<double> calibrate_throughput(backend& b, double seconds = 0.25);

}  // namespace gflex::kernels
