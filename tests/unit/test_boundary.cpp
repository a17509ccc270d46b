/// @file
/// The guard on handles that peers hold (actors/protocol/boundary.hpp), over a real CAF
/// connection on loopback: a child process publishes a plain actor and a guarded one, and
/// this process, as a hostile peer, sends each the system messages a peer can forge. The
/// plain actor dies of them (so the attack is real and the test can fail); the guarded one
/// answers afterwards and has counted what it dropped.

#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <caf/io/middleman.hpp>

#include <chrono>
#include <cstdio>
#include <thread>

#include "boundary.hpp"
#include "message_limit.hpp"
#include "messages.hpp"

using namespace gflex;

namespace {

using probe_atom = caf::atom_constant<caf::atom("probe")>;

// Answers (probe_atom) with how many system messages its guard dropped (0 for a plain one).
struct counter_state {
  static inline const char* name = "counter";
};
caf::behavior guarded_counter(
    caf::stateful_actor<counter_state, guarded<caf::event_based_actor>>* self) {
  self->set_error_handler([](caf::error&) {});
  return {[=](probe_atom) { return self->refused(); }};
}
caf::behavior plain_counter(caf::event_based_actor*) {
  return {[](probe_atom) { return uint64_t{0}; }};
}

// The child: publishes (probe_atom) -> (plain, guarded) on `port`'s listener and lives until
// killed by the parent.
[[noreturn]] void serve(int ready_fd) {
  caf::actor_system_config cfg;
  configure_actor_system(cfg);
  cfg.load<caf::io::middleman>();
  caf::actor_system sys{cfg};
  auto plain = sys.spawn(plain_counter);
  auto guard = sys.spawn(guarded_counter);
  auto door = sys.spawn([=](caf::event_based_actor*) -> caf::behavior {
    return {[=](probe_atom, int) { return caf::make_message(plain, guard); }};
  });
  auto port = sys.middleman().publish(door, 0, "127.0.0.1");
  uint16_t p = port ? *port : 0;
  if (::write(ready_fd, &p, sizeof p) != sizeof p) _exit(3);
  for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}

}  // namespace

TEST_CASE("a peer's forged exit, down and error messages kill a plain actor, not a guarded one") {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  std::fflush(nullptr);  // the child must not print what this process has buffered
  pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::close(fds[0]);
    serve(fds[1]);
  }
  ::close(fds[1]);
  uint16_t port = 0;
  bool read_ok = ::read(fds[0], &port, sizeof port) == static_cast<ssize_t>(sizeof port);
  ::close(fds[0]);
  struct reaper {
    pid_t pid;
    ~reaper() {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  } reap{child};
  REQUIRE(read_ok);
  REQUIRE(port != 0);

  caf::actor_system_config cfg;
  configure_actor_system(cfg);
  cfg.load<caf::io::middleman>();
  caf::actor_system sys{cfg};
  auto door = sys.middleman().remote_actor("127.0.0.1", port);
  REQUIRE_MESSAGE(static_cast<bool>(door), sys.render(door.error()));
  caf::scoped_actor self{sys};
  caf::actor plain, guard;
  self->request(*door, std::chrono::seconds(10), probe_atom::value, 0)
      .receive(
          [&](caf::actor& p, caf::actor& g) {
            plain = p;
            guard = g;
          },
          [&](caf::error& e) { FAIL(sys.render(e)); });
  REQUIRE(plain);
  REQUIRE(guard);
  self->monitor(plain);

  for (const auto& target : {plain, guard}) {
    // A forged down message about the door, an unsolicited error, exit messages of every
    // kind, the unconditional one last.
    self->send(target, caf::down_msg{door->address(), caf::exit_reason::kill});
    self->send(target, caf::make_error(caf::sec::runtime_error));
    self->send_exit(target, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(target, caf::exit_reason::kill);
  }
  bool plain_died = false;
  self->receive([&](caf::down_msg& d) { plain_died = d.source == plain.address(); },
                caf::after(std::chrono::seconds(10)) >> [] {});
  CHECK_MESSAGE(plain_died, "the attack does not kill an unguarded actor: the test proves nothing");

  uint64_t dropped = 0;
  bool answered = false;
  self->request(guard, std::chrono::seconds(10), probe_atom::value)
      .receive(
          [&](uint64_t n) {
            answered = true;
            dropped = n;
          },
          [&](caf::error& e) { MESSAGE("guarded actor: " << sys.render(e)); });
  CHECK(answered);
  CHECK(dropped == 4);
}

TEST_CASE("the message size limit is in effect in this process") {
  // The same check run_core, run_node and client::connect make before they start: CAF's
  // configure_read resolves to the interposed one and libcaf_io does not bind symbolically.
  auto in_effect = gflex::message_limit_in_effect();
  CHECK_MESSAGE(in_effect.has_value(), (in_effect ? "" : in_effect.error().message()));
}
