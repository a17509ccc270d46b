// The checkpoint decoder: no input may crash it; what it accepts round-trips.
#include <cstdint>
#include <cstdlib>

#include "gflex/runtime/checkpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto c = gflex::decode_checkpoint({data, size});
  if (!c) return 0;
  auto again = gflex::decode_checkpoint(gflex::encode_checkpoint(*c));
  if (!again || again->tensors.size() != c->tensors.size() || again->step != c->step) std::abort();
  return 0;
}
