/// @file
/// The embedding API (<gflex/gflex.hpp>): processes for a core and a node, the client, and
/// the embedded core-plus-nodes used by `gflex demo`.

#include <fcntl.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>
#include <caf/io/middleman.hpp>
#include <caf/openssl/manager.hpp>
#include <caf/openssl/publish.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include "access.hpp"
#include "answer_probe.hpp"
#include "core_supervisor.hpp"
#include "follower_door.hpp"
#include "gatekeeper.hpp"
#include "gflex/gflex.hpp"
#include "gflex/runtime/checkpoint.hpp"
#include "gflex/runtime/credits.hpp"
#include "gflex/runtime/digest.hpp"
#include "gflex/runtime/dir_lock.hpp"
#include "gflex/runtime/job_spec.hpp"
#include "gflex/runtime/replicated_store.hpp"
#include "gflex/runtime/secret_file.hpp"
#include "gflex/runtime/shard.hpp"
#include "gflex/runtime/tcp_probe.hpp"
#include "gflex/runtime/tls_credentials.hpp"
#include "gflex/test_aids.hpp"
#include "job_record.hpp"
#include "leader_redirect.hpp"
#include "link_loss.hpp"
#include "link_security.hpp"
#include "message_limit.hpp"
#include "messages.hpp"
#include "node_supervisor.hpp"
#include "parameter_copy.hpp"
#include "routed_messages.hpp"
#include "store.hpp"
#include "user_data.hpp"

