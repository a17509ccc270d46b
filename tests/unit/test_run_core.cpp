/// @file
/// run_core in a program that embeds it: SIGINT and SIGTERM stop it, and once it returns the
/// program's own handlers take them again. Before, its handlers stayed installed (the
/// program's Ctrl-C no longer stopped the program) and the signal stayed noted, so a second
/// run_core stopped as soon as it started.

#include <doctest/doctest.h>

#include <httplib.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core_supervisor.hpp"
#include "gflex/gflex.hpp"
#include "gflex/runtime/http_server.hpp"
#include "gflex/runtime/store.hpp"
#include "gflex/runtime/tls_credentials.hpp"
#include "running_core.hpp"
#include "tcp_bytes_sent.hpp"
#include "temp_dir.hpp"

using namespace gflex;
using gflex::test::local_core_config;
using gflex::test::running_core;

namespace {

std::atomic<int> program_saw{0};
extern "C" void program_handler(int sig) {
  program_saw.store(sig);
}

// Two forked cores that take the same operator key, and an operator's client of the first
// that is given the second as another core to try (a core of several, as clients see it).
struct two_cores {
  test::temp_dir a_dir, b_dir;
  gflex::core_config a = local_core_config(a_dir), b = local_core_config(b_dir);
  std::unique_ptr<test::forked_core> first;
  std::unique_ptr<test::forked_core> second;
  std::optional<gflex::client> client;

  two_cores() {
    a.port = test::free_loopback_port();
    b.port = test::free_loopback_port();
    b.operator_key = test::operator_key(a_dir);
    auto link = test::operator_link(a_dir);
    link.other_cores = {{"127.0.0.1", b.port}};
    first = std::make_unique<test::forked_core>(a);
    second = std::make_unique<test::forked_core>(b);
    auto c = gflex::client::connect("127.0.0.1", a.port, link);
    REQUIRE_MESSAGE(c.has_value(), c.error().message());
    client = std::move(*c);
    REQUIRE(client->principal().has_value());
  }
};

// check_core_config refuses a default core_config changed by `set`, as invalid_argument with
// a message that starts with `expected_start`.
template <class Set>
void check_refused(const Set& set, const std::string& expected_start) {
  core_config config;
  set(config);
  CAPTURE(expected_start);
  auto checked = check_core_config(config);
  REQUIRE_FALSE(checked.has_value());
  CHECK(checked.error().code() == errc::invalid_argument);
  CHECK_MESSAGE(checked.error().message().starts_with(expected_start), checked.error().message());
}

}  // namespace

TEST_CASE("a core on an emptied store exits 2, the operator's to restore, not 1") {
  // exit 1 is what a service restarts: on a data.mdb cut short or emptied it did so every 5 s
  // for ever, the file's state unchanged.
  test::temp_dir dir;
  const auto config = local_core_config(dir);
  {
    auto s = store::open(dir.path());
    REQUIRE(s.has_value());
    REQUIRE(s->put("ledger/head", std::vector<uint8_t>{'1'}).has_value());
  }
  std::filesystem::resize_file(dir.path() / "data.mdb", 0);
  CHECK(run_core(config) == 2);
  CHECK(std::filesystem::file_size(dir.path() / "data.mdb") == 0);  // changed nothing
}

TEST_CASE("run_core stops on SIGTERM and gives the program its handlers back") {
  test::temp_dir dir;
  const auto config = local_core_config(dir);

  struct sigaction mine {
  }, old{};
  mine.sa_handler = program_handler;
  sigemptyset(&mine.sa_mask);
  REQUIRE(sigaction(SIGTERM, &mine, &old) == 0);

  {
    running_core first(config);
    ::raise(SIGTERM);
    REQUIRE(first.code.wait_for(std::chrono::seconds(60)) == std::future_status::ready);
    CHECK(first.code.get() == 0);
  }
  CHECK(program_saw.load() == 0);  // the core's handler took it, not the program's
  struct sigaction now {};
  REQUIRE(sigaction(SIGTERM, nullptr, &now) == 0);
  CHECK(reinterpret_cast<void*>(now.sa_handler) == reinterpret_cast<void*>(&program_handler));
  ::raise(SIGTERM);
  CHECK(program_saw.load() == SIGTERM);

  // A second run is not stopped by the first one's signal.
  {
    running_core second(config);
    CHECK(second.code.wait_for(std::chrono::seconds(1)) == std::future_status::timeout);
    ::raise(SIGTERM);
    REQUIRE(second.code.wait_for(std::chrono::seconds(60)) == std::future_status::ready);
    CHECK(second.code.get() == 0);
  }
  sigaction(SIGTERM, &old, nullptr);
}

