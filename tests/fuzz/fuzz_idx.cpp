// The IDX reader (plain and gzip): no file content may crash it. The input goes to a file
// in memory, as the reader takes paths.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "gflex/runtime/idx.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const int fd = memfd_create("idx", 0);
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  if (size == 0 || fd < 0) return 0;
  if (ftruncate(fd, 0) != 0 || pwrite(fd, data + 1, size - 1, 0) != static_cast<ssize_t>(size - 1))
    return 0;
  auto t = gflex::read_idx_u8(path, 1 + data[0] % 3);
  (void)t;
  return 0;
}
