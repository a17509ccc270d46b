#pragma once
/// @file
/// A bound on how deeply TOML text nests, checked before it is parsed. toml++ (3.3, Debian's)
/// bounds arrays and inline tables nested in each other (256) but not the tables a dotted key
/// opens: `a.a.a. ... = 1`, 32,000 keys deep in a 64 KiB job spec, made the parser and every
/// pass over its tables recurse 32,000 deep, and the core that read a user's spec crashed
/// (SIGSEGV: its stack overflowed).

#include <cstddef>
#include <string>
#include <string_view>

#include "gflex/runtime/error.hpp"

namespace gflex {

/// The deepest any of our TOML texts (job specs, models) need nest.
inline constexpr int max_toml_nesting = 32;

/// How deeply `text` nests at most: brackets and braces open around a point (headers, arrays,
/// inline tables), plus the parts of the dotted key that ends there. Strings and comments are
/// skipped. An over-estimate for some values (1.5 counts as the key 1.5), never an under-one.
int toml_nesting(std::string_view text);

/// errc::invalid_argument naming `source` when `text` nests deeper than `max_depth`.
expected<void> check_toml_nesting(std::string_view text, const std::string& source,
                                  int max_depth = max_toml_nesting);

}  // namespace gflex