TEST_CASE("overlapping runs in one process: the last to end gives the program its handlers") {
  // Each run saved the handlers it found and put them back at its end: the first run, ending
  // while the second ran, gave the program its SIGTERM handler back (a signal then no longer
  // stopped the second run), and the second, ending last, put the first's back for good.
  test::temp_dir first_dir, second_dir;
  const auto first_config = local_core_config(first_dir);
  const auto second_config = local_core_config(second_dir);
  struct sigaction mine {
  }, old{};
  mine.sa_handler = program_handler;
  sigemptyset(&mine.sa_mask);
  REQUIRE(sigaction(SIGTERM, &mine, &old) == 0);
  program_saw.store(0);
  auto handler_now = [] {
    struct sigaction now {};
    sigaction(SIGTERM, nullptr, &now);
    return now.sa_handler;
  };

  // The first run waits in its service starter until told, then fails (exit 2).
  std::promise<void> in_starter, release;
  auto released = release.get_future().share();
  auto first = std::async(std::launch::async, [&] {
    return run_core(first_config, [&](local_core&) -> expected<std::unique_ptr<core_service>> {
      in_starter.set_value();
      released.wait();
      return error(errc::invalid_argument, "the first run's service is refused");
    });
  });
  REQUIRE(in_starter.get_future().wait_for(std::chrono::seconds(60)) == std::future_status::ready);
  const auto core_handler = handler_now();
  const bool the_core_took_it = core_handler != program_handler;
  CHECK(the_core_took_it);
  {
    running_core second(second_config);
    release.set_value();
    REQUIRE(first.wait_for(std::chrono::seconds(60)) == std::future_status::ready);
    CHECK(first.get() == 2);
    const bool still_the_core = handler_now() == core_handler;
    CHECK_MESSAGE(still_the_core,
                  "the first run to end gave the program its handler while another ran");
    // A SIGTERM stops the run still going (by hand where the handler is gone, so that the
    // test ends).
    if (still_the_core)
      ::raise(SIGTERM);
    else
      core_handler(SIGTERM);
    REQUIRE(second.code.wait_for(std::chrono::seconds(60)) == std::future_status::ready);
    CHECK(second.code.get() == 0);
  }
  CHECK(program_saw.load() == 0);
  const bool the_program_again = handler_now() == program_handler;
  CHECK_MESSAGE(the_program_again, "the last run to end left a run's handler installed");
  sigaction(SIGTERM, &old, nullptr);
}

TEST_CASE("a service given a name that does not exist is a setting; an address may come") {
  // httplib says only that binding failed, and each failure was errc::unavailable: run_core
  // (and --metrics-listen) exited 1 on a name no restart makes resolve, and a service
  // restarted the core for ever. An address not this machine's may be one after a restart (an
  // interface still configured at boot), and stays errc::unavailable, said so; so does a port
  // in use. 192.0.2.1 is a documentation address (RFC 5737).
  auto start_on = [](const std::string& host, uint16_t port) {
    return http::server::start(
        host, port, 1, [](httplib::Server&) {}, "the dashboard");
  };
  std::ifstream nonlocal("/proc/sys/net/ipv4/ip_nonlocal_bind");
  int any_address_binds = 0;
  nonlocal >> any_address_binds;
  if (any_address_binds == 0) {
    auto elsewhere = start_on("192.0.2.1", test::free_loopback_port());
    REQUIRE_FALSE(elsewhere.has_value());
    CHECK(elsewhere.error().code() == errc::unavailable);
    CHECK_MESSAGE(elsewhere.error().message().find("192.0.2.1") != std::string::npos,
                  elsewhere.error().message());
    CHECK_MESSAGE(
        elsewhere.error().message().find("not an address of this machine") != std::string::npos,
        elsewhere.error().message());
  }
  auto unknown = start_on("no-such-host.invalid", test::free_loopback_port());
  REQUIRE_FALSE(unknown.has_value());
  CHECK(unknown.error().code() == errc::invalid_argument);
  auto held = start_on("127.0.0.1", 0);
  REQUIRE_MESSAGE(held.has_value(), held.error().message());
  auto again = start_on("127.0.0.1", (*held)->port());
  REQUIRE_FALSE(again.has_value());
  CHECK(again.error().code() == errc::unavailable);
}

