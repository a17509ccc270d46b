#pragma once
/// @file
/// Whether text a peer sends (a node's device and GPU names) can be shown as it is: valid
/// UTF-8 without control characters. Shown raw, control bytes reach an operator's terminal
/// (escape sequences), and bytes that are not UTF-8 make JSON encoders throw (`gflex nodes
/// --json`, the dashboard's API).

#include <string_view>

namespace gflex {

/// Valid UTF-8 (shortest forms, no surrogates, at most U+10FFFF) with no C0 or C1 control
/// character and no DEL. The empty text is printable.
bool is_printable_text(std::string_view text) noexcept;

}  // namespace gflex