namespace gflex {

namespace {

// What keeps a peer within its bounds below CAF (message_limit.hpp, routed_messages.hpp): a
// process that talks to peers does not start without them.
expected<void> peer_guards_in_effect() {
  if (auto limit = message_limit_in_effect(); !limit) return limit;
  return routed_message_check_in_effect();
}

// SIGINT and SIGTERM are counted by a handler (any thread may take them: OpenBLAS starts its
// threads before main, so blocking the signals in main's threads is not enough); each
// watcher's thread polls the count and turns a signal taken since the watcher began into a
// message for its run's owner actor. A count rather than a flag that each run cleared: runs
// may overlap in one process (run_core, run_node, run_embedded on different threads), and one
// run's end cleared a signal that another had not yet seen.
std::atomic<uint64_t> stop_signals_taken{0};
std::atomic<int> last_stop_signal{0};

extern "C" void on_stop_signal(int sig) {
  last_stop_signal.store(sig);
  stop_signals_taken.fetch_add(1);
}

// The handlers are installed once for every watcher alive, and the caller's come back when the
// last one goes: each watcher that saved and restored its own put them back out of order (the
// first run to end gave the caller its handlers while another still ran, which a signal then
// no longer stopped; the last left the stale handler installed).
std::mutex handlers_mutex;
int handler_users = 0;
struct sigaction callers_int {};
struct sigaction callers_term {};

// The handlers are the caller's again once the last watcher goes, and a signal taken before a
// run does not stop it (an embedding program's Ctrl-C, a second run_core).
class signal_watcher {
 public:
  signal_watcher() : seen_(stop_signals_taken.load()) {
    {
      std::lock_guard<std::mutex> lock(handlers_mutex);
      if (handler_users++ == 0) {
        struct sigaction action {};
        action.sa_handler = on_stop_signal;
        sigemptyset(&action.sa_mask);
        sigaction(SIGINT, &action, &callers_int);
        sigaction(SIGTERM, &action, &callers_term);
      }
    }
    thread_ = std::thread([this] {
      while (!done_) {
        if (received_.load() == 0 && stop_signals_taken.load() != seen_)
          received_.store(last_stop_signal.load());
        if (const int sig = received_.load(); sig != 0) {
          std::lock_guard<std::mutex> lock(owner_mutex_);
          if (owner_) {
            caf::anon_send(owner_, stop_atom::value, 0,
                           std::string(sig == SIGINT ? "interrupted" : "terminated"));
            owner_ = nullptr;
          }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    });
  }
  /// From now on a signal (also one taken before) is sent to `owner` as (stop_atom, 0, why).
  void start(caf::actor owner) {
    std::lock_guard<std::mutex> lock(owner_mutex_);
    owner_ = std::move(owner);
  }
  /// The signal taken since this watcher began (SIGINT or SIGTERM), 0 if none.
  int signal() const { return stop_signals_taken.load() != seen_ ? last_stop_signal.load() : 0; }
  /// The same, as a flag its thread sets (within 50 ms), for a loop that takes a flag.
  const std::atomic<int>& flag() const { return received_; }
  ~signal_watcher() {
    done_ = true;
    if (thread_.joinable()) thread_.join();
    std::lock_guard<std::mutex> lock(handlers_mutex);
    if (--handler_users == 0) {
      sigaction(SIGINT, &callers_int, nullptr);
      sigaction(SIGTERM, &callers_term, nullptr);
    }
  }
  signal_watcher(const signal_watcher&) = delete;
  signal_watcher& operator=(const signal_watcher&) = delete;

 private:
  const uint64_t seen_;
  std::atomic<int> received_{0};
  std::atomic<bool> done_{false};
  std::mutex owner_mutex_;
  caf::actor owner_;
  std::thread thread_;
};

// Waits until a signal arrives, `watched` goes down, or someone sends (stop_atom, code, why).
int wait_for_stop(caf::scoped_actor& self, const caf::actor& watched) {
  self->monitor(watched);
  int code = 0;
  bool running = true;
  while (running) {
    self->receive(
        [&](stop_atom, int c, const std::string& why) {
          if (c != 0)
            spdlog::error("{}", why);
          else
            spdlog::info("{}: shutting down", why);
          code = c;
          running = false;
        },
        [&](const caf::down_msg& down) {
          if (down.source == watched.address()) {
            // Its reason names what failed (the core names the child that kept failing).
            spdlog::error("stopped: {}", from_caf(down.reason, &self->system()).message());
            code = 1;
            running = false;
          }
        });
  }
  return code;
}

template <class T, class... Ts>
expected<T> ask(caf::actor_system& sys, const caf::actor& dest, std::chrono::seconds timeout,
                Ts&&... xs) {
  caf::scoped_actor self{sys};
  expected<T> out = error(errc::io_error, "no answer");
  self->request(dest, timeout, std::forward<Ts>(xs)...)
      .receive([&](T& value) { out = std::move(value); },
               [&](caf::error& e) { out = from_caf(e, &sys); });
  return out;
}

std::filesystem::path operator_key_file(const std::filesystem::path& data_dir) {
  return data_dir / "operator.key";
}

// The operator's key from DATA_DIR/operator.key, which only its owner may read.
expected<std::string> read_operator_key(const std::filesystem::path& data_dir) {
  auto file = operator_key_file(data_dir);
  // Not the throwing overloads: a path that cannot be searched (a state directory of
  // another user, a symlink loop) ended the program with an uncaught exception (abort).
  std::error_code ec;
  const bool there = std::filesystem::exists(file, ec);
  if (ec) return error(errc::io_error, file.string() + ": " + ec.message());
  if (!there)
    return error(errc::invalid_argument,
                 file.string() +
                     " is missing: make the core's credentials with `gflex-core init "
                     "--data-dir " +
                     data_dir.string() + "` first");
  auto key = read_secret_file(file);
  if (!key) return key.error();
  if (!looks_like_api_key(*key))
    return error(errc::bad_format, file.string() + " does not hold an API key");
  return key;
}

}  // namespace

expected<std::string> init_core(const std::filesystem::path& data_dir) {
  auto key_file = operator_key_file(data_dir);
  std::error_code ec;
  const bool there = std::filesystem::exists(key_file, ec);
  if (ec) return error(errc::io_error, key_file.string() + ": " + ec.message());
  if (there)
    return error(errc::invalid_argument,
                 key_file.string() + " already exists: this core has its credentials");
  std::filesystem::create_directories(data_dir, ec);
  if (ec) return error(errc::io_error, data_dir.string() + ": " + ec.message());
  // operator.key is written last: without it, the credentials are what an init killed part
  // way left (nothing used them: a core does not start without the key). That init refused
  // every later one ("already exists") while the core asked for one. A whole set is kept (its
  // authority, which nodes may have pinned, stays); part of one is made again.
  const auto tls = core_tls_files::in(data_dir);
  int present = 0;
  for (const auto& f : {tls.ca_key, tls.core_key, tls.ca_cert, tls.core_cert, tls.bundle}) {
    const bool here = std::filesystem::exists(f, ec);
    if (ec) return error(errc::io_error, f.string() + ": " + ec.message());
    present += here ? 1 : 0;
  }
  expected<std::string> fingerprint = error(errc::none, "");
  if (present == 5 && check_core_bundle(tls.bundle)) {
    fingerprint = pinned_fingerprint(tls.ca_cert);
    if (!fingerprint) return fingerprint.error();
    spdlog::info("{}: the credentials an earlier init made are kept; the operator key is made",
                 data_dir.string());
  } else {
    if (present > 0) {
      spdlog::warn(
          "{}: {} of the 5 credential files an earlier init left (it did not finish) "
          "are made again",
          data_dir.string(), present);
      remove_core_credentials(data_dir, 5);
    }
    fingerprint = create_core_credentials(data_dir);
    if (!fingerprint) return fingerprint.error();
  }
  auto key = new_api_key() + "\n";
  if (auto written = write_new_file(
          key_file, {reinterpret_cast<const uint8_t*>(key.data()), key.size()}, 0600);
      !written) {
    remove_core_credentials(data_dir, 5);  // all or none: the next init makes them again
    return written.error();
  }
  return fingerprint;
}

// -- core and node processes ---------------------------------------------------------------------

int run_core(const core_config& config) {
  return run_core(config, {});
}

struct in_process_core final : local_core {
  caf::actor_system& sys;
  caf::actor core;
  in_process_core(caf::actor_system& s, caf::actor c) : sys(s), core(std::move(c)) {}
  client connect(const std::string& api_key) override;
};

namespace {

// A core of several servers: joins the other cores through etcd and waits until this one
// leads. Meanwhile it follows: its front door (follower_door.hpp) answers status, jobs and
// nodes from the replicated state and sends every other request to the leader. On success
// config.shared_store holds the replicated store and the door is gone, its address free for
// the leader's; nullopt when a stop signal came first.
std::optional<int> lead_replicated(core_config& config, caf::actor_system& sys,
                                   const std::atomic<int>& stop) {
  auto endpoints = etcd_endpoints_of(config.store_url);
  if (!endpoints) {
    spdlog::error("{}", endpoints.error().message());
    return 2;
  }
  if (config.chunk_listen.empty()) {
    spdlog::error(
        "--chunk-listen HOST:PORT is required with --store etcd://...: the other "
        "cores fetch parameters and checkpoints from it");
    return 2;
  }
  // A one-server core switched to etcd: its state (data.mdb) is not read in this mode, and
  // it would start empty, saying nothing, where etcd holds no state yet.
  if (auto checked = check_single_core_state(config.data_dir, *endpoints); !checked) {
    spdlog::error("{}", checked.error().message());
    // etcd unreachable now is tried again by the service (exit 1); the state is to move (2).
    return checked.error().code() == errc::unavailable ? 1 : 2;
  }
  replication_config rc;
  rc.endpoints = *endpoints;
  rc.core_address =
      config.advertise.empty() ? config.host + ":" + std::to_string(config.port) : config.advertise;
  rc.core_id = config.core_id.empty() ? rc.core_address : config.core_id;
  rc.chunk_listen = config.chunk_listen;
  rc.chunk_advertise = config.chunk_advertise;
  rc.chunk_dir = config.data_dir / "chunks";
  rc.secret = config.operator_key;
  rc.lease_ttl_s = config.leader_lease_s;
  // A leader that lost its lease must not act once more: another core may lead already.
  // Everything it committed is in etcd; nothing local needs saving.
  auto started = replicated_store::start(
      rc,
      [] {
        spdlog::critical("this core lost the leadership; stopping at once");
        spdlog::default_logger()->flush();
        std::_Exit(3);
      },
      &stop);
  // Stopped by SIGINT or SIGTERM while it joined (fetching the chunks it lacked): a stop asked
  // for, not a failure for the service to try again.
  if (!started && stop.load() != 0) {
    spdlog::info("{}", started.error().message());
    return 0;
  }
  if (!started) {
    spdlog::error("{}", started.error().message());
    // A configuration to fix (--core-id, --advertise, --chunk-listen, --chunk-advertise, the
    // endpoints) is not tried again by the service (exit 2); one that cannot reach etcd now
    // is (exit 1).
    return started.error().code() == errc::invalid_argument ? 2 : 1;
  }
  std::shared_ptr<replicated_store> store(std::move(*started));
  spdlog::info("core {} joined the cores at {}; waiting to lead", rc.core_id, rc.endpoints);
  auto leader = std::make_shared<leader_record>();
  auto store_actor = spawn_store(sys, store);
  auto gate = spawn_gatekeeper(sys, store_actor, config.operator_key);
  auto door = spawn_follower_door(sys, rc.core_id, store_actor, gate, leader);
  // From an actor of this process: the door drops exit messages that come from none
  // (boundary.hpp), an anonymous one included.
  auto stop_follower = [&] {
    caf::scoped_actor self{sys};
    for (const auto& a : {door, gate, store_actor})
      self->send_exit(a, caf::exit_reason::user_shutdown);
  };
  auto port = config.insecure
                  ? sys.middleman().publish(door, config.port, config.host.c_str(), true)
                  : caf::openssl::publish(door, config.port, config.host.c_str(), true);
  if (!port) {
    spdlog::error("cannot listen on {}:{}: {}", config.host, config.port, sys.render(port.error()));
    stop_follower();
    return 1;
  }
  auto led = store->campaign(stop, [&](const std::string& record) {
    leader->set(record);
    spdlog::info("following {}; answering reads on {}:{}",
                 record.empty() ? std::string("(no leader yet)") : record, config.host, *port);
  });
  {
    // Asked of the manager directly: CAF 0.17's caf::openssl::unpublish does not compile (it
    // leaves out the actor's address that the manager's interface wants).
    caf::scoped_actor self{sys};
    auto manager =
        config.insecure ? sys.middleman().actor_handle() : sys.openssl_manager().actor_handle();
    self->request(manager, std::chrono::seconds(10), caf::unpublish_atom::value, door.address(),
                  *port)
        .receive([] {},
                 [&](caf::error& e) {
                   spdlog::warn("could not stop answering as a follower on port {}: {}", *port,
                                sys.render(e));
                 });
  }
  stop_follower();
  if (!led) {
    spdlog::error("{}", led.error().message());
    return 1;
  }
  if (!*led) return 0;
  config.shared_store = std::move(store);
  return std::nullopt;
}
}  // namespace

int run_core(const core_config& given, const core_service_starter& start) {
  signal_watcher signals;
  core_config config = given;
  if (auto ok = check_core_config(config); !ok) {
    spdlog::error("{}", ok.error().message());
    return 2;
  }
  if (config.operator_key.empty()) {
    auto key = read_operator_key(config.data_dir);
    if (!key) {
      spdlog::error("{}", key.error().message());
      return 2;
    }
    config.operator_key = std::move(*key);
  }
  // Held until the process ends, past the actor system and so past the store's last write.
  auto data_dir_lock = dir_lock::acquire(config.data_dir, "gflex-core");
  if (!data_dir_lock) {
    spdlog::error("{}", data_dir_lock.error().message());
    return 1;
  }
  if (auto guards = peer_guards_in_effect(); !guards) {
    spdlog::error("{}", guards.error().message());
    return 1;
  }
  if (config.standalone) refuse_third_party_nodes();
  caf::actor_system_config cfg;
  configure_actor_system(cfg);
  std::string link = "plain TCP";
  if (config.insecure) {
    spdlog::warn(
        "--insecure: links to this core are NOT encrypted, and nodes and clients "
        "cannot tell it from an impostor");
  } else {
    if (auto ok = configure_core_tls(cfg, std::filesystem::absolute(config.data_dir)); !ok) {
      spdlog::error("{}", ok.error().message());
      return 2;
    }
    auto fingerprint = pinned_fingerprint(core_tls_files::in(config.data_dir).ca_cert);
    link = "TLS, authority " + (fingerprint ? *fingerprint : std::string("?"));
  }
  caf::actor_system sys{cfg};
  if (!config.store_url.empty())
    if (auto code = lead_replicated(config, sys, signals.flag())) return *code;
  // The core's front door drops exit messages that come from no actor of this process
  // (boundary.hpp): an anonymous one would be ignored and the process would never end, so
  // this actor is the one that stops it.
  caf::scoped_actor self{sys};
  auto core = spawn_core(sys, config);
  if (!core) {
    spdlog::error("{}", core.error().message());
    // A damaged store (data.mdb cut short or emptied) is the operator's to restore: a
    // service does not restart the core on it for ever (exit 2); anything else may pass.
    return core.error().code() == errc::bad_format ? 2 : 1;
  }
  auto port = config.insecure
                  ? sys.middleman().publish(*core, config.port, config.host.c_str(), true)
                  : caf::openssl::publish(*core, config.port, config.host.c_str(), true);
  if (!port) {
    spdlog::error("cannot listen on {}:{}: {}", config.host, config.port, sys.render(port.error()));
    self->send_exit(*core, caf::exit_reason::user_shutdown);
    return 1;
  }
  spdlog::info("core listening on {}:{} ({}), data in {}", config.host, *port, link,
               config.data_dir.string());
  in_process_core local{sys, *core};
  std::unique_ptr<core_service> service;
  if (start) {
    // A starter that throws: the core is stopped first, else the actor system's end would
    // wait for it for ever (and the signal watcher was not started: only SIGKILL ended it).
    expected<std::unique_ptr<core_service>> started = error(errc::none, "");
    try {
      started = start(local);
    } catch (...) {
      self->send_exit(*core, caf::exit_reason::user_shutdown);
      throw;
    }
    if (!started) {
      spdlog::error("{}", started.error().message());
      self->send_exit(*core, caf::exit_reason::user_shutdown);
      // A port in use may free (1: a service restarts the core), as for --listen; anything
      // else is the configuration (2: it does not).
      return started.error().code() == errc::unavailable ? 1 : 2;
    }
    service = std::move(*started);
  }
  signals.start(self);
  int code = wait_for_stop(self, *core);
  service.reset();  // its clients end their sessions while the core still runs
  self->send_exit(*core, caf::exit_reason::user_shutdown);
  if (auto n = oversized_messages_refused(); n > 0)
    spdlog::info("closed {} connection(s) that announced messages over {} MiB", n,
                 max_message_bytes >> 20);
  return code;
}

int run_node(const node_config& config, const std::string& host, uint16_t port) {
  return run_node(config, host, port, node_test_aids{});
}

int run_node(const node_config& config, const std::string& host, uint16_t port,
             const node_test_aids& aids) {
  signal_watcher signals;
  // Held until the process ends (_Exit below). Two nodes on one directory shared its key and
  // its chunks: the core refused the second (its key already joined), which retried for
  // ever, and each node's cache removed files the other still counted.
  auto data_dir_lock = dir_lock::acquire(config.data_dir, "gflex-node");
  if (!data_dir_lock) {
    spdlog::error("{}", data_dir_lock.error().message());
    return 2;  // a configuration to fix: a service does not restart it
  }
  if (auto guards = peer_guards_in_effect(); !guards) {
    spdlog::error("{}", guards.error().message());
    return 1;
  }
  caf::actor_system_config cfg;
  configure_actor_system(cfg);
  if (config.insecure) {
    spdlog::warn(
        "--insecure: the link to the core is NOT encrypted, and this node cannot tell "
        "the core from an impostor");
  } else {
    auto fingerprint = configure_peer_tls(cfg, config.core_cert);
    if (!fingerprint) {
      spdlog::error("{}", fingerprint.error().message());
      return 2;
    }
    spdlog::info("TLS to the core, pinned to authority {}", *fingerprint);
  }
  caf::actor_system sys{cfg};
  caf::scoped_actor self{sys};
  auto node = spawn_node(sys, config, aids, host, port, nullptr, self);
  if (!node) {
    spdlog::error("{}", node.error().message());
    return start_failure_exit_code(node.error());
  }
  signals.start(self);
  int code = wait_for_stop(self, *node);
  if (code == 0) {
    // Leave politely: the core reassigns this node's work at once instead of waiting.
    self->send(*node, bye_atom::value);
    self->wait_for(*node);
  }
  // The node's actors have stopped and it keeps nothing unsaved (cached chunks are written
  // by atomic renames). Exit without tearing the actor system down: CAF 0.17's BASP layer
  // keeps references to the worker actors it serialized into the hello until the core drops
  // its proxies, so the actor system's destructor can wait seconds for their threads (and,
  // after a refused hello, forever).
  if (config.on_activity) {
    node_activity stopping;
    stopping.what = node_activity::kind::stopping;
    config.on_activity(stopping);
  }
  spdlog::default_logger()->flush();
  std::fflush(nullptr);
  std::_Exit(code);
}

// -- client -------------------------------------------------------------------------------------

// Errors about a lost link to the core, and about a request it did not answer (a request in
// flight when the core went down is never answered), begin as link_loss.hpp says: following
// a job tries again after either.
using detail::link_lost;
using detail::no_answer;

namespace {
// A follower's answer in the leader's stead: it names a leader (errc::not_leader), or says
// that none leads as far as it knows (follower_door.hpp). The follower did nothing of the
// request, which may be sent elsewhere as it is.
bool from_a_follower(const error& e) {
  return e.code() == errc::not_leader ||
         (e.code() == errc::unavailable &&
          e.message().find(" follows and no core leads") != std::string::npos);
}

// How long a client waits for a core that took its connection to answer: once for
// probe_answer, once for CAF's handshake. A frozen core (SIGSTOP, a suspended machine) or
// another program on its port takes the connection in the kernel and says nothing, and CAF
// 0.17 waits for its handshake for ever: `gflex status` hung there, as did a trainer that
// dialled its core again.
constexpr std::chrono::seconds core_answer_timeout{10};
}  // namespace

// The sessions a client's link actor watches: one whose core died is noted here.
using watch_atom = caf::atom_constant<caf::atom("watch")>;
struct session_watch {
  std::mutex mutex;
  std::set<caf::actor_addr> down;
  // Requests out on a watched actor: the blocking actor that waits and the response it
  // waits for. CAF 0.17 answers no request out on a proxy whose link dies (a core killed
  // with a request in flight): the client waited out the whole timeout (120 s a data set's
  // part, 300 s a fetch) before it dialled the core again.
  struct waiter {
    caf::actor_addr on;
    caf::strong_actor_ptr self;
    caf::message_id response;
  };
  std::map<uint64_t, waiter> waiting;  // by a number of their own (watched_request)
  uint64_t next_waiter = 0;

