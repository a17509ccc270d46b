/// @file
/// A node's uplink (actors/node/uplink.hpp) against a core played by the test: the core's
/// front door answers the hello with a session the test scripts, and the node's workers
/// answer every assignment at once. What is checked is what a node must never do whatever
/// its core does: lose a worker slot for good.

#include <doctest/doctest.h>

#include <caf/all.hpp>
#include <caf/io/middleman.hpp>
#include <caf/openssl/all.hpp>

#include <algorithm>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cache.hpp"
#include "captured_log.hpp"
#include "configured_system.hpp"
#include "gflex/kernels/devices.hpp"
#include "gflex/kernels/model_spec.hpp"
#include "gflex/runtime/digest.hpp"
#include "gflex/runtime/tensor_codec.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "messages.hpp"
#include "node_metrics.hpp"
#include "uplink.hpp"
#include "worker.hpp"

using namespace gflex;

namespace {

using session_script = std::function<void(node_session_actor::pointer, caf::actor uplink)>;

// A session that runs its script at the first heartbeat and never answers a chunk request
// (the parameters' fetches stay open until the session ends).
node_session_actor::behavior_type scripted_session(node_session_actor::pointer self,
                                                   caf::actor uplink, session_script script) {
  auto started = std::make_shared<bool>(false);
  auto held = std::make_shared<std::vector<caf::typed_response_promise<std::vector<uint8_t>>>>();
  return {
      [=](beat_atom) {
        if (std::exchange(*started, true)) return;
        script(self, uplink);
      },
      [=](bye_atom) { self->quit(); },  // the script's way to end the session
      [=](chunk_atom, const std::string&) -> caf::result<std::vector<uint8_t>> {
        held->push_back(self->make_response_promise<std::vector<uint8_t>>());
        return held->back();
      },
      [=](earned_atom) -> int64_t { return 0; },
  };
}

// A session on a slow link: it asks the node for a chunk of its answer every 500 ms (the
// upload under way) and never answers `earned` (queued behind those chunks).
node_session_actor::behavior_type uploading_session(node_session_actor::pointer self,
                                                    caf::actor uplink) {
  auto started = std::make_shared<bool>(false);
  auto held = std::make_shared<std::vector<caf::typed_response_promise<int64_t>>>();
  auto pull = std::make_shared<std::function<void()>>();
  *pull = [=] {
    self->request(uplink, std::chrono::seconds(5), chunk_atom::value, std::string(64, 'a'))
        .then([](std::vector<uint8_t>&) {}, [](caf::error&) {});
    self->delayed_send(self, std::chrono::milliseconds(500), beat_atom::value);
  };
  return {
      [=](beat_atom) {
        // The node's heartbeats and this session's own timer: one pull each 500 ms.
        if (self->current_sender() == caf::actor_cast<caf::strong_actor_ptr>(self) ||
            !std::exchange(*started, true))
          (*pull)();
      },
      [=](bye_atom) { self->quit(); },
      [=](chunk_atom, const std::string&) -> caf::result<std::vector<uint8_t>> {
        return std::vector<uint8_t>{};
      },
      [=](earned_atom) -> caf::result<int64_t> {
        held->push_back(self->make_response_promise<int64_t>());
        return held->back();
      },
  };
}

// A session whose core went silent: it takes the node's heartbeats, asks nothing and never
// answers `earned` (the probe by which the node finds a core gone).
node_session_actor::behavior_type silent_session(node_session_actor::pointer self, caf::actor) {
  auto held = std::make_shared<std::vector<caf::typed_response_promise<int64_t>>>();
  return {
      [](beat_atom) {},
      [=](bye_atom) { self->quit(); },
      [](chunk_atom, const std::string&) -> caf::result<std::vector<uint8_t>> {
        return std::vector<uint8_t>{};
      },
      [=](earned_atom) -> caf::result<int64_t> {
        held->push_back(self->make_response_promise<int64_t>());
        return held->back();
      },
  };
}

// A session on a slow link sending parameters: it hands worker 0 assignment `a` at the first
// heartbeat, answers one chunk of its parameters every `every` (`chunks` by digest) and never
// answers `earned` (queued behind those chunks).
node_session_actor::behavior_type sending_session(
    node_session_actor::pointer self, caf::actor uplink,
    std::shared_ptr<const std::map<std::string, std::vector<uint8_t>>> chunks, assignment a,
    std::chrono::milliseconds every) {
  using chunk_promise = caf::typed_response_promise<std::vector<uint8_t>>;
  auto started = std::make_shared<bool>(false);
  auto asked = std::make_shared<std::deque<std::pair<chunk_promise, std::string>>>();
  auto last_sent = std::make_shared<std::chrono::steady_clock::time_point>();
  auto earned = std::make_shared<std::vector<caf::typed_response_promise<int64_t>>>();
  return {
      [=](beat_atom) {
        if (!std::exchange(*started, true))
          self->request(uplink, caf::infinite, assign_atom::value, uint32_t{0}, a)
              .then([](assignment_result&) {}, [](caf::error&) {});
        const auto now = std::chrono::steady_clock::now();
        if (asked->empty() || now - *last_sent < every) return;
        *last_sent = now;
        asked->front().first.deliver(chunks->at(asked->front().second));
        asked->pop_front();
      },
      [=](bye_atom) { self->quit(); },
      [=](chunk_atom, const std::string& digest) -> caf::result<std::vector<uint8_t>> {
        asked->emplace_back(self->make_response_promise<std::vector<uint8_t>>(), digest);
        return asked->back().first;
      },
      [=](earned_atom) -> caf::result<int64_t> {
        earned->push_back(self->make_response_promise<int64_t>());
        return earned->back();
      },
  };
}

assignment chunked(uint64_t id, int set, size_t chunks);

// A session that withdraws an assignment while the uplink fetches its parameters: it holds
// the first two chunk requests of assignment 100 on worker 0, aborts it, fails one held
// request, hands worker 0 assignment 101 of the same parameters, then fails the other (as
// the core answers asks that were out when it let 100's chunks go). Later asks are held.
// `test` hears (101, false) if 101 fails, and (n) at the n-th chunk ask.
node_session_actor::behavior_type withdrawing_session(node_session_actor::pointer self,
                                                      caf::actor uplink, caf::actor test) {
  using chunk_promise = caf::typed_response_promise<std::vector<uint8_t>>;
  auto started = std::make_shared<bool>(false);
  auto held = std::make_shared<std::vector<chunk_promise>>();
  auto let_go = [] {
    return to_caf(error(errc::unavailable, "parameter chunk of an assignment withdrawn"));
  };
  return {
      [=](beat_atom) {
        if (std::exchange(*started, true)) return;
        self->request(uplink, caf::infinite, assign_atom::value, uint32_t{0}, chunked(100, 0, 2))
            .then([](assignment_result&) {}, [](caf::error&) {});
      },
      [=](bye_atom) { self->quit(); },
      [=](chunk_atom, const std::string&) -> caf::result<std::vector<uint8_t>> {
        held->push_back(self->make_response_promise<std::vector<uint8_t>>());
        auto rp = held->back();
        caf::anon_send(test, static_cast<int64_t>(held->size()));
        if (held->size() == 2) {
          self->send(caf::actor_cast<node_uplink_actor>(uplink), abort_atom::value, uint64_t{100});
          (*held)[0].deliver(let_go());
          self->request(uplink, caf::infinite, assign_atom::value, uint32_t{0}, chunked(101, 0, 2))
              .then([test](assignment_result&) { caf::anon_send(test, uint64_t{101}, true); },
                    [test](caf::error&) { caf::anon_send(test, uint64_t{101}, false); });
          (*held)[1].deliver(let_go());
        }
        return rp;
      },
      [=](earned_atom) -> int64_t { return 0; },
  };
}

// A front door that welcomes a node as n1 (heartbeats every `heartbeat_ms`, chunks of 1 KiB)
// with the session `open(door, uplink)` spawns, linked to the door.
template <class Open>
caf::actor welcoming_core(caf::actor_system& sys, Open open, uint32_t heartbeat_ms = 50) {
  return sys.spawn([open, heartbeat_ms](caf::event_based_actor* self) -> caf::behavior {
    return {[=](hello_atom, node_hello& h) -> node_welcome {
      node_welcome w;
      w.protocol = h.protocol;
      w.node_id = "n1";
      w.heartbeat_ms = heartbeat_ms;
      w.session = open(self, h.uplink);
      w.payload_chunk_bytes = 1024;
      return w;
    }};
  });
}

// The core's front door: the Nth hello gets a session running scripts[N] (the last one for
// any later hello).
caf::behavior scripted_core(caf::event_based_actor* self, std::vector<session_script> scripts,
                            uint64_t chunk_bytes) {
  auto hellos = std::make_shared<size_t>(0);
  return {
      [=](hello_atom, node_hello& h) -> node_welcome {
        const auto& script = scripts[std::min(*hellos, scripts.size() - 1)];
        *hellos += 1;
        node_welcome w;
        w.protocol = h.protocol;
        w.node_id = "n" + std::to_string(*hellos);
        w.heartbeat_ms = 50;
        w.session = self->spawn(scripted_session, h.uplink, script);
        w.payload_chunk_bytes = chunk_bytes;
        return w;
      },
  };
}

// A front door that holds each hello `hold` before it answers it (as the core's gatekeeper
// holds one from an address where many joins failed: up to 30 s), with a session running
// `script`.
caf::behavior holding_core(caf::event_based_actor* self, session_script script,
                           std::chrono::milliseconds hold) {
  auto held = std::make_shared<
      std::vector<std::pair<caf::typed_response_promise<node_welcome>, node_welcome>>>();
  return {
      [=](hello_atom, node_hello& h) -> caf::result<node_welcome> {
        node_welcome w;
        w.protocol = h.protocol;
        w.node_id = "n" + std::to_string(held->size() + 1);
        w.heartbeat_ms = 50;
        w.session = self->spawn(scripted_session, h.uplink, script);
        w.payload_chunk_bytes = 1024;
        held->emplace_back(self->make_response_promise<node_welcome>(), std::move(w));
        self->delayed_send(self, hold, held->size() - 1);
        return held->back().first;
      },
      [=](size_t index) { (*held)[index].first.deliver((*held)[index].second); },
  };
}

// A worker that answers each assignment at once.
caf::behavior instant_worker(caf::event_based_actor*) {
  return {
      [](assign_atom, assignment& a) {
        assignment_result r;
        r.assignment_id = a.id;
        return r;
      },
      [](abort_atom, uint64_t) {},  // a worker hears of its work's aborts
  };
}

// A worker that holds each assignment's answer until (caf::ok_atom) releases them all: one
// past its last step, encoding its update when the abort comes.
caf::behavior holding_worker(caf::event_based_actor* self) {
  using promise = caf::typed_response_promise<assignment_result>;
  auto held = std::make_shared<std::vector<std::pair<promise, uint64_t>>>();
  return {
      [=](assign_atom, assignment& a) -> caf::result<assignment_result> {
        held->emplace_back(self->make_response_promise<assignment_result>(), a.id);
        return held->back().first;
      },
      [=](caf::ok_atom) {
        for (auto& [rp, id] : *held) {
          assignment_result r;
          r.assignment_id = id;
          rp.deliver(std::move(r));
        }
        held->clear();
      },
      [](abort_atom, uint64_t) {},  // past its last step: it answers all the same
  };
}

// The node's chunk cache and owner: told things (the session, to serve chunks from) that do
// not matter here. Answered with nothing rather than dropped: a dropped message comes back to
// its sender as an error, which ends an actor that sent it without asking.
caf::behavior quiet_sink(caf::event_based_actor* self) {
  self->set_default_handler(
      [](caf::scheduled_actor*, caf::message_view&) -> caf::result<caf::message> {
        return caf::message{};
      });
  return {[](int) {}};
}

// A worker that answers each assignment at once with an update of 4 KiB of zeros (chunks
// of 1 KiB: all four the same, as regions of an update no sample touched are).
caf::behavior zeros_worker(caf::event_based_actor*) {
  return {
      [](assign_atom, assignment& a) {
        assignment_result r;
        r.assignment_id = a.id;
        r.update.assign(4096, 0);
        return r;
      },
      [](abort_atom, uint64_t) {},
  };
}

// A session that hands workers 0 and 1 assignments 1 and 2 (zeros_worker's), lets the one
// answered first go once both are answered (its job took another node's copy), then
// collects every chunk of the other's update. With `collect_dropped_first`, it collects
// every chunk of assignment 2's update first and only then lets assignment 2 go, and
// collects assignment 1's. `test` hears how many chunks of the last update came, negative
// if an answer or a chunk failed.
node_session_actor::behavior_type collecting_session(node_session_actor::pointer self,
                                                     caf::actor uplink, caf::actor test,
                                                     bool collect_dropped_first) {
  auto started = std::make_shared<bool>(false);
  auto answers = std::make_shared<std::vector<assignment_result>>();  // in the order answered
  // Pulls every chunk of `r`'s update, then runs `then` with how many came (negative: one
  // failed).
  auto pull = [=](const assignment_result& r, std::function<void(int)> then) {
    auto got = std::make_shared<int>(0);
    const auto digests = r.update_chunks;
    for (const auto& d : digests)
      self->request(uplink, std::chrono::seconds(10), chunk_atom::value, d)
          .then(
              [=](std::vector<uint8_t>&) {
                if (++*got == static_cast<int>(digests.size())) then(*got);
              },
              [=](caf::error&) { then(-static_cast<int>(digests.size())); });
  };
  auto collect = [=] {
    auto report = [test](int n) { caf::anon_send(test, n); };
    if (!collect_dropped_first) {
      self->send(caf::actor_cast<node_uplink_actor>(uplink), abort_atom::value,
                 answers->front().assignment_id);
      return pull(answers->back(), report);
    }
    std::sort(answers->begin(), answers->end(),
              [](const auto& a, const auto& b) { return a.assignment_id < b.assignment_id; });
    pull(answers->back(), [=](int n) {
      if (n < 0) return report(n);
      self->send(caf::actor_cast<node_uplink_actor>(uplink), abort_atom::value,
                 answers->back().assignment_id);
      pull(answers->front(), report);
    });
  };
  return {
      [=](beat_atom) {
        if (std::exchange(*started, true)) return;
        for (uint32_t index : {0u, 1u}) {
          assignment a;
          a.id = index + 1;
          a.job_id = "job-1";
          self->request(uplink, std::chrono::seconds(10), assign_atom::value, index, a)
              .then(
                  [=](assignment_result& r) {
                    answers->push_back(std::move(r));
                    if (answers->size() == 2) collect();
                  },
                  [=](caf::error&) { caf::anon_send(test, -1); });
        }
      },
      [=](bye_atom) { self->quit(); },
      [=](chunk_atom, const std::string&) -> caf::result<std::vector<uint8_t>> {
        return std::vector<uint8_t>{};
      },
      [=](earned_atom) -> int64_t { return 0; },
  };
}

uplink_config probe_config() {
  uplink_config config;
  config.name = "probe";
  config.protocol = protocol_version;
  return config;
}

// An assignment whose parameters come in `chunks` chunks of 1 KiB, named after `set`.
assignment chunked(uint64_t id, int set, size_t chunks) {
  assignment a;
  a.id = id;
  a.job_id = "job-1";
  a.params_bytes = chunks * 1024;
  for (size_t i = 0; i < chunks; ++i) {
    const std::string name = std::to_string(set) + "/" + std::to_string(i);
    a.params_chunks.push_back(
        digest_hex({reinterpret_cast<const uint8_t*>(name.data()), name.size()}));
  }
  return a;
}

// Hands worker 0 assignment 200, its parameters inline; `test` hears its id once it is
// answered, 0 if it fails or is not answered within 10 s.
void assign_inline(node_session_actor::pointer self, caf::actor uplink, caf::actor test) {
  assignment a;
  a.id = 200;
  a.job_id = "job-1";
  self->request(uplink, std::chrono::seconds(10), assign_atom::value, uint32_t{0}, a)
      .then([test](assignment_result& r) { caf::anon_send(test, r.assignment_id); },
            [test](caf::error&) { caf::anon_send(test, uint64_t{0}); });
}

// Hands worker `index` assignment `id`, its parameters inline; `test` hears (id, true) once
// it is answered, (id, false) if it fails or is not answered within 10 s.
void assign_to(node_session_actor::pointer self, caf::actor uplink, caf::actor test, uint32_t index,
               uint64_t id) {
  assignment a;
  a.id = id;
  a.job_id = "job-1";
  self->request(uplink, std::chrono::seconds(10), assign_atom::value, index, a)
      .then([test, id](assignment_result&) { caf::anon_send(test, id, true); },
            [test, id](caf::error&) { caf::anon_send(test, id, false); });
}

// A cache that never answers for shard "slow" (a download on a slow link) and answers any
// other at once with a few rows of 4 values, 3 classes.
caf::behavior slow_shard_cache(caf::event_based_actor* self) {
  auto data = std::make_shared<dataset>();
  data->classes = 3;
  data->features = tensor::empty({12, 4}, dtype::f32);
  data->labels = tensor::empty({12}, dtype::i32);
  for (int64_t i = 0; i < 48; ++i) data->features.data<float>()[i] = 0.1f * (i % 5);
  for (int64_t i = 0; i < 12; ++i) data->labels.data<int32_t>()[i] = static_cast<int32_t>(i % 3);
  auto held = std::make_shared<std::vector<caf::response_promise>>();
  return {
      [=](shard_atom, const std::string& digest) -> caf::result<decoded_shard> {
        if (digest != "slow") return decoded_shard{data};
        held->push_back(self->make_response_promise());
        return caf::delegated<decoded_shard>{};
      },
      [](prefetch_atom, const std::string&) {},
      [](serve_atom, const caf::actor&) {},
  };
}

// Assignment `id` of a small model on shard `shard`, its parameters inline.
assignment on_shard(uint64_t id, const std::string& shard) {
  const std::string model =
      "[model]\ninput = [4]\nlayers = [ { type = \"linear\", units = 3 }, "
      "{ type = \"softmax_xent\" } ]\n";
  assignment a;
  a.id = id;
  a.job_id = "job-1";
  a.workload = "model";
  a.model = model;
  a.shard = shard;
  a.local_steps = 1;
  a.batch_size = 4;
  a.lr = 0.01f;
  a.compression = static_cast<uint8_t>(compression::fp32);
  a.params = encode_tensor(tensor::zeros({4 * 3 + 3}, dtype::f32));
  return a;
}

}  // namespace

