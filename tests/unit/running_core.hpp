#pragma once
/// @file
/// A core run by run_core on a thread of the test's process, as a program embedding it runs
/// it: SIGTERM (raised by the test) stops it.

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>

#include "gflex/gflex.hpp"
#include "temp_dir.hpp"

namespace gflex::test {

struct nothing_beside : core_service {};

// Runs a core on a thread; `listening` is ready once it serves.
struct running_core {
  std::promise<void> listening;
  std::future<int> code;

  explicit running_core(const core_config& config) {
    auto ready = listening.get_future();
    code = std::async(std::launch::async, [this, config] {
      return run_core(config, [this](local_core&) -> expected<std::unique_ptr<core_service>> {
        listening.set_value();
        return std::unique_ptr<core_service>(std::make_unique<nothing_beside>());
      });
    });
    REQUIRE(ready.wait_for(std::chrono::seconds(60)) == std::future_status::ready);
  }
};

// A core run by run_core in a child process, killed (SIGKILL) at the end or by kill(): its
// clients see its links close, as when a real core's process dies. Ready once its port takes
// connections.
// Stops process `pid` (SIGSTOP) and returns once every thread of it has stopped (at most
// 5 s): kill() returns before a busy process's threads have all taken the stop, and a thread
// still running answered a request sent right after it.
inline bool stop_process(pid_t pid) {
  if (::kill(pid, SIGSTOP) != 0) return false;
  const std::string tasks = "/proc/" + std::to_string(pid) + "/task";
  for (int tries = 0; tries < 500; ++tries) {
    bool all_stopped = true;
    std::error_code ec;
    for (const auto& task : std::filesystem::directory_iterator(tasks, ec)) {
      std::ifstream stat(task.path() / "stat");
      std::string line;
      std::getline(stat, line);
      // "pid (comm) S ...": the state follows the last ')' (a thread's name may hold one).
      const auto close = line.rfind(')');
      const char state =
          close != std::string::npos && close + 2 < line.size() ? line[close + 2] : '?';
      if (state != 'T' && state != 't') all_stopped = false;
    }
    if (!ec && all_stopped) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

struct forked_core {
  pid_t pid = -1;

  explicit forked_core(const core_config& config) {
    const pid_t parent = ::getpid();
    pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      // Killed with the test's process: one that crashed (a sanitizer's abort) left its
      // core running for good.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(1);
      const int code = run_core(config, [](local_core&) -> expected<std::unique_ptr<core_service>> {
        return std::unique_ptr<core_service>(std::make_unique<nothing_beside>());
      });
      ::_exit(code);
    }
    bool listening = false;
    for (int tries = 0; tries < 1200 && !listening; ++tries) {
      const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      addr.sin_port = htons(config.port);
      listening = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
      ::close(fd);
      if (!listening) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (!listening) kill();
    REQUIRE_MESSAGE(listening, "the forked core did not listen within 60 s");
  }
  ~forked_core() { kill(); }
  forked_core(const forked_core&) = delete;
  forked_core& operator=(const forked_core&) = delete;

  void kill() {
    if (pid <= 0) return;
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    pid = -1;
  }
};

// A core's credentials made in `dir`, and its config: any free port on loopback, plain TCP.
inline core_config local_core_config(const temp_dir& dir) {
  REQUIRE(init_core(dir.path()).has_value());
  core_config config;
  config.data_dir = dir.path();
  config.port = 0;
  config.insecure = true;
  return config;
}

// A loopback port free now, below the kernel's ephemeral range, and handed out once in this
// process: for a core restarted on the same port. A port bind(0) gave lay in that range, where
// another test process's bind(0) or outgoing connection could take it while the first core
// was down; the second core then could not listen, or the test reached the wrong server. From
// 10000, under the integration tests' ports (20000 up).
inline uint16_t free_loopback_port() {
  static std::mutex mutex;
  static std::set<uint16_t> given;
  static std::mt19937 pick{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mutex);
  int ephemeral_low = 32768;
  std::ifstream("/proc/sys/net/ipv4/ip_local_port_range") >> ephemeral_low;
  const int high = std::min(ephemeral_low, 20000);
  const int low = high - 10000 > 1024 ? high - 10000 : 1024;
  REQUIRE_MESSAGE(high - low >= 1000,
                  "ip_local_port_range starts at " << ephemeral_low << ": no ports below it");
  std::uniform_int_distribution<int> in_range(low, high - 1);
  for (int tries = 0; tries < 1000; ++tries) {
    const auto port = static_cast<uint16_t>(in_range(pick));
    if (given.count(port) != 0) continue;
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    const bool bound = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    ::close(fd);
    if (!bound) continue;  // in use
    given.insert(port);
    return port;
  }
  FAIL("no free loopback port in " << low << "-" << high - 1 << " after 1000 tries");
  return 0;
}

// The operator's API key that init_core wrote in `dir`.
inline std::string operator_key(const temp_dir& dir) {
  std::string key;
  std::ifstream in(dir.path() / "operator.key");
  std::getline(in, key);
  return key;
}

// How a test's client reaches a core made by local_core_config(dir) in a child process: the
// operator's key, plain TCP.
inline client_options operator_link(const temp_dir& dir) {
  client_options link;
  link.api_key = operator_key(dir);
  link.insecure = true;
  return link;
}

}  // namespace gflex::test