  // Under the lock: fails the request `w` waits for, as one whose receiver went down.
  static void fail(const waiter& w) {
    w.self->enqueue(caf::make_mailbox_element(nullptr, w.response, {},
                                              caf::make_error(caf::sec::request_receiver_down)),
                    nullptr);
  }

  void went_down(const caf::actor_addr& a) {
    std::lock_guard<std::mutex> seen(mutex);
    down.insert(a);
    std::erase_if(waiting, [&](const auto& entry) {
      if (entry.second.on != a) return false;
      fail(entry.second);
      return true;
    });
  }
};

// A request out on an actor the link actor watches, for as long as it waits: failed at once
// as request_receiver_down once that actor goes down (or if it went down already).
class watched_request {
 public:
  watched_request(std::shared_ptr<session_watch> watch, const caf::actor& to,
                  caf::blocking_actor* self, caf::message_id response)
      : watch_(std::move(watch)) {
    std::lock_guard<std::mutex> seen(watch_->mutex);
    session_watch::waiter w{to.address(), caf::strong_actor_ptr{self->ctrl()}, response};
    if (watch_->down.count(w.on) > 0) {
      session_watch::fail(w);
      return;
    }
    id_ = ++watch_->next_waiter;
    watch_->waiting.emplace(id_, std::move(w));
  }
  ~watched_request() {
    std::lock_guard<std::mutex> seen(watch_->mutex);
    watch_->waiting.erase(id_);  // none if it went down (went_down took it out)
  }
  watched_request(const watched_request&) = delete;
  watched_request& operator=(const watched_request&) = delete;

 private:
  std::shared_ptr<session_watch> watch_;
  uint64_t id_ = 0;
};

// A client's link actor: the core ends the session given for it when it ends. Held by the
// client while the session is its own and by every request out on that session, and ended
// when the last of them lets it go: one thread's timeout replaced the session for the next
// request, and ending the link at once ended the session under the other threads' requests,
// which were then never answered (a promise dropped with its actor is not answered in CAF
// 0.17) and each waited out its whole timeout.
struct session_link {
  caf::actor actor;
  explicit session_link(caf::actor a) : actor(std::move(a)) {}
  session_link(const session_link&) = delete;
  session_link& operator=(const session_link&) = delete;
  ~session_link() { caf::anon_send_exit(actor, caf::exit_reason::user_shutdown); }
};

struct cluster_system;

struct client::impl {
  caf::actor_system_config cfg;
  // The client's own actor system (a remote client, an embedded cluster), declared before
  // the handles so that they are released first; null for a client of a core in this
  // process, which uses the core's.
  std::unique_ptr<caf::actor_system> owned;
  // What keeps `sys` running for a client an embedded cluster lent: it ends with the last of
  // the cluster and its clients (embedded_cluster's cluster_system).
  std::shared_ptr<cluster_system> lender;
  caf::actor_system* sys = nullptr;
  caf::actor core;                     // the front door
  std::string key;                     // the API key, given to the front door once
  caf::actor session;                  // this client's session, once the front door has given it
  std::shared_ptr<session_link> link;  // the session ends with it (session_link)
  // The sessions that went down, as the link actor (which watches each) saw. A session's
  // proxy dies with its link to the core (its process killed, its host gone), and a request
  // sent to a dead proxy is dropped, never answered: the next request waited out its 30 s
  // timeout before it dialled the core again.
  std::shared_ptr<session_watch> watch = std::make_shared<session_watch>();
  std::string principal;            // who the key authenticates as, once the session is given
  bool insecure = false;            // plain TCP (--insecure) rather than TLS
  std::filesystem::path core_cert;  // the bundle TLS is pinned to, named in dial's hints
  // A dial gave up on a TLS handshake that CAF still waits for (dial): the actor system
  // cannot be stopped now (dispose).
  bool dial_left_pending = false;
  // Where a remote client dials its core again once the link is lost (the core restarted, a
  // follower took over as leader): the session died with it, and is asked for anew.
  std::string host;
  uint16_t port = 0;
  std::vector<std::pair<std::string, uint16_t>> other_cores;  // a core of several: the rest
  bool core_lost = false;
  // The core was lost by not answering (a request timed out), not by its link's end: a core
  // frozen or cut off with its links still open. It is tried last when dialling again: the
  // middleman answers a dial of it from its cache while its link is open, and every request
  // waited out its timeout there, while another core of several led.
  bool core_unanswered = false;
  // A client may be used from several threads at once (a trainer following several jobs, a
  // pipeline's train stage beside its caller): the session and the links are asked for,
  // replaced and forgotten under this lock, never sent to under it.
  std::mutex mutex;
  caf::actor_system& system() { return *sys; }

