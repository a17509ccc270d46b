// The model spec parser and planner, which the core runs on every client's model at submit
// and every node on every assignment: no text may crash them, the planner's shape arithmetic
// included, and every model the parser accepts reads back the same from to_toml.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "gflex/kernels/model_spec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto spec = gflex::kernels::parse_model_spec(text, "fuzz.toml");
  if (!spec) return 0;
  const auto toml = gflex::kernels::to_toml(*spec);
  auto again = gflex::kernels::parse_model_spec(toml, "again.toml");
  if (!again || gflex::kernels::to_toml(*again) != toml) std::abort();
  (void)gflex::kernels::plan_model(*spec);
  return 0;
}
