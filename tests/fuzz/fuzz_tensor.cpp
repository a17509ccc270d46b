// The Cap'n Proto tensor decoder: no input may crash it; what it accepts round-trips.
#include <cstdint>
#include <cstdlib>

#include "gflex/runtime/tensor_codec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto t = gflex::decode_tensor({data, size});
  if (!t) return 0;
  // Values too, not its shape and type alone.
  const auto bytes = gflex::encode_tensor(*t);
  auto again = gflex::decode_tensor(bytes);
  if (!again || again->shape() != t->shape() || again->type() != t->type() ||
      gflex::encode_tensor(*again) != bytes)
    std::abort();
  return 0;
}
