#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <vector>

#include "gflex/runtime/cpu_usage.hpp"

using namespace gflex;

namespace {

// A child process that keeps one CPU busy until it is killed; its pid.
pid_t spinning_child() {
  pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    volatile uint64_t y = 0;
    for (;;) y = y + 1;
  }
  return child;
}

}  // namespace

TEST_CASE("cpu_monitor sees another process keep a CPU busy, and not this one's own work") {
  cpu_monitor m;
  // This process spins for a while: that is its own use, not others'.
  auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(300);
  volatile uint64_t x = 0;
  while (std::chrono::steady_clock::now() < until) x = x + 1;
  auto own = m.others_busy();
  REQUIRE(own.has_value());
  CHECK(*own >= 0.0);
  CHECK(*own <= 1.0);
  const double cpus = static_cast<double>(std::max(1u, std::thread::hardware_concurrency()));
  // A child process spins: others' use rises by about one CPU's share.
  pid_t child = spinning_child();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  m.others_busy();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  auto busy = m.others_busy();
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  REQUIRE(busy.has_value());
  CHECK(*busy >= 0.6 / cpus);  // one CPU of `cpus`, less what the scheduler gave others
  CHECK(*busy <= 1.0);
}

TEST_CASE("cpu_monitor judges by the last few seconds, not since a call long ago") {
  // Averaged since the previous call, a node idle for hours took work while its owner's build
  // kept every CPU busy: a few seconds of it were nothing against the hours.
  cpu_monitor m;
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // idle, "overnight"
  const double cpus = static_cast<double>(std::max(1u, std::thread::hardware_concurrency()));
  pid_t child = spinning_child();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // The last call is older than a second: a fresh window of 300 ms is measured.
  auto busy = m.others_busy(std::chrono::seconds(1), std::chrono::milliseconds(300));
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  REQUIRE(busy.has_value());
  CHECK(*busy >= 0.6 / cpus);
}

TEST_CASE("cpu_monitor asked twice at once still sees another process keep the CPUs busy") {
  // Assignments back to back asked within a few milliseconds: /proc/stat had moved by no clock
  // tick, nothing was known, and an idle-only node took work on a busy machine.
  cpu_monitor m;
  const unsigned cpus = std::max(1u, std::thread::hardware_concurrency());
  std::vector<pid_t> children;
  for (unsigned i = 0; i < cpus; ++i) children.push_back(spinning_child());
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  auto first = m.others_busy();
  auto second = m.others_busy();
  for (pid_t c : children) kill(c, SIGKILL);
  for (pid_t c : children) waitpid(c, nullptr, 0);
  REQUIRE(first.has_value());
  REQUIRE(second.has_value());
  CHECK(*first > 0.5);
  CHECK(*second > 0.5);
}
