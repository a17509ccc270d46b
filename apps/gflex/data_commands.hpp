#pragma once
/// @file
/// `gflex data push | list | show | rm`: users' data sets on a core. A push reads and checks
/// the files here (format, dtype, shapes, labels in range), so that a bad file is refused
/// before anything is sent; the core checks every shard again and stores the set.

#include <CLI/CLI.hpp>

#include <functional>

namespace gflex::app {

/// Adds the data commands to the client's command line; `run` is set to the chosen one.
void add_data_commands(CLI::App& app, std::function<int()>& run);

}  // namespace gflex::app
