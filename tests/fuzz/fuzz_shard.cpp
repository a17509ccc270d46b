// The data set shard decoder (what a node receives from the core): no input may crash it.
#include <cstdint>

#include "gflex/runtime/shard.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto d = gflex::decode_shard({data, size});
  (void)d;
  return 0;
}
