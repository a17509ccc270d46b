/// @file
/// The core's handling of every message a client or node may send, under libFuzzer with
/// ASan and UBSan, to every handle a peer can hold: the front door, a client session, a joined
/// node's session, and the front door of a follower core (a core of several servers; over its
/// own LMDB store, its leader elsewhere). A real core (its actors, its LMDB store in a temporary
/// directory) runs in the process, with one node joined; each input picks a handle and a message
/// type and fills its fields from the fuzzer's bytes (strings, numbers, keys, signatures, with the
/// operator's key or without), sends it, and then asks the core for its jobs and the
/// session for a chunk: both must answer within 10 s, or the input is reported as a hang
/// (abort). A session the input ended (bye) is replaced by joining again. Fields are drawn rather
/// than CAF's wire bytes decoded, so that the fuzzer spends its time in the project's handlers
/// rather than in CAF's deserializer.

#include <fuzzer/FuzzedDataProvider.h>

#include <caf/all.hpp>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <thread>

#include "core_supervisor.hpp"
#include "follower_door.hpp"
#include "gatekeeper.hpp"
#include "gflex/runtime/identity.hpp"
#include "gflex/runtime/metrics.hpp"
#include "messages.hpp"
#include "store.hpp"

using namespace gflex;

namespace {

struct harness {
  std::filesystem::path dir;
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  caf::actor core;
  caf::actor dummy;  // stands in for a node's workers and uplink
  std::string operator_key;
  node_identity key = node_identity::generate();
  node_identity node_key = node_identity::generate();
  std::string token;  // a community token for the joined node
  caf::actor session;
  std::unique_ptr<caf::scoped_actor> watcher;  // monitors the session (made with the system)
  caf::actor client_session;                   // the operator's session, as a client would hold it
  caf::actor follower;                         // a follower core's front door

