/// @file
/// A blob whose sync fails leaves nothing behind: its file is closed and unlinked. Left open
/// after a failed fsync, the unlinked file kept its blocks for the process's life, and a disk
/// failing every sync leaked one blob (16 MiB and more) per round.
///
/// This binary's fsync stands in for libc's (it is found first), failing on demand.

#include <dlfcn.h>
#include <doctest/doctest.h>
#include <sys/stat.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <vector>

#include "gflex/runtime/checkpoint.hpp"
#include "gflex/runtime/secret_file.hpp"
#include "gflex/runtime/store.hpp"
#include "temp_dir.hpp"

namespace {
std::atomic<bool> failing_syncs{false};
std::atomic<bool> failing_directory_syncs{false};  // those of directories alone

size_t open_files() {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}
}  // namespace

extern "C" int fsync(int fd) {
  struct stat st {};
  const bool directory = ::fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
  if (failing_syncs.load() || (failing_directory_syncs.load() && directory)) {
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

TEST_CASE("a blob whose directory cannot be synced is removed, and the batch is refused") {
  // Taken for done, the commit that named the file was durable and its rename not: a power
  // loss then took the round's checkpoint back.
  gflex::test::temp_dir dir;
  auto s = gflex::store::open(dir.path());
  REQUIRE(s.has_value());
  std::vector<gflex::store_write> batch{{"big", std::vector<uint8_t>(size_t{17} << 20, 7)}};
  failing_directory_syncs = true;
  auto written = s->commit(batch);
  failing_directory_syncs = false;
  CHECK_FALSE(written.has_value());
  size_t files = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir.path() / "blobs"))
    files += e.is_regular_file() ? 1 : 0;
  CHECK(files == 0);
  CHECK_FALSE(s->get("big").value().has_value());
  CHECK(s->commit(batch).has_value());  // the directory syncs again: stored
}

TEST_CASE("a file whose directory cannot be synced is not said written") {
  // A node's key, a core's certificates, a fetched model: said written, they could be gone
  // after a power loss.
  gflex::test::temp_dir dir;
  const std::vector<uint8_t> bytes{1, 2, 3};
  failing_directory_syncs = true;
  auto made = gflex::write_new_file(dir.path() / "key", bytes);
  auto replaced = gflex::write_file_atomically(dir.path() / "model", bytes);
  failing_directory_syncs = false;
  CHECK_FALSE(made.has_value());
  CHECK_FALSE(std::filesystem::exists(dir.path() / "key"));  // a retry can make it
  CHECK_FALSE(replaced.has_value());
  CHECK(gflex::write_new_file(dir.path() / "key", bytes).has_value());
}