  // Whether the embedded cluster that lent this client has ended (its core and nodes
  // stopped); false for any other client.
  bool lender_ended() const;

  void own_system() {
    owned = std::make_unique<caf::actor_system>(cfg);
    sys = owned.get();
  }

  ~impl() {
    link.reset();  // while the actor system it lives in is still here
  }

  // Destroys `p`, unless a dial of it left a TLS handshake pending: then `p` and its actor
  // system are let go, unstopped, for the rest of the process. CAF 0.17's middleman stops
  // only once each connection has written what it holds, and a handshake its peer never
  // answers holds its first bytes for ever: stopping the system waited with it, and the
  // caller that got the dial's error never returned.
  static void dispose(std::unique_ptr<impl> p) {
    if (p && p->dial_left_pending) (void)p.release();
  }

  // The core's front door at h:p, from the middleman's link if it has one; an error (io_error)
  // begins with h:p and says why not. Bounded: a machine that is off is found by probe_tcp
  // (3 s), a process that takes the connection and says nothing by probe_answer, and a core
  // that goes silent after its probe by the request's timeout (core_answer_timeout each).
  expected<caf::actor> dial(const std::string& h, uint16_t p) {
    const std::string where = h + ":" + std::to_string(p);
    if (auto reachable = probe_tcp(h, p); !reachable)
      return error(errc::io_error, reachable.error().message());
    if (auto answers = probe_answer(h, p, core_answer_timeout); !answers) return answers.error();
    // What caf::io::middleman::remote_actor and caf::openssl::remote_actor ask, with a
    // timeout: theirs is infinite.
    const caf::io::middleman_actor middleman =
        insecure ? sys->middleman().actor_handle() : sys->openssl_manager().actor_handle();
    caf::scoped_actor self{*sys};
    expected<caf::actor> out = error(errc::io_error, where + ": no answer");
    self->request(middleman, core_answer_timeout, caf::connect_atom::value, h, p)
        .receive(
            [&](caf::node_id&, caf::strong_actor_ptr& front_door, std::set<std::string>& ifs) {
              if (!front_door)
                out = error(errc::io_error, where + ": " +
                                                sys->render(caf::make_error(
                                                    caf::sec::no_actor_published_at_port, p)));
              else if (!sys->assignable<caf::actor>(ifs))
                out = error(errc::io_error,
                            where + ": " +
                                sys->render(caf::make_error(
                                    caf::sec::unexpected_actor_messaging_interface, ifs)));
              else
                out = caf::actor_cast<caf::actor>(std::move(front_door));
            },
            [&](caf::error& e) {
              // The request's timeout, or CAF's check of silent links that closed the
              // connection first (its first heartbeat tick takes a link still in its handshake
              // for silent): either way no handshake came within the bound.
              const bool silent =
                  e == caf::sec::request_timeout || e == caf::sec::connection_timeout;
              std::string why = sys->render(e);
              if (silent)
                why = "took the connection but did not finish its handshake within " +
                      std::to_string(core_answer_timeout.count()) +
                      " s (is the core frozen or stopped?)";
              if (e == caf::sec::disconnect_during_handshake)
                why += insecure ? " (does the core serve TLS? then drop --insecure)"
                                : " (is this the core whose certificate " + core_cert.string() +
                                      " holds, and does it serve TLS rather than --insecure?)";
              // A TLS connection whose handshake had no answer stays in the middleman, even
              // once CAF closed it (dispose); a plain one wrote its handshake to the kernel,
              // and closes.
              if (silent && !insecure) {
                dial_left_pending = true;
                spdlog::warn(
                    "the TLS handshake with {} is left pending: CAF cannot cancel it, and this "
                    "client's network thread keeps polling it until the core answers or closes "
                    "the connection",
                    where);
              }
              out = error(errc::io_error, where + ": " + why);
            });
    return out;
  }

  // The link actor, made if there is none, watching the front door (under the lock): a core
  // that went down before this client's first request (or between its sessions) is dialled
  // again at once, not asked for a session through its dead proxy (dropped: 30 s, then an
  // error, and again at every call).
  void ensure_link() {
    if (link) return;
    link = std::make_shared<session_link>(
        sys->spawn([watch = watch](caf::event_based_actor* self) -> caf::behavior {
          self->set_down_handler([watch](const caf::down_msg& d) { watch->went_down(d.source); });
          return {[](tick_atom) {}, [self](watch_atom, const caf::actor& a) { self->monitor(a); }};
        }));
    if (core) caf::anon_send(link->actor, watch_atom::value, core);
  }

  // The session, asked for at the first request: the key's errors come back from there;
  // with the link it lives by, to hold while a request is out on it.
  struct session_in_use {
    caf::actor session;
    std::shared_ptr<session_link> link;
  };
  expected<session_in_use> session_handle() {
    std::lock_guard<std::mutex> guard(mutex);
    // Said as what it is, not as a lost link: following a job rode out a lost link for
    // minutes (link_loss_patience), waiting for a core that will never come back.
    if (lender_ended())
      return error(errc::unavailable,
                   "the embedded cluster that lent this client has ended: its core and nodes "
                   "are stopped");
    bool went_down = false;
    {
      std::lock_guard<std::mutex> seen(watch->mutex);
      went_down = (session && watch->down.count(session.address()) > 0) ||
                  (core && watch->down.count(core.address()) > 0);
    }
    if (went_down) {
      forget_session();
      core_lost = owned != nullptr && !host.empty();
    }
    if (core_lost) {
      // The core it used first, then the others of a core of several (a follower that took
      // over as leader is at its own address): the client stayed with the address it was
      // given, and following a job gave up once that core was gone for good.
      std::vector<std::pair<std::string, uint16_t>> tries;
      if (!core_unanswered) tries.emplace_back(host, port);
      for (const auto& other : other_cores)
        if (other != std::pair{host, port}) tries.push_back(other);
      if (core_unanswered) tries.emplace_back(host, port);
      core_unanswered = false;
      std::string why;
      for (const auto& [h, p] : tries) {
        // A machine that is off, or a core that is frozen, is passed over in seconds (dial).
        auto again = dial(h, p);
        if (!again) {
          why += (why.empty() ? "" : "; ") + again.error().message();
          continue;
        }
        core = *again;
        if (h != host || p != port) {
          spdlog::info("the core at {}:{} is gone or silent; using the one at {}:{}", host, port, h,
                       p);
          other_cores.erase(std::find(other_cores.begin(), other_cores.end(), std::pair{h, p}));
          other_cores.push_back({host, port});
          host = h;
          port = p;
        }
        core_lost = false;
        break;
      }
      if (core_lost)
        return error(errc::unavailable,
                     std::string(link_lost) + ", and no core can be reached (" + why + ")");
      if (link) caf::anon_send(link->actor, watch_atom::value, core);
    }
    if (session) return session_in_use{session, link};
    ensure_link();
    caf::scoped_actor self{*sys};
    expected<client_welcome> w = error(errc::io_error, "no answer");
    auto welcome =
        self->request(core, std::chrono::seconds(30), auth_atom::value, key, link->actor);
    watched_request watched(watch, core, self.ptr(), welcome.id());
    welcome.receive([&](client_welcome& x) { w = std::move(x); },
                    [&](caf::error& e) {
                      // A front door that is gone, or does not answer, is dialled again at the
                      // next request, as a session that is: kept, every later request asked the
                      // same dead proxy, and following a job gave up at once (not a link loss).
                      const bool gone = e == caf::sec::request_receiver_down ||
                                        e == caf::exit_reason::remote_link_unreachable;
                      if (!gone && e != caf::sec::request_timeout) {
                        w = from_caf(e, sys);
                        return;
                      }
                      w = error(errc::unavailable, gone ? std::string(link_lost) + " (" +
                                                              sys->render(e) +
                                                              "); the next request reconnects"
                                                        : std::string(no_answer) + " within 30 s");
                      core_lost = owned != nullptr && !host.empty();
                      core_unanswered = core_lost && !gone;
                    });
    if (!w) return w.error();
    if (!w->session) return error(errc::io_error, "the core's answer holds no session");
    session = caf::actor_cast<caf::actor>(w->session);
    caf::anon_send(link->actor, watch_atom::value, session);
    principal = w->principal;
    return session_in_use{session, link};
  }

