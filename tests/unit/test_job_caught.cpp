/// @file
/// A node caught in another job while this job's last round is applied but not yet
/// confirmed. When none of that round's results could still be re-computed, the job kept
/// nothing to roll back to (copying a large model's parameters every round would double the
/// core's memory), and discarding the caught node's result then rolled back anyway: a
/// GFLEX_CHECK aborted the whole core, with every job and session in it. Now the round stays
/// applied, and the caught node's result in it is neither paid nor credited.
/// And the figures a node reports of its result: its loss (the round's is their median) and
/// its compute time (credited as the core saw it, not as claimed).

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <functional>
#include <optional>
#include <set>

#include "gflex/runtime/identity.hpp"
#include "gflex/runtime/job_spec.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "job_fixture.hpp"
#include "market.hpp"

using namespace gflex;
using namespace gflex::test;

namespace {

// What a worker's results say of themselves.
struct claims {
  double compute_s = 0.01;
  double loss = 1.0;
  /// The updates it sends in turn: 1, the same each time; 2, two stored ones alternately
  /// (from the second when `offset` is 1).
  int updates = 1;
  int offset = 0;
  /// Its training diverges: every assignment is answered errc::non_finite.
  bool diverges = false;
  /// The value of its update everywhere (update 0).
  float value = 0.001f;
  /// Update 0 is `value` times -1, 0 and 1 in turn instead: unlike a value added everywhere,
  /// it changes what a softmax model predicts (its test loss moves every round).
  bool varied = false;
};

// Its `nth` result (from 0).
assignment_result signed_result(const node_identity& key, uint64_t id, size_t parameters,
                                claims said, int64_t nth) {
  assignment_result r;
  r.assignment_id = id;
  // Update 0 is 0.001 everywhere, update 1 alternates its sign: far apart (cosine 1/15).
  std::vector<float> delta(parameters, said.value);
  if (said.varied)
    for (size_t i = 0; i < parameters; ++i)
      delta[i] = said.value * static_cast<float>(static_cast<int>(i % 3) - 1);
  if ((nth + said.offset) % said.updates == 1)
    for (size_t i = 1; i < parameters; i += 2) delta[i] = -said.value;
  r.update = encode_update(delta, compression::fp32);
  r.loss = said.loss;
  r.samples = 12;
  r.compute_s = said.compute_s;
  r.signature = key.sign(result_message(id, r.update));
  return r;
}

struct held_results {
  std::map<uint64_t, caf::typed_response_promise<assignment_result>> held;
  int64_t answered = 0;
};

// A worker of node `key` that answers every assignment with a small signed update, `delay`
// after it came, saying `said` of it.
caf::behavior signing_worker(caf::stateful_actor<held_results>* self,
                             std::shared_ptr<node_identity> key, size_t parameters,
                             std::chrono::milliseconds delay, claims said) {
  return {
      [=](assign_atom, assignment& a) -> caf::result<assignment_result> {
        auto rp = self->make_response_promise<assignment_result>();
        self->state.held[a.id] = rp;
        self->delayed_send(self, delay, caf::put_atom::value, a.id);
        return rp;
      },
      [=](caf::put_atom, uint64_t id) {
        auto it = self->state.held.find(id);
        if (it == self->state.held.end()) return;
        if (said.diverges)
          it->second.deliver(
              to_caf(error(errc::non_finite, "training diverged: the loss is not finite")));
        else
          it->second.deliver(signed_result(*key, id, parameters, said, self->state.answered));
        self->state.held.erase(it);
        ++self->state.answered;
      },
      [=](caf::get_atom) { return self->state.answered; },
      [](abort_atom, uint64_t) {},
  };
}

struct holding_market_state {
  std::vector<worker_slot> all, offered;
  bool reoffer = false;
  std::vector<caf::typed_response_promise<acquire_reply>> held;
};

// A market that offers its slots at the first acquire, then holds every later one unanswered
// until (caf::put_atom) answers them with no worker: the job meanwhile waits for workers, and
// the round it applied last waits to be confirmed. With `reoffer`, a slot released is offered
// again at the next acquire.
caf::behavior holding_market(caf::stateful_actor<holding_market_state>* self,
                             std::vector<worker_slot> slots, bool reoffer) {
  self->state.all = slots;
  self->state.offered = std::move(slots);
  self->state.reoffer = reoffer;
  return {
      [=](acquire_atom, const std::string&, const std::string&, int64_t, uint8_t, int64_t, double,
          const std::vector<std::string>&) -> caf::result<acquire_reply> {
        if (!self->state.offered.empty()) {
          acquire_reply r;
          r.slots = std::move(self->state.offered);
          self->state.offered.clear();
          return r;
        }
        auto rp = self->make_response_promise<acquire_reply>();
        self->state.held.push_back(rp);
        return rp;
      },
      [=](caf::get_atom) { return static_cast<int64_t>(self->state.held.size()); },
      [=](caf::put_atom) {
        for (auto& rp : self->state.held) rp.deliver(acquire_reply{});
        self->state.held.clear();
      },
      [=](release_atom, const caf::actor& w) {
        if (!self->state.reoffer) return;
        for (const auto& s : self->state.all)
          if (s.worker == w) self->state.offered.push_back(s);
      },
      [=](release_atom, const caf::actor& w, bool) {  // released after a failure
        if (!self->state.reoffer) return;
        for (const auto& s : self->state.all)
          if (s.worker == w) self->state.offered.push_back(s);
      },
      [=](release_atom, const caf::actor& w, bool, bool) {  // and whose fault it was
        if (!self->state.reoffer) return;
        for (const auto& s : self->state.all)
          if (s.worker == w) self->state.offered.push_back(s);
      },
  };
}

struct credits_state {
  std::vector<std::string> credited;
  std::vector<double> compute_s;
  int64_t samples_asked = 0;
};

// A reputation tracker that samples nothing for re-computation and notes whom it credits,
// and with how many compute seconds.
caf::behavior noting_reputation(caf::stateful_actor<credits_state>* self) {
  return {
      [=](sample_atom, const std::string&) {
        ++self->state.samples_asked;
        return false;
      },
      [=](caf::get_atom, int) { return self->state.samples_asked; },
      [=](credit_atom, const std::string& name, uint8_t, double compute_s, int64_t) {
        self->state.credited.push_back(name);
        self->state.compute_s.push_back(compute_s);
      },
      [](reject_atom, const std::string&, std::string&) { return std::vector<std::string>{}; },
      [=](caf::get_atom) -> caf::result<std::vector<std::string>, std::vector<double>> {
        return {self->state.credited, self->state.compute_s};
      },
  };
}

// A reputation tracker that samples every result for re-computation.
caf::behavior sampling_reputation(caf::event_based_actor*) {
  return {
      [](sample_atom, const std::string&) { return true; },
      [](credit_atom, const std::string&, uint8_t, double, int64_t) {},
      [](reject_atom, const std::string&, std::string&) { return std::vector<std::string>{}; },
  };
}

// A reputation tracker that samples `cheat`'s results only, notes whom it credits, and says
// `alias` shares `cheat`'s key when `cheat` is rejected.
caf::behavior key_sharing_reputation(caf::stateful_actor<credits_state>* self, std::string cheat,
                                     std::string alias) {
  return {
      [=](sample_atom, const std::string& name) { return name == cheat; },
      [=](credit_atom, const std::string& name, uint8_t, double, int64_t) {
        self->state.credited.push_back(name);
      },
      [=](reject_atom, const std::string& name, std::string&) {
        return name == cheat ? std::vector<std::string>{alias} : std::vector<std::string>{};
      },
      [=](caf::get_atom) -> caf::result<std::vector<std::string>, std::vector<double>> {
        return {self->state.credited, self->state.compute_s};
      },
  };
}

// key_sharing_reputation as a tracker that restarted just as the first rejection reached it:
// that one fails.
caf::behavior forgetful_reputation(caf::stateful_actor<credits_state>* self, std::string cheat,
                                   std::string alias) {
  auto told = std::make_shared<int>(0);
  return {
      [=](sample_atom, const std::string& name) { return name == cheat; },
      [=](credit_atom, const std::string& name, uint8_t, double, int64_t) {
        self->state.credited.push_back(name);
      },
      [=](reject_atom, const std::string& name,
          std::string&) -> caf::result<std::vector<std::string>> {
        if (++*told == 1) return to_caf(error(errc::unavailable, "the tracker is restarting"));
        return name == cheat ? std::vector<std::string>{alias} : std::vector<std::string>{};
      },
      [=](caf::get_atom) -> caf::result<std::vector<std::string>, std::vector<double>> {
        return {self->state.credited, self->state.compute_s};
      },
  };
}

// A verifier whose every re-computation fails, as when the core tier cannot run the work.
caf::behavior failing_verifier(caf::event_based_actor*) {
  return {
      [](verify_atom, verify_request&) -> caf::result<double, double, double> {
        return to_caf(error(errc::io_error, "re-computation failed: out of host memory"));
      },
  };
}

// A verifier that answers every check errc::unavailable at once, as one that held it for
// --verify-wait-s with no core-tier worker free does.
caf::behavior unavailable_verifier(caf::event_based_actor*) {
  return {
      [](verify_atom, verify_request&) -> caf::result<double, double, double> {
        return to_caf(error(errc::unavailable, "no core-tier worker was free to re-compute it"));
      },
  };
}

// A verifier that holds all it may: it refuses its first `refusals` checks at once
// (errc::limit_exceeded), then answers as unavailable_verifier does. Counts them in `asked`.
caf::behavior full_verifier(caf::event_based_actor*, int refusals,
                            std::shared_ptr<std::atomic<int>> asked) {
  return {
      [=](verify_atom, verify_request&) -> caf::result<double, double, double> {
        if (++*asked <= refusals)
          return to_caf(error(errc::limit_exceeded,
                              "4096 re-computations are waiting for a core-tier worker"));
        return to_caf(error(errc::unavailable, "no core-tier worker was free to re-compute it"));
      },
  };
}

// A reputation tracker that samples every result for re-computation but the first of
// `unsampled`, and notes whom it credits.
caf::behavior sampling_all_but_first(caf::stateful_actor<credits_state>* self,
                                     std::string unsampled) {
  auto first = std::make_shared<bool>(true);
  return {
      [=](sample_atom, const std::string& name) {
        if (name != unsampled || !*first) return true;
        *first = false;
        return false;
      },
      [=](credit_atom, const std::string& name, uint8_t, double, int64_t) {
        self->state.credited.push_back(name);
      },
      [](reject_atom, const std::string&, std::string&) { return std::vector<std::string>{}; },
      [=](caf::get_atom) -> caf::result<std::vector<std::string>, std::vector<double>> {
        return {self->state.credited, self->state.compute_s};
      },
  };
}

// A verifier that holds every check it is given, never answering: one that stops with them.
// (caf::get_atom) -> the checks it holds.
caf::behavior holding_verifier(caf::event_based_actor* self) {
  auto held = std::make_shared<std::vector<caf::typed_response_promise<double, double, double>>>();
  return {
      [=](verify_atom, verify_request&) {
        held->push_back(self->make_response_promise<double, double, double>());
        return held->back();
      },
      [=](caf::get_atom) { return static_cast<int64_t>(held->size()); },
  };
}

// A verifier that confirms every check at once.
caf::behavior confirming_verifier(caf::event_based_actor*) {
  return {
      [](verify_atom, verify_request&) -> caf::result<double, double, double> {
        return {0.0, 1.0, 0.01};
      },
  };
}

// A verifier that confirms every check at once and counts them in `checked`.
caf::behavior counting_verifier(caf::event_based_actor*,
                                std::shared_ptr<std::atomic<int>> checked) {
  return {
      [checked](verify_atom, verify_request&) -> caf::result<double, double, double> {
        ++*checked;
        return {0.0, 1.0, 0.01};
      },
  };
}

// A verifier whose every re-computation diverges, as the core tier's does on work that
// diverges.
caf::behavior diverging_verifier(caf::event_based_actor*) {
  return {
      [](verify_atom, verify_request&) -> caf::result<double, double, double> {
        return to_caf(error(errc::non_finite,
                            "the core tier's re-computation diverged too: "
                            "training diverged: the loss is not finite"));
      },
  };
}

struct refuting_state {
  int asked = 0;
  std::map<int, caf::typed_response_promise<double, double, double>> held;
};

// A verifier that refutes its `nth` re-computation (from 1) at once, and confirms every other
// after `delay`.
caf::behavior refuting_nth(caf::stateful_actor<refuting_state>* self, int nth,
                           std::chrono::milliseconds delay) {
  return {
      [=](verify_atom, verify_request&) -> caf::result<double, double, double> {
        const int n = ++self->state.asked;
        if (n == nth) return {1.0, 1.0, 0.01};
        auto rp = self->make_response_promise<double, double, double>();
        self->state.held.emplace(n, rp);
        self->delayed_send(self, delay, caf::put_atom::value, n);
        return rp;
      },
      [=](caf::put_atom, int n) {
        auto it = self->state.held.find(n);
        if (it == self->state.held.end()) return;
        it->second.deliver(0.0, 1.0, 0.01);
        self->state.held.erase(it);
      },
  };
}

// unavailable_verifier's answer `delay` later: a round whose results all come at once is
// applied before any of its checks is answered, as when the core tier is busy for a while.
caf::behavior late_unavailable_verifier(caf::stateful_actor<refuting_state>* self,
                                        std::chrono::milliseconds delay) {
  return {
      [=](verify_atom, verify_request&) -> caf::result<double, double, double> {
        const int n = ++self->state.asked;
        auto rp = self->make_response_promise<double, double, double>();
        self->state.held.emplace(n, rp);
        self->delayed_send(self, delay, caf::put_atom::value, n);
        return rp;
      },
      [=](caf::put_atom, int n) {
        auto it = self->state.held.find(n);
        if (it == self->state.held.end()) return;
        it->second.deliver(
            to_caf(error(errc::unavailable, "no core-tier worker was free to re-compute it")));
        self->state.held.erase(it);
      },
  };
}

struct slow_store_state {
  caf::actor inner, watcher;
  std::deque<std::pair<store_batch, caf::typed_response_promise<caf::ok_atom>>> commits;
};

// A store whose commits each take `delay` (a busy disk), telling `watcher` of each as it
// comes (commit_atom); reads go to `inner` at once, and commits after the delay, in order.
caf::behavior slow_store(caf::stateful_actor<slow_store_state>* self, caf::actor inner,
                         caf::actor watcher, std::chrono::milliseconds delay) {
  self->state.inner = std::move(inner);
  self->state.watcher = std::move(watcher);
  return {
      [=](commit_atom, store_batch& b) -> caf::result<caf::ok_atom> {
        caf::anon_send(self->state.watcher, commit_atom::value);
        auto rp = self->make_response_promise<caf::ok_atom>();
        self->state.commits.emplace_back(std::move(b), rp);
        self->delayed_send(self, delay, caf::put_atom::value);
        return rp;
      },
      [=](caf::put_atom) {
        auto batch = std::move(self->state.commits.front().first);
        auto rp = std::move(self->state.commits.front().second);
        self->state.commits.pop_front();
        self->request(self->state.inner, std::chrono::seconds(10), commit_atom::value,
                      std::move(batch))
            .then([rp](caf::ok_atom) mutable { rp.deliver(caf::ok_atom::value); },
                  [rp](caf::error& e) mutable { rp.deliver(std::move(e)); });
      },
      [=](read_atom, const std::string& key) -> caf::result<bool, std::vector<uint8_t>> {
        auto rp = self->make_response_promise<bool, std::vector<uint8_t>>();
        self->request(self->state.inner, std::chrono::seconds(10), read_atom::value, key)
            .then([rp](bool found, std::vector<uint8_t>& v) mutable { rp.deliver(found, v); },
                  [rp](caf::error& e) mutable { rp.deliver(std::move(e)); });
        return rp;
      },
  };
}

// A ledger keeper over `store` with the accounts of a metered job-1 on node "core-node"
// open, and 100 credits in user/alice.
caf::actor funded_keeper(caf::actor_system& sys, const caf::actor& store) {
  auto keeper = spawn_ledger_keeper(sys, store);
  caf::scoped_actor self{sys};
  // Not FAIL: thrown from here, the actors would be left running and the test hang.
  auto refused = [&](caf::error& e) { CHECK_MESSAGE(false, sys.render(e)); };
  for (const char* account : {"user/alice", "escrow/job-1", "node/core-node"})
    self->request(keeper, std::chrono::seconds(10), open_atom::value, std::string(account), false)
        .receive([](caf::ok_atom) {}, refused);
  self->request(keeper, std::chrono::seconds(10), transfer_atom::value, std::string("credit"),
                std::string("test"),
                std::vector<posting>{{"external", -100'000'000}, {"user/alice", 100'000'000}})
      .receive([](uint64_t) {}, refused);
  return keeper;
}

// A node of the job's round: its name, tier, how long it takes and what it says.
struct test_node {
  std::string name;
  node_tier tier = node_tier::core;
  std::chrono::milliseconds delay{0};
  claims said;
  int same_key_as = -1;  ///< The index of an earlier node whose key it joins with.
  int64_t price = 0;     ///< Micro-credits per device-hour it asks.
};

// Alice's job-1 (k_spec with `rounds` and `workers`, on a data set of `workers` training
// shards), resumed at round 2 and spawned directly, its supervisor played by the test: a
// holding_market offers one worker slot per node of `nodes`, a noting_reputation samples none.
struct resumed_job {
  configured_system f;
  std::vector<worker_slot> slots;
  job_links links;
  caf::actor job;

