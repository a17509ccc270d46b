/// A client's session and the front door's welcome (actors/protocol/client_session.hpp,
/// actors/core/client_door.hpp) as the client reads their errors: the core's own pass as
/// they are, and CAF's from inside the core (a request there that timed out, an actor there
/// that ended) come out as the core's "did not answer", never as CAF's own request_timeout,
/// which the client takes for its request's and then drops a live session.
///
/// And what waits to be sent to a client over a real connection on loopback
/// (actors/protocol/message_limit.hpp): a client that stops reading is cut off, one that reads
/// slowly is not, however large a burst it is sent.

#include <doctest/doctest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <caf/all.hpp>
#include <caf/io/middleman.hpp>
#include <caf/io/network/multiplexer.hpp>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "client_door.hpp"
#include "client_session.hpp"
#include "configured_system.hpp"
#include "link_loss.hpp"
#include "message_limit.hpp"
#include "messages.hpp"

using namespace gflex;

namespace {

// A front door whose status requests time out inside it, and whose jobs requests are refused.
caf::behavior timing_out_door(caf::event_based_actor*) {
  return {
      [](status_atom, const std::string&, const std::string&) -> caf::result<job_status> {
        return caf::make_error(caf::sec::request_timeout);
      },
      [](jobs_atom, const std::string&) -> caf::result<std::vector<job_status>> {
        return to_caf(error(errc::permission_denied, "not this key"));
      },
  };
}

// A gatekeeper whose store does not answer in time.
caf::behavior timing_out_gate(caf::event_based_actor*) {
  return {[](auth_atom, const std::string&) -> caf::result<std::string> {
    return caf::make_error(caf::sec::request_timeout);
  }};
}

struct welcome_door_state {
  client_sessions sessions;
};

caf::behavior welcome_door(caf::stateful_actor<welcome_door_state>* self, caf::actor gate) {
  return {[=](auth_atom, std::string& key, caf::actor& link) {
    return open_client_session(self, gate, std::move(key), std::move(link));
  }};
}

// A front door that holds every fetch until told (put_atom, bytes) to answer them all with
// parts of that many bytes; (get_atom) says how many it holds.
struct holding_door_state {
  std::vector<caf::typed_response_promise<model_part>> held;
};

caf::behavior holding_door(caf::stateful_actor<holding_door_state>* self) {
  return {
      [=](fetch_atom, const std::string&, const std::string&, uint64_t) -> caf::result<model_part> {
        self->state.held.push_back(self->make_response_promise<model_part>());
        return self->state.held.back();
      },
      [=](caf::get_atom) { return static_cast<uint64_t>(self->state.held.size()); },
      [=](caf::put_atom, uint64_t bytes) {
        for (auto& p : self->state.held) {
          model_part part;
          part.bytes.assign(bytes, 7);
          part.total = bytes;
          p.deliver(std::move(part));
        }
        self->state.held.clear();
      },
  };
}

// What a client reaches over the network: (auth_atom, key, link) gives it a session of
// its own on `door`, as the front door does once a key is known; (get_atom) the last one and
// the client's link it was given, as this process holds them.
struct entry_state {
  caf::actor last;
  caf::actor link;
};

caf::behavior session_entry(caf::stateful_actor<entry_state>* self, caf::actor door) {
  return {
      [=](auth_atom, std::string& key, caf::actor& link) {
        self->state.link = link;
        self->state.last = caf::actor_cast<caf::actor>(
            spawn_client_session(self->system(), std::move(key), "user/alice", door, link,
                                 client_session_limits{}, self->current_sender()->node()));
        return self->state.last;
      },
      [=](caf::get_atom) { return caf::make_message(self->state.last, self->state.link); },
  };
}

// Sends (tick_atom) to `to` every 20 ms, as a core's heartbeats do every 10 s: each is
// flushed to `to`'s connection, where the bound on unsent bytes is checked.
caf::behavior ticker(caf::event_based_actor* self, caf::actor to) {
  self->send(self, tick_atom::value);
  return {[=](tick_atom) {
    self->send(to, tick_atom::value);
    self->delayed_send(self, std::chrono::milliseconds(20), tick_atom::value);
  }};
}

// The bound on unsent bytes for one test case; the one before is back at its end.
struct unsent_bound_for_test {
  const unsent_bound before = current_unsent_bound();
  explicit unsent_bound_for_test(const unsent_bound& bound) { REQUIRE(set_unsent_bound(bound)); }
  ~unsent_bound_for_test() { (void)set_unsent_bound(before); }
};

// The socket of this process whose peer is port `port` on IPv4 (a client's end of its one
// connection to a server listening there), or -1.
int socket_to(uint16_t port) {
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    const int fd = std::stoi(entry.path().filename().string());
    sockaddr_in addr{};
    socklen_t len = sizeof addr;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0 &&
        addr.sin_family == AF_INET && ntohs(addr.sin_port) == port)
      return fd;
  }
  return -1;
}