  // A request to this client's session. A core of several: a follower answers reads and
  // names the leader for the rest; the request then goes there (past_followers).
  template <class T, class... Ts>
  expected<T> ask_session(std::chrono::seconds timeout, const Ts&... xs) {
    auto answer = past_followers([&] { return ask_session_once<T>(timeout, xs...); });
    if (!answer && owned) return detail::as_failover(answer.error());
    return answer;
  }

  // Makes `attempt` (a request, or the session's welcome) again while a follower answers it
  // (from_a_follower): at the leader the follower names, else, when that leader cannot be
  // reached or it names none, at the next of the other cores. A follower cut off from the
  // replicated state (from etcd) answers so even the key's check; the client that stayed
  // with it failed, every request, while another core led. Each core and each leader named
  // is tried about once: the last answer is returned after that.
  template <class F>
  auto past_followers(F attempt) -> decltype(attempt()) {
    auto answer = attempt();
    if (!owned) return answer;  // a client in the core's process has no other core
    size_t cores = 1;
    {
      std::lock_guard<std::mutex> guard(mutex);
      cores += other_cores.size();
    }
    for (size_t moves = 0; !answer && from_a_follower(answer.error()) && moves < 2 * cores;
         ++moves) {
      if (!go_to_leader(answer.error().message()) && !go_to_next_core()) break;
      answer = attempt();
    }
    return answer;
  }

  template <class T, class... Ts>
  expected<T> ask_session_once(std::chrono::seconds timeout, const Ts&... xs) {
    auto in_use = session_handle();
    if (!in_use) return in_use.error();
    const caf::actor* s = &in_use->session;
    caf::scoped_actor self{*sys};
    expected<T> out = error(errc::io_error, "no answer");
    auto answer = self->request(*s, timeout, xs...);
    watched_request watched(watch, *s, self.ptr(), answer.id());
    answer.receive([&](T& value) { out = std::move(value); },
                   [&](caf::error& e) {
                     // The session is gone (with its link, or its core: watched_request), or
                     // the core did not answer: a frozen core never does, and a TLS link may
                     // not say that it closed. The next request dials the core again
                     // and asks for a new session (a slow core's old one just ends). This one
                     // may or may not have been done, so it is not sent again here.
                     const bool gone = e == caf::sec::request_receiver_down ||
                                       e == caf::exit_reason::remote_link_unreachable;
                     if (gone || e == caf::sec::request_timeout) {
                       out = error(errc::unavailable,
                                   gone ? std::string(link_lost) + " (" + sys->render(e) +
                                              "); the next request reconnects"
                                        : std::string(no_answer) + " within " +
                                              std::to_string(timeout.count()) + " s");
                       std::lock_guard<std::mutex> guard(mutex);
                       // Another thread may have replaced the session since this request left.
                       if (session == *s) {
                         forget_session();
                         core_lost = owned != nullptr && !host.empty();
                         core_unanswered = core_lost && !gone;
                       }
                       return;
                     }
                     out = from_caf(e, sys);
                   });
    return out;
  }

  void forget_session() {  // under the lock
    link.reset();          // ended once no request holds it (session_link)
    session = nullptr;
    // What the ended link saw is of sessions no request will use again: kept, a client that
    // reconnected for weeks kept one address per session.
    std::lock_guard<std::mutex> seen(watch->mutex);
    watch->down.clear();
  }

  // Connects to the leader a follower named ("... is at HOST:PORT"); the next request asks
  // it for a session. False for a client in the core's process (it has no other core) and
  // when the leader cannot be reached.
  bool go_to_leader(const std::string& why) {
    if (!owned) return false;
    std::lock_guard<std::mutex> guard(mutex);
    const auto named = leader_named_in(why);
    if (!named) return false;
    const auto& [host, port] = *named;
    const std::string address = host + ":" + std::to_string(port);
    auto leader = dial(host, static_cast<uint16_t>(port));
    if (!leader) {
      spdlog::warn("cannot reach the leader at {}", leader.error().message());
      return false;
    }
    spdlog::debug("a follower sent this request to the leader at {}", address);
    forget_session();
    core = *leader;
    // The follower it leaves stays one of the cores to try should the leader be lost.
    const std::pair<std::string, uint16_t> leader_at{host, static_cast<uint16_t>(port)};
    std::erase(other_cores, leader_at);
    if (std::pair{this->host, this->port} != leader_at)
      other_cores.push_back({this->host, this->port});
    this->host = host;
    this->port = static_cast<uint16_t>(port);
    return true;
  }

