// Stored reputation records: no input may crash the decoder; an accepted record round-trips.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "reputation.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto r = gflex::decode_reputation(text);
  if (!r) return 0;
  auto again = gflex::decode_reputation(gflex::encode_reputation(*r));
  if (!again || gflex::encode_reputation(*again) != gflex::encode_reputation(*r)) std::abort();
  return 0;
}
