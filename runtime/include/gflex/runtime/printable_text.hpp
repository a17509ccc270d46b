#pragma once
/// @file
/// Whether text a peer sends (a node's device and GPU names) can be shown as it is: valid
/// UTF-8 without control characters. Shown raw, control bytes reach an operator's terminal
/// (escape sequences), and bytes that are not UTF-8 make JSON encoders throw (`gflex nodes
/// --json`, the dashboard's API). And numbers written for people to read back.

#include <string>
#include <string_view>

namespace gflex {

/// Valid UTF-8 (shortest forms, no surrogates, at most U+10FFFF) with no C0 or C1 control
/// character and no DEL. The empty text is printable.
bool is_printable_text(std::string_view text) noexcept;

/// `text` with every byte that does not start a printable character (is_printable_text)
/// replaced by '?': what a peer's free text (an error it answers with) may be shown as.
std::string printable_text(std::string_view text);

/// The shortest text that parses back to exactly `x` ("0.001", "1e-13", "nan", "inf"): what
/// an error message quotes of a number a user gave (std::to_string printed 1e-13 as
/// "0.000000").
std::string format_double(double x);

}  // namespace gflex
