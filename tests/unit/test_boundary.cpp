/// @file
/// The guard on handles that peers hold (actors/protocol/boundary.hpp), over a real CAF
/// connection on loopback: a child process publishes a plain actor and a guarded one, and
/// this process, as a hostile peer, sends each the system messages a peer can forge. The
/// plain actor dies of them (so the attack is real and the test can fail); the guarded one
/// answers afterwards and has counted what it dropped.

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <caf/binary_deserializer.hpp>
#include <caf/binary_serializer.hpp>
#include <caf/io/basp/header.hpp>
#include <caf/io/middleman.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "boundary.hpp"
#include "captured_log.hpp"
#include "message_limit.hpp"
#include "messages.hpp"
#include "routed_messages.hpp"

using namespace gflex;

namespace {

using probe_atom = caf::atom_constant<caf::atom("probe")>;

// Answers (probe_atom) with how many system messages its guard dropped (0 for a plain one),
// and (caf::get_atom) with how many messages it dropped for where they came from.
struct counter_state {
  static inline const char* name = "counter";
};
using guarded_counter_actor = caf::stateful_actor<counter_state, guarded<caf::event_based_actor>>;
caf::behavior guarded_counter(guarded_counter_actor* self) {
  self->set_error_handler([](caf::error&) {});
  return {
      [=](probe_atom) { return self->refused(); },
      [=](caf::get_atom) { return self->strangers(); },
  };
}
caf::behavior plain_counter(caf::event_based_actor*) {
  return {[](probe_atom) { return uint64_t{0}; }};
}

// Takes every (probe_atom, text) and never answers: what an asker waits on.
struct silent_state {
  std::vector<caf::typed_response_promise<std::string>> held;
};
caf::behavior silent(caf::stateful_actor<silent_state>* self) {
  return {[=](probe_atom, const std::string&) -> caf::result<std::string> {
    self->state.held.push_back(self->make_response_promise<std::string>());
    return self->state.held.back();
  }};
}

// Answers (probe_atom, int, int) with what `silent` answered it ("no answer" after 3 s,
// "failed" when its request failed otherwise): as
// the front door asks the gatekeeper whose a key is, and acts on the answer.
template <class Self>
caf::behavior asker(Self* self, caf::actor quiet) {
  self->set_error_handler([](caf::error&) {});
  return {[=](probe_atom, int, int) -> caf::result<std::string> {
    auto rp = self->template make_response_promise<std::string>();
    self->request(quiet, std::chrono::seconds(3), probe_atom::value, std::string("whose?"))
        .then([=](std::string& answer) mutable { rp.deliver(answer); },
              [=](caf::error& e) mutable {
                rp.deliver(std::string(e == caf::sec::request_timeout ? "no answer" : "failed"));
              });
    return rp;
  }};
}
caf::behavior guarded_asker(guarded_counter_actor* self, caf::actor quiet) {
  return asker(self, quiet);
}
caf::behavior plain_asker(caf::event_based_actor* self, caf::actor quiet) {
  return asker(self, quiet);
}

// The child: publishes its door on a listener and lives until killed by the parent. The door
// answers (probe_atom, int) with a plain and a guarded counter; (probe_atom, int, int) with a
// guarded and a plain asker, a guarded counter bound to no peer and one bound to the asking
// process; (caf::get_atom) with how many strangers' messages the one bound to none dropped;
// (caf::get_atom, key) with whether CAF's config server of the child holds a value at `key`.
[[noreturn]] void serve(int ready_fd, bool standalone) {
  if (standalone) gflex::refuse_third_party_nodes();
  caf::actor_system_config cfg;
  configure_actor_system(cfg);
  cfg.load<caf::io::middleman>();
  caf::actor_system sys{cfg};
  auto plain = sys.spawn(plain_counter);
  auto guard = sys.spawn(guarded_counter);
  auto quiet = sys.spawn(silent);
  auto guarded_ask = sys.spawn(guarded_asker, quiet);
  auto plain_ask = sys.spawn(plain_asker, quiet);
  auto elsewhere = sys.spawn(guarded_counter);
  auto here = sys.spawn(guarded_counter);
  auto counter_of = [](const caf::actor& a) {
    return static_cast<guarded_counter_actor*>(caf::actor_cast<caf::abstract_actor*>(a));
  };
  counter_of(elsewhere)->bind_peer(caf::node_id{});
  auto handles_seen = std::make_shared<int>(0);
  auto door = sys.spawn([=](caf::event_based_actor* self) -> caf::behavior {
    return {
        [=](probe_atom, const caf::actor& handle, bool) {
          if (handle) ++*handles_seen;
        },
        [=](caf::get_atom, int) { return *handles_seen; },
        [=](probe_atom, int) { return caf::make_message(plain, guard); },
        [=](probe_atom, int, int) {
          counter_of(here)->bind_peer(self->current_sender()->node());
          return caf::make_message(guarded_ask, plain_ask, elsewhere, here);
        },
        [=](caf::get_atom) { return counter_of(elsewhere)->strangers(); },
        [=](caf::get_atom, const std::string& key) -> caf::result<bool> {
          auto rp = self->make_response_promise<bool>();
          auto config_serv =
              caf::actor_cast<caf::actor>(self->system().registry().get(caf::atom("ConfigServ")));
          self->request(config_serv, std::chrono::seconds(5), caf::get_atom::value, key)
              .then([=](std::string&, caf::message& value) mutable { rp.deliver(!value.empty()); },
                    [=](caf::error& e) mutable { rp.deliver(std::move(e)); });
          return rp;
        },
    };
  });
  auto port = sys.middleman().publish(door, 0, "127.0.0.1");
  uint16_t p = port ? *port : 0;
  if (::write(ready_fd, &p, sizeof p) != sizeof p) _exit(3);
  for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}

// A child process serving (serve above), killed and reaped at the end of the scope.
struct served_child {
  pid_t pid = -1;
  uint16_t port = 0;
  explicit served_child(bool standalone = false) {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    std::fflush(nullptr);  // the child must not print what this process has buffered
    pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::close(fds[0]);
      serve(fds[1], standalone);
    }
    ::close(fds[1]);
    const bool read_ok = ::read(fds[0], &port, sizeof port) == static_cast<ssize_t>(sizeof port);
    ::close(fds[0]);
    if (!read_ok) port = 0;
  }
  ~served_child() {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  }
};

