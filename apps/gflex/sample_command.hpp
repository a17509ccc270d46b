#pragma once
/// @file
/// `gflex sample CHECKPOINT --prompt TEXT`: text from a fetched language-model checkpoint.

#include <CLI/CLI.hpp>

#include <functional>

namespace gflex::app {

/// Adds `sample` to the client's command line; `run` is set to it when chosen.
void add_sample_command(CLI::App& app, std::function<int()>& run);

}  // namespace gflex::app
