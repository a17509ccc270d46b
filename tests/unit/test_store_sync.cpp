/// @file
/// A blob whose sync fails leaves nothing behind: its file is closed and unlinked. Left open
/// after a failed fsync, the unlinked file kept its blocks for the process's life, and a disk
/// failing every sync leaked one blob (16 MiB and more) per round.
///
/// This binary's fsync stands in for libc's (it is found first), failing on demand.

#include <dlfcn.h>
#include <doctest/doctest.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <vector>

#include "gflex/runtime/store.hpp"
#include "temp_dir.hpp"

namespace {
std::atomic<bool> failing_syncs{false};

size_t open_files() {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}
}  // namespace

extern "C" int fsync(int fd) {
  if (failing_syncs.load()) {
    errno = EIO;
    return -1;
  }
  using real_fsync = int (*)(int);
  static const auto real = reinterpret_cast<real_fsync>(dlsym(RTLD_NEXT, "fsync"));
  return real(fd);
}

TEST_CASE("a blob whose sync fails is closed and removed, and the batch is refused") {
  gflex::test::temp_dir dir;
  auto s = gflex::store::open(dir.path());
  REQUIRE(s.has_value());
  const auto before = open_files();
  std::vector<gflex::store_write> batch{{"big", std::vector<uint8_t>(size_t{17} << 20, 7)}};
  failing_syncs = true;
  auto written = s->commit(batch);
  failing_syncs = false;
  CHECK_FALSE(written.has_value());
  CHECK(open_files() == before);
  size_t left = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir.path()))
    left += e.path().string().find(".tmp") != std::string::npos ? 1 : 0;
  CHECK(left == 0);
  CHECK_FALSE(s->get("big").value().has_value());
}