// Asks `whom` (probe_atom) -> count; nullopt when it does not answer within `wait`.
std::optional<uint64_t> probe(caf::scoped_actor& self, const caf::actor& whom,
                              std::chrono::seconds wait = std::chrono::seconds(10)) {
  std::optional<uint64_t> out;
  self->request(whom, wait, probe_atom::value)
      .receive([&](uint64_t n) { out = n; }, [&](caf::error&) {});
  return out;
}

// This process as a hostile peer of a served child: its own actor system, connected to the
// child's door.
struct hostile_peer {
  served_child child;
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  std::unique_ptr<caf::scoped_actor> self;
  caf::actor door;

  hostile_peer() {
    REQUIRE(child.port != 0);
    configure_actor_system(cfg);
    cfg.load<caf::io::middleman>();
    sys = std::make_unique<caf::actor_system>(cfg);
    self = std::make_unique<caf::scoped_actor>(*sys);
    auto d = sys->middleman().remote_actor("127.0.0.1", child.port);
    REQUIRE_MESSAGE(static_cast<bool>(d), sys->render(d.error()));
    door = *d;
  }
  ~hostile_peer() {
    self.reset();
    sys.reset();
  }

  // What the door answers (probe_atom, 0, 0): the guarded and plain askers, and the counters
  // bound to no peer and to this process.
  std::vector<caf::actor> second_set() {
    std::vector<caf::actor> out;
    (*self)
        ->request(door, std::chrono::seconds(10), probe_atom::value, 0, 0)
        .receive(
            [&](caf::actor& a, caf::actor& b, caf::actor& c, caf::actor& d) {
              out = {a, b, c, d};
            },
            [&](caf::error& e) { FAIL(sys->render(e)); });
    REQUIRE(out.size() == 4);
    return out;
  }
};

