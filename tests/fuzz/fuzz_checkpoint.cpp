// The checkpoint decoder: no input may crash it; what it accepts round-trips.
#include <cstdint>
#include <cstdlib>

#include "gflex/runtime/checkpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto c = gflex::decode_checkpoint({data, size});
  if (!c) return 0;
  // All of it: names, shapes and values too (a count and a step alone passed an encoder
  // that changed values).
  const auto bytes = gflex::encode_checkpoint(*c);
  auto again = gflex::decode_checkpoint(bytes);
  if (!again || gflex::encode_checkpoint(*again) != bytes) std::abort();
  return 0;
}