TEST_CASE("a service starter that throws stops the core, and run_core passes the exception on") {
  // The core was left running: the actor system's end waited for it for ever, and the
  // signals could not stop the program (their watcher had not started).
  test::temp_dir dir;
  const auto config = local_core_config(dir);
  auto code = std::async(std::launch::async, [config] {
    return run_core(config, [](local_core&) -> expected<std::unique_ptr<core_service>> {
      throw std::runtime_error("the trainer's service could not start");
    });
  });
  const bool ended = code.wait_for(std::chrono::seconds(30)) == std::future_status::ready;
  if (!ended) {
    // Hung: the process ends here rather than in the future's destructor, failing the run.
    FAIL_CHECK("run_core did not return within 30 s after its starter threw");
    std::fflush(nullptr);
    std::_Exit(1);
  }
  CHECK_THROWS_WITH_AS(code.get(), "the trainer's service could not start", std::runtime_error);
}

TEST_CASE("a client whose core restarted before its first request reaches the new core at once") {
  // The client asked the front door's dead proxy for a session: dropped, the request timed
  // out after 30 s as "the request timed out" (not a lost link, so following a job gave up),
  // and every later call asked the same dead proxy again: the client never recovered.
  test::temp_dir dir;
  auto config = local_core_config(dir);
  config.port = test::free_loopback_port();
  const auto link = test::operator_link(dir);
  auto first = std::make_unique<test::forked_core>(config);
  auto c = client::connect("127.0.0.1", config.port, link);
  REQUIRE_MESSAGE(c.has_value(), c.error().message());
  first.reset();                                                // SIGKILL, and reaped
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the link's end is seen
  test::forked_core second(config);
  const auto asked = std::chrono::steady_clock::now();
  auto who = c->principal();
  const double took =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - asked).count();
  CHECK_MESSAGE(who.has_value(), who.error().message());
  CHECK_MESSAGE(took < 10.0, "the first request took " << took << " s");
}

TEST_CASE("a client given the other cores goes on to one of them once its core is gone") {
  // A client stayed with the address it was given: `gflex submit --wait --core a,b` followed
  // its job for two minutes after `a` was gone, dialling `a` only, and gave up, while `b`
  // had taken over. Two cores here that take the same key; the first is killed.
  two_cores cores;
  auto& c = cores.client;
  cores.first.reset();                                          // SIGKILL, and reaped
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the link's end is seen
  auto jobs = c->jobs();
  // The second core may still be reading its job records: a passing loss, asked again.
  for (int tries = 0;
       tries < 100 && !jobs && jobs.error().message().find("still reading") != std::string::npos;
       ++tries) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    jobs = c->jobs();
  }
  CHECK_MESSAGE(jobs.has_value(), jobs.error().message());
}

TEST_CASE("a client whose core stops answering with its link open goes on to another core") {
  // A core frozen or cut off keeps its links open: the middleman answered a dial of it from
  // its cache, so the client, dialling the core it used first, waited out every request's
  // timeout there while another core led, until following a job gave up.
  two_cores cores;
  auto& c = cores.client;
  REQUIRE(test::stop_process(cores.first->pid));  // frozen: its socket stays open
  auto unanswered = c->jobs();                    // waits out its 30 s
  CHECK_FALSE(unanswered.has_value());
  const auto asked = std::chrono::steady_clock::now();
  auto jobs = c->jobs();
  const double took =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - asked).count();
  CHECK_MESSAGE(jobs.has_value(), jobs.error().message());
  CHECK_MESSAGE(took < 10.0, "the request after the silence took " << took << " s");
}

