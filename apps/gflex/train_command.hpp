#pragma once
/// @file
/// `gflex train`: single-process training with a progress bar.

#include <CLI/CLI.hpp>

#include <functional>

namespace gflex::app {

/// Adds `train` to the client's command line; `run` is set to the chosen one.
void add_train_commands(CLI::App& app, std::function<int()>& run);

}  // namespace gflex::app
