// The job spec parser: no text may crash it, and every spec it accepts survives to_toml and
// parsing again unchanged.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "gflex/runtime/job_spec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto spec = gflex::parse_job_spec(text, "fuzz.toml");
  if (!spec) return 0;
  auto again = gflex::parse_job_spec(gflex::to_toml(*spec), "again.toml");
  if (!again || !(*again == *spec)) std::abort();
  return 0;
}
