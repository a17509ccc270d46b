#pragma once
/// @file
/// The arithmetic precision a job allows its GEMMs and convolutions.

#include <cstdint>
#include <string>
#include <string_view>

#include "gflex/runtime/enum_names.hpp"
#include "gflex/runtime/error.hpp"

namespace gflex {

/// How GEMMs and convolutions may round their products. FP32 is exact single precision
/// everywhere. TF32 (10-bit mantissa products, FP32 accumulation) and BF16 (7-bit) use
/// tensor cores on GPUs that have them; a job opts into them. The CPU backend computes every
/// precision in FP32 (more exact than asked, never less).
enum class math_precision : uint8_t { fp32 = 0, tf32 = 1, bf16 = 2 };

template <>
std::span<const enum_name<math_precision>> enum_names<math_precision>() noexcept;

/// "fp32", "tf32", "bf16".
const char* to_string(math_precision p) noexcept;
/// The precision named `name`; anything else is errc::invalid_argument.
expected<math_precision> parse_math_precision(std::string_view name);

}  // namespace gflex