  // Joins the fuzzed node (again); aborts if the core refuses it.
  void join() {
    caf::scoped_actor self{*sys};
    node_hello h;
    h.protocol = protocol_version;
    h.name = "fuzzed";
    h.device = "cpu";
    h.workers = 2;
    h.uplink = dummy;
    h.credential = token;
    h.public_key = node_key.public_key();
    h.proof = node_key.sign(hello_message(h.protocol, h.name));
    // A node key joins once at a time: a session the input ended may still be leaving the
    // registry, which refuses the key until it has gone.
    for (int tries = 0;; ++tries) {
      bool joined = false, wait = false;
      self->request(core, std::chrono::seconds(30), hello_atom::value, h)
          .receive(
              [&](node_welcome& w) {
                session = caf::actor_cast<caf::actor>(w.session);
                joined = true;
                // How the session ends: a bye ends it normally; anything else is a crash the
                // input caused, which the node's joining again would hide.
                (*watcher)->monitor(session);
              },
              [&](caf::error& e) {
                const auto err = from_caf(e, sys.get());
                wait = tries < 100 && err.message().find("is already joined") != std::string::npos;
                if (!wait) {
                  std::fprintf(stderr, "the fuzzed node cannot join: %s\n", sys->render(e).c_str());
                  std::abort();
                }
              });
      if (joined) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  harness() {
    std::string pattern = (std::filesystem::temp_directory_path() / "gflex-fuzz-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) std::abort();
    dir = pattern;
    configure_actor_system(cfg);
    cfg.set("scheduler.max-threads", size_t{2});
    sys = std::make_unique<caf::actor_system>(cfg);
    watcher = std::make_unique<caf::scoped_actor>(*sys);
    core_config config;
    config.data_dir = dir;
    config.operator_key = operator_key = new_api_key();
    config.max_jobs_per_account = 4;
    auto c = spawn_core(*sys, config);
    if (!c) {
      std::fprintf(stderr, "cannot start a core: %s\n", c.error().message().c_str());
      std::abort();
    }
    core = *c;
    dummy = sys->spawn([]() -> caf::behavior { return {[](int) {}}; });
    caf::scoped_actor self{*sys};
    self->request(core, std::chrono::seconds(30), token_atom::value, operator_key,
                  std::string("community"), int64_t{0}, int64_t{0})
        .receive([&](std::string& t) { token = std::move(t); },
                 [&](caf::error& e) {
                   std::fprintf(stderr, "no token: %s\n", sys->render(e).c_str());
                   std::abort();
                 });
    join();
    auto follower_store = spawn_store(*sys, dir / "follower");
    if (!follower_store) std::abort();
    auto leader = std::make_shared<leader_record>();
    leader->set("c1 127.0.0.1:7400");
    follower = spawn_follower_door(*sys, "c2", *follower_store,
                                   spawn_gatekeeper(*sys, *follower_store, operator_key), leader);
    self->request(core, std::chrono::seconds(30), auth_atom::value, operator_key, dummy)
        .receive(
            [&](client_welcome& w) { client_session = caf::actor_cast<caf::actor>(w.session); },
            [&](caf::error& e) {
              std::fprintf(stderr, "no client session: %s\n", sys->render(e).c_str());
              std::abort();
            });
  }
};

// Made once and never destroyed: tearing a CAF 0.17 actor system down among the static
// destructors at exit crashes in CAF. Only its LMDB directory is removed at exit.
harness& the_harness() {
  static harness* h = [] {
    auto* made = new harness;
    static std::filesystem::path dir = made->dir;
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    });
    return made;
  }();
  return *h;
}

std::string some_string(FuzzedDataProvider& in) {
  return in.ConsumeRandomLengthString(256);
}

// The API key of a request: the operator's, a well-formed unknown one, or fuzz.
std::string some_key(FuzzedDataProvider& in, const harness& h) {
  switch (in.ConsumeIntegralInRange<int>(0, 2)) {
    case 0:
      return h.operator_key;
    case 1:
      return new_api_key();
    default:
      return some_string(in);
  }
}

caf::message some_request(FuzzedDataProvider& in, harness& h) {
  auto key = some_key(in, h);
  switch (in.ConsumeIntegralInRange<int>(0, 14)) {
    case 0:
      return caf::make_message(submit_atom::value, key, some_string(in));
    case 1:
      return caf::make_message(status_atom::value, key, some_string(in));
    case 2:
      return caf::make_message(jobs_atom::value, key);
    case 3:
      return caf::make_message(cancel_atom::value, key, some_string(in));
    case 4:
      return caf::make_message(fetch_atom::value, key, some_string(in),
                               in.ConsumeIntegral<uint64_t>());
    case 5:
      return caf::make_message(open_atom::value, key, some_string(in));
    case 6:
      return caf::make_message(credit_in_atom::value, key, some_string(in),
                               in.ConsumeIntegral<int64_t>(), some_string(in));
    case 7:
      return caf::make_message(account_atom::value, key, some_string(in));
    case 8:
      return caf::make_message(topup_atom::value, key, some_string(in),
                               in.ConsumeIntegral<int64_t>());
    case 9:
      return caf::make_message(token_atom::value, key, some_string(in),
                               in.ConsumeIntegral<int64_t>());
    case 10:
      return caf::make_message(token_atom::value, key);
    case 11:
      return caf::make_message(revoke_atom::value, key, some_string(in));
    case 12:
      return caf::make_message(nodes_atom::value, key);
    case 13:
      return caf::make_message(ledger_atom::value, key);
    default: {
      node_hello hello;
      hello.protocol = in.ConsumeBool() ? protocol_version : in.ConsumeIntegral<uint32_t>();
      hello.name = some_string(in);
      hello.device = some_string(in);
      hello.device_memory = in.ConsumeIntegral<uint64_t>();
      hello.workers = in.ConsumeIntegralInRange<uint32_t>(0, 3);
      if (in.ConsumeBool()) hello.uplink = h.dummy;
      hello.tier = in.ConsumeIntegral<uint8_t>();
      hello.credential = some_string(in);
      hello.price = in.ConsumeIntegral<int64_t>();
      hello.throughput = in.ConsumeFloatingPoint<double>();
      if (in.ConsumeBool()) {
        hello.public_key = h.key.public_key();
        hello.proof = h.key.sign(hello_message(hello.protocol, hello.name));
      } else {
        auto k = in.ConsumeBytes<uint8_t>(in.ConsumeIntegralInRange<size_t>(0, 40));
        hello.public_key = k;
        hello.proof = in.ConsumeBytes<uint8_t>(in.ConsumeIntegralInRange<size_t>(0, 80));
      }
      return caf::make_message(hello_atom::value, std::move(hello));
    }
  }
}

// A message for the operator's client session: every verb of its interface, without a key.
caf::message some_client_message(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange<int>(0, 8)) {
    case 0:
      return caf::make_message(submit_atom::value, some_string(in));
    case 1:
      return caf::make_message(status_atom::value, some_string(in));
    case 2:
      return caf::make_message(cancel_atom::value, some_string(in));
    case 3:
      return caf::make_message(fetch_atom::value, some_string(in), in.ConsumeIntegral<uint64_t>());
    case 4:
      return caf::make_message(account_atom::value, some_string(in));
    case 5:
      return caf::make_message(topup_atom::value, some_string(in), in.ConsumeIntegral<int64_t>());
    case 6:
      return caf::make_message(token_atom::value, some_string(in), in.ConsumeIntegral<int64_t>(),
                               in.ConsumeIntegral<int64_t>());
    case 7:
      return caf::make_message(revoke_atom::value, some_string(in));
    default:
      return caf::make_message(jobs_atom::value);
  }
}

// A message for the node's session: its own interface, the core's internal verbs, and the
// verbs of the old protocol that sessions must drop.
caf::message some_session_message(FuzzedDataProvider& in, harness& h) {
  switch (in.ConsumeIntegralInRange<int>(0, 7)) {
    case 0:
      return caf::make_message(beat_atom::value);
    case 1:
      return caf::make_message(bye_atom::value);
    case 2:
      return caf::make_message(chunk_atom::value, some_string(in));
    case 3: {
      assignment a;
      a.id = in.ConsumeIntegral<uint64_t>();
      a.job_id = some_string(in);
      a.workload = some_string(in);
      a.local_steps = in.ConsumeIntegral<int64_t>();
      a.batch_size = in.ConsumeIntegral<int64_t>();
      a.params = in.ConsumeBytes<uint8_t>(in.ConsumeIntegralInRange<size_t>(0, 64));
      if (in.ConsumeBool()) {  // parameters announced as chunks
        a.params_chunks = {some_string(in), some_string(in)};
        a.params_bytes = in.ConsumeIntegral<uint64_t>();
      }
      return caf::make_message(assign_atom::value, in.ConsumeIntegral<uint32_t>(), std::move(a));
    }
    case 4:
      return caf::make_message(abort_atom::value, in.ConsumeIntegral<uint64_t>());
    case 5:
      return caf::make_message(offer_atom::value, some_string(in),
                               std::vector<caf::actor>{h.dummy});
    case 6:
      return caf::make_message(bye_atom::value, some_string(in));
    default:
      return caf::make_message(update_atom::value, some_string(in), h.dummy);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto& h = the_harness();
  FuzzedDataProvider in(data, size);
  caf::scoped_actor self{*h.sys};
  // The answer to the fuzzed request may be anything; it waits in the mailbox, unread.
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 0:
      self->request(h.session, std::chrono::seconds(10), some_session_message(in, h));
      break;
    case 1:
      self->request(h.client_session, std::chrono::seconds(10), some_client_message(in));
      break;
    case 2:
      self->request(h.follower, std::chrono::seconds(10), some_request(in, h));
      break;
    default:
      self->request(h.core, std::chrono::seconds(10), some_request(in, h));
  }
  bool alive = false;
  self->request(h.core, std::chrono::seconds(10), jobs_atom::value, h.operator_key)
      .receive([&](std::vector<job_status>&) { alive = true; },
               [&](caf::error& e) {
                 std::fprintf(stderr, "the core did not answer: %s\n", h.sys->render(e).c_str());
               });
  if (!alive) std::abort();
  bool follower_alive = false;
  self->request(h.follower, std::chrono::seconds(10), jobs_atom::value, h.operator_key)
      .receive([&](std::vector<job_status>&) { follower_alive = true; },
               [&](caf::error& e) {
                 std::fprintf(stderr, "the follower did not answer: %s\n",
                              h.sys->render(e).c_str());
               });
  if (!follower_alive) std::abort();
  // The session answers too, unless the input ended it (bye): then the node joins again.
  bool session_alive = false, ended = false;
  self->request(h.session, std::chrono::seconds(10), chunk_atom::value, std::string(64, '0'))
      .receive([&](std::vector<uint8_t>&) { session_alive = true; },
               [&](caf::error& e) {
                 session_alive = e.category() == error_category;  // "no chunk": it answered
                 ended = e == caf::sec::request_receiver_down;
                 if (!session_alive && !ended)
                   std::fprintf(stderr, "the session did not answer: %s\n",
                                h.sys->render(e).c_str());
               });
  if (ended) {
    bool normal = false;
    (*h.watcher)
        ->receive(
            [&](caf::down_msg& d) {
              normal = d.reason == caf::exit_reason::normal;
              if (!normal)
                std::fprintf(stderr, "the session ended: %s\n", h.sys->render(d.reason).c_str());
            },
            caf::after(std::chrono::seconds(10)) >>
                [] { std::fprintf(stderr, "the session ended, and no down message came\n"); });
    if (!normal) std::abort();
    h.join();
  } else if (!session_alive) {
    std::abort();
  }
  // The client session answers its own kind of request.
  bool client_alive = false;
  self->request(h.client_session, std::chrono::seconds(10), jobs_atom::value)
      .receive([&](std::vector<job_status>&) { client_alive = true; },
               [&](caf::error& e) {
                 std::fprintf(stderr, "the client session did not answer: %s\n",
                              h.sys->render(e).c_str());
               });
  if (!client_alive) std::abort();
  // The core's supervisor restarts an actor of its own that stopped, silently but for its
  // log and this count: an input that stopped one is a crash all the same.
  if (const auto text = metrics::render();
      text.find("gflex_core_child_restarts_total{") != std::string::npos) {
    std::fprintf(stderr, "the core restarted an actor of its own:\n%s\n", text.c_str());
    std::abort();
  }
  return 0;
}
