// The pseudo-gradient decoder (fp32 and int8 blocks): no input may crash it. The first byte
// picks the count the receiver expects, as a job knows its parameter count.
#include <cstdint>
#include <span>

#include "gflex/runtime/update_codec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint64_t expected = data[0] == 0 ? 535818 : data[0];
  auto u = gflex::decode_update(std::span<const uint8_t>(data + 1, size - 1), expected,
                                uint64_t{1} << 20);
  (void)u;
  return 0;
}