// Whether a node of a core of several (another core to try, core_silence 3 s: 15 s in use,
// the same check sooner) takes `core` for lost within `wait`.
bool taken_for_lost(test::configured_system& s, const caf::actor& core, std::chrono::seconds wait) {
  caf::actor test = caf::actor_cast<caf::actor>(s.self);
  auto config = probe_config();
  config.other_cores = {{"127.0.0.1", 1}};
  config.core_silence = std::chrono::seconds(3);
  config.on_activity = [test](const node_activity& n) {
    if (n.what == node_activity::kind::lost) caf::anon_send(test, std::string("lost"));
  };
  auto sink = s.sys.spawn(quiet_sink);
  auto uplink = spawn_uplink(s.sys, config, core, {s.sys.spawn(instant_worker)}, sink, sink);
  bool lost = false;
  s.self->receive([&](std::string&) { lost = true; }, caf::after(wait) >> [] {});
  for (auto& a : {uplink, sink}) s.self->send_exit(a, caf::exit_reason::user_shutdown);
  return lost;
}

// What the node counted of an assignment with 1000 bytes of parameters inline, answered with an
// update of 700 (inline: chunks are of 1 KiB), from a core in another system (`remote`, over
// the loopback) or in the node's own: the payload bytes it counted in and out, and the size
// of the update its session got.
struct counted {
  double in = 0, out = 0;
  size_t update = 0;
};