// A client's configuration, but that its I/O thread reads a socket once a round of its events
// (CAF's default is up to 50 times, while the sender refills it): a pause between rounds then
// bounds what it reads to about its receive buffer.
caf::actor_system_config& one_read_a_round(caf::actor_system_config& cfg) {
  test::configured_system::configured(cfg);
  cfg.set("middleman.max-consecutive-reads", size_t{1});
  return cfg;
}

// A client in an actor system of its own, connected over loopback to a session of its own on
// a holding door (connect()), with max_in_flight fetches held there. read() sets how its I/O
// thread reads the socket: normally, slowly (held up for `pause` at a time, with one round of
// its events between), or never (held up until told otherwise or the client ends).
struct remote_client {
  enum class reading { normal, slowly, never };

  caf::actor_system& sys;
  caf::scoped_actor& self;
  const std::chrono::milliseconds pause{20};
  caf::actor door = sys.spawn(holding_door);
  caf::actor entry = sys.spawn(session_entry, door);
  std::atomic<reading> mode{reading::normal};
  std::atomic<bool> pausing{false};  // a pause is queued or running on the client's I/O thread
  std::atomic<bool> held{false};     // the client's I/O thread is held up for good
  // When the client's link got bytes (steady clock, in ns since its epoch), 0 before.
  std::atomic<int64_t> bytes_arrived{0};
  caf::actor_system_config client_cfg;
  caf::actor_system client_sys{one_read_a_round(client_cfg)};
  caf::actor client_link = client_sys.spawn([this](caf::event_based_actor*) -> caf::behavior {
    return {[](tick_atom) {},
            [this](const std::vector<uint8_t>&) {
              bytes_arrived = std::chrono::steady_clock::now().time_since_epoch().count();
            }};
  });
  caf::scoped_actor client{client_sys};
  std::vector<caf::response_handle<caf::blocking_actor, caf::message, true>> fetches;
  uint16_t port = 0;
  caf::actor session;  // in this process's core side
  caf::actor link;     // the client's link, as the core side holds it
  caf::actor beats;    // a ticker to `link`, once beat() started it

  remote_client(caf::actor_system& core, caf::scoped_actor& core_self)
      : sys(core), self(core_self) {}

  // Lets the I/O thread go (its system waits for it) and ends the client's link.
  ~remote_client() {
    mode = reading::normal;
    while (pausing) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    caf::anon_send_exit(client_link, caf::exit_reason::kill);
    for (const auto& a : {beats, entry, door})
      if (a) caf::anon_send_exit(a, caf::exit_reason::kill);
  }