TEST_CASE("one client used from eight threads at once: each request is answered") {
  // Its session was asked for, replaced and forgotten with no lock: threads that began at
  // once each asked for a session and wrote the same handles.
  test::temp_dir dir;
  const auto config = local_core_config(dir);
  std::atomic<int> answered{0};
  std::vector<std::string> failures;
  std::mutex failures_mutex;
  auto key = std::make_shared<std::string>();
  {
    std::ifstream in(dir.path() / "operator.key");
    std::getline(in, *key);
  }
  const int code =
      run_core(config, [&](local_core& core) -> expected<std::unique_ptr<core_service>> {
        auto c = core.connect(*key);
        // A core still reading its job records answers a listing as a passing loss (a client
        // asks again): the threads start once it has read them.
        for (int tries = 0; tries < 200 && !c.jobs(); ++tries)
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        std::vector<std::thread> threads;
        for (int t = 0; t < 8; ++t)
          threads.emplace_back([&] {
            for (int i = 0; i < 10; ++i) {
              auto jobs = c.jobs();
              auto who = c.principal();
              if (jobs && who && *who == "operator") {
                ++answered;
              } else {
                std::lock_guard<std::mutex> guard(failures_mutex);
                failures.push_back(!jobs  ? jobs.error().message()
                                   : !who ? who.error().message()
                                          : *who);
              }
            }
          });
        for (auto& t : threads) t.join();
        return error(errc::invalid_argument, "the test is done");  // stops the core
      });
  CHECK(code == 2);
  CHECK_MESSAGE(failures.empty(), (failures.empty() ? std::string() : failures.front()));
  CHECK(answered.load() == 80);
}

TEST_CASE("one thread's request that times out leaves another thread's on the session answered") {
  // A timeout ended the client's link, and with it the session at the core, under the other
  // threads' requests: their answers never came (a promise dropped with its actor is not
  // answered), and each waited out its whole timeout.
  test::temp_dir dir;
  auto config = local_core_config(dir);
  config.port = test::free_loopback_port();
  config.store_commit_delay_ms = 35'000;  // every store commit, as on a very slow disk
  test::forked_core core(config);
  auto c = gflex::client::connect("127.0.0.1", config.port, test::operator_link(dir));
  REQUIRE_MESSAGE(c.has_value(), c.error().message());
  REQUIRE(c->principal().has_value());
  dataset_splits data;
  for (auto* d : {&data.train, &data.test}) {
    d->classes = 2;
    d->features = tensor::zeros({4, 2}, dtype::f32);
    d->labels = tensor::zeros({4}, dtype::i32);
  }
  // A: a data set, stored once its commit is through (35 s); B, a second later: an account,
  // whose commit waits behind A's, so that B's request times out (30 s) while A's is out.
  auto pushed = std::async(std::launch::async, [&] { return c->push_data("tiny", data); });
  std::this_thread::sleep_for(std::chrono::seconds(1));
  auto opened = c->create_account("user/bea");
  CHECK_FALSE(opened.has_value());  // not answered within its 30 s
  REQUIRE(pushed.wait_for(std::chrono::seconds(30)) == std::future_status::ready);
  auto info = pushed.get();
  CHECK_MESSAGE(info.has_value(), info.error().message());
}