counted counted_payload(bool remote) {
  test::configured_system node, core_side;
  caf::actor test = caf::actor_cast<caf::actor>(node.self);
  session_script script = [test](node_session_actor::pointer self, caf::actor uplink) {
    assignment a;
    a.id = 500;
    a.job_id = "job-1";
    a.params.assign(1000, 1);
    self->request(uplink, std::chrono::seconds(10), assign_atom::value, uint32_t{0}, a)
        .then([test](assignment_result& r) { caf::anon_send(test, r.update.size(), true); },
              [test](caf::error&) { caf::anon_send(test, size_t{0}, false); });
  };
  auto& core_sys = remote ? core_side.sys : node.sys;
  // Its session linked to it, so that both end with the test: CAF keeps an actor whose handle
  // went to another system in its registry, and its own system waited for it for ever.
  auto core = welcoming_core(core_sys, [script](caf::event_based_actor* door, caf::actor uplink) {
    return door->spawn<caf::linked>(scripted_session, uplink, script);
  });
  auto config = probe_config();
  if (remote) {
    auto port = core_sys.middleman().publish(core, 0, "127.0.0.1");
    REQUIRE(static_cast<bool>(port));
    config.host = "127.0.0.1";
    config.port = *port;
  }
  auto sink = node.sys.spawn(quiet_sink);
  auto worker = node.sys.spawn([](caf::event_based_actor*) -> caf::behavior {
    return {[](assign_atom, assignment& a) {
              assignment_result r;
              r.assignment_id = a.id;
              r.update.assign(700, 2);
              return r;
            },
            [](abort_atom, uint64_t) {}};
  });
  const double in = node_metrics::bytes("in", "parameters").value();
  const double out = node_metrics::bytes("out", "update").value();
  auto uplink = spawn_uplink(node.sys, config, remote ? caf::actor{} : core, {worker}, sink, sink);
  counted got;
  node.self->receive([&](size_t n, bool) { got.update = n; },
                     caf::after(std::chrono::seconds(10)) >> [] {});
  got.in = node_metrics::bytes("in", "parameters").value() - in;
  got.out = node_metrics::bytes("out", "update").value() - out;
  for (auto& a : {uplink, sink, worker}) node.self->send_exit(a, caf::exit_reason::user_shutdown);
  core_side.self->send_exit(core, caf::exit_reason::user_shutdown);
  return got;
}

