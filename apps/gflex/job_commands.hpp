#pragma once
/// @file
/// `gflex submit | status | cancel | fetch | eval | nodes | demo`: the client side of jobs.

#include <CLI/CLI.hpp>

#include <functional>

namespace gflex::app {

/// Adds the job commands to the client's command line; `run` is set to the chosen one.
void add_job_commands(CLI::App& app, std::function<int()>& run);

}  // namespace gflex::app