TEST_CASE("a push whose core restarts part way sends the set again from its first part") {
  // A later part's lost link, or a restarted core's "no upload in progress", failed the whole
  // push: `gflex data push` exited 2 and a large set was pushed again by hand. The core is
  // killed once a quarter of the set's bytes have reached it, and started again.
  test::temp_dir dir;
  auto config = local_core_config(dir);
  config.port = test::free_loopback_port();
  auto core = std::make_unique<test::forked_core>(config);
  auto c = gflex::client::connect("127.0.0.1", config.port, test::operator_link(dir));
  REQUIRE_MESSAGE(c.has_value(), c.error().message());
  REQUIRE(c->principal().has_value());
  dataset_splits data;
  std::mt19937 gen(7);
  std::uniform_real_distribution<float> value(0.0f, 1.0f);
  constexpr int64_t train = 200, values = 4096;
  for (auto* d : {&data.train, &data.test}) {
    const int64_t n = d == &data.train ? train : 8;
    d->classes = 2;
    d->features = tensor::empty({n, values}, dtype::f32);
    d->labels = tensor::zeros({n}, dtype::i32);
    std::generate_n(d->features.data<float>(), n * values, [&] { return value(gen); });
  }
  const uint64_t before = test::tcp_bytes_sent_to(config.port);
  auto pushed =
      std::async(std::launch::async, [&] { return c->push_data("restarted", data, train); });
  // Random values travel as about 3.5 bytes each: a quarter of the training split, and the
  // last part, which stores the set, far from sent.
  bool killed = false;
  for (int polls = 0; polls < 6000 && !killed; ++polls) {
    if (test::tcp_bytes_sent_to(config.port) - before > train * values * 3 / 4) {
      REQUIRE(pushed.wait_for(std::chrono::seconds(0)) == std::future_status::timeout);
      core->kill();
      killed = true;
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  REQUIRE(killed);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the link's end is seen
  core = std::make_unique<test::forked_core>(config);
  REQUIRE(pushed.wait_for(std::chrono::seconds(110)) == std::future_status::ready);
  auto info = pushed.get();
  REQUIRE_MESSAGE(info.has_value(), info.error().message());
  CHECK(info->train_samples == train);
  CHECK(info->test_samples == 8);
  CHECK(info->train_shards.size() == static_cast<size_t>(train));
  auto sets = c->data_sets();
  REQUIRE_MESSAGE(sets.has_value(), sets.error().message());
  REQUIRE(sets->size() == 1);
  CHECK(sets->front().train_shards == info->train_shards);
}

TEST_CASE("an init that fails part way leaves nothing behind: the next one makes the credentials") {
  // A first start that ran out of disk space left some of the TLS files and no operator.key:
  // every later `init` refused ("already exists") while the core asked for `init` first, and
  // the service restarted for ever.
  test::temp_dir dir;
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::signal(SIGXFSZ, SIG_IGN);
    rlimit small{1000, 1000};  // the keys and certificates fit, the 1.5 KB bundle does not
    ::setrlimit(RLIMIT_FSIZE, &small);
    ::_exit(gflex::init_core(dir.path()) ? 0 : 1);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 1);
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir.path()))
    CHECK_MESSAGE(e.is_directory(), "left behind: " << e.path().string());
  auto again = gflex::init_core(dir.path());
  CHECK_MESSAGE(again.has_value(), again.error().message());
}

TEST_CASE("an init killed part way is finished by the next one") {
  // operator.key comes last: an init killed before it (SIGKILL, a power loss) left some or all
  // of the TLS files, and every later init refused ("ca.key already exists") while the core
  // asked for init first. A whole set is kept (nodes may have pinned its authority); part of
  // one is made again.
  test::temp_dir whole, part;
  auto first = gflex::init_core(whole.path());
  REQUIRE(first.has_value());
  const auto key = whole.path() / "operator.key";
  std::filesystem::remove(key);
  auto again = gflex::init_core(whole.path());
  REQUIRE_MESSAGE(again.has_value(), again.error().message());
  CHECK(*again == *first);  // the same authority
  CHECK(std::filesystem::exists(key));
  auto part_first = gflex::init_core(part.path());
  REQUIRE(part_first.has_value());
  std::filesystem::remove(part.path() / "operator.key");
  std::filesystem::remove(core_tls_files::in(part.path()).bundle);
  auto remade = gflex::init_core(part.path());
  REQUIRE_MESSAGE(remade.has_value(), remade.error().message());
  CHECK(*remade != *part_first);  // a new authority: the old one's set was not whole
  CHECK(std::filesystem::exists(core_tls_files::in(part.path()).bundle));
  // A finished init is still refused.
  auto third = gflex::init_core(part.path());
  REQUIRE_FALSE(third.has_value());
  CHECK(third.error().message().find("already exists") != std::string::npos);
}

