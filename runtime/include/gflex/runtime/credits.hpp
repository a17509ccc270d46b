#pragma once
/// @file
/// Amounts of credits: integers in micro-credits (1 credit = 1,000,000), so that sums are
/// exact, written and read as decimal numbers of credits.

#include <cstdint>
#include <string>
#include <string_view>

#include "gflex/runtime/error.hpp"

namespace gflex {

/// Micro-credits per credit.
inline constexpr int64_t micro_per_credit = 1'000'000;

/// The most credits one amount may be (1e12 credits): anything larger is a mistake.
inline constexpr int64_t max_amount_micro = int64_t{1'000'000'000'000} * micro_per_credit;

/// Parses a non-negative decimal amount of credits ("12", "0.25", at most 6 decimals, at most
/// max_amount) into micro-credits; anything else is errc::invalid_argument saying why.
expected<int64_t> parse_credits(std::string_view text);

/// "12.5", "0.000001", "-3": micro-credits as a decimal number of credits.
std::string format_credits(int64_t micro);

}  // namespace gflex