  void connect() {
    auto published = sys.middleman().publish(entry, 0, "127.0.0.1");
    REQUIRE(published);
    port = *published;
    auto remote = client_sys.middleman().remote_actor("127.0.0.1", port);
    REQUIRE(remote);
    caf::actor remote_session;
    client
        ->request(*remote, std::chrono::seconds(10), auth_atom::value, std::string("alice's key"),
                  client_link)
        .receive([&](caf::actor& s) { remote_session = s; },
                 [&](caf::error& e) { FAIL(sys.render(e)); });
    const uint64_t n = client_session_limits{}.max_in_flight;
    for (uint64_t i = 0; i < n; ++i)
      fetches.push_back(client->request(remote_session, std::chrono::seconds(30), fetch_atom::value,
                                        std::string("job-1"), i));
    uint64_t holding = 0;
    for (int tries = 0; tries < 600 && holding < n; ++tries) {
      self->request(door, std::chrono::seconds(10), caf::get_atom::value)
          .receive([&](uint64_t k) { holding = k; }, [&](caf::error& e) { FAIL(sys.render(e)); });
      if (holding < n) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    REQUIRE(holding == n);
    self->request(entry, std::chrono::seconds(10), caf::get_atom::value)
        .receive(
            [&](caf::actor& s, caf::actor& l) {
              session = std::move(s);
              link = std::move(l);
            },
            [&](caf::error& e) { FAIL(sys.render(e)); });
    REQUIRE(session);
    REQUIRE(link);
  }

  // Flushes to the client's connection every 20 ms, as the core's heartbeats do every 10 s.
  void beat() { beats = sys.spawn(ticker, link); }

  void read(reading how) {
    mode = how;
    if (how == reading::normal || pausing.exchange(true)) return;
    client_sys.middleman().backend().post([this] { pause_io(); });
    if (how == reading::never)
      while (!held) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }

  // Runs on the client's I/O thread; posted from there again, it runs after one round of
  // the thread's events.
  void pause_io() {
    while (mode == reading::never) {
      held = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    held = false;
    if (mode == reading::slowly) std::this_thread::sleep_for(pause);
    if (mode == reading::normal)
      pausing = false;
    else
      client_sys.middleman().backend().post([this] { pause_io(); });
  }
};

struct session_fixture : test::configured_system {
  const std::chrono::seconds timeout{10};
  caf::actor link =
      sys.spawn([](caf::event_based_actor*) -> caf::behavior { return {[](tick_atom) {}}; });

  ~session_fixture() { self->send_exit(link, caf::exit_reason::kill); }

  // The error a request to `to` comes back with, as the client reads it (or none).
  template <class... Ts>
  caf::error answer_of(const caf::actor& to, Ts&&... xs) {
    caf::error out;
    self->request(to, timeout, std::forward<Ts>(xs)...)
        .receive([](const caf::message&) {}, [&](caf::error& e) { out = std::move(e); });
    return out;
  }
};

}  // namespace

TEST_SUITE("client_session") {
  TEST_CASE_FIXTURE(session_fixture,
                    "a request that timed out inside the core is the core's "
                    "answer, one a client following a job rides out") {
    auto door = sys.spawn(timing_out_door);
    auto session = caf::actor_cast<caf::actor>(spawn_client_session(
        sys, "alice's key", "user/alice", door, link, client_session_limits{}, sys.node()));
    const auto e = answer_of(session, status_atom::value, std::string("job-1"));
    REQUIRE(e);
    CHECK(e.category() == error_category);
    CHECK(e != caf::sec::request_timeout);
    const auto read = from_caf(e, &sys);
    CHECK(read.code() == errc::unavailable);
    CHECK(detail::is_link_loss(read));
    CHECK_MESSAGE(read.message().find("inside the core") != std::string::npos, read.message());
    // The core's own refusals pass as they are.
    const auto refused = answer_of(session, jobs_atom::value);
    REQUIRE(refused);
    CHECK(from_caf(refused, &sys).code() == errc::permission_denied);
    CHECK(from_caf(refused, &sys).message() == "not this key");
    for (const auto& a : {session, door}) self->send_exit(a, caf::exit_reason::kill);
  }

  TEST_CASE_FIXTURE(session_fixture,
                    "a client that stops reading its socket has its connection closed once "
                    "answers have waited for it past the stall time") {
    // Its open requests were bounded, but each answer left them as it went into the
    // connection's write buffer, which CAF grows without bound: a client that kept 32
    // fetches open and never read grew the core's memory by a megabyte a fetch, for good.
    const unsent_bound_for_test bound{
        {unsent_stall_bytes, std::chrono::milliseconds(1000), max_unsent_bytes()}};
    remote_client c{sys, self};
    c.connect();
    c.read(remote_client::reading::never);
    self->monitor(c.session);
    c.beat();
    const auto closed_before = stalled_connections_closed();
    const auto start = std::chrono::steady_clock::now();
    // 32 answers of 6 MiB: 192 MiB, past what the sockets' buffers take and the 64 MiB that
    // may wait with no limit on time (and under the 256 MiB the bound once was).
    self->send(c.door, caf::put_atom::value, uint64_t{6} << 20);
    bool ended = false;
    self->receive([&](caf::down_msg&) { ended = true; },
                  caf::after(std::chrono::seconds(30)) >> [] {});
    const auto took = std::chrono::steady_clock::now() - start;
    CHECK_MESSAGE(ended, "the session of a client that does not read stayed open");
    CHECK_MESSAGE(took >= std::chrono::milliseconds(1000),
                  "closed before the stall time, after "
                      << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                      << " ms");
    CHECK(stalled_connections_closed() == closed_before + 1);
  }

  TEST_CASE_FIXTURE(session_fixture,
                    "a client that stops reading its socket has its connection closed at once "
                    "when more waits for it than may wait at all") {
    // The stall time leaves a peer that stopped reading a minute: what piles up in it is
    // bounded too, by max_bytes (96 MiB here, an eighth of the memory by default).
    const unsent_bound_for_test bound{
        {unsent_stall_bytes, std::chrono::milliseconds(60000), size_t{96} << 20}};
    remote_client c{sys, self};
    c.connect();
    c.read(remote_client::reading::never);
    self->monitor(c.session);
    const auto closed_before = stalled_connections_closed();
    // 192 MiB of answers, of which at most the sockets' buffers and the write in progress
    // leave the connection's buffer.
    self->send(c.door, caf::put_atom::value, uint64_t{6} << 20);
    bool ended = false;
    self->receive([&](caf::down_msg&) { ended = true; },
                  caf::after(std::chrono::seconds(15)) >> [] {});
    CHECK_MESSAGE(ended, "the session of a client with 192 MiB waiting for it stayed open");
    CHECK(stalled_connections_closed() == closed_before + 1);
  }

  TEST_CASE_FIXTURE(session_fixture,
                    "a client that reads slowly but steadily keeps its connection through a "
                    "burst of more than 256 MiB") {
    // A broker drains its whole mailbox when it runs, so a burst from a healthy peer lands
    // in the connection's buffer at once (a node's workers' parameters, inline when they fit
    // one 64 MiB chunk; a pipeline's window of items): how much waits is no sign of a peer
    // that stopped reading.
    const unsent_bound_for_test bound{
        {unsent_stall_bytes, std::chrono::milliseconds(2000), max_unsent_bytes()}};
    remote_client c{sys, self};
    c.connect();
    c.read(remote_client::reading::slowly);
    self->monitor(c.session);
    c.beat();
    const auto closed_before = stalled_connections_closed();
    // 32 answers of 9 MiB: 288 MiB, all but the first behind the write in progress.
    self->send(c.door, caf::put_atom::value, uint64_t{9} << 20);
    size_t answered = 0;
    for (auto& fetch : c.fetches)
      fetch.receive([&](model_part& part) { answered += part.bytes.size() == (size_t{9} << 20); },
                    [&](caf::error& e) { FAIL_CHECK(sys.render(e)); });
    CHECK(answered == c.fetches.size());
    bool ended = false;
    self->receive([&](caf::down_msg&) { ended = true; },
                  caf::after(std::chrono::milliseconds(0)) >> [] {});
    CHECK_MESSAGE(!ended, "the session of a client that reads ended");
    CHECK(stalled_connections_closed() == closed_before);
  }

  TEST_CASE_FIXTURE(session_fixture,
                    "a client that reads slowly but steadily keeps its connection while answers "
                    "wait behind a write that outlasts the stall time") {
    // A slow link finishes a large write long after it started, and all that waits behind it
    // waits as long: what shows that its peer reads is that its kernel acknowledges bytes.
    const unsent_bound_for_test bound{
        {size_t{16} << 20, std::chrono::milliseconds(1000), max_unsent_bytes()}};
    remote_client c{sys, self};
    c.connect();
    // About 256 KiB of window a pause of 20 ms (the kernel doubles the 256 KiB asked for, and
    // keeps part of it for itself): the client takes seconds for the first 40 MiB below.
    const int fd = socket_to(c.port);
    REQUIRE(fd >= 0);
    const int rcvbuf = 256 << 10;
    REQUIRE(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) == 0);
    c.read(remote_client::reading::slowly);
    self->monitor(c.session);
    c.beat();
    const auto closed_before = stalled_connections_closed();
    const auto start = std::chrono::steady_clock::now();
    // 40 MiB to the client's link: the write in progress, while the answers wait behind it.
    self->send(c.link, std::vector<uint8_t>(size_t{40} << 20, 7));
    // 32 answers of 1 MiB: 32 MiB, past the 16 MiB that may wait with no limit on time.
    self->send(c.door, caf::put_atom::value, uint64_t{1} << 20);
    size_t answered = 0;
    for (auto& fetch : c.fetches)
      fetch.receive([&](model_part& part) { answered += part.bytes.size() == (size_t{1} << 20); },
                    [&](caf::error& e) { FAIL_CHECK(sys.render(e)); });
    CHECK(answered == c.fetches.size());
    REQUIRE_MESSAGE(c.bytes_arrived.load() != 0, "the first 40 MiB never arrived");
    const auto first_write =
        std::chrono::nanoseconds(c.bytes_arrived.load()) - start.time_since_epoch();
    CHECK_MESSAGE(first_write > std::chrono::milliseconds(1000),
                  "the first 40 MiB arrived after "
                      << std::chrono::duration_cast<std::chrono::milliseconds>(first_write).count()
                      << " ms: the write did not outlast the stall time");
    bool ended = false;
    self->receive([&](caf::down_msg&) { ended = true; },
                  caf::after(std::chrono::milliseconds(0)) >> [] {});
    CHECK_MESSAGE(!ended, "the session of a client that reads ended");
    CHECK(stalled_connections_closed() == closed_before);
  }

