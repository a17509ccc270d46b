/// @file
/// The busy actors' mailbox gauge (core_metrics::note_mailbox in actors/core/core_metrics.hpp):
/// a rise is written at most every 250 ms, a fall at once, so that the drained mailbox a burst
/// leaves behind shows as 0 and an alert on the backlog clears.

#include <doctest/doctest.h>

#include <chrono>
#include <cstddef>
#include <string>

#include "core_metrics.hpp"

using namespace gflex;

namespace {

// The parts of a CAF stateful actor that note_mailbox reads: its state's clock and the
// number of messages taken in and not yet handled.
struct fake_queue {
  std::size_t waiting = 0;
  std::size_t total_task_size() const { return waiting; }
};

struct fake_mailbox {
  fake_queue q;
  fake_queue& queue() { return q; }
};

struct fake_state {
  std::chrono::steady_clock::time_point mailbox_noted{};
};

struct fake_actor {
  fake_state state;
  fake_mailbox box;
  fake_mailbox& mailbox() { return box; }

  // The actor's busiest handler runs with `waiting` messages behind it.
  void handle(std::size_t waiting, const char* role) {
    box.q.waiting = waiting;
    core_metrics::note_mailbox(this, role);
  }
};

double shown(const char* role) {
  return core_metrics::mailbox_messages(role).value();
}

}  // namespace

TEST_SUITE("mailbox gauge") {
  TEST_CASE("the drained mailbox shows at once, even right after a burst's peak") {
    fake_actor a;
    a.handle(40, "test_drained");
    CHECK(shown("test_drained") == 40);
    a.handle(0, "test_drained");
    CHECK(shown("test_drained") == 0);
    const std::string text = metrics::render();
    CHECK(text.find("gflex_core_mailbox_messages{actor=\"test_drained\"} 0") != std::string::npos);
  }

  TEST_CASE("falls are written at once; rises at most every 250 ms") {
    fake_actor a;
    a.handle(30, "test_throttled");
    CHECK(shown("test_throttled") == 30);
    a.handle(12, "test_throttled");
    CHECK(shown("test_throttled") == 12);
    // A rise within 250 ms of the last one written waits.
    a.handle(25, "test_throttled");
    CHECK(shown("test_throttled") == 12);
    // 250 ms later it is written.
    a.state.mailbox_noted -= std::chrono::milliseconds(300);
    a.handle(25, "test_throttled");
    CHECK(shown("test_throttled") == 25);
  }
}
