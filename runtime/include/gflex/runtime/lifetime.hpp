#pragma once
/// @file
/// Lifetimes given on command lines (join tokens' --expires).

#include <cstdint>
#include <string_view>

#include "gflex/runtime/error.hpp"

namespace gflex {

/// Parses a lifetime in seconds: "0" (never expires), or a positive count with s, m, h or d
/// ("90m", "7d"); at most ten years. Errors name --expires.
expected<int64_t> parse_lifetime(std::string_view text);

}  // namespace gflex