  /// `adjust`: changes the job's links before it is spawned (a verifier, another tracker).
  /// `more_spec`: tables added to the job's spec.
  resumed_job(int rounds, const std::vector<test_node>& nodes, bool reoffer = false,
              const std::function<void(caf::actor_system&, job_links&)>& adjust = {},
              const std::string& more_spec = "") {
    std::string spec_text = k_spec;
    spec_text.replace(
        spec_text.find("rounds = 3\nworkers = 1"), 22,
        "rounds = " + std::to_string(rounds) + "\nworkers = " + std::to_string(nodes.size()));
    spec_text += more_spec;
    const resumable_job resumed(spec_text, static_cast<uint32_t>(nodes.size()));
    const size_t parameters = 4 * 3 + 3;
    std::vector<std::shared_ptr<node_identity>> keys;
    for (size_t i = 0; i < nodes.size(); ++i) {
      auto key = nodes[i].same_key_as >= 0
                     ? keys.at(static_cast<size_t>(nodes[i].same_key_as))
                     : std::make_shared<node_identity>(node_identity::generate());
      keys.push_back(key);
      worker_slot slot;
      slot.worker = f.sys.spawn(signing_worker, key, parameters, nodes[i].delay, nodes[i].said);
      slot.node_id = "n" + std::to_string(i);
      slot.node_name = nodes[i].name;
      slot.tier = static_cast<uint8_t>(nodes[i].tier);
      slot.public_key = key->public_key();
      slot.price = nodes[i].price;
      slots.push_back(slot);
    }
    links.store = f.sys.spawn(failing_store, resumed.stored);
    links.market = f.sys.spawn(holding_market, slots, reoffer);
    links.reputation = f.sys.spawn(noting_reputation);
    links.supervisor = caf::actor_cast<caf::actor>(f.self);  // the test stands for it
    links.catalog = resumed.catalog;
    if (adjust) adjust(f.sys, links);
    job = resumed.spawn(f, links);
    f.self->monitor(job);
  }
  ~resumed_job() {
    for (const auto& a :
         {job, links.market, links.reputation, links.store, links.verifier, links.ledger})
      if (a) f.self->send_exit(a, caf::exit_reason::user_shutdown);
    for (const auto& s : slots) f.self->send_exit(s.worker, caf::exit_reason::user_shutdown);
  }

  // The job's status once it has ended; nullopt if it took over `seconds`.
  std::optional<job_status> ended(int seconds = 10) {
    std::optional<job_status> out;
    for (int tries = 0; tries < seconds * 20 && !out; ++tries)
      f.self->receive(
          [&](progress_atom, job_status& s) {
            if (is_terminal(s.state)) out = std::move(s);
          },
          [](const caf::down_msg&) {}, caf::after(std::chrono::milliseconds(50)) >> [] {});
    return out;
  }

