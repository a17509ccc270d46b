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

#include <chrono>
#include <fstream>
#include <future>
#include <memory>
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

// A loopback port free now (bound, read, closed): for a core restarted on the same port.
inline uint16_t free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  const bool bound = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
                     ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  ::close(fd);
  REQUIRE(bound);
  return ntohs(addr.sin_port);
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
