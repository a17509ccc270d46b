#pragma once
/// @file
/// The client commands' shared start: a connection to the core named by --core.

#include <optional>
#include <string>

#include "gflex/gflex.hpp"

namespace gflex::app {

/// Connects to the core at `core` (HOST:PORT); returns 0, or the exit code after logging why
/// not (2 for a malformed address, 1 for an unreachable core).
int connect_core(const std::string& core, std::optional<client>& out);

}  // namespace gflex::app