// What the plain and the guarded asker (in that order) answer while this peer sends each, from
// `sender`, `forged` as the response to every id an actor's first requests take: each asks
// the silent actor (its request ids count from 1) when asked.
std::pair<std::string, std::string> answers_under_forgery(hostile_peer& peer,
                                                          const caf::strong_actor_ptr& sender,
                                                          const caf::message& forged) {
  auto& self = *peer.self;
  const auto set = peer.second_set();
  std::vector<std::string> out;
  for (const auto& target : {set[1], set[0]}) {
    std::string answer;
    auto asked = self->request(target, std::chrono::seconds(10), probe_atom::value, 0, 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    for (uint64_t id = 1; id <= 64; ++id)
      target->enqueue(sender, caf::make_message_id(id).response_id(), forged, nullptr);
    std::move(asked).receive([&](std::string& a) { answer = a; },
                             [&](caf::error& e) { answer = peer.sys->render(e); });
    out.push_back(answer);
  }
  return {out[0], out[1]};
}

// Asks the served child's door (probe_atom, 0) over a new connection, until it answers:
// its plain and guarded counters; empty handles when it never does within 5 s.
std::pair<caf::actor, caf::actor> counters_anew(hostile_peer& peer) {
  for (int tries = 0; tries < 50; ++tries) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto door = peer.sys->middleman().remote_actor("127.0.0.1", peer.child.port);
    if (!door) continue;
    std::pair<caf::actor, caf::actor> out;
    (*peer.self)
        ->request(*door, std::chrono::seconds(5), probe_atom::value, 0)
        .receive(
            [&](caf::actor& p, caf::actor& g) {
              out.first = p;
              out.second = g;
            },
            [&](caf::error&) {});
    if (out.second) return out;
  }
  return {};
}

// A raw BASP frame: its header (as caf::io::basp serializes it, with `flags`) and payload.
std::vector<char> basp_frame(caf::actor_system& sys, caf::io::basp::message_type op,
                             uint64_t operation_data, caf::actor_id source, caf::actor_id dest,
                             const std::vector<char>& payload, uint8_t flags = 0) {
  caf::io::basp::header hdr{op,     flags, static_cast<uint32_t>(payload.size()), operation_data,
                            source, dest};
  std::vector<char> out;
  caf::binary_serializer sink{sys, out};
  REQUIRE_FALSE(sink(hdr));
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

bool read_exactly(int fd, char* at, size_t n) {
  while (n > 0) {
    const ssize_t got = ::recv(fd, at, n, 0);
    if (got <= 0) return false;
    at += got;
    n -= static_cast<size_t>(got);
  }
  return true;
}

// A TCP connection to a served child on `port`, its server handshake read and set aside.
int raw_connection(caf::actor_system& sys, uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(port);
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) == 0);
  std::vector<char> head(caf::io::basp::header_size);
  REQUIRE(read_exactly(fd, head.data(), head.size()));
  caf::io::basp::header theirs;
  caf::binary_deserializer source{sys, head};
  REQUIRE_FALSE(source(theirs));
  std::vector<char> rest(theirs.payload_len);
  REQUIRE(read_exactly(fd, rest.data(), rest.size()));
  return fd;
}

// A node id no process has (`n` tells them apart).
caf::node_id made_up_node(uint8_t n) {
  caf::node_id::default_data::host_id_type host;
  host.fill(n);
  return caf::make_node_id(4242, host);
}

// Whether the peer at the other end of `fd` closes it within `wait` (what it sends meanwhile
// is read and set aside).
bool closed_by_peer(int fd, std::chrono::milliseconds wait) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(wait.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((wait.count() % 1000) * 1000);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[4096];
  for (;;) {
    const ssize_t got = ::recv(fd, buf, sizeof buf, 0);
    if (got == 0) return true;
    if (got < 0) return errno == ECONNRESET;
  }
}

// Sends a raw client handshake as `self_node` over `fd`, then `frames`.
void send_raw(caf::actor_system& sys, int fd, const caf::node_id& self_node,
              const std::vector<std::vector<char>>& frames) {
  std::vector<char> hello;
  {
    caf::binary_serializer sink{sys, hello};
    REQUIRE_FALSE(sink(self_node));
  }
  auto out = basp_frame(sys, caf::io::basp::message_type::client_handshake, 0,
                        caf::invalid_actor_id, caf::invalid_actor_id, hello);
  for (const auto& f : frames) out.insert(out.end(), f.begin(), f.end());
  REQUIRE(::send(fd, out.data(), out.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(out.size()));
}

}  // namespace