  TEST_CASE("a bound on unsent bytes that could never hold is refused, and changes nothing") {
    const unsent_bound before = current_unsent_bound();
    const auto more_than_all =
        set_unsent_bound({size_t{64} << 20, std::chrono::milliseconds(1000), size_t{32} << 20});
    REQUIRE_FALSE(more_than_all);
    CHECK(more_than_all.error().code() == errc::invalid_argument);
    CHECK_MESSAGE(more_than_all.error().message().find("at most the bytes that may wait at all") !=
                      std::string::npos,
                  more_than_all.error().message());
    const auto no_time =
        set_unsent_bound({size_t{64} << 20, std::chrono::milliseconds(0), size_t{1} << 30});
    REQUIRE_FALSE(no_time);
    CHECK_MESSAGE(no_time.error().message().find("must be positive") != std::string::npos,
                  no_time.error().message());
    const unsent_bound after = current_unsent_bound();
    CHECK(after.stall_bytes == before.stall_bytes);
    CHECK(after.stall_time == before.stall_time);
    CHECK(after.max_bytes == before.max_bytes);
  }

  TEST_CASE_FIXTURE(session_fixture,
                    "a welcome whose key check timed out inside the core is the core's answer") {
    auto gate = sys.spawn(timing_out_gate);
    auto door = sys.spawn(welcome_door, gate);
    const auto e = answer_of(door, auth_atom::value, std::string("alice's key"), link);
    REQUIRE(e);
    CHECK(e.category() == error_category);
    CHECK(e != caf::sec::request_timeout);
    CHECK(detail::is_link_loss(from_caf(e, &sys)));
    for (const auto& a : {door, gate}) self->send_exit(a, caf::exit_reason::kill);
  }
}
