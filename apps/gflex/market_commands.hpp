#pragma once
/// @file
/// `gflex account | ledger verify | topup`: the client side of the credit ledger.

#include <CLI/CLI.hpp>

#include <functional>

namespace gflex::app {

/// Adds the ledger commands to the client's command line; `run` is set to the chosen one.
void add_market_commands(CLI::App& app, std::function<int()>& run);

}  // namespace gflex::app