  // Connects to the first of the other cores that can be reached, and puts the core it leaves
  // last among them; the next request asks the new one for a session. False when none can be
  // reached: the client stays.
  bool go_to_next_core() {
    std::lock_guard<std::mutex> guard(mutex);
    for (auto it = other_cores.begin(); it != other_cores.end(); ++it) {
      const auto [h, p] = *it;
      auto next = dial(h, p);
      if (!next) {
        spdlog::debug("cannot reach the core at {}", next.error().message());
        continue;
      }
      spdlog::info(
          "the core at {}:{} follows and cannot send this request on; using the one at {}:{}", host,
          port, h, p);
      forget_session();
      core = *next;
      other_cores.erase(it);
      other_cores.emplace_back(host, port);
      host = h;
      port = p;
      return true;
    }
    return false;
  }
};

client::client(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
client::client(client&&) noexcept = default;

client& client::operator=(client&& other) noexcept {
  if (this != &other) {
    impl::dispose(std::move(impl_));
    impl_ = std::move(other.impl_);
  }
  return *this;
}

client::~client() {
  impl::dispose(std::move(impl_));
}

client in_process_core::connect(const std::string& api_key) {
  auto p = std::make_unique<client::impl>();
  p->sys = &sys;
  p->core = core;
  p->key = api_key;
  return client(std::move(p));
}

expected<client> client::connect(const std::string& host, uint16_t port,
                                 const client_options& options) {
  if (auto guards = peer_guards_in_effect(); !guards) return guards.error();
  auto p = std::make_unique<impl>();
  configure_actor_system(p->cfg);
  p->key = options.api_key;
  p->insecure = options.insecure;
  p->core_cert = options.core_cert;
  if (!options.insecure) {
    auto fingerprint = configure_peer_tls(p->cfg, options.core_cert);
    if (!fingerprint) return fingerprint.error();
  }
  p->own_system();
  // A core machine that is off held the connect for the kernel's SYN retries (minutes), and
  // a frozen core its handshake for ever; the caller tried the next core only after: dialled
  // within bounds, each is told in seconds.
  auto core = p->dial(host, port);
  if (!core) {
    auto why = error(errc::io_error, "cannot reach the core at " + core.error().message());
    impl::dispose(std::move(p));
    return why;
  }
  p->core = *core;
  p->host = host;
  p->port = port;
  p->other_cores = options.other_cores;
  {
    std::lock_guard<std::mutex> guard(p->mutex);
    p->ensure_link();  // watching the front door from now on
  }
  return client(std::move(p));
}

expected<std::string> client::principal() {
  auto s = impl_->past_followers([&] { return impl_->session_handle(); });
  if (!s) return s.error();
  std::lock_guard<std::mutex> guard(impl_->mutex);
  return impl_->principal;
}

expected<std::string> client::submit(const std::string& spec_toml) {
  // 128 random bits: no two submissions share one.
  std::random_device random;
  std::string submission;
  for (int i = 0; i < 4; ++i) submission += fmt::format("{:08x}", random());
  return submit(spec_toml, submission);
}

expected<std::string> client::submit(const std::string& spec_toml, const std::string& submission) {
  // Refused here as the core refuses it: an empty id would be no id, and a lost answer
  // asked again without one makes a second job.
  if (auto ok = check_submission_id(submission); !ok) return ok.error();
  // Not answered is not refused: a busy core, or one that lost the link or its lead, may
  // have made the job all the same. Asked again with the same submission id, the core
  // answers with the job it made (or makes it once); made again, its owner paid for two.
  const auto first_loss = std::chrono::steady_clock::now();
  for (int attempt = 1;; ++attempt) {
    auto id = impl_->ask_session<std::string>(std::chrono::seconds(60), submit_atom::value,
                                              spec_toml, submission);
    if (id || !detail::is_link_loss(id.error())) return id;
    if (std::chrono::steady_clock::now() - first_loss >= detail::link_loss_patience)
      return error(errc::unavailable,
                   id.error().message() + " (asked " + std::to_string(attempt) +
                       " times with submission id " + submission +
                       "); the job may have been made all the same: submit it again with "
                       "that submission id (gflex submit --submission-id " +
                       submission + "), which answers with the job if it was made");
    spdlog::warn("the submit was not answered ({}); asking again with the same submission id",
                 id.error().message());
    std::this_thread::sleep_for(std::chrono::seconds(2));
  }
}

expected<job_status> client::status(const std::string& job_id) {
  return impl_->ask_session<job_status>(std::chrono::seconds(30), status_atom::value, job_id);
}

expected<std::vector<job_status>> client::jobs() {
  return impl_->ask_session<std::vector<job_status>>(std::chrono::seconds(30), jobs_atom::value);
}

expected<std::vector<node_status>> client::nodes() {
  return impl_->ask_session<std::vector<node_status>>(std::chrono::seconds(30), nodes_atom::value);
}

expected<void> client::cancel(const std::string& job_id) {
  auto r = impl_->ask_session<caf::ok_atom>(std::chrono::seconds(30), cancel_atom::value, job_id);
  if (!r) return r.error();
  return {};
}

expected<data_set_info> client::push_data(const std::string& name, const dataset_splits& data,
                                          int64_t min_train_shards) {
  // Checked here, before a byte is sent: the encoding reads rows by the label count, and
  // narrows labels and token ids to a byte for up to 256 classes. An empty split, and a test
  // split unlike the training split, are refused by plan_data_parts in the core's words: the
  // core said so only after every training part was in.
  if (data.train.size() > 0)
    if (auto ok = check_dataset(data.train, "the training split"); !ok) return ok.error();
  if (data.test.size() > 0)
    if (auto ok = check_dataset(data.test, "the test split"); !ok) return ok.error();
  auto pieces = plan_data_parts(data, min_train_shards);
  if (!pieces) return pieces.error();
  std::vector<std::string> train_digests, test_digests;
  // A lost link (a core restarting, a follower taking over) or a core that no longer holds
  // the upload (it restarted, or the upload sat idle past its expiry) loses the parts sent
  // so far: the upload is sent again from its first part, which starts it afresh at the
  // core. A later part's loss failed the whole push ("no upload in progress", exit 2) and a
  // script pushed a large set again from the start by hand. Losses are ridden out for
  // link_loss_patience from the first one in a row, and the whole push is started again a
  // few times at most.
  constexpr int max_restarts = 5;
  int restarts = 0;
  std::chrono::steady_clock::time_point lost_since{};  // none lost when at the epoch
  expected<data_set_info> last = error(errc::invalid_argument, "nothing sent");
  for (size_t i = 0; i < pieces->size();) {
    const auto& rows = (*pieces)[i];
    data_part part;
    part.index = static_cast<uint32_t>(i);
    part.count = static_cast<uint32_t>(pieces->size());
    part.test = rows.test;
    part.shard = encode_shard(rows.test ? data.test : data.train, rows.begin, rows.end);
    if (i == 0) {
      train_digests.clear();
      test_digests.clear();
    }
    (rows.test ? test_digests : train_digests).push_back(digest_hex(part.shard));
    last =
        impl_->ask_session<data_set_info>(std::chrono::seconds(120), dpush_atom::value, name, part);
    if (last) {
      lost_since = {};
      ++i;
      continue;
    }
    const bool lost = detail::is_link_loss(last.error());
    const bool upload_gone =
        i != 0 && last.error().code() == errc::invalid_argument &&
        last.error().message().find("no upload in progress") != std::string::npos;
    if (!lost && !upload_gone) return last.error();
    const auto now = std::chrono::steady_clock::now();
    if (lost_since == std::chrono::steady_clock::time_point{}) lost_since = now;
    if (now - lost_since >= detail::link_loss_patience || (i != 0 && restarts == max_restarts))
      return error(last.error().code(),
                   last.error().message() + " (data set '" + name + "', part " +
                       std::to_string(i + 1) + " of " + std::to_string(pieces->size()) +
                       (restarts > 0 ? ", after " + std::to_string(restarts) + " fresh starts"
                                     : std::string()) +
                       ")");
    if (lost && i + 1 == pieces->size()) {
      // The last part stores the set: its answer may be what was lost. A set of these very
      // shards is the push done (sent again, it is refused while a job trains on it).
      auto sets = data_sets();
      if (sets)
        for (auto& s : *sets)
          if (s.name == name && s.train_shards == train_digests && s.test_shards == test_digests)
            return std::move(s);
    }
    if (lost) std::this_thread::sleep_for(std::chrono::seconds(1));
    if (i != 0) {
      spdlog::warn("data set '{}': part {} of {}: {}; sending it again from the first part", name,
                   i + 1, pieces->size(), last.error().message());
      ++restarts;
      i = 0;
    }
  }
  return last;
}

expected<std::vector<data_set_info>> client::data_sets() {
  return impl_->ask_session<std::vector<data_set_info>>(std::chrono::seconds(30),
                                                        dlist_atom::value);
}

expected<void> client::remove_data(const std::string& name) {
  auto r = impl_->ask_session<caf::ok_atom>(std::chrono::seconds(30), drm_atom::value, name);
  if (!r) return r.error();
  return {};
}

expected<std::vector<uint8_t>> client::fetch(const std::string& job_id) {
  // In parts of one payload chunk (a model may be larger than one message may be). A part of
  // a newer export (a round committed while the client was reading) starts the reading again.
  for (int attempt = 0; attempt < 5; ++attempt) {
    std::vector<uint8_t> out;
    int64_t step = -1;
    uint64_t total = 0;
    bool again = false;
    do {
      auto part = impl_->ask_session<model_part>(std::chrono::seconds(300), fetch_atom::value,
                                                 job_id, static_cast<uint64_t>(out.size()));
      // The export being read went (the core made room for others' models, or made a
      // newer one): read again from the start.
      if (!part && !out.empty() && part.error().code() == errc::unavailable &&
          part.error().message().find("export is gone") != std::string::npos) {
        again = true;
        break;
      }
      if (!part) return part.error();
      if (step < 0) {
        // The core's word: a size past what any checkpoint decodes to reserved it all at
        // once, and the client aborted (or read until it ran out of memory).
        if (part->total > checkpoint_limits.max_bytes)
          return error(errc::malformed_message,
                       "fetch: the core says job " + job_id + "'s model is " +
                           std::to_string(part->total) + " bytes, more than a checkpoint holds (" +
                           std::to_string(checkpoint_limits.max_bytes) + ")");
        step = part->step;
        total = part->total;
        out.reserve(std::min<uint64_t>(total, uint64_t{64} << 20));
      } else if (part->step != step || part->total != total) {
        again = true;
        break;
      }
      if (part->offset != out.size() || part->bytes.size() > total - out.size() ||
          (part->bytes.empty() && out.size() < total))
        return error(errc::malformed_message, "fetch: the core sent a part out of place");
      out.insert(out.end(), part->bytes.begin(), part->bytes.end());
    } while (out.size() < total);
    if (!again) return out;
  }
  return error(errc::unavailable, "fetch: job " + job_id +
                                      "'s model changed or went faster than it was read, 5 times");
}

namespace {

// Whether `e` says that a request went unanswered (or its link was lost while it waited): it
// may have been done all the same.
bool unanswered(const error& e) {
  return e.code() == errc::unavailable &&
         (e.message().starts_with(no_answer) || e.message().starts_with(link_lost));
}

// A change of an account's key not answered may have landed (the gatekeeper's store write
// outlived the wait, and it reads the write back before it answers): the old key may open
// nothing now, and a replaced key's new one was shown to no one. Said so, as a submit is.
error key_change_unanswered(const error& e, const std::string& id) {
  if (!unanswered(e)) return e;
  return error(errc::unavailable,
               e.message() + "; the change of " + id +
                   "'s key may have been made all the same, its old key then opening nothing: "
                   "run rekey again (refused while the change is still being written)");
}

}  // namespace

// 90 s, as a rekey: the ledger opens the account (a write of up to 30 s), then the gatekeeper
// writes its key as a rekey does. With 30 s, a busy store's creation was reported as not
// answered and its key, written after, was shown to nobody; creating it again is refused once
// the account has a key, so the note names the way out.
expected<std::string> client::create_account(const std::string& id) {
  auto r = impl_->ask_session<std::string>(std::chrono::seconds(90), open_atom::value, id);
  if (r || !unanswered(r.error())) return r;
  return error(errc::unavailable,
               r.error().message() + "; " + id +
                   " and its API key may have been made all the same, the key shown to nobody: "
                   "run `gflex-core account rekey " +
                   id + "` to get a key (creating it again refuses an account that has one)");
}

// 90 s: the gatekeeper's store write waits 30 s, and its read-back after that usually less.
expected<std::string> client::replace_api_key(const std::string& id) {
  auto r = impl_->ask_session<std::string>(std::chrono::seconds(90), update_atom::value,
                                           api_key_atom::value, id);
  if (!r) return key_change_unanswered(r.error(), id);
  return r;
}

expected<void> client::revoke_api_key(const std::string& id) {
  auto r = impl_->ask_session<caf::ok_atom>(std::chrono::seconds(90), revoke_atom::value,
                                            api_key_atom::value, id);
  if (!r) return key_change_unanswered(r.error(), id);
  return {};
}

expected<std::string> client::create_token(const std::string& tier, int64_t lifetime_s,
                                           int64_t uses) {
  if (uses < 0) uses = tier == to_string(node_tier::community) ? 1 : 0;
  return impl_->ask_session<std::string>(std::chrono::seconds(30), token_atom::value, tier,
                                         lifetime_s, uses);
}

expected<std::vector<join_token_record>> client::tokens() {
  return impl_->ask_session<std::vector<join_token_record>>(std::chrono::seconds(30),
                                                            token_atom::value);
}

expected<void> client::revoke_token(const std::string& id) {
  auto r = impl_->ask_session<caf::ok_atom>(std::chrono::seconds(30), revoke_atom::value, id);
  if (!r) return r.error();
  return {};
}

expected<uint64_t> client::credit_account(const std::string& id, int64_t micro,
                                          const std::string& reference) {
  if (micro <= 0 || micro > max_amount_micro)
    return error(errc::invalid_argument, "a credit must be in (0, 1e12] credits");
  return impl_->ask_session<uint64_t>(std::chrono::seconds(30), credit_in_atom::value, id, micro,
                                      reference);
}

expected<account_info> client::account(const std::string& id) {
  return impl_->ask_session<account_info>(std::chrono::seconds(30), account_atom::value, id);
}

expected<ledger_report> client::verify_ledger() {
  return impl_->ask_session<ledger_report>(std::chrono::seconds(300), ledger_atom::value);
}

expected<void> client::topup(const std::string& job_id, int64_t micro) {
  auto r =
      impl_->ask_session<caf::ok_atom>(std::chrono::seconds(75), topup_atom::value, job_id, micro);
  // As with a submit: not answered is not refused. The job may commit the top-up after the
  // answer's wait, and a user who tried again on the word of a failure raised the budget twice.
  if (!r && r.error().code() == errc::unavailable &&
      (r.error().message().starts_with(no_answer) || r.error().message().starts_with(link_lost)))
    return error(errc::unavailable, r.error().message() +
                                        "; the top-up may have been made all the same: see the "
                                        "job's budget (gflex status " +
                                        job_id + ") before topping it up again");
  if (!r) return r.error();
  return {};
}

// -- embedded -----------------------------------------------------------------------------------

expected<int64_t> detail::copy_parameters(const std::vector<uint8_t>& checkpoint_bytes,
                                          const std::string& job_id, std::span<float> out,
                                          std::vector<std::string>* names) {
  auto c = decode_checkpoint(checkpoint_bytes);
  if (!c) return c.error();
  int64_t total = 0;
  for (const auto& t : c->tensors) {
    if (t.value.type() != dtype::f32)
      return error(errc::bad_format,
                   "job " + job_id + ": parameter block " + t.name + " is not float32");
    total += t.value.numel();
  }
  if (total != static_cast<int64_t>(out.size()))
    return error(errc::invalid_argument, "job " + job_id + " has " + std::to_string(total) +
                                             " parameters; the buffer holds " +
                                             std::to_string(out.size()));
  size_t at = 0;
  for (const auto& t : c->tensors) {
    const auto n = static_cast<size_t>(t.value.numel());
    std::copy_n(t.value.data<float>(), n, out.data() + at);
    at += n;
    if (names != nullptr) names->push_back(t.name);
  }
  return static_cast<int64_t>(c->step);
}

expected<std::vector<std::string>> client::fetch_parameters(const std::string& job_id,
                                                            std::span<float> out) {
  auto bytes = fetch(job_id);
  if (!bytes) return bytes.error();
  std::vector<std::string> names;
  auto copied = detail::copy_parameters(*bytes, job_id, out, &names);
  if (!copied) return copied.error();
  return names;
}

namespace {

// Whether following a job goes on after `e`: a link to the core lost (a restart, a failover)
// is tried again for two minutes from the first loss (`since`), as the core comes back.
bool keeps_following(const error& e, std::chrono::steady_clock::time_point& since) {
  if (!detail::is_link_loss(e)) return false;
  const auto now = std::chrono::steady_clock::now();
  if (since == std::chrono::steady_clock::time_point{}) since = now;
  if (now - since > detail::link_loss_patience) return false;
  spdlog::warn("{}; following the job again", e.message());
  return true;
}

}  // namespace

expected<job_status> client::wait(const std::string& job_id,
                                  const std::function<void(const job_status&)>& on_status,
                                  std::chrono::milliseconds poll) {
  auto lost_since = std::chrono::steady_clock::time_point{};
  for (;;) {
    auto s = status(job_id);
    if (!s && keeps_following(s.error(), lost_since)) {
      std::this_thread::sleep_for(std::max(poll, std::chrono::milliseconds(500)));
      continue;
    }
    if (!s) return s.error();
    lost_since = {};
    if (on_status) on_status(*s);
    if (is_terminal(s->state)) return s;
    std::this_thread::sleep_for(poll);
  }
}

expected<job_status> client::follow(const std::string& job_id, const job_events& events,
                                    std::chrono::milliseconds poll) {
  // The cluster's nodes are the operator's to see: with an account's key the core refuses to
  // list them, and node events are not reported.
  bool want_nodes = events.on_node_joined || events.on_node_lost;
  std::map<std::string, node_status> known;  // by node id
  job_state state = job_state::queued;
  int64_t round = 0, spent = 0;
  auto lost_since = std::chrono::steady_clock::time_point{};
  // Whether the last node listing failed, said once per run of failures.
  bool listing_failed = false;
  for (bool first = true;;) {
    auto s = status(job_id);
    if (!s && keeps_following(s.error(), lost_since)) {
      std::this_thread::sleep_for(std::max(poll, std::chrono::milliseconds(500)));
      continue;
    }
    if (!s) return s.error();
    lost_since = {};
    if (want_nodes) {
      auto listed = nodes();
      if (!listed && listed.error().code() == errc::permission_denied) {
        want_nodes = false;
        listed = std::vector<node_status>{};
      }
      // The job is what is followed: a listing that fails (a lost link, a registry that did
      // not answer) only skips this poll's node events. Such an error ended the following,
      // and a lost link skipped every report while each status was answered (each restarted
      // the loss clock), for ever: the job's end was never reported.
      if (!listed) {
        if (!listing_failed)
          spdlog::warn(
              "cannot list the nodes ({}); following the job without node events "
              "until a listing works again",
              listed.error().message());
        listing_failed = true;
      } else {
        listing_failed = false;
        // A follower (met during a failover, or named first) knows the nodes' records, not
        // their connections: it lists each with node id "-" and no last-seen time. Compared
        // by node id, that listing reported every connected node lost and one node, perhaps
        // long gone, joined, then all of them joined again behind the next leader. Nodes stay
        // as a leader last listed them until one lists them again.
        const bool from_follower = std::any_of(listed->begin(), listed->end(), [](const auto& n) {
          return n.node_id == "-" || n.last_seen_s < 0;
        });
        if (!from_follower) {
          std::map<std::string, node_status> now;
          for (auto& n : *listed) now.emplace(n.node_id, std::move(n));
          for (const auto& [id, n] : now)
            if (!known.contains(id) && events.on_node_joined) events.on_node_joined(n);
          for (const auto& [id, n] : known)
            if (!now.contains(id) && events.on_node_lost) events.on_node_lost(n);
          known = std::move(now);
        }
      }
    }
    // The first status answered is reported, though polls before it found no core.
    if ((first || s->state != state) && events.on_state) events.on_state(*s);
    first = false;
    state = s->state;
    if (s->round > round) {
      if (events.on_round) events.on_round(*s, round);
      round = s->round;
    }
    if (s->credits_spent > spent) {
      if (events.on_bill) events.on_bill(*s, s->credits_spent - spent);
      spent = s->credits_spent;
    }
    if (is_terminal(s->state)) return s;
    std::this_thread::sleep_for(poll);
  }
}

// The actor system an embedded cluster runs its core and nodes in, shared by the cluster and
// every client it lends: it ends with the last of them. The system was the client's alone,
// and a client moved out of the cluster took it along: destroyed first, it waited for the
// core and nodes nobody stopped (a hang), and the cluster's next request found no client.
struct cluster_system {
  // First, so that it is released last. The cluster's end releases it once the core's store
  // has closed (embedded_cluster::state); only a store that did not close in time leaves it
  // here, for the actor system's end.
  std::optional<dir_lock> lock;
  // Removed at the cluster's end, and again once the system has ended (what a node's actors
  // still wrote as they stopped); empty: kept.
  std::filesystem::path temporary_dir;
  // Set as the cluster's end begins: a lent client's requests are refused from then on.
  std::atomic<bool> ended{false};
  caf::actor_system_config cfg;
  std::optional<caf::actor_system> sys;

  cluster_system() {
    configure_actor_system(cfg);
    sys.emplace(cfg);
  }
  cluster_system(const cluster_system&) = delete;
  cluster_system& operator=(const cluster_system&) = delete;

  ~cluster_system() {
    sys.reset();
    std::error_code ec;
    if (!temporary_dir.empty()) std::filesystem::remove_all(temporary_dir, ec);
  }
};

bool client::impl::lender_ended() const {
  return lender && lender->ended.load();
}

namespace {
// How long an embedded cluster's end waits for its store to close (a write under way
// finishes first) before it leaves the data directory locked.
constexpr std::chrono::seconds store_close_wait{30};
}  // namespace

// What an embedded cluster holds. Members are destroyed in reverse order: the node and core
// handles and the owning actor, then the client, then the cluster's share of its system.
struct embedded_cluster::state {
  std::shared_ptr<cluster_system> system;
  gflex::client client;
  std::filesystem::path dir;
  std::string operator_key;
  // Ready once the core's store, and with it the LMDB environment in the data directory, has
  // closed; not valid while no store was opened.
  std::future<void> store_closed;
  std::optional<caf::scoped_actor> owner;
  caf::actor core;
  std::vector<caf::actor> nodes;
  std::vector<std::string> names;

  explicit state(std::shared_ptr<cluster_system> sys)
      : system(std::move(sys)), client(lend(system, {}, {})) {}
  state(const state&) = delete;
  state& operator=(const state&) = delete;

  // A client of `core` in the cluster's actor system, holding a share of it.
  static gflex::client lend(const std::shared_ptr<cluster_system>& system, caf::actor core,
                            std::string key) {
    auto p = std::make_unique<client::impl>();
    p->lender = system;
    p->sys = &*system->sys;
    p->core = std::move(core);
    p->key = std::move(key);
    return gflex::client(std::move(p));
  }

  // Nodes first and waited for, so that none of them sees the core vanish and reconnects.
  // They leave as a node told to stop does (bye: the core hears it leave, not lose it).
  ~state() {
    system->ended = true;
    if (owner) {
      for (auto& n : nodes) (*owner)->send(n, bye_atom::value);
      (*owner)->wait_for(nodes);
      if (core) {
        (*owner)->send_exit(core, caf::exit_reason::user_shutdown);
        (*owner)->wait_for(core);
      }
    } else if (core) {
      caf::anon_send_exit(core, caf::exit_reason::user_shutdown);
    }
    nodes.clear();
    core = nullptr;
    owner.reset();
    release_data_dir();
  }

  // Frees the data directory, and removes a temporary one, now rather than with the actor
  // system, which a client moved out of the cluster keeps for as long as it lives: the
  // directory stayed locked (the next cluster on it refused) and on disk until then. Only
  // once the store has closed: the core stops its store as it ends, but does not wait for it,
  // and a cluster that opened the same files while this one's LMDB environment was open
  // would share its locks and pages with it.
  void release_data_dir() {
    if (store_closed.valid() &&
        store_closed.wait_for(store_close_wait) != std::future_status::ready) {
      spdlog::error(
          "the embedded cluster's store in {} did not close within {} s: the directory stays "
          "in use until the clients the cluster lent have ended",
          dir.string(), store_close_wait.count());
      return;
    }
    system->lock.reset();
    if (system->temporary_dir.empty()) return;
    std::error_code ec;
    std::filesystem::remove_all(system->temporary_dir, ec);
  }
};

embedded_cluster::embedded_cluster(std::unique_ptr<state> s) : s_(std::move(s)) {}
embedded_cluster::embedded_cluster(embedded_cluster&&) noexcept = default;
embedded_cluster& embedded_cluster::operator=(embedded_cluster&&) noexcept = default;
embedded_cluster::~embedded_cluster() = default;

gflex::client& embedded_cluster::client() {
  // Moved away (or moved from by an assignment), the client is replaced by a new one.
  if (!s_->client.impl_) s_->client = state::lend(s_->system, s_->core, s_->operator_key);
  return s_->client;
}

std::vector<std::string> embedded_cluster::node_names() const {
  return s_->names;
}

// The core of an embedded cluster, without nodes yet.
expected<std::unique_ptr<embedded_cluster::state>> embedded_cluster::start_core(
    const embedded_config& config) {
  if (config.nodes < 1 || config.nodes > 64)
    return error(errc::invalid_argument, "--nodes must be in [1, 64]");
  if (config.workers_per_node < 1 || config.workers_per_node > 64)
    return error(errc::invalid_argument, "workers per node must be in [1, 64]");
  std::filesystem::path dir = config.data_dir;
  const bool temporary = dir.empty();
  if (temporary) {
    std::string pattern = (std::filesystem::temp_directory_path() / "gflex-demo-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr)
      return error(errc::io_error, "cannot create a temporary directory");
    dir = pattern;
  }
  auto system = std::make_shared<cluster_system>();
  if (temporary) system->temporary_dir = dir;
  auto s = std::make_unique<state>(std::move(system));
  s->dir = dir;
  auto& sys = *s->system->sys;
  // The process is the core's operator, with a key made for this run.
  core_config core_cfg;
  core_cfg.data_dir = dir / "core";
  core_cfg.operator_key = new_api_key();
  auto lock = dir_lock::acquire(core_cfg.data_dir, "gflex-core");
  if (!lock) return lock.error();
  s->system->lock = std::move(*lock);
  // Opened here, not by the core, so that the cluster's end can tell when it has closed
  // (state::release_data_dir): its last holder is the store actor, which the core stops as it
  // ends without waiting. A store actor the core restarts serves the same environment.
  auto db = store::open(core_cfg.data_dir);
  if (!db) return db.error();
  auto closed = std::make_shared<std::promise<void>>();
  s->store_closed = closed->get_future();
  core_cfg.shared_store = std::shared_ptr<store>(new store(std::move(*db)), [closed](store* p) {
    delete p;
    closed->set_value();
  });
  auto core = spawn_core(sys, core_cfg);
  if (!core) return core.error();
  s->core = *core;
  s->operator_key = core_cfg.operator_key;
  s->client.impl_->core = *core;
  s->client.impl_->key = core_cfg.operator_key;
  s->owner.emplace(sys);
  return s;
}

// The cluster's nodes: its own, joining the core tier with a token it makes. Each calibrates
// its throughput (about 0.3 s) before it joins.
error embedded_cluster::add_nodes(state& s, const embedded_config& config) {
  auto token = s.client.create_token("core", 0);
  if (!token) return token.error();
  auto& sys = *s.system->sys;
  for (int i = 0; i < config.nodes; ++i) {
    node_config n;
    n.name = "node-" + std::to_string(i + 1);
    n.workers = config.workers_per_node;
    n.data_dir = s.dir / n.name;
    n.tier = node_tier::core;
    n.token = *token;
    auto node = spawn_node(sys, n, node_test_aids{}, "", 0, s.core, *s.owner);
    if (!node) return node.error();
    s.nodes.push_back(*node);
    s.names.push_back(n.name);
  }
  return {};
}

expected<embedded_cluster> embedded_cluster::start(const embedded_config& config) {
  auto s = embedded_cluster::start_core(config);
  if (!s) return s.error();
  if (auto err = embedded_cluster::add_nodes(**s, config)) return err;
  return embedded_cluster(std::move(*s));
}

expected<job_status> run_embedded(const embedded_config& config, const std::string& spec_toml,
                                  const std::function<void(const job_status&)>& on_status) {
  // A SIGINT or SIGTERM ends the run, its job cancelled: it killed the process, and a
  // temporary cluster's directory (its store, the nodes' shard caches) stayed behind. Taken
  // from the start: the nodes calibrate one after another (seconds, for many), and a signal
  // then killed the process too. Made first, the watcher goes last, after the cluster.
  signal_watcher signals;
  // A job no node of this cluster takes waited for workers for ever (the progress bar said
  // so until Ctrl-C): its nodes are the core tier's, asking node_config's default price.
  if (auto spec = parse_job_spec(spec_toml, "the job spec"); spec) {
    const auto price = static_cast<int64_t>(std::llround(node_config{}.price * 1e6));
    if (spec->tier == trust_tier::community)
      return error(errc::invalid_argument,
                   "trust.tier = \"community\": this cluster's nodes are core-tier, so no node "
                   "would take the job; use \"hybrid\" or \"core\"");
    if (spec->max_price >= 0 && spec->max_price < price)
      return error(errc::invalid_argument,
                   "market.max_price: " + format_credits(spec->max_price) +
                       " per device-hour is less than this cluster's nodes ask (" +
                       format_credits(price) + "), so no node would take the job");
  }
  auto stopped = [&signals](const std::string& what) -> std::optional<error> {
    const int sig = signals.signal();
    if (sig == 0) return std::nullopt;
    return error(errc::unavailable,
                 std::string(sig == SIGINT ? "interrupted" : "terminated") + ": " + what);
  };
  auto s = embedded_cluster::start_core(config);
  if (!s) return s.error();
  if (auto e = stopped("before the job was submitted")) return *e;
  // The job goes in before the nodes are made: its data set loads and is cut into shards
  // while they calibrate, instead of after.
  auto id = (*s)->client.submit(spec_toml);
  if (!id) return id.error();
  auto cancelled = [&] {
    (void)(*s)->client.cancel(*id);
    return stopped("job " + *id + " was cancelled");
  };
  if (signals.signal() != 0) return *cancelled();
  if (auto err = embedded_cluster::add_nodes(**s, config)) return err;
  // In-process status calls cost microseconds: polled often, the end is seen when it comes.
  for (;;) {
    if (signals.signal() != 0) return *cancelled();
    auto st = (*s)->client.status(*id);
    if (!st) return st.error();
    if (on_status) on_status(*st);
    if (is_terminal(st->state)) return st;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace gflex
