// The Cap'n Proto tensor decoder: no input may crash it; what it accepts round-trips.
#include <cstdint>
#include <cstdlib>

#include "gflex/runtime/tensor_codec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto t = gflex::decode_tensor({data, size});
  if (!t) return 0;
  auto again = gflex::decode_tensor(gflex::encode_tensor(*t));
  if (!again || again->shape() != t->shape() || again->type() != t->type()) std::abort();
  return 0;
}
