#pragma once
/// @file
/// Logging set-up. The project logs through spdlog's default logger, to stderr.

#include <string_view>

#include "gflex/runtime/error.hpp"

namespace gflex {

/// Sets the log level from a name (trace, debug, info, warn, error, critical, off) and
/// directs the default logger to stderr. An unknown name is an errc::invalid_argument.
expected<void> init_logging(std::string_view level);

}  // namespace gflex
