#include "gflex/runtime/precision.hpp"

namespace gflex {

const char* to_string(math_precision p) noexcept {
  switch (p) {
    case math_precision::fp32:
      return "fp32";
    case math_precision::tf32:
      return "tf32";
    case math_precision::bf16:
      return "bf16";
  }
  return "?";
}

expected<math_precision> parse_math_precision(const std::string& name) {
  for (auto p : {math_precision::fp32, math_precision::tf32, math_precision::bf16})
    if (name == to_string(p)) return p;
  return error(errc::invalid_argument, "unknown precision '" + name + "' (use fp32, tf32 or bf16)");
}

}  // namespace gflex
