#pragma once
/// @file
/// `gflex devices`: the CUDA devices this machine has, as a node would see and measure them.

#include <CLI/CLI.hpp>

#include <functional>

namespace gflex::app {

/// Adds `devices` to the client's command line; `run` is set to the chosen one.
void add_devices_command(CLI::App& app, std::function<int()>& run);

}  // namespace gflex::app
