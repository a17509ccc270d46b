#include <doctest/doctest.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "captured_log.hpp"

using namespace gflex;

TEST_SUITE("captured_log") {
  TEST_CASE("a thread that logs while captures come and go is never cut off mid-call") {
    // An actor's thread logs through spdlog's default logger while a test's capture of it
    // ends: the capture freed its logger and text, and the thread's call, already through
    // the raw pointer, ended the process with "pure virtual method called".
    // Between captures the lines go nowhere: on the console they would be millions.
    const auto before = spdlog::default_logger();
    spdlog::set_default_logger(
        std::make_shared<spdlog::logger>("quiet", std::make_shared<spdlog::sinks::null_sink_mt>()));
    std::atomic<bool> stop{false};
    std::atomic<long> logged{0};
    std::thread writer([&] {
      while (!stop.load()) {
        spdlog::warn("a line from another thread, {} long enough to take a while to format {}",
                     logged.load(), std::string(256, 'x'));
        logged.fetch_add(1);
      }
    });
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    int captures = 0;
    while (std::chrono::steady_clock::now() < until) {
      test::captured_log log(spdlog::level::warn);
      std::this_thread::yield();
      ++captures;
    }
    long seen = 0;
    {
      test::captured_log log(spdlog::level::warn);
      const long before = logged.load();
      while (logged.load() < before + 2) std::this_thread::yield();
      seen = log.count("a line from another thread");
    }
    stop.store(true);
    writer.join();
    spdlog::set_default_logger(before);
    MESSAGE(captures << " captures came and went while " << logged.load() << " lines were logged");
    CHECK(captures > 100);
    CHECK(seen >= 1);  // a capture still holds what is logged while it lives
  }
}