  // The job's status once it is in state `want`; nullopt if not within 5 s.
  std::optional<job_status> state_seen(job_state want) {
    std::optional<job_status> out;
    for (int tries = 0; tries < 100 && !out; ++tries)
      f.self->receive(
          [&](progress_atom, job_status& s) {
            if (s.state == want) out = std::move(s);
          },
          [](const caf::down_msg&) {}, caf::after(std::chrono::milliseconds(50)) >> [] {});
    return out;
  }

  // How many settlements its ledger (a slow_ledger: slow_settlements) holds back now.
  int64_t settlements_waiting() {
    int64_t n = -1;
    f.self->request(links.ledger, std::chrono::seconds(10), caf::get_atom::value)
        .receive([&](int64_t held) { n = held; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    return n;
  }

  // The job's record as its store holds it; nullopt if it cannot be read or decoded.
  std::optional<job_status> stored_record() {
    std::vector<uint8_t> stored;
    f.self
        ->request(links.store, std::chrono::seconds(10), read_atom::value, job_record_key("job-1"))
        .receive([&](bool, std::vector<uint8_t>& v) { stored = std::move(v); },
                 [&](caf::error& e) { FAIL(f.sys.render(e)); });
    auto record = decode_job_record(stored);
    if (!record) return std::nullopt;
    return record->second;
  }

  // The names the job's reputation tracker (one that notes credits) credited, in order.
  std::vector<std::string> credited() {
    std::vector<std::string> out;
    f.self->request(links.reputation, std::chrono::seconds(10), caf::get_atom::value)
        .receive([&](std::vector<std::string>& c, std::vector<double>&) { out = std::move(c); },
                 [&](caf::error& e) { FAIL(f.sys.render(e)); });
    return out;
  }

  // The job's status once it has committed `round`; nullopt if it went down or took over
  // `seconds`.
  std::optional<job_status> committed(int64_t round, int seconds = 10) {
    std::optional<job_status> out;
    bool down = false;
    for (int tries = 0; tries < seconds * 20 && !down && !out; ++tries)
      f.self->receive([&](const caf::down_msg&) { down = true; },
                      [&](progress_atom, job_status& s) {
                        if (s.round >= round) out = std::move(s);
                      },
                      caf::after(std::chrono::milliseconds(50)) >> [] {});
    return out;
  }
};

// A market in front of `inner` that has no worker to offer until `ready`: a round meanwhile
// waits for workers, its time running. Linked to `inner`, which ends with it.
caf::behavior late_market(caf::event_based_actor* self, caf::actor inner,
                          std::chrono::steady_clock::time_point ready) {
  self->link_to(inner);
  return {
      [=](acquire_atom a, const std::string& job, const std::string& workload, int64_t wanted,
          uint8_t tier, int64_t max_price, double min_reputation,
          const std::vector<std::string>& avoided) -> caf::result<acquire_reply> {
        if (std::chrono::steady_clock::now() < ready) return acquire_reply{};
        auto rp = self->make_response_promise<acquire_reply>();
        self->request(inner, std::chrono::seconds(10), a, job, workload, wanted, tier, max_price,
                      min_reputation, avoided)
            .then([=](acquire_reply& r) mutable { rp.deliver(std::move(r)); });
        return rp;
      },
      [=](release_atom a, const caf::actor& w) { self->send(inner, a, w); },
      // All but these, after an acquire that went unanswered: the inner market (not re-offering)
      // takes no note of releases.
      [](release_atom, const std::vector<caf::actor>&) {},
      [=](release_atom a, const caf::actor& w, bool failed) { self->send(inner, a, w, failed); },
      [=](release_atom a, const caf::actor& w, bool failed, bool node_at_fault) {
        self->send(inner, a, w, failed, node_at_fault);
      },
  };
}

// A market in front of `inner` (linked, it ends with it) that notes each release after a
// failure: (caf::get_atom, release_atom) -> "<node>: the node's fault" or "<node>: not the
// node's fault", in order.
caf::behavior fault_noting_market(caf::event_based_actor* self, caf::actor inner) {
  self->link_to(inner);
  auto names = std::make_shared<std::map<caf::actor_addr, std::string>>();
  auto failed = std::make_shared<std::vector<std::string>>();
  return {
      [=](acquire_atom a, const std::string& job, const std::string& workload, int64_t wanted,
          uint8_t tier, int64_t max_price, double min_reputation,
          const std::vector<std::string>& avoided) -> caf::result<acquire_reply> {
        auto rp = self->make_response_promise<acquire_reply>();
        self->request(inner, std::chrono::seconds(10), a, job, workload, wanted, tier, max_price,
                      min_reputation, avoided)
            .then(
                [=](acquire_reply& r) mutable {
                  for (const auto& s : r.slots) (*names)[s.worker.address()] = s.node_name;
                  rp.deliver(std::move(r));
                },
                [=](caf::error& e) mutable { rp.deliver(e); });
        return rp;
      },
      [=](release_atom a, const caf::actor& w) { self->send(inner, a, w); },
      [=](release_atom a, const caf::actor& w, bool failed_there) {
        self->send(inner, a, w, failed_there);
      },
      [=](release_atom a, const caf::actor& w, bool failed_there, bool node_at_fault) {
        if (failed_there)
          failed->push_back((*names)[w.address()] +
                            (node_at_fault ? ": the node's fault" : ": not the node's fault"));
        self->send(inner, a, w, failed_there, node_at_fault);
      },
      [=](caf::get_atom, release_atom) { return *failed; },
  };
}

// The core's market (in `inner`), behind a late_market that offers nothing for 300 ms: the
// job's acquires then see every slot that offer_to gives it meanwhile, not the first alone.
void late_core_market(caf::actor_system& sys, job_links& links, caf::actor& inner) {
  inner = spawn_market(sys, 0.0, std::chrono::milliseconds(0));
  links.market = sys.spawn(late_market, inner,
                           std::chrono::steady_clock::now() + std::chrono::milliseconds(300));
}

// Offers each of `slots` to `market` from its node, as the nodes' sessions do, each worker
// as fast as the others.
void offer_to(caf::scoped_actor& self, const caf::actor& market, std::vector<worker_slot> slots) {
  for (auto& slot : slots) {
    slot.throughput = 1.0;
    self->send(market, offer_atom::value, slot.node_id, std::vector<worker_slot>{slot});
  }
}

// A resumed_job's links: a funded keeper behind a slow_ledger that holds each settlement until
// the test passes them on.
void slow_settlements(caf::actor_system& sys, job_links& links) {
  links.ledger = sys.spawn(slow_ledger, funded_keeper(sys, links.store), false);
}

// A core-tier node that takes 0.3 s a round and claims 0.5 s, at 1 credit an hour: paid from
// one_round_budget, it is paid for one round.
test_node one_round_node() {
  claims slow;
  slow.compute_s = 0.5;
  return {"core-node", node_tier::core, std::chrono::milliseconds(300), slow, -1, 1'000'000};
}
const std::string one_round_budget =
    "[market]\naccount = \"user/alice\"\nbudget = 0.033334\nmax_price = 1.0\n";

// Alice pays, up to 50 credits, nodes asking at most 1 credit an hour.
const std::string metered_50 =
    "[market]\naccount = \"user/alice\"\nbudget = 50.0\nmax_price = 1.0\n";

// A job of `rounds` rounds on honest-a, honest-b and "scaled", whose results are 1.5 times
// theirs (it stands out; no outlier), with no core-tier worker to re-compute it
// (--unverified accept).
// Its checks are answered unavailable at once, or `late` (late_unavailable_verifier).
resumed_job standing_out_unverified(int rounds,
                                    std::chrono::milliseconds late = std::chrono::milliseconds(0)) {
  claims scaled;
  scaled.value = 0.0015f;
  return resumed_job(rounds,
                     {{"honest-a", node_tier::community, std::chrono::milliseconds(0), {}},
                      {"honest-b", node_tier::community, std::chrono::milliseconds(0), {}},
                      {"scaled", node_tier::community, std::chrono::milliseconds(0), scaled}},
                     true, [late](caf::actor_system& sys, job_links& links) {
                       links.verifier = late.count() == 0
                                            ? sys.spawn(unavailable_verifier)
                                            : sys.spawn(late_unavailable_verifier, late);
                       links.accept_unverified = true;
                     });
}

// A verifier that holds every check until (caf::put_atom) refutes the first it holds.
caf::behavior refuting_when_told(caf::stateful_actor<refuting_state>* self) {
  return {
      [=](verify_atom, verify_request&) -> caf::result<double, double, double> {
        const int n = ++self->state.asked;
        auto rp = self->make_response_promise<double, double, double>();
        self->state.held.emplace(n, rp);
        return rp;
      },
      [=](caf::put_atom) {
        auto it = self->state.held.begin();
        if (it == self->state.held.end()) return;
        it->second.deliver(1.0, 1.0, 0.01);
        self->state.held.erase(it);
      },
  };
}

// A ledger in front of `keeper` that refuses the `nth` escrow hold (from 1) as an account
// short of credits is refused, and passes everything else on. Linked to `keeper`.
caf::behavior refusing_nth_hold(caf::event_based_actor* self, caf::actor keeper, int nth) {
  self->link_to(keeper);
  auto holds = std::make_shared<int>(0);
  return {
      [=](open_atom a, std::string& account, bool exists_ok) {
        return self->delegate(keeper, a, std::move(account), exists_ok);
      },
      [=](account_atom a, std::string& account) {
        return self->delegate(keeper, a, std::move(account));
      },
      [=](booked_atom a, std::string& op) { return self->delegate(keeper, a, std::move(op)); },
      [=](settle_atom a, std::string& kind, std::string& memo, std::vector<posting>& postings,
          store_batch& batch, std::string& op) {
        return self->delegate(keeper, a, std::move(kind), std::move(memo), std::move(postings),
                              std::move(batch), std::move(op));
      },
      [=](transfer_atom a, std::string& kind, std::string& memo, std::vector<posting>& postings,
          std::string& op) -> caf::result<uint64_t> {
        if (kind == "hold" && ++*holds == nth)
          return to_caf(error(errc::invalid_argument, "user/alice would go below zero"));
        auto rp = self->make_response_promise<uint64_t>();
        self->request(keeper, std::chrono::seconds(30), a, kind, memo, postings, op)
            .then([=](uint64_t seq) mutable { rp.deliver(seq); },
                  [=](caf::error& e) mutable { rp.deliver(e); });
        return rp;
      },
  };
}

}  // namespace

TEST_SUITE("job caught nodes") {
  TEST_CASE("a node caught elsewhere while a round is applied past rollback: the core stays up") {
    // A hybrid round: a volunteer's result, cleared at once (not sampled), then a core-tier
    // node's, trusted. The round is applied at the second: nothing in it can still be
    // re-computed, so nothing to roll back to is kept. The core-tier node claims an absurd
    // compute time: it is credited the time the core saw its assignment take, as it is paid.
    resumed_job r(6, {{"volunteer", node_tier::community, std::chrono::milliseconds(0), {}},
                      {"core-node", node_tier::core, std::chrono::milliseconds(500), {1e300}}});
    auto& f = r.f;
    auto& links = r.links;
    auto& slots = r.slots;
    auto& job = r.job;

    // Round 3 is applied once the core-tier node answers; the job then waits for workers (a
    // backup of that node's slow shard, then round 4's), the round unconfirmed.
    bool asked_again = false;
    for (int tries = 0; tries < 100 && !asked_again; ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      int64_t held = 0, answered = 0;
      f.self->request(links.market, std::chrono::seconds(10), caf::get_atom::value)
          .receive([&](int64_t n) { held = n; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
      f.self->request(slots[1].worker, std::chrono::seconds(10), caf::get_atom::value)
          .receive([&](int64_t n) { answered = n; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
      asked_again = held > 0 && answered > 0;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the result reaches the job
    REQUIRE(asked_again);
    // Another job caught the volunteer: its supervisor tells this one.
    f.self->send(job, bar_atom::value, std::string("volunteer"), std::string("a forged result"));
    f.self->send(links.market, caf::put_atom::value);

    // The job lives on, and confirms round 3 without crediting the caught node.
    CHECK(r.committed(3).has_value());
    std::vector<std::string> credited;
    std::vector<double> compute_s;
    f.self->request(links.reputation, std::chrono::seconds(10), caf::get_atom::value)
        .receive(
            [&](std::vector<std::string>& c, std::vector<double>& s) {
              credited = std::move(c);
              compute_s = std::move(s);
            },
            [&](caf::error& e) { FAIL(f.sys.render(e)); });
    CHECK(std::count(credited.begin(), credited.end(), "volunteer") == 0);
    REQUIRE(credited.size() == 1);
    CHECK(compute_s[0] < 10.0);
  }

  TEST_CASE("a node caught in the current round loses its result in the applied round too") {
    // Round 3 is applied with the volunteer's result (not sampled) and the other node's
    // (being re-computed, so the round can still be rolled back). The volunteer's round-4
    // result is refuted. Its name was passed by reference into that result, which the discard
    // erases first: the name then read freed memory, so its round-3 result was kept (no
    // rollback) and, once round 3 was confirmed, credited and paid.
    const std::string cheat = "volunteer-with-a-long-name";  // past the short-string buffer
    resumed_job r(6,
                  {{cheat, node_tier::community, std::chrono::milliseconds(0), {}},
                   {"other", node_tier::community, std::chrono::milliseconds(100), {}}},
                  true, [&](caf::actor_system& sys, job_links& links) {
                    links.reputation = sys.spawn(sampling_all_but_first, cheat);
                    links.verifier = sys.spawn(refuting_nth, 2, std::chrono::milliseconds(800));
                  });
    // The job goes on without the cheat (its slot is not offered again: caught here).
    auto s = r.committed(4, 20);
    REQUIRE(s.has_value());
    CHECK(s->rejected_results >= 1);
    const auto credited = r.credited();
    CHECK(std::count(credited.begin(), credited.end(), cheat) == 0);
    CHECK(std::count(credited.begin(), credited.end(), "other") >= 1);
  }

  TEST_CASE("a restarted verifier is asked again for the checks the one before held") {
    // The checks' promises went with the old verifier, never answered, and the job kept
    // their round unconfirmed for the 25 h it waits for a verifier.
    caf::actor* first = nullptr;  // the links' own, which the fixture ends
    resumed_job r(4, {{"volunteer", node_tier::community, std::chrono::milliseconds(0), {}}}, true,
                  [&](caf::actor_system& sys, job_links& links) {
                    links.reputation = sys.spawn(sampling_reputation);
                    links.verifier = sys.spawn(holding_verifier);
                    first = &links.verifier;
                  });
    auto& f = r.f;
    int64_t held = 0;
    for (int tries = 0; tries < 100 && held == 0; ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      f.self->request(*first, std::chrono::seconds(10), caf::get_atom::value)
          .receive([&](int64_t n) { held = n; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    }
    REQUIRE(held >= 1);  // round 3's result is being re-computed
    auto replacement = f.sys.spawn(confirming_verifier);
    f.self->send_exit(*first, caf::exit_reason::kill);
    f.self->send(r.job, update_atom::value, std::string("verifier"), replacement);
    auto s = r.committed(3, 10);
    CHECK_MESSAGE(s.has_value(), "round 3 was not committed within 10 s");
    f.self->send_exit(replacement, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a check the verifier died with waits for its replacement, even under accept") {
    // Bounced by a verifier that had died (request_receiver_down), the check read as "could
    // not run" and --unverified accept used the result unchecked, though the verifier's
    // restart is at hand (the job asks it again what is still being verified).
    resumed_job r(4, {{"volunteer", node_tier::community, std::chrono::milliseconds(0), {}}}, true,
                  [&](caf::actor_system& sys, job_links& links) {
                    links.reputation = sys.spawn(sampling_reputation);
                    links.verifier = sys.spawn(holding_verifier);
                    caf::anon_send_exit(links.verifier, caf::exit_reason::kill);
                    links.accept_unverified = true;
                  });
    auto& f = r.f;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // round 3's check bounced
    auto replacement = f.sys.spawn(confirming_verifier);
    f.self->send(r.job, update_atom::value, std::string("verifier"), replacement);
    auto s = r.committed(3, 10);
    f.self->send_exit(replacement, caf::exit_reason::user_shutdown);
    REQUIRE_MESSAGE(s.has_value(), "round 3 was not committed within 10 s");
    CHECK(s->unverified_results == 0);
    CHECK(s->verified_results >= 1);
  }

  TEST_CASE("a result whose re-computation diverges on the core tier ends the job as diverged") {
    // Taken for a re-computation that could not run: the round waited for a verifier for
    // good (re-asking every 30 s), or, with --unverified accept, used the node's finite
    // update unchecked and paid for it.
    for (const bool accept : {false, true}) {
      CAPTURE(accept);
      resumed_job r(4, {{"volunteer", node_tier::community, std::chrono::milliseconds(0), {}}},
                    true, [&](caf::actor_system& sys, job_links& links) {
                      links.reputation = sys.spawn(sampling_reputation);
                      links.verifier = sys.spawn(diverging_verifier);
                      links.accept_unverified = accept;
                    });
      auto s = r.ended(10);
      REQUIRE(s.has_value());
      CHECK(s->state == job_state::failed);
      CHECK_MESSAGE(s->detail.find("diverged in round 3 on the core tier's re-computation of "
                                   "volunteer's work") != std::string::npos,
                    s->detail);
      CHECK(s->unverified_results == 0);
    }
  }

  TEST_CASE("only the job supervisor replaces a job's siblings") {
    // Any actor holding the job's handle could name itself the job's verifier (and confirm
    // every result) or its store.
    resumed_job r(4, {{"volunteer", node_tier::community, std::chrono::milliseconds(0), {}}}, true,
                  [&](caf::actor_system& sys, job_links& links) {
                    links.reputation = sys.spawn(sampling_reputation);
                    links.verifier = sys.spawn(holding_verifier);
                  });
    auto& f = r.f;
    auto forger = f.sys.spawn(confirming_verifier);
    caf::anon_send(r.job, update_atom::value, std::string("verifier"), forger);
    CHECK_FALSE(r.committed(3, 3).has_value());
    f.self->send_exit(forger, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a round whose evaluation fails ends the job and returns its escrow") {
    // The round was settled before it was evaluated: its hold left the job's books, neither
    // paid out nor returned, and stayed in escrow/job-1 for good once the job failed.
    claims huge;
    huge.value = 3e38f;  // finite, but theta leaves float's range: the evaluation fails
    resumed_job r(
        6, {{"core-node", node_tier::core, std::chrono::milliseconds(0), huge}}, false,
        [&](caf::actor_system& sys, job_links& links) {
          // Held by the fixture's links only: a handle that outlived its actor system would
          // keep the keeper (detached) from ending, and the system's end waits for it.
          links.ledger = funded_keeper(sys, links.store);
        },
        "[outer]\nlr = 10.0\n[eval]\nevery = 1\n[market]\naccount = \"user/alice\"\n"
        "budget = 50.0\nmax_price = 1.0\n");
    auto s = r.ended();
    REQUIRE(s.has_value());
    CHECK(s->state == job_state::failed);
    CHECK_MESSAGE(s->detail.find("evaluation failed") != std::string::npos, s->detail);
    auto balance = [&](const std::string& account) {
      int64_t out = -1;
      r.f.self->request(r.links.ledger, std::chrono::seconds(10), account_atom::value, account)
          .receive([&](account_info& a) { out = a.balance; },
                   [&](caf::error& e) { FAIL(r.f.sys.render(e)); });
      return out;
    };
    int64_t escrow = -1;
    for (int tries = 0; tries < 50 && escrow != 0; ++tries) {
      escrow = balance("escrow/job-1");
      if (escrow != 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    CHECK(escrow == 0);
    CHECK(balance("user/alice") == 100'000'000);
  }

  TEST_CASE("an outlier left out of the mean and never re-computed is neither paid nor credited") {
    // With no core-tier worker to re-compute it (--unverified accept), an outlier was paid
    // and credited as if used: a node sending scaled-up work while the core tier was busy
    // earned for results thrown away, and its score rose past min_reputation.
    claims flipped;
    flipped.value = 0.5f;  // 500 times the others' norm
    resumed_job r(6,
                  {{"honest-a", node_tier::community, std::chrono::milliseconds(0), {}},
                   {"honest-b", node_tier::community, std::chrono::milliseconds(0), {}},
                   {"flipper", node_tier::community, std::chrono::milliseconds(0), flipped}},
                  true, [](caf::actor_system& sys, job_links& links) {
                    links.verifier = sys.spawn(failing_verifier);
                    links.accept_unverified = true;
                  });
    auto s = r.committed(3);
    REQUIRE(s.has_value());
    CHECK(s->unverified_results >= 1);
    // The round's nodes are those whose results it used: the flipper's was left out.
    CHECK(s->nodes == 2);
    const auto credited = r.credited();
    CHECK(std::count(credited.begin(), credited.end(), "flipper") == 0);
    CHECK(std::count(credited.begin(), credited.end(), "honest-a") >= 1);
  }

  TEST_CASE("a verifier that refuses a check is asked again, not skipped, under accept") {
    // Refused at once (the verifier held all it may), the result was used unverified at once
    // under --unverified accept: the operator's --verify-wait-s never passed, and a flood of
    // re-computations let every sampled result through unchecked.
    auto asked = std::make_shared<std::atomic<int>>(0);
    resumed_job r(3, {{"volunteer", node_tier::community, std::chrono::milliseconds(0), {}}}, true,
                  [&](caf::actor_system& sys, job_links& links) {
                    links.reputation = sys.spawn(sampling_reputation);
                    links.verifier = sys.spawn(full_verifier, 1, asked);
                    links.accept_unverified = true;
                  });
    // Refused: the last round, 3, waits for the verifier, asked again 5 s later.
    CHECK_FALSE(r.committed(3, 3).has_value());
    CHECK(asked->load() == 1);
    // Then it held the check with no core-tier worker free: used unverified.
    auto s = r.committed(3, 10);
    REQUIRE_MESSAGE(s.has_value(), "round 3 was not committed once the verifier had held it");
    CHECK(asked->load() >= 2);
    CHECK(s->unverified_results >= 1);
  }

  TEST_CASE("a result that stands out and cannot be re-computed is neither used nor paid") {
    // With no core-tier worker (--unverified accept), a result 1.5 times the others' (it stands
    // out; no outlier) went into the round's mean unchecked, and was credited and paid.
    auto r = standing_out_unverified(5);
    auto s = r.committed(4);
    REQUIRE(s.has_value());
    CHECK(s->unverified_results >= 1);
    const auto credited = r.credited();
    CHECK(std::count(credited.begin(), credited.end(), "scaled") == 0);
    CHECK(std::count(credited.begin(), credited.end(), "honest-a") >= 1);
  }

  TEST_CASE("a result screened again after its round's rollback is counted once") {
    // The one round, 3, is applied with a result that stands out in its mean; that result
    // cannot be re-computed (--unverified accept), so the round is rolled back and screened
    // anew with the same three results, which counted the result in screened_results again.
    // The round then uses two of them: its nodes counted the third's too. The checks are
    // answered 300 ms late, after all three results came: answered at once, one could come
    // before the last result, and the round was screened with it known unverifiable (left
    // out, no rollback: this test then failed `0 == 1` rollbacks under load).
    auto r = standing_out_unverified(3, std::chrono::milliseconds(300));
    auto s = r.ended();
    REQUIRE(s.has_value());
    CHECK(s->state == job_state::done);
    CHECK(s->rollbacks == 1);
    CHECK(s->screened_results == 1);
    CHECK(s->nodes == 2);
  }

  TEST_CASE("a caught node's other names on its key lose their work here too") {
    // The tracker flags every name of a caught key; the job that caught it was not told, and
    // went on using, crediting and paying the other names' results.
    resumed_job r(6,
                  {{"cheat", node_tier::community, std::chrono::milliseconds(0), {}},
                   {"cheat-alias", node_tier::community, std::chrono::milliseconds(300), {}},
                   {"honest", node_tier::core, std::chrono::milliseconds(0), {}}},
                  true, [](caf::actor_system& sys, job_links& links) {
                    links.reputation = sys.spawn(key_sharing_reputation, "cheat", "cheat-alias");
                    // The cheat's result is re-computed first. The alias answers later (the
                    // same update from another key: a copy, re-computed before the cheat's).
                    links.verifier = sys.spawn(refuting_nth, 1, std::chrono::milliseconds(0));
                  });
    auto s = r.committed(5, 20);
    REQUIRE(s.has_value());
    const auto credited = r.credited();
    CHECK(std::count(credited.begin(), credited.end(), "cheat") == 0);
    CHECK(std::count(credited.begin(), credited.end(), "cheat-alias") == 0);
    CHECK(std::count(credited.begin(), credited.end(), "honest") >= 1);
    // The other jobs are told of both names.
    std::set<std::string> told;
    for (int tries = 0; tries < 20 && told.size() < 2; ++tries)
      r.f.self->receive(
          [&](reject_atom, const std::string& node, const std::string&) { told.insert(node); },
          [](progress_atom, job_status&) {}, [](const caf::down_msg&) {},
          caf::after(std::chrono::milliseconds(50)) >> [] {});
    CHECK(told.count("cheat-alias") == 1);
  }

  TEST_CASE("a rejection the reputation tracker did not take is told to it again") {
    // It was dropped: the cheat kept its score and the other names of its key their work,
    // here and in the other jobs.
    resumed_job r(6,
                  {{"cheat", node_tier::community, std::chrono::milliseconds(0), {}},
                   {"cheat-alias", node_tier::community, std::chrono::milliseconds(300), {}},
                   {"honest", node_tier::core, std::chrono::milliseconds(0), {}}},
                  true, [](caf::actor_system& sys, job_links& links) {
                    links.reputation = sys.spawn(forgetful_reputation, "cheat", "cheat-alias");
                    links.verifier = sys.spawn(refuting_nth, 1, std::chrono::milliseconds(0));
                  });
    std::set<std::string> told;
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    while (told.count("cheat-alias") == 0 && std::chrono::steady_clock::now() < until)
      r.f.self->receive(
          [&](reject_atom, const std::string& node, const std::string&) { told.insert(node); },
          [](progress_atom, job_status&) {}, [](const caf::down_msg&) {},
          caf::after(std::chrono::milliseconds(50)) >> [] {});
    CHECK(told.count("cheat") == 1);
    CHECK_MESSAGE(told.count("cheat-alias") == 1,
                  "the tracker never heard the rejection again, so never named the alias");
  }

  TEST_CASE("a node that sends its stored updates in turn is re-computed") {
    // Updates A, B, A: the third repeats one the node sent before, though not its previous
    // one, which was all the replay check compared with. It is re-computed whatever the
    // node's reputation: its sampling is not even asked.
    auto checked = std::make_shared<std::atomic<int>>(0);
    resumed_job r(
        6, {{"alternating", node_tier::community, std::chrono::milliseconds(0), {0.01, 1.0, 2}}},
        true, [&](caf::actor_system& sys, job_links& links) {
          links.verifier = sys.spawn(counting_verifier, checked);
        });
    int64_t answered = 0;
    for (int tries = 0; tries < 100 && answered < 3; ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      r.f.self->request(r.slots[0].worker, std::chrono::seconds(10), caf::get_atom::value)
          .receive([&](int64_t n) { answered = n; },
                   [&](caf::error& e) { FAIL(r.f.sys.render(e)); });
    }
    REQUIRE(answered >= 3);
    // The third answer goes worker -> job -> verifier, which takes a while on a loaded
    // machine. The tracker's count is read once the re-computation came: a repeat taken for
    // new work would have been asked about instead.
    for (int tries = 0; tries < 1000 && checked->load() < 1; ++tries)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    CHECK(checked->load() >= 1);  // the repeats were re-computed, not let through
    int64_t asked = -1;
    r.f.self->request(r.links.reputation, std::chrono::seconds(10), caf::get_atom::value, 0)
        .receive([&](int64_t n) { asked = n; }, [&](caf::error& e) { FAIL(r.f.sys.render(e)); });
    CHECK(asked == 2);
  }

  TEST_CASE("one key that replays its updates under two names in turn is re-computed") {
    // Round 3: k1 sends A, k2 sends B; round 4: k1 sends B, k2 sends A. Neither name repeats
    // its own updates; the key repeats both. Sketched by name, neither repeat was seen.
    claims first, second;
    first.updates = second.updates = 2;
    second.offset = 1;
    auto checked = std::make_shared<std::atomic<int>>(0);
    resumed_job r(6,
                  {{"k1", node_tier::community, std::chrono::milliseconds(0), first},
                   {"k2", node_tier::community, std::chrono::milliseconds(0), second, 0}},
                  true, [&](caf::actor_system& sys, job_links& links) {
                    links.verifier = sys.spawn(counting_verifier, checked);
                  });
    int64_t answered = 0;
    for (int tries = 0; tries < 100 && answered < 2; ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      answered = 0;
      for (const auto& slot : r.slots)
        r.f.self->request(slot.worker, std::chrono::seconds(10), caf::get_atom::value)
            .receive([&](int64_t n) { answered += n >= 2 ? 1 : 0; },
                     [&](caf::error& e) { FAIL(r.f.sys.render(e)); });
    }
    REQUIRE(answered == 2);  // each name answered twice
    // Round 4's results reach the verifier through the job, late on a loaded machine; the
    // sampling is read once they have.
    for (int tries = 0; tries < 1000 && checked->load() < 2; ++tries)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    CHECK(checked->load() >= 2);
    int64_t asked = -1;
    r.f.self->request(r.links.reputation, std::chrono::seconds(10), caf::get_atom::value, 0)
        .receive([&](int64_t n) { asked = n; }, [&](caf::error& e) { FAIL(r.f.sys.render(e)); });
    CHECK(asked == 2);  // round 3's two results; round 4's were re-computed unasked
  }

  TEST_CASE("a result that copies another key's result of the round is re-computed and caught") {
    // The copier returns the honest node's update signed with its own key: no earlier result
    // of its key is like it, and it sits on the round's median, so it was used, credited and
    // paid whenever it was not sampled. Both are re-computed now: the copy first (refuted),
    // the original (confirmed). Nothing here is sampled.
    resumed_job r(
        3,
        {{"honest", node_tier::community, std::chrono::milliseconds(0), {}},
         {"copier", node_tier::community, std::chrono::milliseconds(300), {}}},
        true,
        [](caf::actor_system& sys, job_links& links) {
          links.verifier = sys.spawn(refuting_nth, 1, std::chrono::milliseconds(0));
        },
        // No backup of the copier's shard: computed by the honest node, it would be
        // a replay of its own.
        "[round]\nbackup_after = 0\n");
    auto s = r.ended(15);
    REQUIRE(s.has_value());
    CHECK(s->state == job_state::done);
    CHECK(s->rejected_results == 1);
    CHECK(s->verified_results >= 1);  // the honest node's, re-computed and matched
    const auto credited = r.credited();
    CHECK(std::count(credited.begin(), credited.end(), "copier") == 0);
    CHECK(std::count(credited.begin(), credited.end(), "honest") >= 1);
  }

  TEST_CASE("a round that cannot be committed credits no node") {
    // Credited before the commit, a round that failed to commit (or was redone after a
    // crash) still counted in the nodes' streaks and earnings.
    resumed_job r(3, {{"a", node_tier::core, std::chrono::milliseconds(0), {}}}, false,
                  [](caf::actor_system&, job_links& links) {
                    caf::anon_send(links.store, caf::put_atom::value, job_checkpoint_key("job-1"));
                  });
    auto s = r.ended();
    REQUIRE(s.has_value());
    CHECK(s->state == job_state::failed);
    CHECK(s->detail.find("cannot commit round") != std::string::npos);
    CHECK(r.credited().empty());
  }

  TEST_CASE("one node's reported loss is not the round's") {
    // A loss is a node's claim: the round's is the median of the results used, not a mean
    // that one node's 1e300 makes whatever it says.
    resumed_job r(3, {{"a", node_tier::core, std::chrono::milliseconds(0), {0.01, 0.75}},
                      {"b", node_tier::core, std::chrono::milliseconds(0), {0.01, 0.5}},
                      {"liar", node_tier::core, std::chrono::milliseconds(0), {0.01, 1e300}}});
    auto s = r.committed(3);
    REQUIRE(s.has_value());
    CHECK(s->train_loss == doctest::Approx(0.75));
  }

  TEST_CASE("a round's quorum deadline counts from its first assignment, not its opening") {
    // Counted from the round's opening, a round that waited for workers (or was paused for
    // budget) longer than deadline_s closed on the first result that came in: the others,
    // just handed out, were thrown away.
    const auto ready = std::chrono::steady_clock::now() + std::chrono::seconds(4);
    resumed_job r(
        3,
        {{"fast", node_tier::core, std::chrono::milliseconds(0), {}},
         {"slow", node_tier::core, std::chrono::milliseconds(1500), {}}},
        false,
        [&](caf::actor_system& sys, job_links& links) {
          links.market = sys.spawn(late_market, links.market, ready);
        },
        // No backup of the slow node's shard: the inner market would hold its
        // acquire for 10 s, and the round's end with it.
        "[round]\ndeadline_s = 3\nquorum = 0.5\nbackup_after = 0\n");
    auto s = r.ended(20);
    REQUIRE(s.has_value());
    CHECK(s->state == job_state::done);
    auto credited = r.credited();
    std::sort(credited.begin(), credited.end());
    CHECK(credited == std::vector<std::string>{"fast", "slow"});
  }

  TEST_CASE("a round that diverges on three nodes ends the job; on two, others compute it") {
    // A run that diverges (a user's learning rate or data) does so on every node: its work
    // was handed out for ever, the job running and each failure cooling a worker down.
    claims diverging;
    diverging.diverges = true;
    {
      resumed_job r(6,
                    {{"a", node_tier::core, std::chrono::milliseconds(0), diverging},
                     {"b", node_tier::core, std::chrono::milliseconds(0), diverging},
                     {"c", node_tier::core, std::chrono::milliseconds(0), diverging}},
                    true);
      auto s = r.ended();
      REQUIRE_MESSAGE(s.has_value(), "the job still runs 10 s after every node diverged");
      CHECK(s->state == job_state::failed);
      CHECK_MESSAGE(s->detail.find("training diverged in round 3 on 3 nodes") != std::string::npos,
                    s->detail);
    }
    {
      // Two nodes' word is not enough: a third computes their shards, and the round commits.
      resumed_job r(6,
                    {{"a", node_tier::core, std::chrono::milliseconds(0), diverging},
                     {"b", node_tier::core, std::chrono::milliseconds(0), diverging},
                     {"c", node_tier::core, std::chrono::milliseconds(0), {}}},
                    true);
      auto s = r.committed(3);
      REQUIRE(s.has_value());
      CHECK(s->state == job_state::running);
    }
  }

  TEST_CASE("a round that diverges on every node that can take it ends the job, core or not") {
    // The job waited for a third node's word: with one or two nodes to take its work (a core
    // of one or two core-tier servers, `gflex demo --nodes 2`) it handed the work out for
    // ever, its nodes cooled down as at fault, the round never closing.
    claims diverging;
    diverging.diverges = true;
    for (const size_t count : {size_t{1}, size_t{2}}) {
      CAPTURE(count);
      std::vector<test_node> nodes;
      for (size_t i = 0; i < count; ++i)
        nodes.push_back({"core-" + std::to_string(i), node_tier::core, std::chrono::milliseconds(0),
                         diverging});
      caf::actor market;
      resumed_job r(
          6, nodes, false,
          [&](caf::actor_system& sys, job_links& links) { late_core_market(sys, links, market); },
          "[round]\nbackup_after = 0\n");
      offer_to(r.f.self, market, r.slots);
      auto s = r.ended();
      REQUIRE_MESSAGE(s.has_value(), "the job still runs 10 s after each of its nodes diverged");
      CHECK(s->state == job_state::failed);
      const auto said = "training diverged in round 3 on " + std::to_string(count) +
                        (count == 1 ? " node (" : " nodes (");
      CHECK_MESSAGE(s->detail.find(said) != std::string::npos, s->detail);
    }
    {
      // Community nodes' word is checked on the core tier first, where it diverges too.
      caf::actor market;
      resumed_job r(
          6,
          {{"a", node_tier::community, std::chrono::milliseconds(0), diverging},
           {"b", node_tier::community, std::chrono::milliseconds(0), diverging}},
          false,
          [&](caf::actor_system& sys, job_links& links) {
            late_core_market(sys, links, market);
            links.verifier = sys.spawn(diverging_verifier);
          },
          "[round]\nbackup_after = 0\n");
      offer_to(r.f.self, market, r.slots);
      auto s = r.ended();
      REQUIRE_MESSAGE(s.has_value(), "the job still runs 10 s after both its nodes diverged");
      CHECK(s->state == job_state::failed);
      CHECK_MESSAGE(s->detail.find("training diverged in round 3 on 2 nodes") != std::string::npos,
                    s->detail);
    }
  }

  TEST_CASE("a node that says every assignment diverged is left out; an honest one computes it") {
    // Its slot was freed at once, with no cooldown, and the market (cheapest first) gave it
    // the same shard back at the next acquire: a GPU that gives NaN for everything, or a node
    // that answers every assignment so, held the round open for good.
    claims diverging;
    diverging.diverges = true;
    caf::actor market;
    resumed_job r(
        6,
        {{"nan-gpu", node_tier::core, std::chrono::milliseconds(0), diverging, -1, 0},
         {"honest", node_tier::core, std::chrono::milliseconds(0), {}, -1, 1}},
        false,
        [&](caf::actor_system& sys, job_links& links) { late_core_market(sys, links, market); },
        // No backups: a backup of the shard, sent to the honest node now and then,
        // hid the stall (the shard went to nan-gpu 5,000 times in 10 s meanwhile).
        "[round]\nbackup_after = 0\n");
    offer_to(r.f.self, market, r.slots);  // nan-gpu asks nothing: the cheapest
    auto s = r.committed(3);
    REQUIRE_MESSAGE(s.has_value(), "round 3 did not commit: nan-gpu got its shard back each time");
    CHECK(s->state == job_state::running);
    int64_t answered = -1;
    r.f.self->request(r.slots[0].worker, std::chrono::seconds(10), caf::get_atom::value)
        .receive([&](int64_t n) { answered = n; }, [&](caf::error& e) { FAIL(r.f.sys.render(e)); });
    CHECK(answered == 1);  // left out of the job's acquires after it
  }

  TEST_CASE(
      "a key's second word in a round that it diverged, or any once disproved, is its fault") {
    // Believed or not, it was the job's model's fault: the market freed the slot at once, and
    // a node saying it of every assignment lost nothing anywhere for it.
    claims diverging;
    diverging.diverges = true;
    // The releases after a failure so far, once `enough` holds of them or after 5 s.
    auto failures = [](resumed_job& r, auto enough) {
      std::vector<std::string> out;
      for (int tries = 0; tries < 50 && !enough(out); ++tries) {
        if (tries > 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
        r.f.self
            ->request(r.links.market, std::chrono::seconds(10), caf::get_atom::value,
                      release_atom::value)
            .receive([&](std::vector<std::string>& f) { out = std::move(f); },
                     [&](caf::error& e) { FAIL(r.f.sys.render(e)); });
      }
      return out;
    };
    caf::actor market;
    auto noting = [&](caf::actor_system& sys, job_links& links) {
      late_core_market(sys, links, market);
      links.market = sys.spawn(fault_noting_market, links.market);
    };
    {
      // Two names on one key: the second is not believed to be another node's word.
      resumed_job r(3,
                    {{"a", node_tier::core, std::chrono::milliseconds(0), diverging},
                     {"a2", node_tier::core, std::chrono::milliseconds(0), diverging, 0},
                     {"c", node_tier::core, std::chrono::milliseconds(0), {}}},
                    false, noting);
      offer_to(r.f.self, market, r.slots);
      auto f = failures(r, [](const std::vector<std::string>& f) { return f.size() >= 2; });
      REQUIRE(f.size() >= 2);
      CHECK_MESSAGE(f[0].ends_with(": not the node's fault"), f[0]);
      CHECK_MESSAGE(f[1].ends_with(": the node's fault"), f[1]);
    }
    {
      // The core tier computed what a, b and c said diverged; e says it after.
      resumed_job r(
          3,
          {{"a", node_tier::community, std::chrono::milliseconds(0), diverging},
           {"b", node_tier::community, std::chrono::milliseconds(0), diverging},
           {"c", node_tier::community, std::chrono::milliseconds(0), diverging},
           {"d", node_tier::community, std::chrono::milliseconds(0), {}},
           {"e", node_tier::community, std::chrono::milliseconds(1000), diverging}},
          false,
          [&](caf::actor_system& sys, job_links& links) {
            noting(sys, links);
            links.verifier = sys.spawn(confirming_verifier);
          },
          "[round]\nbackup_after = 0\n");
      offer_to(r.f.self, market, r.slots);
      auto by_e = [](const std::string& x) { return x.starts_with("e: "); };
      auto f = failures(r, [&](const std::vector<std::string>& f) {
        return std::find_if(f.begin(), f.end(), by_e) != f.end();
      });
      auto e = std::find_if(f.begin(), f.end(), by_e);
      REQUIRE(e != f.end());
      CHECK_MESSAGE(*e == "e: the node's fault", *e);
    }
  }

  TEST_CASE("community nodes' word that a round diverged is checked on the core tier") {
    // Keys cost nothing: three community nodes that said every assignment diverged ended any
    // job. Now the core tier computes the work first.
    claims diverging;
    diverging.diverges = true;
    const std::vector<test_node> nodes = {
        {"a", node_tier::community, std::chrono::milliseconds(0), diverging},
        {"b", node_tier::community, std::chrono::milliseconds(0), diverging},
        {"c", node_tier::community, std::chrono::milliseconds(0), diverging},
        {"d", node_tier::community, std::chrono::milliseconds(0), {}}};
    {
      // The core tier computes it: the reports are not believed, and d computes the round.
      resumed_job r(6, nodes, true, [](caf::actor_system& sys, job_links& links) {
        links.verifier = sys.spawn([]() -> caf::behavior {
          return {[](verify_atom, verify_request& req) -> caf::result<double, double, double> {
            if (!req.claimed.empty()) return {0.0, 1.0, 0.01};  // d's results match too
            return {0.0, 1.0, 0.01};
          }};
        });
      });
      auto s = r.committed(3, 20);
      REQUIRE_MESSAGE(s.has_value(), "three community nodes' word ended the job");
      CHECK(s->state == job_state::running);
    }
    {
      // It diverges on the core tier too: the job ends.
      resumed_job r(6, nodes, true, [](caf::actor_system& sys, job_links& links) {
        links.verifier = sys.spawn([]() -> caf::behavior {
          return {[](verify_atom, verify_request&) -> caf::result<double, double, double> {
            return to_caf(error(errc::non_finite, "the core tier's re-computation diverged too"));
          }};
        });
      });
      auto s = r.ended();
      REQUIRE(s.has_value());
      CHECK(s->state == job_state::failed);
      CHECK_MESSAGE(s->detail.find("training diverged in round 3 on 3 nodes") != std::string::npos,
                    s->detail);
    }
    // No core-tier worker is free for the check (the verifier's queue waited out its limit):
    // under --unverified wait the check is asked again, and the reports were taken before,
    // so three keys ended any job while the core tier was busy.
    for (const bool accept : {false, true}) {
      auto checks = std::make_shared<std::atomic<int>>(0);
      resumed_job r(6, nodes, true, [&](caf::actor_system& sys, job_links& links) {
        links.accept_unverified = accept;
        links.verifier = sys.spawn([checks]() -> caf::behavior {
          return {
              [checks](verify_atom, verify_request& req) -> caf::result<double, double, double> {
                if (!req.claimed.empty()) return {0.0, 1.0, 0.01};
                if (++*checks == 1)
                  return to_caf(error(errc::unavailable, "no core-tier worker was free for 60 s"));
                return {0.0, 1.0, 0.01};
              }};
        });
      });
      if (!accept) {
        auto s = r.committed(3, 30);
        REQUIRE_MESSAGE(s.has_value(), "a busy core tier let three community nodes end the job");
        CHECK(s->state == job_state::running);
        CHECK(checks->load() >= 1);  // d's results computed the round meanwhile
      } else {
        // The operator takes unverified word: the reports are believed, as before.
        auto s = r.ended();
        REQUIRE(s.has_value());
        CHECK(s->state == job_state::failed);
      }
    }
  }

  TEST_CASE("re-computations that keep failing are the operator's policy, and the status says so") {
    // The core tier cannot run the work (its memory, a shard it cannot fetch): the result was
    // asked to be re-computed again every second, its round unconfirmed for good and the
    // job's status silent.
    const std::vector<test_node> volunteer = {
        {"volunteer", node_tier::community, std::chrono::milliseconds(0), {}}};
    auto with_failing_verifier = [](bool accept) {
      return [accept](caf::actor_system& sys, job_links& links) {
        links.reputation = sys.spawn(sampling_reputation);
        links.verifier = sys.spawn(failing_verifier);
        links.accept_unverified = accept;
      };
    };
    {
      resumed_job r(6, volunteer, true, with_failing_verifier(true));
      auto s = r.committed(3);
      REQUIRE_MESSAGE(s.has_value(), "--unverified accept, yet round 3 is not committed");
      CHECK(s->unverified_results >= 1);
    }
    {
      resumed_job r(6, volunteer, true, with_failing_verifier(false));
      std::string detail;
      for (int tries = 0; tries < 200 && detail.find("re-computations failed") == std::string::npos;
           ++tries)
        r.f.self->receive([&](progress_atom, job_status& s) { detail = s.detail; },
                          [](const caf::down_msg&) {},
                          caf::after(std::chrono::milliseconds(50)) >> [] {});
      CHECK_MESSAGE(detail.find("its re-computations failed: re-computation failed: out of host "
                                "memory") != std::string::npos,
                    detail);
    }
    {
      // The last round, its result unverifiable: once every round was collected nothing
      // watched the job. It said nothing of the wait, and its deadline never came.
      resumed_job r(3, volunteer, true, with_failing_verifier(false),
                    "[market]\ndeadline_h = 0.001\n");
      std::string detail;
      std::optional<job_status> end;
      for (int tries = 0; tries < 300 && !end; ++tries)
        r.f.self->receive(
            [&](progress_atom, job_status& s) {
              if (s.detail.find("waiting for") != std::string::npos) detail = s.detail;
              if (is_terminal(s.state)) end = std::move(s);
            },
            [](const caf::down_msg&) {}, caf::after(std::chrono::milliseconds(50)) >> [] {});
      CHECK_MESSAGE(detail.find("waiting for 1 verification(s) of round 3") != std::string::npos,
                    detail);
      REQUIRE_MESSAGE(end.has_value(), "the job outlived its deadline of 3.6 s by 11 s");
      CHECK(end->state == job_state::failed);
      CHECK_MESSAGE(end->detail.find("deadline") != std::string::npos, end->detail);
    }
  }

  TEST_CASE("a job cancelled while its round commits records that round, as its checkpoint is") {
    // The end record went to the store behind the round's commit and said the round before:
    // the checkpoint (and, metered, the payments) were the round's. A round's answer after the
    // end also resumed a job paused for its budget: the ended job showed as paused for good.
    caf::actor inner;
    resumed_job r(6, {{"core-node", node_tier::core, std::chrono::milliseconds(0), {}}}, true,
                  [&](caf::actor_system& sys, job_links& links) {
                    inner = links.store;
                    links.store = sys.spawn(slow_store, inner, links.supervisor,
                                            std::chrono::milliseconds(800));
                  });
    auto& f = r.f;
    bool committing = false;
    for (int tries = 0; tries < 200 && !committing; ++tries)
      f.self->receive([&](commit_atom) { committing = true; }, [](progress_atom, job_status&) {},
                      caf::after(std::chrono::milliseconds(50)) >> [] {});
    REQUIRE(committing);
    f.self->request(r.job, std::chrono::seconds(30), cancel_atom::value)
        .receive([](caf::ok_atom) {}, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    auto stored = [&](const std::string& key) {
      std::vector<uint8_t> out;
      f.self->request(inner, std::chrono::seconds(10), read_atom::value, key)
          .receive([&](bool, std::vector<uint8_t>& v) { out = std::move(v); },
                   [&](caf::error& e) { FAIL(f.sys.render(e)); });
      return out;
    };
    auto record = decode_job_record(stored(job_record_key("job-1")));
    REQUIRE(record.has_value());
    auto checkpoint = decode_checkpoint(stored(job_checkpoint_key("job-1")));
    REQUIRE(checkpoint.has_value());
    CHECK(record->second.state == job_state::cancelled);
    CHECK(checkpoint->step >= 3);
    CHECK_MESSAGE(static_cast<uint64_t>(record->second.round) == checkpoint->step,
                  "the end record says round " << record->second.round
                                               << ", the checkpoint is of round "
                                               << checkpoint->step);
    f.self->send_exit(inner, caf::exit_reason::user_shutdown);  // the fixture ends the other
  }

  TEST_CASE("a cancel while a job's done end is being written says it ended, not cancelled") {
    // The job had ended done and waited for its end record's write: the cancel was answered
    // "ok", and its owner told "cancelled" of a job recorded done.
    caf::actor inner;
    resumed_job r(3, {{"core-node", node_tier::core, std::chrono::milliseconds(0), {}}}, true,
                  [&](caf::actor_system& sys, job_links& links) {
                    inner = links.store;
                    links.store = sys.spawn(slow_store, inner, links.supervisor,
                                            std::chrono::milliseconds(800));
                  });
    auto& f = r.f;
    int commits = 0;  // the last round's, then the end record's
    for (int tries = 0; tries < 200 && commits < 2; ++tries)
      f.self->receive([&](commit_atom) { ++commits; }, [](progress_atom, job_status&) {},
                      caf::after(std::chrono::milliseconds(50)) >> [] {});
    REQUIRE(commits == 2);
    std::string refused;
    f.self->request(r.job, std::chrono::seconds(30), cancel_atom::value)
        .receive([](caf::ok_atom) {}, [&](caf::error& e) { refused = f.sys.render(e); });
    CHECK_MESSAGE(refused.find("'job-1' has already ended (done)") != std::string::npos, refused);
    f.self->send_exit(inner, caf::exit_reason::user_shutdown);  // the fixture ends the other
  }

  TEST_CASE("a running job's status pairs its committed round with that round's test loss") {
    // Between a round's evaluation and its commit, the status said the round before, with
    // its accuracy and training loss, but with the new round's test loss (a language model's
    // headline figure); an end meanwhile kept that test loss in the record.
    caf::actor inner;
    claims moving;
    moving.value = 0.05f;
    moving.varied = true;
    resumed_job r(
        12, {{"core-node", node_tier::core, std::chrono::milliseconds(100), moving}}, true,
        [&](caf::actor_system& sys, job_links& links) {
          inner = links.store;
          links.store =
              sys.spawn(slow_store, inner, links.supervisor, std::chrono::milliseconds(300));
        },
        "[eval]\nevery = 1\n");
    auto& f = r.f;
    int checked = 0, mismatched = 0;
    bool ended = false;
    for (int tries = 0; tries < 400 && !ended; ++tries)
      f.self->receive(
          [](commit_atom) {},
          [&](progress_atom, job_status& s) {
            ended = is_terminal(s.state);
            if (s.history.empty()) return;
            ++checked;
            const auto& last = s.history.back();
            if (last.round != s.round || last.test_loss != s.test_loss) {
              ++mismatched;
              MESSAGE("round " << s.round << " shows test loss " << s.test_loss << "; round "
                               << last.round << "'s was " << last.test_loss);
            }
          },
          [](const caf::down_msg&) {}, caf::after(std::chrono::milliseconds(50)) >> [] {});
    REQUIRE(ended);
    CHECK(checked >= 4);
    CHECK(mismatched == 0);
    f.self->send_exit(inner, caf::exit_reason::user_shutdown);  // the fixture ends the other
  }

  TEST_CASE("a top-up while a round's settlement is on its way stays in the job's record") {
    // The top-up's record went straight to the store; the round's, encoded before the top-up
    // with the old budget and booked through the ledger, landed after it: a restarted core
    // had the job's budget without the top-up, and paused the job for it again.
    resumed_job r(6, {{"core-node", node_tier::core, std::chrono::milliseconds(0), {}}}, false,
                  slow_settlements, metered_50);
    auto& f = r.f;
    int64_t waiting = 0;
    for (int tries = 0; tries < 100 && waiting == 0; ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      waiting = r.settlements_waiting();
    }
    REQUIRE(waiting == 1);  // round 3's settlement, its record saying a budget of 50
    auto topup =
        f.self->request(r.job, std::chrono::seconds(30), topup_atom::value, int64_t{10'000'000});
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    f.self->send(r.links.ledger, caf::put_atom::value);  // round 3 is booked
    topup.receive([](caf::ok_atom) {}, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    REQUIRE(r.committed(3).has_value());
    auto record = r.stored_record();
    REQUIRE(record.has_value());
    CHECK(record->round == 3);
    CHECK(record->budget == 60'000'000);
  }

  TEST_CASE("a round's commit waits for the one before it: none lands on a failed one") {
    // Round 4's settlement was sent while round 3's was on its way. Round 3's failed, and
    // round 4's landed on top of it: its checkpoint held round 3's update, whose nodes were
    // never paid.
    resumed_job r(6, {{"core-node", node_tier::core, std::chrono::milliseconds(0), {}}}, true,
                  slow_settlements, metered_50);
    auto& f = r.f;
    auto waiting = [&] { return r.settlements_waiting(); };
    for (int tries = 0; tries < 100 && waiting() == 0; ++tries)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    REQUIRE(waiting() >= 1);  // round 3's settlement
    // Round 3's commit will fail (its checkpoint cannot be written); round 4 is computed
    // meanwhile (its node, offered again, answers at once).
    f.self->send(r.links.store, caf::put_atom::value, job_checkpoint_key("job-1"), 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    CHECK_MESSAGE(waiting() == 1, "a round's settlement was sent behind one still on its way");
    f.self->send(r.links.ledger, caf::put_atom::value);
    auto end = r.ended();
    REQUIRE(end.has_value());
    CHECK(end->state == job_state::failed);
    f.self->send(r.links.ledger, caf::put_atom::value);  // anything sent after: let it land
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    auto record = r.stored_record();
    REQUIRE(record.has_value());
    CHECK_MESSAGE(record->round < 3,
                  "round " << record->round << " is stored though round 3 was not committed");
  }

  TEST_CASE("a round whose commit the store answers late is read back, and the job goes on") {
    // Not answered within 60 s, the round was taken as lost and the job failed ("cannot
    // commit round"), while its record and checkpoint landed: the store held round 3 under an
    // end record saying round 2.
    resumed_job r(6, {{"core-node", node_tier::core, std::chrono::milliseconds(0), {}}}, true,
                  [&](caf::actor_system&, job_links& links) {
                    links.record_wait = std::chrono::milliseconds(200);  // the commit's: 400 ms
                  });
    auto& f = r.f;
    f.self->send(r.links.store, held_atom::value, job_checkpoint_key("job-1"));
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));         // past the wait
    f.self->send(r.links.store, caf::put_atom::value, held_atom::value);  // it lands
    auto end = r.ended();
    REQUIRE(end.has_value());
    CHECK_MESSAGE(end->state == job_state::done, end->detail);
    CHECK(end->round == 6);
  }

  TEST_CASE("a top-up that is not recorded leaves the budget as it was") {
    // The budget was raised before the top-up's record was written, and stayed raised when
    // the write failed: the caller, told the top-up failed, topped up again, and the job
    // had twice the budget asked for (written by the next round's record).
    resumed_job r(
        6, {one_round_node()}, false,
        [&](caf::actor_system& sys, job_links& links) {
          links.ledger = funded_keeper(sys, links.store);
        },
        one_round_budget);
    auto& f = r.f;
    REQUIRE(r.state_seen(job_state::paused).has_value());  // its budget paid for one round
    f.self->send(r.links.store, caf::put_atom::value, job_record_key("job-1"), 1);
    auto topup = [&] {
      expected<void> out;
      f.self->request(r.job, std::chrono::seconds(30), topup_atom::value, int64_t{10'000'000})
          .receive([](caf::ok_atom) {}, [&](caf::error& e) { out = from_caf(e, &f.sys); });
      return out;
    };
    auto failed = topup();
    REQUIRE_FALSE(failed.has_value());
    CHECK_MESSAGE(failed.error().message().find("not recorded") != std::string::npos,
                  failed.error().message());
    CHECK_MESSAGE(failed.error().message().find("stays 0.033334") != std::string::npos,
                  failed.error().message());
    auto again = topup();
    REQUIRE_MESSAGE(again.has_value(), again.error().message());
    auto running = r.state_seen(job_state::running);
    REQUIRE(running.has_value());
    CHECK(running->budget == 10'033'334);
    auto record = r.stored_record();
    REQUIRE(record.has_value());
    CHECK(record->budget == 10'033'334);
  }

  TEST_CASE("a top-up whose record the store answers late is read back, not reverted") {
    // Not answered within 30 s, it was taken as failed and the budget lowered again, while
    // the write still landed: the job resumed after a restart with a budget its owner was
    // told it did not have.
    resumed_job r(
        6, {one_round_node()}, false,
        [&](caf::actor_system& sys, job_links& links) {
          links.ledger = funded_keeper(sys, links.store);
          links.record_wait = std::chrono::milliseconds(500);
        },
        one_round_budget);
    auto& f = r.f;
    REQUIRE(r.state_seen(job_state::paused).has_value());  // its budget paid for one round
    f.self->send(r.links.store, held_atom::value, job_record_key("job-1"));
    auto topup =
        f.self->request(r.job, std::chrono::seconds(30), topup_atom::value, int64_t{10'000'000});
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));         // past record_wait
    f.self->send(r.links.store, caf::put_atom::value, held_atom::value);  // it lands
    topup.receive([](caf::ok_atom) {},
                  [&](caf::error& e) { CHECK_MESSAGE(false, f.sys.render(e)); });
    auto record = r.stored_record();
    REQUIRE(record.has_value());
    CHECK(record->budget == 10'033'334);
    auto running = r.state_seen(job_state::running);  // resumed, with the budget stored
    REQUIRE(running.has_value());
    CHECK(running->budget == 10'033'334);
  }

  TEST_CASE("a round rolled back while the next one's hold was refused is collected again") {
    // Round 3 is applied while the volunteer's result is re-computed; round 4's hold is refused
    // (the account short) and the job pauses for a top-up. The re-computation then catches the
    // volunteer, and round 3 is rolled back: it holds its own escrow, yet the pause (for round
    // 4's) stayed, nothing was dispatched, and the job waited for a top-up it did not need.
    resumed_job r(
        6,
        {{"volunteer", node_tier::community, std::chrono::milliseconds(0), {}, -1, 1'000'000},
         {"core-node", node_tier::core, std::chrono::milliseconds(0), {}, -1, 1'000'000}},
        true,
        [](caf::actor_system& sys, job_links& links) {
          links.reputation = sys.spawn(sampling_reputation);
          links.verifier = sys.spawn(refuting_when_told);
          links.ledger = sys.spawn(refusing_nth_hold, funded_keeper(sys, links.store), 2);
        },
        metered_50);
    auto paused = r.state_seen(job_state::paused);
    REQUIRE(paused.has_value());
    CHECK_MESSAGE(paused->detail.find("cannot hold round 4's escrow") != std::string::npos,
                  paused->detail);
    r.f.self->send(r.links.verifier, caf::put_atom::value);  // the volunteer is caught
    auto s = r.committed(4, 10);
    REQUIRE_MESSAGE(s.has_value(), "round 3 was not collected again after its rollback");
    CHECK(s->rollbacks == 1);
  }

  TEST_CASE("a job restarted with its last round committed ends done, training nothing more") {
    // Its actor died between the last round's commit and its end record: restarted from its
    // checkpoint of the last round, it trained (and billed) round rounds+1, and never ended.
    resumed_job r(2, {{"core-node", node_tier::core, std::chrono::milliseconds(0), {}}}, true);
    auto ended = r.ended(5);
    REQUIRE_MESSAGE(ended.has_value(), "not ended 5 s after its restart");
    CHECK(ended->state == job_state::done);
    CHECK(ended->round == 2);
    int64_t answered = -1;
    r.f.self->request(r.slots[0].worker, std::chrono::seconds(10), caf::get_atom::value)
        .receive([&](int64_t n) { answered = n; }, [&](caf::error& e) { FAIL(r.f.sys.render(e)); });
    CHECK(answered == 0);
  }
}
