#include "gflex/runtime/precision.hpp"

#include <array>

namespace gflex {

namespace {
constexpr std::array<enum_name<math_precision>, 3> k_precision_names{{
    {math_precision::fp32, "fp32"},
    {math_precision::tf32, "tf32"},
    {math_precision::bf16, "bf16"},
}};
}  // namespace

template <>
std::span<const enum_name<math_precision>> enum_names<math_precision>() noexcept {
  return k_precision_names;
}

const char* to_string(math_precision p) noexcept {
  return name_of(p, "?");
}

expected<math_precision> parse_math_precision(std::string_view name) {
  if (auto p = enum_from_name<math_precision>(name)) return *p;
  return error(errc::invalid_argument, "unknown precision '" + std::string(name) + "' (use " +
                                           enum_choices<math_precision>() + ")");
}

}  // namespace gflex