TEST_CASE("a data directory whose path cannot be searched is an error, not an abort") {
  // std::filesystem::exists threw (ELOOP, EACCES), and gflex-core init and the core's start
  // ended in an uncaught exception: abort, a core dump, and a service restarted for ever.
  test::temp_dir dir;
  const auto loop = dir.path() / "loop";
  std::filesystem::create_symlink(loop, loop);
  const auto data_dir = loop / "core";
  expected<std::string> made = error(errc::none, "not run");
  CHECK_NOTHROW(made = gflex::init_core(data_dir));
  REQUIRE_FALSE(made.has_value());
  CHECK_MESSAGE(made.error().code() == errc::io_error, made.error().message());
  core_config config;
  config.data_dir = data_dir;
  config.insecure = true;
  int code = -1;
  CHECK_NOTHROW(code = run_core(config));
  CHECK(code == 2);  // a configuration to fix: the service does not restart it
}

TEST_CASE("a core's fee outside [0, 0.99] is refused before the core starts") {
  // Only gflex-core's --fee was checked: an embedding program's fee of 1.5 made every node's
  // share negative, no settlement balanced, and every metered job failed unpaid.
  for (double fee : {1.5, -0.1, std::nan("")}) {
    CAPTURE(fee);
    core_config config;
    config.fee = fee;
    auto checked = check_core_config(config);
    REQUIRE_FALSE(checked.has_value());
    CHECK(checked.error().message().find("fee must be in [0, 0.99]") != std::string::npos);
  }
  core_config config;
  config.fee = 0.99;
  CHECK(check_core_config(config).has_value());
}

