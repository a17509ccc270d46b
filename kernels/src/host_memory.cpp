/// @file
/// The host memory budget (host_memory.hpp) and what the machine has available.

#include "host_memory.hpp"

#include <atomic>
#include <fstream>
#include <sstream>

#include "gflex/kernels/backend.hpp"
#include "gflex/kernels/devices.hpp"

namespace gflex::kernels {

namespace {

std::atomic<uint64_t> limit{0};
std::atomic<uint64_t> in_use{0};

}  // namespace

namespace detail {

void reserve_host_memory(uint64_t bytes, const std::string& what) {
  if (bytes == 0) return;
  const uint64_t cap = limit.load(std::memory_order_relaxed);
  uint64_t current = in_use.load(std::memory_order_relaxed);
  do {
    if (cap != 0 && (bytes > cap || current > cap - bytes))
      throw compute_error(gflex::error(
          errc::device_error, what + ": out of host memory (--memory-limit " + std::to_string(cap) +
                                  " bytes, " + std::to_string(current) + " in use, " +
                                  std::to_string(bytes) + " asked)"));
  } while (!in_use.compare_exchange_weak(current, current + bytes, std::memory_order_relaxed));
}

void release_host_memory(uint64_t bytes) noexcept {
  if (bytes != 0) in_use.fetch_sub(bytes, std::memory_order_relaxed);
}

}  // namespace detail

void set_host_memory_limit(uint64_t bytes) {
  limit.store(bytes);
}

uint64_t host_memory_limit() {
  return limit.load();
}

uint64_t host_memory_in_use() {
  return in_use.load();
}

uint64_t available_host_memory() {
  // MemAvailable: what the kernel estimates can be allocated without swapping, page cache
  // it would drop included. Linux only; elsewhere (or on a kernel before 3.14) 0.
  std::ifstream meminfo("/proc/meminfo");
  std::string line;
  while (std::getline(meminfo, line)) {
    std::istringstream fields(line);
    std::string key, unit;
    uint64_t value = 0;
    if (fields >> key >> value >> unit && key == "MemAvailable:" && unit == "kB")
      return value * 1024;
  }
  return 0;
}

}  // namespace gflex::kernels