// Whether a node takes a core of several for lost within `wait` while that core sends it the
// parameters of one assignment, `chunks` chunks of 1 KiB, one every `every`.
bool lost_while_sending(int chunks, std::chrono::milliseconds every, std::chrono::seconds wait) {
  test::configured_system s;
  auto held = std::make_shared<std::map<std::string, std::vector<uint8_t>>>();
  assignment a;
  a.id = 300;
  a.job_id = "job-1";
  for (int i = 0; i < chunks; ++i) {
    std::vector<uint8_t> bytes(1024, static_cast<uint8_t>(i));
    a.params_chunks.push_back(digest_hex(bytes));
    (*held)[a.params_chunks.back()] = std::move(bytes);
  }
  a.params_bytes = static_cast<uint64_t>(chunks) * 1024;
  auto core = welcoming_core(
      s.sys,
      [held, a, every](caf::event_based_actor* door, caf::actor uplink) {
        return door->spawn<caf::linked>(sending_session, uplink, held, a, every);
      },
      100);
  const bool lost = taken_for_lost(s, core, wait);
  s.self->send_exit(core, caf::exit_reason::user_shutdown);
  return lost;
}

TEST_SUITE("uplink") {
  TEST_CASE("a fetch of parameters that a newer one pushed out still ends with its session") {
    test::configured_system s;
    auto answered = std::make_shared<std::vector<uint64_t>>();
    caf::actor test = caf::actor_cast<caf::actor>(s.self);
    // The first session hands each of three workers an assignment of other parameters (the
    // uplink keeps two fetches; the third pushes the first out), none of whose chunks ever
    // come, then ends. The second hands worker 0 an assignment with its parameters inline:
    // the worker must be free to take it.
    session_script first = [](node_session_actor::pointer self, caf::actor uplink) {
      for (uint32_t w = 0; w < 3; ++w)
        self->request(uplink, caf::infinite, assign_atom::value, w,
                      chunked(100 + w, static_cast<int>(w), 2))
            .then([](assignment_result&) {}, [](caf::error&) {});
      self->delayed_send(self, std::chrono::milliseconds(300), bye_atom::value);
    };
    session_script second = [test](node_session_actor::pointer self, caf::actor uplink) {
      assign_inline(self, uplink, test);
    };
    auto core = s.sys.spawn(scripted_core, std::vector<session_script>{first, second}, 1024);
    std::vector<caf::actor> workers;
    for (int i = 0; i < 3; ++i) workers.push_back(s.sys.spawn(instant_worker));
    auto sink = s.sys.spawn(quiet_sink);
    auto uplink = spawn_uplink(s.sys, probe_config(), core, workers, sink, sink);
    uint64_t got = 1;
    s.self->receive([&](uint64_t id) { got = id; }, caf::after(std::chrono::seconds(15)) >> [] {});
    const std::string outcome = got == 200 ? "answered"
                                : got == 0 ? "failed or timed out (is the worker kept busy?)"
                                           : "not answered in 15 s";
    CHECK_MESSAGE(got == 200, "worker 0's assignment from the second session: " << outcome);
    for (auto& a : workers) s.self->send_exit(a, caf::exit_reason::user_shutdown);
    for (auto& a : {uplink, core, sink}) s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("an abort stops the wait for an assignment's parameters, freeing its worker") {
    // The round closed (or a backup won) while this node still fetched the parameters: the
    // abort left the fetch going, the worker busy until it ended, and the node's next
    // assignment on it waited past its deadline (and the slot was cooled down for it).
    test::configured_system s;
    caf::actor test = caf::actor_cast<caf::actor>(s.self);
    session_script script = [test](node_session_actor::pointer self, caf::actor uplink) {
      self->request(uplink, caf::infinite, assign_atom::value, uint32_t{0}, chunked(100, 0, 2))
          .then([](assignment_result&) {}, [](caf::error&) {});
      self->send(caf::actor_cast<node_uplink_actor>(uplink), abort_atom::value, uint64_t{100});
      assign_inline(self, uplink, test);
      self->delayed_send(self, std::chrono::seconds(6), bye_atom::value);  // the test is over
    };
    auto core = s.sys.spawn(scripted_core, std::vector<session_script>{script}, 1024);
    auto worker = s.sys.spawn(instant_worker);
    auto sink = s.sys.spawn(quiet_sink);
    auto uplink = spawn_uplink(s.sys, probe_config(), core, {worker}, sink, sink);
    uint64_t got = 1;
    s.self->receive([&](uint64_t id) { got = id; }, caf::after(std::chrono::seconds(5)) >> [] {});
    CHECK_MESSAGE(got == 200, "the next assignment on the worker: " << got);
    std::this_thread::sleep_for(std::chrono::seconds(2));  // the session ends
    for (auto& a : {uplink, core, sink, worker})
      s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("an abort stops a worker's wait for its assignment's shard, freeing the worker") {
    // A backup won (or the round closed) while this node still downloaded the shard: the
    // worker waited for the download (minutes on a slow link), busy, and the node's next
    // assignment on it waited behind a download nobody wanted, past its deadline.
    test::configured_system s;
    caf::actor test = caf::actor_cast<caf::actor>(s.self);
    session_script script = [test](node_session_actor::pointer self, caf::actor uplink) {
      self->request(uplink, caf::infinite, assign_atom::value, uint32_t{0}, on_shard(100, "slow"))
          .then([](assignment_result&) {}, [](caf::error&) {});
      self->delayed_send(caf::actor_cast<node_uplink_actor>(uplink), std::chrono::milliseconds(300),
                         abort_atom::value, uint64_t{100});
      self->request(uplink, std::chrono::seconds(10), assign_atom::value, uint32_t{0},
                    on_shard(200, "here"))
          .then([test](assignment_result& r) { caf::anon_send(test, r.assignment_id); },
                [test](caf::error&) { caf::anon_send(test, uint64_t{0}); });
      self->delayed_send(self, std::chrono::seconds(8), bye_atom::value);  // the test is over
    };
    auto core = s.sys.spawn(scripted_core, std::vector<session_script>{script}, 1024);
    auto cache = s.sys.spawn(slow_shard_cache);
    worker_config config;
    auto worker = spawn_worker(s.sys, config, cache);
    auto sink = s.sys.spawn(quiet_sink);
    auto uplink = spawn_uplink(s.sys, probe_config(), core, {worker}, cache, sink);
    uint64_t got = 1;
    s.self->receive([&](uint64_t id) { got = id; }, caf::after(std::chrono::seconds(5)) >> [] {});
    const std::string outcome = got == 200 ? "answered"
                                : got == 0 ? "failed"
                                           : "not answered in 5 s (the worker kept busy?)";
    CHECK_MESSAGE(got == 200, "the next assignment on the worker: " << outcome);
    for (auto& a : {uplink, core, sink, worker, cache})
      s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a core that goes away while it holds this node's hello is tried again at once") {
    // Killed, out of its lease or cut off while it held the hello (a gatekeeper holds one for
    // up to 30 s): CAF answers no request over a lost link, and the node waited out the hello's
    // 60 s before it tried again, while another core may have led within seconds.
    test::configured_system s;
    test::captured_log log{spdlog::level::info};
    session_script idle = [](node_session_actor::pointer, caf::actor) {};
    auto core = s.sys.spawn(holding_core, idle, std::chrono::milliseconds(60000));
    auto worker = s.sys.spawn(instant_worker);
    auto sink = s.sys.spawn(quiet_sink);
    auto uplink = spawn_uplink(s.sys, probe_config(), core, {worker}, sink, sink);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // its hello is held
    s.self->send_exit(core, caf::exit_reason::kill);
    bool again = false;
    for (int tries = 0; tries < 30 && !again; ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      again = log.count("uplink: retrying in") > 0;
    }
    CHECK_MESSAGE(again, "no retry within 3 s of the core's end: " << log.text());
    for (auto& a : {uplink, sink, worker}) s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("an answer that comes after its assignment's abort is not kept for the session") {
    // A worker past its last step answered all the same: the uplink kept the update, in
    // chunks, for a session that would never take them (up to a gigabyte, 10 minutes), and
    // told the session the withdrawn work was done.
    test::configured_system s;
    caf::actor test = caf::actor_cast<caf::actor>(s.self);
    session_script script = [test](node_session_actor::pointer self, caf::actor uplink) {
      assign_to(self, uplink, test, 0, 400);
      self->delayed_send(caf::actor_cast<node_uplink_actor>(uplink), std::chrono::milliseconds(200),
                         abort_atom::value, uint64_t{400});
      self->delayed_send(self, std::chrono::seconds(6), bye_atom::value);  // the test is over
    };
    auto core = s.sys.spawn(scripted_core, std::vector<session_script>{script}, 1024);
    auto worker = s.sys.spawn(holding_worker);
    auto sink = s.sys.spawn(quiet_sink);
    auto uplink = spawn_uplink(s.sys, probe_config(), core, {worker}, sink, sink);
    std::this_thread::sleep_for(std::chrono::milliseconds(1000));  // assigned, then aborted
    s.self->send(worker, caf::ok_atom::value);
    std::optional<bool> answered;
    s.self->receive([&](uint64_t, bool ok) { answered = ok; },
                    caf::after(std::chrono::seconds(5)) >> [] {});
    REQUIRE(answered.has_value());
    CHECK_FALSE_MESSAGE(*answered, "the aborted assignment was answered as done");
    for (auto& a : {uplink, core, sink, worker})
      s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a fetch of parameters nobody waits for lets its buffer go once idle") {
    // A fetch whose assignments were all aborted kept its buffer (up to a gigabyte) until
    // two newer fetches pushed it out, which an idle node never saw.
    test::configured_system s;
    caf::actor test = caf::actor_cast<caf::actor>(s.self);
    auto core = welcoming_core(s.sys, [test](caf::event_based_actor* door, caf::actor uplink) {
      return door->spawn<caf::linked>(
          [test, uplink](node_session_actor::pointer session) -> node_session_actor::behavior_type {
            auto started = std::make_shared<std::optional<std::chrono::steady_clock::time_point>>();
            auto again = std::make_shared<bool>(false);
            using chunk_promise = caf::typed_response_promise<std::vector<uint8_t>>;
            auto held = std::make_shared<std::vector<chunk_promise>>();
            auto to_uplink = caf::actor_cast<node_uplink_actor>(uplink);
            return {
                [=](beat_atom) {
                  const auto now = std::chrono::steady_clock::now();
                  if (!*started) {
                    *started = now;
                    session
                        ->request(uplink, caf::infinite, assign_atom::value, uint32_t{0},
                                  chunked(100, 0, 2))
                        .then([](assignment_result&) {}, [](caf::error&) {});
                    session->delayed_send(to_uplink, std::chrono::milliseconds(200),
                                          abort_atom::value, uint64_t{100});
                    return;
                  }
                  // Past the fetch's idle time: the same parameters, again.
                  if (now - **started < std::chrono::milliseconds(1500) ||
                      std::exchange(*again, true))
                    return;
                  session
                      ->request(uplink, caf::infinite, assign_atom::value, uint32_t{0},
                                chunked(101, 0, 2))
                      .then([](assignment_result&) {}, [](caf::error&) {});
                },
                [=](bye_atom) { session->quit(); },
                [=](chunk_atom, const std::string&) -> caf::result<std::vector<uint8_t>> {
                  caf::anon_send(test, std::string("asked"));
                  held->push_back(session->make_response_promise<std::vector<uint8_t>>());
                  return held->back();
                },
                [=](earned_atom) -> int64_t { return 0; },
            };
          });
    });
    auto config = probe_config();
    config.params_idle = std::chrono::milliseconds(300);
    auto sink = s.sys.spawn(quiet_sink);
    auto uplink = spawn_uplink(s.sys, config, core, {s.sys.spawn(instant_worker)}, sink, sink);
    int asked = 0;
    auto count_for = [&](std::chrono::milliseconds span) {
      const auto until = std::chrono::steady_clock::now() + span;
      for (bool more = true; more;)
        s.self->receive([&](std::string&) { ++asked; },
                        caf::after(std::max(std::chrono::milliseconds(1),
                                            std::chrono::duration_cast<std::chrono::milliseconds>(
                                                until - std::chrono::steady_clock::now()))) >>
                            [&] { more = false; });
    };
    count_for(std::chrono::milliseconds(1000));  // asked, aborted, idle past 300 ms
    CHECK(asked == 2);
    count_for(std::chrono::milliseconds(2000));  // assigned again at 1.5 s
    CHECK_MESSAGE(asked == 4, "chunks asked: " << asked << " (2 again once the fetch went)");
    for (auto& a : {uplink, core, sink}) s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("asks of a withdrawn assignment's parameters fail no later assignment of them") {
    // The core lets a withdrawn assignment's chunks go and fails the asks that were out; the
    // failure was kept as the fetch's, and the node's next assignment of the same parameters
    // (a backup's shard, a re-computation) failed with it, its node cooled down.
    test::configured_system s;
    caf::actor test = caf::actor_cast<caf::actor>(s.self);
    auto core = welcoming_core(s.sys, [test](caf::event_based_actor* door, caf::actor uplink) {
      return door->spawn<caf::linked>(withdrawing_session, uplink, test);
    });
    auto worker = s.sys.spawn(instant_worker);
    auto sink = s.sys.spawn(quiet_sink);
    auto uplink = spawn_uplink(s.sys, probe_config(), core, {worker}, sink, sink);
    bool failed = false;
    int64_t asked = 0;
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
    for (bool waiting = true; waiting && std::chrono::steady_clock::now() < until;)
      s.self->receive([&](uint64_t, bool ok) { failed = !ok; },
                      [&](int64_t n) { asked = std::max(asked, n); },
                      caf::after(std::chrono::milliseconds(1500)) >> [&] { waiting = false; });
    CHECK_FALSE_MESSAGE(failed, "assignment 101 failed with the withdrawn one's asks");
    // Not failed is not enough: both chunks are asked again for 101 (a fetch that stopped
    // there kept worker 0 busy for good, and passed).
    CHECK(asked == 4);
    for (auto& a : {uplink, core, sink, worker})
      s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("two assignments of one id on two workers lose neither worker") {
    // The second took the first's place among the running ones: the first answer erased it,
    // the second's was never given, and its worker stayed busy for good, across reconnects.
    test::configured_system s;
    caf::actor test = caf::actor_cast<caf::actor>(s.self);
    session_script script = [test](node_session_actor::pointer self, caf::actor uplink) {
      assign_to(self, uplink, test, 0, 300);
      assign_to(self, uplink, test, 1, 300);
      assign_to(self, uplink, test, 0, 301);
      assign_to(self, uplink, test, 1, 302);
    };
    auto core = s.sys.spawn(scripted_core, std::vector<session_script>{script}, 1024);
    auto sink = s.sys.spawn(quiet_sink);
    auto w0 = s.sys.spawn(instant_worker), w1 = s.sys.spawn(instant_worker);
    auto uplink = spawn_uplink(s.sys, probe_config(), core, {w0, w1}, sink, sink);
    std::map<uint64_t, int> answered, failed;
    for (int i = 0; i < 4; ++i)
      s.self->receive([&](uint64_t id, bool ok) { (ok ? answered : failed)[id] += 1; },
                      caf::after(std::chrono::seconds(12)) >> [] {});
    CHECK(answered[301] == 1);
    CHECK(answered[302] == 1);
    CHECK(answered[300] + failed[300] == 2);  // both heard of: one done, the copy refused
    for (auto& a : {uplink, core, sink, w0, w1})
      s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("the uplink counts an assignment's inline parameters and update once, if remote") {
    // Counted where they cross the network, as the core counts them: an embedded node's
    // parameters and updates stay in its process, where the core counts none of them, and
    // the node's counts were the core's and more.
    const auto remote = counted_payload(true);
    CHECK(remote.update == 700);
    CHECK(remote.in == 1000);
    CHECK(remote.out == 700);
    const auto local = counted_payload(false);
    CHECK(local.update == 700);
    CHECK(local.in == 0);
    CHECK(local.out == 0);
  }

  TEST_CASE("assignments queued for a busy worker are few; more are refused at once") {
    // Each may carry 128 MiB of parameters: a core that sent them without end to a worker
    // held busy filled the node's memory.
    test::configured_system s;
    caf::actor test = caf::actor_cast<caf::actor>(s.self);
    session_script script = [test](node_session_actor::pointer self, caf::actor uplink) {
      // Worker 0 waits for parameters that never come.
      self->request(uplink, caf::infinite, assign_atom::value, uint32_t{0}, chunked(100, 0, 2))
          .then([](assignment_result&) {}, [](caf::error&) {});
      for (uint64_t id = 401; id <= 404; ++id) assign_to(self, uplink, test, 0, id);
      self->delayed_send(self, std::chrono::seconds(4), bye_atom::value);  // the test is over
    };
    auto core = s.sys.spawn(scripted_core, std::vector<session_script>{script}, 1024);
    auto sink = s.sys.spawn(quiet_sink);
    auto worker = s.sys.spawn(instant_worker);
    auto uplink = spawn_uplink(s.sys, probe_config(), core, {worker}, sink, sink);
    std::vector<uint64_t> refused;
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(3);
    while (std::chrono::steady_clock::now() < until)
      s.self->receive(
          [&](uint64_t id, bool ok) {
            if (!ok) refused.push_back(id);
          },
          caf::after(std::chrono::milliseconds(100)) >> [] {});
    CHECK(refused == std::vector<uint64_t>{403, 404});     // two wait, the rest are refused
    std::this_thread::sleep_for(std::chrono::seconds(2));  // the session ends
    for (auto& a : {uplink, core, sink, worker})
      s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("parameters a node fetches are held to its host memory budget") {
    // Each fetch's buffer was the whole of its parameters, made at once and outside the
    // budget: a core naming made-up parameters of a gigabyte to each of 16 workers, and
    // serving none of them, had the node hold 16 GiB.
    test::configured_system s;
    caf::actor test = caf::actor_cast<caf::actor>(s.self);
    struct limit_restored {
      uint64_t before = kernels::host_memory_limit();
      ~limit_restored() { kernels::set_host_memory_limit(before); }
    } restored;
    kernels::set_host_memory_limit(4 * 1024);
    // Workers 0 and 1 wait for 2 KiB each (the budget's 4 KiB), worker 2 is refused 1 KiB
    // more, worker 3 shares worker 0's parameters (no more memory), and parameters over the
    // budget on their own are refused too (worker 4).
    session_script script = [test](node_session_actor::pointer self, caf::actor uplink) {
      const std::vector<std::pair<uint32_t, assignment>> work = {{0, chunked(500, 0, 2)},
                                                                 {1, chunked(501, 1, 2)},
                                                                 {2, chunked(502, 2, 1)},
                                                                 {3, chunked(503, 0, 2)},
                                                                 {4, chunked(504, 4, 5)}};
      for (const auto& w : work) {
        const uint64_t id = w.second.id;
        self->request(uplink, std::chrono::seconds(2), assign_atom::value, w.first, w.second)
            .then([test, id](assignment_result&) { caf::anon_send(test, id, std::string("done")); },
                  [test, id](caf::error& e) {
                    const auto err = from_caf(e);
                    // Out of the node's memory, as a worker says a model that does not fit:
                    // the job leaves the node out, and the market holds nothing against it.
                    caf::anon_send(test, id,
                                   err.code() == errc::device_error ? "refused: " + err.message()
                                                                    : std::string("waiting"));
                  });
      }
      self->delayed_send(self, std::chrono::seconds(3), bye_atom::value);  // the test is over
    };
    auto core = s.sys.spawn(scripted_core, std::vector<session_script>{script}, 1024);
    auto sink = s.sys.spawn(quiet_sink);
    std::vector<caf::actor> workers;
    for (int i = 0; i < 5; ++i) workers.push_back(s.sys.spawn(instant_worker));
    auto uplink = spawn_uplink(s.sys, probe_config(), core, workers, sink, sink);
    std::map<uint64_t, std::string> heard;
    for (int i = 0; i < 5; ++i)
      s.self->receive([&](uint64_t id, std::string& what) { heard[id] = what; },
                      caf::after(std::chrono::seconds(10)) >> [] {});
    std::string told;  // what each assignment heard, for the log
    for (const auto& h : heard) told += std::to_string(h.first) + ": " + h.second + "; ";
    CAPTURE(told);
    CHECK(heard[500] == "waiting");
    CHECK(heard[501] == "waiting");
    CHECK(
        heard[502].starts_with("refused: out of host memory: parameters of 1024 bytes do not fit"));
    CHECK(heard[502].find("--memory-limit") != std::string::npos);
    CHECK(heard[503] == "waiting");
    CHECK(heard[504].starts_with("refused: "));
    std::this_thread::sleep_for(std::chrono::seconds(2));  // the session ends
    for (auto& a : workers) s.self->send_exit(a, caf::exit_reason::user_shutdown);
    for (auto& a : {uplink, core, sink}) s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("the node's joined activity names the workers it runs, not --workers") {
    // gflex-node's status line shows "busy/N workers": on a GPU node N is its GPU groups
    // times --streams-per-gpu, which only the node knows once its workers are spawned.
    test::configured_system s;
    caf::actor test = caf::actor_cast<caf::actor>(s.self);
    session_script quiet = [](node_session_actor::pointer, caf::actor) {};
    auto core = s.sys.spawn(scripted_core, std::vector<session_script>{quiet}, 1024);
    auto config = probe_config();
    config.on_activity = [test](const node_activity& n) {
      if (n.what == node_activity::kind::joined) caf::anon_send(test, n.workers);
    };
    std::vector<caf::actor> workers;
    for (int i = 0; i < 3; ++i) workers.push_back(s.sys.spawn(instant_worker));
    auto sink = s.sys.spawn(quiet_sink);
    auto uplink = spawn_uplink(s.sys, config, core, workers, sink, sink);
    int said = -1;
    s.self->receive([&](int n) { said = n; }, caf::after(std::chrono::seconds(10)) >> [] {});
    CHECK_MESSAGE(said == 3, "joined with 3 workers, said " << said);
    for (auto& a : workers) s.self->send_exit(a, caf::exit_reason::user_shutdown);
    for (auto& a : {uplink, core, sink}) s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a welcome with payload chunks outside [1 KiB, 64 MiB] is not joined") {
    test::configured_system s;
    caf::actor test = caf::actor_cast<caf::actor>(s.self);
    // A session that hears a heartbeat was joined: it says so.
    session_script joined = [test](node_session_actor::pointer, caf::actor) {
      caf::anon_send(test, std::string("joined"));
    };
    auto sink = s.sys.spawn(quiet_sink);
    // Whether a node joins a core whose welcome names chunks of `chunk_bytes`, within `wait`.
    auto joins = [&](uint64_t chunk_bytes, std::chrono::milliseconds wait) {
      auto core = s.sys.spawn(scripted_core, std::vector<session_script>{joined}, chunk_bytes);
      auto uplink =
          spawn_uplink(s.sys, probe_config(), core, {s.sys.spawn(instant_worker)}, sink, sink);
      bool heard = false;
      s.self->receive([&](std::string&) { heard = true; }, caf::after(wait) >> [] {});
      s.self->send_exit(uplink, caf::exit_reason::user_shutdown);
      s.self->send_exit(core, caf::exit_reason::user_shutdown);
      return heard;
    };
    for (uint64_t chunk_bytes : {uint64_t{1}, uint64_t{1023}, (uint64_t{64} << 20) + 1})
      CHECK_MESSAGE(!joins(chunk_bytes, std::chrono::milliseconds(1500)),
                    "joined with payload chunks of " << chunk_bytes << " bytes");
    CHECK(joins(1024, std::chrono::seconds(5)));  // the smallest a core may name
    s.self->send_exit(sink, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a hello the core holds for longer than 15 s is still joined") {
    // The node gave up on its hello after 15 s and asked again, to be held again: behind an
    // address where many joins failed (a shared NAT), an honest node never joined.
    test::configured_system s;
    caf::actor test = caf::actor_cast<caf::actor>(s.self);
    session_script joined = [test](node_session_actor::pointer, caf::actor) {
      caf::anon_send(test, std::string("joined"));
    };
    auto sink = s.sys.spawn(quiet_sink);
    auto core = s.sys.spawn(holding_core, joined, std::chrono::milliseconds(16000));
    auto uplink =
        spawn_uplink(s.sys, probe_config(), core, {s.sys.spawn(instant_worker)}, sink, sink);
    bool heard = false;
    s.self->receive([&](std::string&) { heard = true; },
                    caf::after(std::chrono::seconds(20)) >> [] {});
    CHECK_MESSAGE(heard, "not joined 20 s after a hello held 16 s");
    for (auto& a : {uplink, core, sink}) s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a core of several that goes silent is taken for lost") {
    // The other side of the two cases below: a core that asks nothing and answers nothing is
    // left within core_silence, for another core of the several.
    test::configured_system s;
    auto core = welcoming_core(
        s.sys,
        [](caf::event_based_actor* door, caf::actor uplink) {
          return door->spawn<caf::linked>(silent_session, uplink);
        },
        100);
    const bool lost = taken_for_lost(s, core, std::chrono::seconds(10));
    CHECK_MESSAGE(lost, "the node stayed 10 s with a core silent for 3 s");
    s.self->send_exit(core, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a core of several that is busy uploading is not taken for lost") {
    // Its `earned` queued behind the update chunks on a slow link, the node took a leader
    // that kept asking for chunks as gone after core_silence, left it and cancelled its own
    // work.
    test::configured_system s;
    auto core = welcoming_core(
        s.sys,
        [](caf::event_based_actor* door, caf::actor uplink) {
          return door->spawn<caf::linked>(uploading_session, uplink);
        },
        100);
    const bool lost = taken_for_lost(s, core, std::chrono::seconds(7));
    CHECK_MESSAGE(!lost, "the node left a core that asked for chunks all along");
    s.self->send_exit(core, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("an answer's chunks that another answer shares stay when that one goes") {
    // Chunks were kept by digest under the first answer that had them: letting that answer
    // go (aborted, or idle) took them from the second, whose upload then failed. So did a
    // serve counted off the smaller id's occurrences while the larger id's answer asked for
    // it: letting the larger go then took what the smaller still needed. Answers go in
    // chunks only to a core on another machine: the core here is in a second system.
    bool collect_dropped_first = false;
    SUBCASE("the one that goes was not collected") {}
    SUBCASE("the one that goes was collected first") {
      collect_dropped_first = true;
    }
    test::configured_system node;
    test::configured_system core_side;
    caf::actor test = caf::actor_cast<caf::actor>(node.self);
    auto door = welcoming_core(
        core_side.sys, [test, collect_dropped_first](caf::event_based_actor* self, caf::actor u) {
          return self->spawn<caf::linked>(collecting_session, u, test, collect_dropped_first);
        });
    auto port = core_side.sys.middleman().publish(door, 0, "127.0.0.1");
    REQUIRE(static_cast<bool>(port));
    auto config = probe_config();
    config.host = "127.0.0.1";
    config.port = *port;
    auto sink = node.sys.spawn(quiet_sink);
    auto uplink =
        spawn_uplink(node.sys, config, nullptr,
                     {node.sys.spawn(zeros_worker), node.sys.spawn(zeros_worker)}, sink, sink);
    int collected = 0;
    node.self->receive([&](int n) { collected = n; },
                       caf::after(std::chrono::seconds(20)) >> [] {});
    CHECK_MESSAGE(collected == 4,
                  "chunks of the second answer collected: " << collected << " (negative: failed)");
    node.self->send_exit(uplink, caf::exit_reason::user_shutdown);
    node.self->send_exit(sink, caf::exit_reason::user_shutdown);
    core_side.self->send_exit(door, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a node and a core that disagree on TLS are told so in the node's log") {
    // The log said only CAF's code, retry after retry, where the client says what is likely
    // wrong: one end with --insecure, or another core than the certificate names.
    bool node_tls = false;
    std::string hint;
    SUBCASE("the node with --insecure, the core with TLS") {
      hint = "does the core serve TLS? then drop --insecure";
    }
    SUBCASE("the node with TLS, the core with --insecure") {
      node_tls = true;
      hint = "does the core serve TLS rather than --insecure?";
    }
    test::captured_log captured;
    // No certificate at either end: CAF's anonymous ciphers suffice to disagree.
    caf::actor_system_config node_cfg, core_cfg;
    test::configured_system::configured(node_cfg).load<caf::openssl::manager>();
    test::configured_system::configured(core_cfg).load<caf::openssl::manager>();
    caf::actor_system node_sys{node_cfg};
    caf::actor_system core_sys{core_cfg};
    auto door = core_sys.spawn(quiet_sink);
    auto port = node_tls ? core_sys.middleman().publish(door, 0, "127.0.0.1")
                         : caf::openssl::publish(door, 0, "127.0.0.1");
    REQUIRE(static_cast<bool>(port));
    auto config = probe_config();
    config.host = "127.0.0.1";
    config.port = *port;
    config.tls = node_tls;
    auto sink = node_sys.spawn(quiet_sink);
    auto uplink =
        spawn_uplink(node_sys, config, nullptr, {node_sys.spawn(instant_worker)}, sink, sink);
    for (int i = 0; i < 100 && captured.count("cannot reach the core at 127.0.0.1") == 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    CHECK_MESSAGE(captured.count(hint) > 0, captured.text());
    for (auto& a : {uplink, sink, door}) caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a node whose core follows joins the leader that core names") {
    // A node given one address (a follower's, after a failover) retried that follower for
    // ever, though each refusal said where the leader was.
    test::configured_system s;
    caf::actor test = caf::actor_cast<caf::actor>(s.self);
    auto leader = s.sys.spawn(
        scripted_core, std::vector<session_script>{[](node_session_actor::pointer, caf::actor) {}},
        1024);
    auto leader_port = s.sys.middleman().publish(leader, 0, "127.0.0.1");
    REQUIRE(static_cast<bool>(leader_port));
    const std::string refusal =
        "core c2 follows and answers only status, jobs and nodes; the "
        "leader, c1, is at 127.0.0.1:" +
        std::to_string(*leader_port);
    auto follower = s.sys.spawn([refusal](caf::event_based_actor*) -> caf::behavior {
      return {[refusal](hello_atom, node_hello&) -> caf::result<node_welcome> {
        return to_caf(error(errc::not_leader, refusal));
      }};
    });
    auto follower_port = s.sys.middleman().publish(follower, 0, "127.0.0.1");
    REQUIRE(static_cast<bool>(follower_port));
    auto config = probe_config();
    config.host = "127.0.0.1";
    config.port = *follower_port;
    config.on_activity = [test](const node_activity& n) {
      if (n.what == node_activity::kind::joined) caf::anon_send(test, std::string("joined"));
    };
    auto sink = s.sys.spawn(quiet_sink);
    auto uplink = spawn_uplink(s.sys, config, nullptr, {s.sys.spawn(instant_worker)}, sink, sink);
    bool joined = false;
    s.self->receive([&](std::string&) { joined = true; },
                    caf::after(std::chrono::seconds(10)) >> [] {});
    CHECK_MESSAGE(joined, "the node did not join the leader the follower named");
    for (auto& a : {uplink, leader, follower, sink})
      s.self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("text from the core reaches the node's terminal without its escape sequences") {
    // The node id of the welcome and an assignment's job id went to the status line and the
    // log as the core sent them: a hostile core could set the window's title, clear the
    // screen or draw a fake prompt. So did the welcome's node id in the log's "joined" line,
    // and the reason the core gave for ending the session, or for its front door stopping
    // (megabytes of it).
    test::configured_system s;
    test::captured_log captured;
    caf::actor test = caf::actor_cast<caf::actor>(s.self);
    const std::string hostile = "n\x1b]0;owned\x07\x1b[2J";
    const caf::error hostile_reason =
        to_caf(error(errc::permission_denied, hostile + std::string(1 << 20, 'x')));
    auto hellos = std::make_shared<int>(0);
    auto core = s.sys.spawn([=](caf::event_based_actor* self) -> caf::behavior {
      return {
          [=](hello_atom, node_hello& h) -> node_welcome {
            node_welcome w;
            w.protocol = h.protocol;
            w.node_id = hostile;
            w.heartbeat_ms = 50;
            const bool first = ++*hellos == 1;
            w.session = self->spawn(
                scripted_session, h.uplink,
                [=](node_session_actor::pointer session, caf::actor up) {
                  if (!first) return;
                  assignment a;
                  a.id = 7;
                  a.job_id = hostile;
                  session->request(up, std::chrono::seconds(10), assign_atom::value, uint32_t{0}, a)
                      .then([](assignment_result&) {}, [](caf::error&) {});
                  session->quit(hostile_reason);  // the core ends the session, saying why
                });
            w.payload_chunk_bytes = 1024;
            return w;
          },
      };
    });
    auto config = probe_config();
    config.on_activity = [test](const node_activity& n) {
      if (n.what == node_activity::kind::joined) caf::anon_send(test, n.node_id, n.node_id);
      if (n.what == node_activity::kind::lost) caf::anon_send(test, true);
    };
    auto worker = s.sys.spawn([test](caf::event_based_actor*) -> caf::behavior {
      return {[test](assign_atom, assignment& a) {
                caf::anon_send(test, a.job_id);
                assignment_result r;
                r.assignment_id = a.id;
                return r;
              },
              [](abort_atom, uint64_t) {}};
    });
    auto sink = s.sys.spawn(quiet_sink);
    auto uplink = spawn_uplink(s.sys, config, core, {worker}, sink, sink);
    std::string node_id, job_id;
    int joins = 0, losses = 0;
    auto hear = [&] {
      s.self->receive(
          [&](std::string& id, std::string&) {
            node_id = id;
            ++joins;
          },
          [&](std::string& id) { job_id = id; }, [&](bool) { ++losses; },
          caf::after(std::chrono::seconds(10)) >> [] {});
    };
    // Joined, the job's id at the worker, the session ended, joined again.
    for (int i = 0; i < 10 && (joins < 2 || job_id.empty() || losses < 1); ++i) hear();
    CHECK(joins >= 2);
    // The core's front door stops, saying why.
    s.self->send_exit(core, hostile_reason);
    for (int i = 0; i < 10 && losses < 2; ++i) hear();
    CHECK(losses >= 2);
    for (auto& x : {uplink, sink, worker}) s.self->send_exit(x, caf::exit_reason::user_shutdown);
    CHECK(!node_id.empty());
    CHECK(!job_id.empty());
    CHECK_MESSAGE(node_id.find('\x1b') == std::string::npos, node_id);
    CHECK_MESSAGE(job_id.find('\x1b') == std::string::npos, job_id);
    const std::string log = captured.text();
    CHECK_MESSAGE(log.find("joined the core as n") != std::string::npos, log);
    CHECK_MESSAGE(log.find("the core ended this node's session") != std::string::npos, log);
    CHECK_MESSAGE(log.find("lost the core") != std::string::npos, log);
    CHECK_MESSAGE(log.find('\x1b') == std::string::npos, log.substr(0, 2000));
    CHECK_MESSAGE(log.size() < 20000, log.substr(0, 2000));
  }

  TEST_CASE("a core of several that is busy sending parameters is not taken for lost") {
    // Chunks of parameters arriving all along, its `earned` queued behind them, the node took
    // the leader as gone after core_silence, left it and dropped the assignment it was
    // fetching for.
    CHECK_MESSAGE(!lost_while_sending(40, std::chrono::milliseconds(800), std::chrono::seconds(7)),
                  "the node left a core that sent it parameters all along");
  }

  TEST_CASE("a core of several whose one chunk takes longer than core_silence is not lost") {
    // A shard of 8 MiB takes 22 s at 3 Mbit/s: `earned` queued behind it, and no chunk
    // arriving meanwhile, the node took the leader as gone, left it with its download and its
    // work, and did the same again next round. Here the first chunk comes, the rest are held.
    CHECK_MESSAGE(
        !lost_while_sending(8, std::chrono::milliseconds(3600 * 1000), std::chrono::seconds(9)),
        "the node left a core with a chunk on its way");
  }
}