TEST_CASE("a peer's forged exit, down and error messages kill a plain actor, not a guarded one") {
  served_child child;
  REQUIRE(child.port != 0);
  const uint16_t port = child.port;

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

TEST_CASE("a peer's message sent as the served process's own actor closes its connection") {
  // CAF takes a routed message's source from the message: naming the child's own node, a
  // peer's exit message seems to come from the child's door (a local actor), which the guard
  // obeys. send_as(door, ...) makes exactly that message.
  hostile_peer peer;
  auto& sys = *peer.sys;
  auto& self = *peer.self;
  caf::actor guard;
  self->request(peer.door, std::chrono::seconds(10), probe_atom::value, 0)
      .receive([&](caf::actor&, caf::actor& g) { guard = g; },
               [&](caf::error& e) { FAIL(sys.render(e)); });
  REQUIRE(guard);
  const caf::actor as_door = peer.door;
  caf::send_as(as_door, guard, caf::exit_msg{as_door.address(), caf::exit_reason::kill});

  // The child closed the connection; a new one finds the guarded actor alive, and the exit
  // message never reached it (nothing dropped: it came from no one the guard saw).
  std::optional<uint64_t> answered;
  auto fresh = counters_anew(peer);
  if (fresh.second) answered = probe(self, fresh.second, std::chrono::seconds(5));
  REQUIRE_MESSAGE(answered.has_value(), "the guarded actor died of an exit sent as the door");
  CHECK(*answered == 0);
}

TEST_CASE("a peer's response does not answer a request its actor made of another") {
  hostile_peer peer;
  auto [plain, guarded] = answers_under_forgery(peer, (*peer.self)->ctrl(),
                                                caf::make_message(std::string("forged: operator")));
  CHECK_MESSAGE(plain == "forged: operator",
                "the forgery does not reach an unguarded actor: the test proves nothing");
  CHECK(guarded == "no answer");
}

TEST_CASE("a peer's error without a sender does not fail a request a guarded actor made") {
  // In the mailbox it looks like CAF's own bounce of a request to a dead local actor; only
  // BASP knows it came from the peer.
  hostile_peer peer;
  auto [plain, guarded] = answers_under_forgery(
      peer, nullptr, caf::make_message(caf::make_error(caf::sec::runtime_error)));
  CHECK_MESSAGE(plain == "failed",
                "the forgery does not reach an unguarded actor: the test proves nothing");
  CHECK(guarded == "no answer");
}

TEST_CASE("an error of no code reads as an io_error, not through a null pointer") {
  // A peer's answer of caf::error{}: CAF 0.17's category() of it reads a null pointer, and the
  // core's door crashed reading one.
  const auto read = gflex::from_caf(caf::error{}, nullptr);
  CHECK(read.code() == gflex::errc::io_error);
  CHECK(read.message() == "an error of no code");
}

TEST_CASE("a peer's link message closes its connection and links nothing") {
  // BASP links the two actors a link message names at once, past every mailbox: linked to
  // the guarded actor, the plain one, killed, took the guarded one with it (its exit comes
  // from an actor of the child's own process).
  hostile_peer peer;
  auto& self = *peer.self;
  auto [plain, guard] = counters_anew(peer);
  REQUIRE(guard);
  self->send(guard, caf::link_atom::value, caf::actor_cast<caf::strong_actor_ptr>(plain));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // Over the same connection if it is still open, a new one otherwise.
  std::tie(plain, guard) = counters_anew(peer);
  REQUIRE(plain);
  caf::anon_send_exit(plain, caf::exit_reason::kill);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  std::tie(plain, guard) = counters_anew(peer);
  REQUIRE(guard);
  CHECK_MESSAGE(probe(self, guard, std::chrono::seconds(5)).has_value(),
                "the guarded actor died with the plain one a peer linked it to");
}

TEST_CASE("a peer's message before its handshake closes its connection") {
  // BASP took it from node none, whose senders are null whatever actor it names: a peer's
  // error response so sent passed for CAF's own bounce of a request to a dead local actor,
  // and failed the guarded actor's request.
  hostile_peer peer;
  auto& sys = *peer.sys;
  std::vector<char> error_payload;
  {
    caf::binary_serializer sink{sys, error_payload};
    std::vector<caf::strong_actor_ptr> stages;
    auto msg = caf::make_message(caf::make_error(caf::sec::runtime_error));
    REQUIRE_FALSE(sink(stages, msg));
  }
  const int fd = raw_connection(sys, peer.child.port);
  auto frame = basp_frame(sys, caf::io::basp::message_type::direct_message,
                          caf::make_message_id(1).response_id().integer_value(), 1, peer.door.id(),
                          error_payload);
  REQUIRE(::send(fd, frame.data(), frame.size(), MSG_NOSIGNAL) ==
          static_cast<ssize_t>(frame.size()));
  CHECK(closed_by_peer(fd, std::chrono::milliseconds(1500)));
  ::close(fd);
}

TEST_CASE("a peer's actors past a bound read as one stand-in of that peer, never as none") {
  // Each new actor id a peer named as a message's source had BASP keep a proxy for the
  // connection's life: tiny messages from made-up ids, with no token or key, grew the core's
  // memory without bound. Past max_proxies_per_node they were read as none: the messages came
  // sender-less, and a sender-less error response passed for CAF's own bounce of a request to
  // a dead local actor (one of no code crashed the core's door).
  caf::actor_system_config cfg;
  configure_actor_system(cfg);
  cfg.load<caf::io::middleman>();
  caf::actor_system sys{cfg};
  auto counted = std::make_shared<std::atomic<size_t>>(0);
  auto senderless = std::make_shared<std::atomic<size_t>>(0);
  auto stand_in = std::make_shared<std::atomic<size_t>>(0);
  auto target = sys.spawn([=](caf::event_based_actor* self) -> caf::behavior {
    return {[=](int32_t) {
      ++*counted;
      const auto& sender = self->current_sender();
      if (!sender) ++*senderless;
      if (sender && sender->id() == gflex::overflow_actor_id) ++*stand_in;
    }};
  });
  auto port = sys.middleman().publish(target, 0, "127.0.0.1");
  REQUIRE(port);
  std::vector<char> payload;
  {
    caf::binary_serializer sink{sys, payload};
    std::vector<caf::strong_actor_ptr> stages;
    auto msg = caf::make_message(int32_t{1});
    REQUIRE_FALSE(sink(stages, msg));
  }
  const size_t total = gflex::max_proxies_per_node + 500;
  std::vector<std::vector<char>> frames;
  for (size_t i = 1; i <= total; ++i)
    frames.push_back(basp_frame(sys, caf::io::basp::message_type::direct_message,
                                caf::make_message_id().integer_value(),
                                static_cast<caf::actor_id>(i), target.id(), payload));
  const uint64_t refused_before = gflex::proxies_refused();
  const int fd = raw_connection(sys, *port);
  send_raw(sys, fd, made_up_node(11), frames);
  for (int tries = 0; tries < 200 && counted->load() < total; ++tries)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(counted->load() == total);  // every message came
  CHECK(senderless->load() == 0);
  CHECK(stand_in->load() == 500);
  CHECK(gflex::proxies_refused() - refused_before >= 500);
  ::close(fd);
  caf::anon_send_exit(target, caf::exit_reason::user_shutdown);
}

TEST_CASE("a peer that is cut off again and again writes a bounded log") {
  // Anyone holding a core's bundle may connect and send a bad frame in a loop: a line for each
  // closed connection filled the core's disk. This process serves (the check is process-wide)
  // so that its own log can be read.
  test::captured_log log{spdlog::level::warn};
  caf::actor_system_config cfg;
  configure_actor_system(cfg);
  cfg.load<caf::io::middleman>();
  caf::actor_system sys{cfg};
  auto door = sys.spawn(plain_counter);
  // The actor system's end waits for its actors: the door is ended first, also by a REQUIRE.
  struct ender {
    caf::actor whom;
    ~ender() { caf::anon_send_exit(whom, caf::exit_reason::kill); }
  } end_door{door};
  auto port = sys.middleman().publish(door, 0, "127.0.0.1");
  REQUIRE_MESSAGE(static_cast<bool>(port), sys.render(port.error()));
  std::vector<char> error_payload;
  {
    caf::binary_serializer sink{sys, error_payload};
    std::vector<caf::strong_actor_ptr> stages;
    auto msg = caf::make_message(caf::make_error(caf::sec::runtime_error));
    REQUIRE_FALSE(sink(stages, msg));
  }
  const auto frame = basp_frame(sys, caf::io::basp::message_type::direct_message,
                                caf::make_message_id(1).response_id().integer_value(), 1, door.id(),
                                error_payload);
  const uint64_t refused_before = forged_sources_refused();
  const auto started = std::chrono::steady_clock::now();
  constexpr int connections = 300;
  for (int i = 0; i < connections; ++i) {
    const int fd = raw_connection(sys, *port);
    REQUIRE(::send(fd, frame.data(), frame.size(), MSG_NOSIGNAL) ==
            static_cast<ssize_t>(frame.size()));
    REQUIRE(closed_by_peer(fd, std::chrono::milliseconds(1500)));
    ::close(fd);
  }
  const auto periods = 1 + (std::chrono::steady_clock::now() - started) / std::chrono::seconds(10);
  CHECK(forged_sources_refused() - refused_before == connections);
  // At most 20 lines in each 10 s the loop took, and one more saying how many were held back.
  const int lines = log.count("closed a connection whose peer sent");
  CAPTURE(periods);
  CHECK(lines <= 20 * periods);
  CHECK(log.count("unlogged") <= periods);
}

TEST_CASE("a peer's message to a named actor is dropped: CAF's config server keeps nothing") {
  // CAF registers its spawn and config servers by name in every actor system, and the config
  // server keeps whatever a (put_atom, key, message) gives it, for good: a peer with no token
  // and no hello grew the core's memory by up to 128 MiB a message until it was killed.
  hostile_peer peer;
  auto& sys = *peer.sys;
  std::vector<char> put;
  {
    caf::binary_serializer sink{sys, put};
    std::vector<caf::strong_actor_ptr> stages;
    auto msg = caf::make_message(caf::put_atom::value, std::string("planted"),
                                 caf::make_message(std::string(4096, 'x')));
    REQUIRE_FALSE(sink(stages, msg));
  }
  const int fd = raw_connection(sys, peer.child.port);
  send_raw(sys, fd, made_up_node(4),
           {basp_frame(sys, caf::io::basp::message_type::direct_message,
                       caf::make_message_id().integer_value(), 9,
                       static_cast<caf::actor_id>(caf::atom("ConfigServ")), put,
                       caf::io::basp::header::named_receiver_flag)});
  // Dropped, not closed: every CAF peer asks the spawn server for its "info" on connecting.
  CHECK_FALSE(closed_by_peer(fd, std::chrono::milliseconds(500)));
  ::close(fd);
  std::optional<bool> kept;
  (*peer.self)
      ->request(peer.door, std::chrono::seconds(10), caf::get_atom::value, std::string("planted"))
      .receive([&](bool k) { kept = k; }, [&](caf::error& e) { FAIL(sys.render(e)); });
  REQUIRE(kept.has_value());
  CHECK_MESSAGE(!*kept, "the child's config server kept what a peer put there");
}

TEST_CASE("a standalone process cuts off a peer that speaks for another node") {
  // Each made-up node id a peer names (as a routed message's source, in a monitor message, in
  // an actor handle) had BASP keep a route, a proxy and a helper actor for good. A standalone
  // core talks only with its own peers; any other process routes (the control case).
  for (const bool standalone : {false, true}) {
    CAPTURE(standalone);
    served_child child{standalone};
    REQUIRE(child.port != 0);
    caf::actor_system_config cfg;
    configure_actor_system(cfg);
    cfg.load<caf::io::middleman>();
    caf::actor_system sys{cfg};
    caf::scoped_actor self{sys};
    auto door = sys.middleman().remote_actor("127.0.0.1", child.port);
    REQUIRE_MESSAGE(static_cast<bool>(door), sys.render(door.error()));
    const caf::node_id child_node = door->node();
    // A routed message from a made-up node, to the door.
    std::vector<char> routed;
    {
      caf::binary_serializer sink{sys, routed};
      std::vector<caf::strong_actor_ptr> stages;
      auto msg = caf::make_message(caf::get_atom::value);
      REQUIRE_FALSE(sink(made_up_node(7), child_node, stages, msg));
    }
    const int fd = raw_connection(sys, child.port);
    send_raw(sys, fd, made_up_node(1),
             {basp_frame(sys, caf::io::basp::message_type::routed_message,
                         caf::make_message_id().integer_value(), 5, door->id(), routed)});
    const bool routed_closed = closed_by_peer(fd, std::chrono::milliseconds(1500));
    ::close(fd);
    // A monitor message from a made-up node.
    std::vector<char> monitor;
    {
      caf::binary_serializer sink{sys, monitor};
      REQUIRE_FALSE(sink(made_up_node(8), child_node));
    }
    const int fd2 = raw_connection(sys, child.port);
    send_raw(sys, fd2, made_up_node(2),
             {basp_frame(sys, caf::io::basp::message_type::monitor_message, 0,
                         caf::invalid_actor_id, door->id(), monitor)});
    const bool monitor_closed = closed_by_peer(fd2, std::chrono::milliseconds(1500));
    ::close(fd2);
    // An actor handle on a node the child has no connection to (an actor of another actor
    // system of this process, which never connected to it).
    caf::actor_system_config other_cfg;
    configure_actor_system(other_cfg);
    caf::actor_system other{other_cfg};
    auto elsewhere = other.spawn(plain_counter);
    std::vector<char> handle;
    {
      caf::binary_serializer sink{other, handle};
      std::vector<caf::strong_actor_ptr> stages;
      auto msg = caf::make_message(probe_atom::value, elsewhere, true);
      REQUIRE_FALSE(sink(stages, msg));
    }
    const int fd3 = raw_connection(sys, child.port);
    send_raw(sys, fd3, made_up_node(3),
             {basp_frame(sys, caf::io::basp::message_type::direct_message,
                         caf::make_message_id().integer_value(), 6, door->id(), handle)});
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    ::close(fd3);
    int seen = -1;
    self->request(*door, std::chrono::seconds(5), caf::get_atom::value, 0)
        .receive([&](int n) { seen = n; }, [&](caf::error& e) { FAIL(sys.render(e)); });
    anon_send_exit(elsewhere, caf::exit_reason::user_shutdown);
    CHECK(routed_closed == standalone);
    CHECK(monitor_closed == standalone);
    CHECK(seen == (standalone ? 0 : 1));
  }
}

TEST_CASE("a peer that names the served process's own node in its handshake is cut off") {
  // The child sends its node id in its handshake; a peer that sends it back made BASP take
  // every direct message on that connection as sent by one of the child's own actors, and
  // an exit message so sent killed a guarded actor.
  hostile_peer peer;
  auto& sys = *peer.sys;
  auto [plain, guard] = counters_anew(peer);
  REQUIRE(guard);
  const caf::node_id child_node = guard.node();

  const int fd = raw_connection(sys, peer.child.port);
  std::vector<char> exit_payload;
  {
    caf::binary_serializer sink{sys, exit_payload};
    std::vector<caf::strong_actor_ptr> stages;
    auto msg = caf::make_message(caf::exit_msg{caf::actor_addr{}, caf::exit_reason::kill});
    REQUIRE_FALSE(sink(stages, msg));
  }
  send_raw(sys, fd, child_node,
           {basp_frame(sys, caf::io::basp::message_type::direct_message,
                       caf::make_message_id().integer_value(), 1, guard.id(), exit_payload)});
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  ::close(fd);

  std::tie(plain, guard) = counters_anew(peer);
  REQUIRE(guard);
  CHECK_MESSAGE(probe(*peer.self, guard, std::chrono::seconds(5)).has_value(),
                "the guarded actor obeyed an exit sent over a connection claiming its node");
}

TEST_CASE("an actor bound to its peer takes nothing from a third process") {
  hostile_peer peer;
  auto& sys = *peer.sys;
  auto& self = *peer.self;
  const auto set = peer.second_set();
  const caf::actor elsewhere = set[2], here = set[3];
  // Bound to this process: it answers. Bound to another: this process is a third one.
  CHECK(probe(self, here).has_value());
  CHECK_FALSE(probe(self, elsewhere, std::chrono::seconds(2)).has_value());
  self->send_exit(elsewhere, caf::exit_reason::kill);
  uint64_t strangers = 0;
  self->request(peer.door, std::chrono::seconds(10), caf::get_atom::value)
      .receive([&](uint64_t n) { strangers = n; }, [&](caf::error& e) { FAIL(sys.render(e)); });
  CHECK(strangers == 2);
}

TEST_CASE("the message size limit is in effect in this process") {
  // The same check run_core, run_node and client::connect make before they start: CAF's
  // configure_read resolves to the interposed one and libcaf_io does not bind symbolically.
  auto in_effect = gflex::message_limit_in_effect();
  CHECK_MESSAGE(in_effect.has_value(), (in_effect ? "" : in_effect.error().message()));
}

// This process's peak resident memory (VmHWM), in bytes; 0 if it cannot be read.
uint64_t peak_resident_bytes() {
  std::ifstream status("/proc/self/status");
  std::string word;
  while (status >> word)
    if (word == "VmHWM:") {
      uint64_t kib = 0;
      status >> kib;
      return kib << 10;
    }
  return 0;
}

TEST_CASE("a sequence that announces more than its message holds is refused unallocated") {
  // CAF sized a byte vector or a string to the length a message announced (and zero-filled
  // it) before it checked that the bytes were there: 40 bytes from a peer that had shown no
  // token or key made the core allocate and fill 4 GiB. 256 MiB here.
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  std::vector<char> bytes;
  {
    caf::binary_serializer sink{sys, bytes};
    size_t announced = size_t{256} << 20;
    REQUIRE_FALSE(sink.begin_sequence(announced));
  }
  bytes.resize(bytes.size() + 8, 'x');  // a few bytes, not 256 MiB
  const bool peak_reset = static_cast<bool>(std::ofstream("/proc/self/clear_refs") << "5");
  const uint64_t before = peak_resident_bytes();
  std::vector<uint8_t> vector_out;
  std::string string_out;
  {
    caf::binary_deserializer source{sys, bytes};
    CHECK(static_cast<bool>(source(vector_out)));
  }
  {
    caf::binary_deserializer source{sys, bytes};
    CHECK(static_cast<bool>(source(string_out)));
  }
  const uint64_t after = peak_resident_bytes();
  if (!peak_reset || before == 0) {
    MESSAGE("skipped the memory check: this process's peak memory cannot be reset or read");
    return;
  }
  CHECK_MESSAGE(after - before < (uint64_t{64} << 20),
                "reading them took the peak from " << before << " to " << after << " bytes");
  // A sequence within its bytes still reads.
  std::vector<char> fine;
  {
    caf::binary_serializer sink{sys, fine};
    REQUIRE_FALSE(sink(std::vector<uint8_t>{1, 2, 3}, std::string("ok")));
  }
  caf::binary_deserializer source{sys, fine};
  REQUIRE_FALSE(source(vector_out, string_out));
  CHECK(vector_out == std::vector<uint8_t>{1, 2, 3});
  CHECK(string_out == "ok");
}

TEST_CASE("the check of routed messages' sources is in effect in this process") {
  auto in_effect = gflex::routed_message_check_in_effect();
  CHECK_MESSAGE(in_effect.has_value(), (in_effect ? "" : in_effect.error().message()));
}

TEST_CASE("a link that goes silent is closed: its peer's actors go down") {
  // A laptop that moved to another network, or a core's host gone without a reset: nothing
  // comes over the connection any more, and TCP alone gave it up after about 15 minutes,
  // the node meanwhile thinking itself connected. A stopped child process is such a peer: the
  // kernel still takes what is sent to it, and it sends nothing.
  caf::actor_system_config defaults;
  configure_actor_system(defaults);
  CHECK(caf::get_or(defaults, "middleman.heartbeat-interval", caf::timespan{0}) ==
        caf::timespan{link_heartbeat});
  CHECK(caf::get_or(defaults, "middleman.connection-timeout", caf::timespan{0}) ==
        caf::timespan{link_silence});
  served_child child;
  REQUIRE(child.port != 0);
  // The same settings, shortened for the test.
  caf::actor_system_config cfg;
  configure_actor_system(cfg);
  cfg.set("middleman.heartbeat-interval", caf::timespan{std::chrono::milliseconds(200)});
  cfg.set("middleman.connection-timeout", caf::timespan{std::chrono::seconds(1)});
  caf::actor_system sys{cfg};
  caf::scoped_actor self{sys};
  auto door = sys.middleman().remote_actor("127.0.0.1", child.port);
  REQUIRE_MESSAGE(static_cast<bool>(door), sys.render(door.error()));
  self->monitor(*door);
  ::kill(child.pid, SIGSTOP);
  bool down = false;
  self->receive([&](const caf::down_msg&) { down = true; },
                caf::after(std::chrono::seconds(6)) >> [] {});
  ::kill(child.pid, SIGCONT);
  CHECK_MESSAGE(down, "the link was silent for 6 s, past its 1 s timeout, and still open");
}

TEST_CASE(
    "a message of many empty containers is refused before it grows past a few times its size") {
  // An empty string is a byte on the wire and 32 in memory: 128 MiB of them (CAF's own
  // `@strvec`, or any vector of strings a node may send) became about 6 GiB while read, from
  // a peer that had shown no token or key. 8 MiB of them here (256 MiB read whole).
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  std::vector<char> bytes;
  {
    caf::binary_serializer sink{sys, bytes};
    REQUIRE_FALSE(sink(std::vector<std::string>(size_t{8} << 20)));
  }
  const bool peak_reset = static_cast<bool>(std::ofstream("/proc/self/clear_refs") << "5");
  const uint64_t before = peak_resident_bytes();
  {
    std::vector<std::string> out;
    caf::binary_deserializer source{sys, bytes};
    CHECK(static_cast<bool>(source(out)));
  }
  const uint64_t after = peak_resident_bytes();
  // Honest messages read: digests, and many short names (9 bytes each).
  std::vector<std::string> digests(2000, std::string(64, 'a')), names(5000, std::string(8, 'n'));
  std::vector<char> fine;
  {
    caf::binary_serializer sink{sys, fine};
    REQUIRE_FALSE(sink(digests, names));
  }
  std::vector<std::string> digests_read, names_read;
  caf::binary_deserializer source{sys, fine};
  REQUIRE_FALSE(source(digests_read, names_read));
  CHECK(digests_read == digests);
  CHECK(names_read == names);
  if (!peak_reset || before == 0) {
    MESSAGE("skipped the memory check: this process's peak memory cannot be reset or read");
    return;
  }
  CHECK_MESSAGE(after - before < (uint64_t{64} << 20),
                "reading them took the peak from " << before << " to " << after << " bytes");
}