TEST_CASE("a core's data-serving settings outside gflex-core's bounds are refused") {
  // gflex-core's flags were checked, an embedding program's core_config was not: 0 samples a
  // shard divided by zero (SIGFPE) at the first job on a built-in data set, a chunk rate of 0
  // stalled every data fetch, a chunk queue of 0 disconnected every node at its first chunk
  // request, and payload chunks past 64 MiB were refused by every node (none joined).
  struct bad_setting {
    const char* flag;
    void (*set)(core_config&);
  };
  const bad_setting bad[] = {
      {"--shard-samples", [](core_config& c) { c.shard_samples = 0; }},
      {"--shard-samples", [](core_config& c) { c.shard_samples = -5; }},
      {"--shard-samples", [](core_config& c) { c.shard_samples = 1'000'001; }},
      {"--chunk-rate", [](core_config& c) { c.chunk_mib_per_s = 0; }},
      {"--chunk-queue", [](core_config& c) { c.chunk_queue = 0; }},
      {"--payload-chunk-kib", [](core_config& c) { c.payload_chunk_kib = 0; }},
      {"--payload-chunk-kib", [](core_config& c) { c.payload_chunk_kib = 65'537; }},
  };
  for (const auto& b : bad) check_refused(b.set, std::string(b.flag) + " must be in [");
  // The bounds themselves are taken.
  core_config edges;
  edges.shard_samples = 1;
  edges.chunk_mib_per_s = 1;
  edges.chunk_queue = 1;
  edges.payload_chunk_kib = 16;
  CHECK(check_core_config(edges).has_value());
  edges.shard_samples = 1'000'000;
  edges.payload_chunk_kib = 65'536;
  CHECK(check_core_config(edges).has_value());
}

TEST_CASE("a core's node, job and verification settings outside gflex-core's bounds are refused") {
  // Only gflex-core's flags were checked: a heartbeat of 20 ms with a lease of 40 passed, and
  // every node (which beats at least every 50 ms) was dropped every lease; unverified "Accept"
  // waited without a word; a NaN newcomer share or verification wait reached an integer cast
  // (undefined behaviour); 0 nodes per address refused every node.
  struct bad_setting {
    const char* name;
    void (*set)(core_config&);
  };
  const bad_setting bad[] = {
      {"--heartbeat-ms must be in [50, 600000]",
       [](core_config& c) {
         c.heartbeat_ms = 20;
         c.lease_ms = 40;
       }},
      {"--heartbeat-ms must be in [50, 600000]", [](core_config& c) { c.heartbeat_ms = 600'001; }},
      {"--lease-ms must be in [100, 3600000]",
       [](core_config& c) {
         c.heartbeat_ms = 50;
         c.lease_ms = 99;
       }},
      {"--max-per-address must be in [1, 1000000]",
       [](core_config& c) { c.max_nodes_per_address = 0; }},
      {"--max-jobs-per-account must be in [1, 100000]",
       [](core_config& c) { c.max_jobs_per_account = 0; }},
      {"max_data_bytes_per_account must be in [1048576, ",
       [](core_config& c) { c.max_data_bytes_per_account = 0; }},
      {"max_job_memory_per_account must be in [1048576, ",
       [](core_config& c) { c.max_job_memory_per_account = 1000; }},
      {"max_job_memory must be in [1048576, ", [](core_config& c) { c.max_job_memory = 1; }},
      {"--crash-job-at-round must be in [0, 1000000]",
       [](core_config& c) { c.crash_job_at_round = -1; }},
      {"--store-commit-delay-ms must be in [0, 600000]",
       [](core_config& c) { c.store_commit_delay_ms = -1; }},
      {"--ledger-wait-ms must be in [100, 3600000]", [](core_config& c) { c.ledger_wait_ms = 0; }},
      {"--leader-lease-s must be in [2, 600]",
       [](core_config& c) {
         c.store_url = "etcd://127.0.0.1:2379";
         c.leader_lease_s = 0;
       }},
      {"--newcomer-share must be in [0, 1]",
       [](core_config& c) { c.newcomer_share = std::nan(""); }},
      {"--newcomer-share must be in [0, 1]", [](core_config& c) { c.newcomer_share = 1.5; }},
      {"--newcomer-share must be in [0, 1]", [](core_config& c) { c.newcomer_share = -0.1; }},
      {"--verify-wait-s must be in [0.1, 86400]",
       [](core_config& c) { c.verify_wait_s = std::nan(""); }},
      {"--verify-wait-s must be in [0.1, 86400]", [](core_config& c) { c.verify_wait_s = 0.05; }},
      {"--verify-wait-s must be in [0.1, 86400]",
       [](core_config& c) { c.verify_wait_s = INFINITY; }},
      {"--cloud-price must be in [0, 1e+06]", [](core_config& c) { c.cloud_price = std::nan(""); }},
      {"--unverified must be wait or accept, not \"Accept\"",
       [](core_config& c) { c.unverified = "Accept"; }},
  };
  for (const auto& b : bad) check_refused(b.set, b.name);
  // The bounds themselves are taken, and a core-wide job memory of 0 (half this machine's).
  core_config edges;
  edges.heartbeat_ms = 50;
  edges.lease_ms = 100;
  edges.max_nodes_per_address = 1;
  edges.max_jobs_per_account = 1;
  edges.max_data_bytes_per_account = uint64_t{1} << 20;
  edges.max_job_memory_per_account = uint64_t{1} << 20;
  edges.max_job_memory = 0;
  edges.ledger_wait_ms = 100;
  edges.newcomer_share = 0.0;
  edges.verify_wait_s = 0.1;
  edges.unverified = "accept";
  CHECK(check_core_config(edges).has_value());
  edges.newcomer_share = 1.0;
  edges.verify_wait_s = 86'400.0;
  edges.max_job_memory = uint64_t{1} << 50;
  edges.unverified = "wait";
  CHECK(check_core_config(edges).has_value());
}

TEST_CASE("a chunk service's advertised address without a core of several is refused") {
  // Only the replicated store reads chunk_advertise: a one-server core started with it had
  // no chunk service at that address, and the setting was dropped without a word.
  core_config config;
  config.chunk_advertise = "203.0.113.7:7401";
  auto checked = check_core_config(config);
  REQUIRE_FALSE(checked.has_value());
  CHECK_MESSAGE(checked.error().message().starts_with("--chunk-advertise is for one of a core of "
                                                      "several, which needs --store etcd://"),
                checked.error().message());
  config.store_url = "etcd://127.0.0.1:2379";
  CHECK(check_core_config(config).has_value());
}
