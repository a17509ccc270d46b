#pragma once
/// @file
/// A job supervisor over actors played by the test: a store of what the test gives it,
/// which can fail reads, and a market that offers what the test says. For the tests of how
/// jobs start, resume and hand out work.

#include <doctest/doctest.h>

#include <caf/all.hpp>

#include <algorithm>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "configured_system.hpp"
#include "data_catalog.hpp"
#include "gflex/runtime/checkpoint.hpp"
#include "gflex/runtime/digest.hpp"
#include "gflex/runtime/identity.hpp"
#include "gflex/runtime/job_spec.hpp"
#include "gflex/runtime/shard.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "job.hpp"
#include "job_record.hpp"
#include "job_supervisor.hpp"
#include "ledger_keeper.hpp"
#include "messages.hpp"
#include "user_data.hpp"

namespace gflex::test {

struct failing_store_state {
  std::map<std::string, std::vector<uint8_t>> kept;
  /// Reads of the data sets' shards still to fail, as a store that cannot answer now fails.
  int shard_read_failures = 0;
  std::set<std::string> unreadable;          ///< Keys whose reads fail (the store cannot answer).
  std::map<std::string, int> failing_reads;  ///< Keys whose next N reads fail as `unreadable`'s.
  std::set<std::string> damaged;     ///< Keys whose values are damaged (reads and scans fail).
  std::set<std::string> unwritable;  ///< Keys whose commits fail (with all of their batch).
  std::map<std::string, int> failing_commits;  ///< Keys whose next N commits fail.
  std::map<std::string, int> reads;  ///< Reads asked, by key ((caf::get_atom, key) tells).
  /// How long each read of a data set's shard takes (a large set on a busy disk).
  std::chrono::milliseconds shard_read_delay{0};
  std::deque<
      std::pair<std::vector<uint8_t>, caf::typed_response_promise<bool, std::vector<uint8_t>>>>
      slow_reads;                 ///< Shard reads answered (tick_atom) once their delay is over.
  std::set<std::string> deleted;  ///< Keys committed empty ((caf::get_atom) tells).
  /// Commits of more keys are refused, as etcd refuses a transaction of more operations than
  /// its --max-txn-ops (128 by default); 0: any.
  size_t max_batch_keys = 0;
  /// Commits naming one of these keys wait, unanswered, until (caf::put_atom, held_atom)
  /// applies them ((held_atom, key) adds one): a commit of a large set on a slow disk.
  std::set<std::string> held_keys;
  std::vector<std::pair<store_batch, caf::typed_response_promise<caf::ok_atom>>> held_commits;
  /// Reads of a key a held commit names, answered after it (as the real store, which takes
  /// requests in order, answers them).
  std::vector<std::pair<std::string, caf::typed_response_promise<bool, std::vector<uint8_t>>>>
      held_reads;
};

using held_atom = caf::atom_constant<caf::atom("held")>;
/// (repair_atom, key) to a failing_store: the key's value is whole again (damaged no more).
using repair_atom = caf::atom_constant<caf::atom("repair")>;

inline caf::error store_failure(const std::string& what) {
  return caf::make_error(caf::sec::runtime_error, what);
}

// Answers the commits failing_store holds (applied, or failed), then the reads behind them;
// commits are held no more.
inline void release_held(caf::stateful_actor<failing_store_state>* self, bool applied) {
  self->state.held_keys.clear();
  for (auto& [b, rp] : std::exchange(self->state.held_commits, {})) {
    if (!applied) {
      rp.deliver(store_failure("the held commit failed"));
      continue;
    }
    for (size_t i = 0; i < b.keys.size(); ++i)
      if (b.values[i].empty())
        self->state.kept.erase(b.keys[i]);
      else
        self->state.kept[b.keys[i]] = std::move(b.values[i]);
    rp.deliver(caf::ok_atom::value);
  }
  for (auto& [key, rp] : std::exchange(self->state.held_reads, {})) {
    auto it = self->state.kept.find(key);
    if (it == self->state.kept.end())
      rp.deliver(false, std::vector<uint8_t>{});
    else
      rp.deliver(true, it->second);
  }
}

// A store of `kept` whose first `shard_read_failures` reads of the shards fail, as do the
// reads of the keys in `unreadable` (as a store that cannot answer) and of those in `damaged`
// (as LMDB's of a damaged file), and the commits naming a key in `unwritable` (to which
// (caf::put_atom, key) adds) or, their next `times`, in `failing_commits` ((caf::put_atom,
// key, times)); other commits are applied, and (caf::get_atom) answers the keys
// deleted so far.
inline caf::behavior failing_store(caf::stateful_actor<failing_store_state>* self,
                                   failing_store_state init) {
  self->state = std::move(init);
  using keys_values = caf::result<std::vector<std::string>, std::vector<std::vector<uint8_t>>>;
  auto scan = [=](const std::string& prefix, const std::string& suffix) -> keys_values {
    std::vector<std::string> keys;
    std::vector<std::vector<uint8_t>> values;
    for (const auto& [k, v] : self->state.kept)
      if (k.starts_with(prefix) && k.ends_with(suffix)) {
        if (self->state.damaged.count(k) != 0)
          return to_caf(error(errc::store_error, k + ": damaged (its size or digest is wrong)"));
        keys.push_back(k);
        values.push_back(v);
      }
    return {std::move(keys), std::move(values)};
  };
  return {
      [=](scan_atom, const std::string& prefix) { return scan(prefix, ""); },
      [=](scan_atom, const std::string& prefix, const std::string& suffix) {
        return scan(prefix, suffix);
      },
      [=](keys_atom, const std::string& prefix) {
        std::vector<std::string> keys;
        for (const auto& [k, v] : self->state.kept)
          if (k.starts_with(prefix)) keys.push_back(k);
        return keys;
      },
      [=](read_atom, const std::string& key) -> caf::result<bool, std::vector<uint8_t>> {
        ++self->state.reads[key];
        for (const auto& held : self->state.held_commits)
          if (std::find(held.first.keys.begin(), held.first.keys.end(), key) !=
              held.first.keys.end()) {
            self->state.held_reads.emplace_back(
                key, self->make_response_promise<bool, std::vector<uint8_t>>());
            return self->state.held_reads.back().second;
          }
        if (key.starts_with(data_chunk_prefix) && self->state.shard_read_failures > 0) {
          --self->state.shard_read_failures;
          return store_failure(key + ": the store did not answer");
        }
        if (self->state.unreadable.count(key) != 0) return store_failure(key + ": unreadable");
        if (auto it = self->state.failing_reads.find(key);
            it != self->state.failing_reads.end() && it->second > 0) {
          --it->second;
          return store_failure(key + ": unreadable");
        }
        if (self->state.damaged.count(key) != 0)
          return to_caf(error(errc::store_error, key + ": damaged (its size or digest is wrong)"));
        auto it = self->state.kept.find(key);
        if (it == self->state.kept.end()) return {false, std::vector<uint8_t>{}};
        if (key.starts_with(data_chunk_prefix) && self->state.shard_read_delay.count() > 0) {
          auto rp = self->make_response_promise<bool, std::vector<uint8_t>>();
          self->state.slow_reads.emplace_back(it->second, rp);
          self->delayed_send(self, self->state.shard_read_delay, tick_atom::value);
          return rp;
        }
        return {true, it->second};
      },
      [=](tick_atom) {
        auto [value, rp] = std::move(self->state.slow_reads.front());
        self->state.slow_reads.pop_front();
        rp.deliver(true, std::move(value));
      },
      [=](commit_atom, store_batch& b) -> caf::result<caf::ok_atom> {
        for (const auto& k : b.keys)
          if (self->state.held_keys.count(k) != 0) {
            auto rp = self->make_response_promise<caf::ok_atom>();
            self->state.held_commits.emplace_back(std::move(b), rp);
            return rp;
          }
        if (self->state.max_batch_keys > 0 && b.keys.size() > self->state.max_batch_keys)
          return store_failure("too many operations in txn request");
        for (const auto& k : b.keys) {
          if (self->state.unwritable.count(k) != 0) return store_failure(k + ": unwritable");
          if (auto it = self->state.failing_commits.find(k);
              it != self->state.failing_commits.end() && it->second > 0) {
            --it->second;
            return store_failure(k + ": the store did not answer");
          }
        }
        for (size_t i = 0; i < b.keys.size(); ++i) {
          if (b.values[i].empty()) {
            self->state.kept.erase(b.keys[i]);
            self->state.deleted.insert(b.keys[i]);
          } else {
            self->state.kept[b.keys[i]] = std::move(b.values[i]);
          }
        }
        return caf::ok_atom::value;
      },
      [=](caf::put_atom, const std::string& key) { self->state.unwritable.insert(key); },
      [=](held_atom, const std::string& key) { self->state.held_keys.insert(key); },
      [=](repair_atom, const std::string& key) { self->state.damaged.erase(key); },
      [=](caf::put_atom, held_atom) { release_held(self, true); },
      // The held commits fail instead (a disk that failed the write), none of them applied.
      [=](caf::put_atom, held_atom, bool applied) { release_held(self, applied); },
      // How many commits are held.
      [=](caf::get_atom, held_atom) {
        return static_cast<int64_t>(self->state.held_commits.size());
      },
      [=](caf::put_atom, const std::string& key, int times) {
        self->state.failing_commits[key] = times;
      },
      [=](caf::get_atom, const std::string& key) { return self->state.reads[key]; },
      [=](caf::get_atom) {
        return std::vector<std::string>(self->state.deleted.begin(), self->state.deleted.end());
      },
  };
}

struct slow_ledger_state {
  caf::actor keeper;
  std::vector<std::function<void()>> held;  // writes not passed on yet
  int failing_opens = 0;                    // opens still to fail, as a busy keeper's time out
};

// A ledger keeper busy when a round's escrow hold (`holds`) or its settlement (otherwise)
// comes: those wait until (caf::put_atom) passes them on; everything else goes to `keeper` at
// once. (caf::get_atom) -> the writes waiting; (caf::get_atom, caf::get_atom) -> `keeper`;
// (caf::put_atom, open_atom, n): the next n opens fail.
inline caf::behavior slow_ledger(caf::stateful_actor<slow_ledger_state>* self, caf::actor keeper,
                                 bool holds) {
  self->state.keeper = keeper;
  self->link_to(keeper);  // it ends with this one, which the fixture ends
  auto later = [=](std::function<void()> f) { self->state.held.push_back(std::move(f)); };
  return {
      [=](open_atom a, std::string& account, bool exists_ok) -> caf::result<caf::ok_atom> {
        if (self->state.failing_opens > 0) {
          self->state.failing_opens -= 1;
          return caf::make_error(caf::sec::request_timeout);
        }
        auto rp = self->make_response_promise<caf::ok_atom>();
        self->request(self->state.keeper, std::chrono::seconds(30), a, std::move(account),
                      exists_ok)
            .then([=](caf::ok_atom) mutable { rp.deliver(caf::ok_atom::value); },
                  [=](caf::error& e) mutable { rp.deliver(e); });
        return rp;
      },
      [=](caf::put_atom, open_atom, int n) { self->state.failing_opens = n; },
      [=](account_atom a, std::string& account) {
        return self->delegate(self->state.keeper, a, std::move(account));
      },
      [=](booked_atom a, std::string& op) {
        return self->delegate(self->state.keeper, a, std::move(op));
      },
      [=](settle_atom a, std::string& kind, std::string& memo, std::vector<posting>& postings,
          store_batch& batch, std::string& op) -> caf::result<caf::ok_atom> {
        auto rp = self->make_response_promise<caf::ok_atom>();
        auto pass_on = [=]() mutable {
          self->request(self->state.keeper, std::chrono::seconds(30), a, kind, memo, postings,
                        batch, op)
              .then([=](caf::ok_atom) mutable { rp.deliver(caf::ok_atom::value); },
                    [=](caf::error& e) mutable { rp.deliver(e); });
        };
        if (holds)
          pass_on();
        else
          later(pass_on);
        return rp;
      },
      [=](transfer_atom a, std::string& kind, std::string& memo, std::vector<posting>& postings,
          std::string& op) -> caf::result<uint64_t> {
        auto rp = self->make_response_promise<uint64_t>();
        auto pass_on = [=]() mutable {
          self->request(self->state.keeper, std::chrono::seconds(30), a, kind, memo, postings, op)
              .then([=](uint64_t seq) mutable { rp.deliver(seq); },
                    [=](caf::error& e) mutable { rp.deliver(e); });
        };
        if (holds && kind == "hold")
          later(pass_on);
        else
          pass_on();
        return rp;
      },
      [=](caf::put_atom) {
        auto held = std::move(self->state.held);
        self->state.held.clear();
        for (auto& f : held) f();
      },
      [=](caf::get_atom) { return static_cast<int64_t>(self->state.held.size()); },
      [=](caf::get_atom, caf::get_atom) { return self->state.keeper; },
  };
}

// A market that offers `slots` at the first acquire, and no worker after: a running job then
// waits for some. (caf::get_atom) -> the actor that asked last (a job's own actor);
// (caf::get_atom, caf::get_atom) -> the nodes its last acquire avoided (counted in the reply);
// (caf::get_atom, release_atom) -> each release so far: "free", "failed: the node's fault" or
// "failed: not the node's fault".
inline caf::behavior offering_market(caf::event_based_actor* self, std::vector<worker_slot> slots) {
  auto offered = std::make_shared<std::vector<worker_slot>>(std::move(slots));
  auto asker = std::make_shared<caf::actor>();
  auto last_avoided = std::make_shared<std::vector<std::string>>();
  auto released = std::make_shared<std::vector<std::string>>();
  auto record = [released](bool failed, bool node_at_fault) {
    released->push_back(!failed         ? "free"
                        : node_at_fault ? "failed: the node's fault"
                                        : "failed: not the node's fault");
  };
  return {
      [=](caf::get_atom) { return *asker; },
      [=](caf::get_atom, caf::get_atom) { return *last_avoided; },
      [=](caf::get_atom, release_atom) { return *released; },
      [=](acquire_atom, const std::string&, const std::string&, int64_t, uint8_t, int64_t, double,
          const std::vector<std::string>& avoided) {
        *last_avoided = avoided;
        *asker = caf::actor_cast<caf::actor>(self->current_sender());
        acquire_reply r;
        r.slots = std::move(*offered);
        r.avoided = static_cast<int64_t>(avoided.size());
        offered->clear();
        return r;
      },
      [=](release_atom, const caf::actor&) { record(false, false); },
      [=](release_atom, const caf::actor&, bool failed) { record(failed, true); },
      [=](release_atom, const caf::actor&, bool failed, bool node_at_fault) {
        record(failed, node_at_fault);
      },
  };
}

// A slot of `worker` (an actor of another system, standing for a node) on node `id`, `name`.
inline worker_slot node_slot(caf::actor worker, std::string id, std::string name) {
  worker_slot slot;
  slot.worker = std::move(worker);
  slot.node_id = std::move(id);
  slot.node_name = std::move(name);
  return slot;
}

inline dataset samples(int64_t n) {
  dataset out;
  out.classes = 3;
  out.features = tensor::empty({n, 4}, dtype::f32);
  out.labels = tensor::empty({n}, dtype::i32);
  for (int64_t i = 0; i < n * 4; ++i) out.features.data<float>()[i] = 0.5f * (i % 5);
  for (int64_t i = 0; i < n; ++i) out.labels.data<int32_t>()[i] = static_cast<int32_t>(i % 3);
  return out;
}

inline const std::string k_spec =
    "[job]\nname = \"r\"\nrounds = 3\nworkers = 1\n"
    "[model]\ninput = [4]\nlayers = [ { type = \"linear\", units = 3 }, "
    "{ type = \"softmax_xent\" } ]\n"
    "[data]\nset = \"c\"\n";

// k_spec as alice may submit it without a paying account: on nodes that ask nothing.
inline const std::string free_spec = k_spec + "[market]\nmax_price = 0\n";

// Alice's data set "c" (`train_shards` training shards of 12 samples, each its own, and a
// test shard) and her running job-1 of `spec`, which trains on it: its checkpoint is of
// round 2, its record says `recorded_round`.
inline failing_store_state stored_job(int64_t recorded_round = 2, const std::string& spec = k_spec,
                                      uint32_t train_shards = 1) {
  failing_store_state st;
  const auto test = encode_shard(samples(6), 0, 6);
  data_upload up("user/alice", "c", train_shards + 1, {});
  for (uint32_t i = 0; i < train_shards; ++i) {
    const auto train = encode_shard(samples(12 + i), 0, 12 + i);
    REQUIRE(up.add({i, train_shards + 1, false, train}).has_value());
    st.kept[data_chunk_key(digest_hex(train))] = train;
  }
  REQUIRE(up.add({train_shards, train_shards + 1, true, test}).has_value());
  st.kept[data_set_key("user/alice", "c")] = encode_data_set(up.finish().value());
  st.kept[data_chunk_key(digest_hex(test))] = test;
  job_status s;
  s.job_id = "job-1";
  s.owner = "user/alice";
  s.state = job_state::running;
  s.round = recorded_round;
  st.kept[job_record_key("job-1")] = encode_job_record(spec, s);
  // Its linear layer's weight and bias, and the outer optimiser's momentum of each.
  const std::vector<float> theta(4 * 3 + 3, 0.125f), momentum(theta.size(), 0.0f);
  checkpoint_view c;
  c.step = 2;
  c.data_set = "c";
  c.vectors = {{"theta", theta}, {"outer_momentum", momentum}};
  st.kept[job_checkpoint_key("job-1")] = encode_checkpoint(c);
  return st;
}

// The user's data set "c" of `st` (as stored_job() keeps it), registered as the job
// supervisor would.
inline std::shared_ptr<data_catalog> catalog_of(const failing_store_state& st) {
  auto catalog = std::make_shared<data_catalog>();
  auto info = decode_data_set(st.kept.at(data_set_key("user/alice", "c")));
  REQUIRE(info.has_value());
  std::map<std::string, std::shared_ptr<const std::vector<uint8_t>>> chunks;
  for (const auto& [k, v] : st.kept)
    if (k.starts_with(data_chunk_prefix))
      chunks[k.substr(std::string(data_chunk_prefix).size())] =
          std::make_shared<const std::vector<uint8_t>>(v);
  REQUIRE(catalog->put_user_set(*info, chunks).has_value());
  return catalog;
}

// Alice's running job-1 of `spec` (read from `spec_text`) as the supervisor resumes it at
// `round`, from the checkpoint `stored` keeps.
inline job_start resumed_start(const failing_store_state& stored, const std::string& spec_text,
                               const job_spec& spec, int64_t round) {
  job_start start;
  start.id = "job-1";
  start.spec_text = spec_text;
  start.spec = spec;
  start.status.job_id = "job-1";
  start.status.owner = "user/alice";
  start.status.state = job_state::running;
  start.status.round = round;
  start.status.rounds = spec.rounds;
  start.checkpoint = stored.kept.at(job_checkpoint_key("job-1"));
  start.from = job_start::origin::resumed;
  return start;
}

// Alice's job-1 of `spec_text` with `train_shards` training shards, stored at round 2, for a
// test to resume with links of its own: the records, the spec and the catalog are made before
// any actor (a REQUIRE that fails after one is made leaves it running).
struct resumable_job {
  std::string spec_text;
  failing_store_state stored;
  job_spec spec;
  std::shared_ptr<data_catalog> catalog;

  resumable_job(std::string text, uint32_t train_shards)
      : spec_text(std::move(text)), stored(stored_job(2, spec_text, train_shards)) {
    auto parsed = parse_job_spec(spec_text, "test");
    REQUIRE_MESSAGE(parsed.has_value(), parsed.error().message());
    spec = std::move(*parsed);
    catalog = catalog_of(stored);
  }

  // Resumes it at round 2 in `f` with `links`, whose store is a failing_store of its records
  // unless the test made one, and the test standing for its supervisor.
  caf::actor spawn(configured_system& f, job_links& links) const {
    if (!links.store) links.store = f.sys.spawn(failing_store, stored);
    links.supervisor = caf::actor_cast<caf::actor>(f.self);
    links.catalog = catalog;
    return spawn_job(f.sys, resumed_start(stored, spec_text, spec, 2), links);
  }
};

// A slot of `worker` on a trusted node (core tier: its results are not re-computed) whose
// key is `key`.
inline worker_slot core_slot(caf::actor worker, const node_identity& key, std::string node) {
  worker_slot slot = node_slot(std::move(worker), "id-" + node, node);
  slot.tier = static_cast<uint8_t>(node_tier::core);
  slot.public_key = key.public_key();
  return slot;
}

// The job's status once it has ended, as it tells the test standing for its supervisor;
// nullopt if not within `within`.
inline std::optional<job_status> job_end(configured_system& f, std::chrono::milliseconds within) {
  std::optional<job_status> end;
  const auto until = std::chrono::steady_clock::now() + within;
  while (!end && std::chrono::steady_clock::now() < until)
    f.self->receive(
        [&](progress_atom, job_status& s) {
          if (is_terminal(s.state)) end = std::move(s);
        },
        [](const caf::down_msg&) {}, caf::after(std::chrono::milliseconds(50)) >> [] {});
  return end;
}

// A job supervisor over a failing_store of `st` and an offering_market of `slots`; with
// `ledger`, the ledger it returns too (made and prepared before the supervisor starts and
// resumes the stored jobs: a keeper over `store`, or an actor played by the test).
struct job_fixture : configured_system {
  const std::string alice = "user/alice";
  const std::chrono::seconds wait{30};
  caf::actor store, market, keeper, supervisor;

  explicit job_fixture(failing_store_state st, std::vector<worker_slot> slots = {},
                       std::function<caf::actor(job_fixture&)> ledger = {},
                       std::chrono::milliseconds record_wait = std::chrono::seconds(30)) {
    store = sys.spawn(failing_store, std::move(st));
    market = sys.spawn(offering_market, std::move(slots));
    job_links links;
    links.store = store;
    links.market = market;
    links.catalog = std::make_shared<data_catalog>();
    links.record_wait = record_wait;
    if (ledger) {
      keeper = ledger(*this);
      links.ledger = keeper;
    }
    supervisor = spawn_job_supervisor(sys, links);
  }
  ~job_fixture() {
    self->send_exit(supervisor, caf::exit_reason::user_shutdown);
    self->send_exit(market, caf::exit_reason::user_shutdown);
    if (keeper) self->send_exit(keeper, caf::exit_reason::user_shutdown);
    self->send_exit(store, caf::exit_reason::user_shutdown);
  }

  job_status status() {
    job_status out;
    self->request(supervisor, wait, status_atom::value, alice, std::string("job-1"))
        .receive([&](job_status& s) { out = std::move(s); },
                 [&](caf::error&) {});  // unknown until the records are read
    return out;
  }
  // The job's status once `done` holds of it, or after `seconds`.
  template <class Pred>
  job_status await(Pred done, int seconds) {
    auto s = status();
    for (int tries = 0; tries < seconds * 10 && !done(s); ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      s = status();
    }
    return s;
  }
};

// The status of job-1 once it says it waits for its checkpoint, within 5 s (awaited by its
// words: a slow machine shows the data sets' loading first).
inline job_status await_checkpoint_wait(job_fixture& f) {
  return f.await(
      [](const job_status& s) {
        return s.detail.find("waiting: its checkpoint cannot be read: ") == 0;
      },
      5);
}

// k_spec paid from alice's account.
inline const std::string metered_spec =
    k_spec + "[market]\naccount = \"user/alice\"\nbudget = 100.0\nmax_price = 1.0\n";

// A ledger keeper of `f`'s system over `store`: alice's account, holding 100 credits, and
// job-1's escrow open.
inline caf::actor funded_keeper(configured_system& f, const caf::actor& store) {
  const std::chrono::seconds wait{30};
  auto keeper = spawn_ledger_keeper(f.sys, store);
  for (const char* account : {"user/alice", "escrow/job-1"})
    f.self->request(keeper, wait, open_atom::value, std::string(account), false)
        .receive([](caf::ok_atom) {}, [&](caf::error& e) { FAIL(f.sys.render(e)); });
  f.self
      ->request(keeper, wait, transfer_atom::value, std::string("credit"), std::string("test"),
                std::vector<posting>{{"external", -100'000'000}, {"user/alice", 100'000'000}})
      .receive([](uint64_t) {}, [&](caf::error& e) { FAIL(f.sys.render(e)); });
  return keeper;
}

// A ledger keeper over the fixture's store: alice's account, holding 100 credits, and job-1's
// escrow open.
inline caf::actor funded_keeper(job_fixture& f) {
  return funded_keeper(f, f.store);
}

// Waits (10 s at most) until the fixture's slow_ledger holds a request back: the round's
// hold is on its way.
inline void await_held_request(job_fixture& f) {
  int64_t waiting = 0;
  for (int tries = 0; tries < 100 && waiting == 0; ++tries) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    f.self->request(f.keeper, f.wait, caf::get_atom::value)
        .receive([&](int64_t n) { waiting = n; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
  }
  REQUIRE(waiting == 1);
}

/// Node `key`'s result of assignment `a`: every one of `parameters` moved by 0.001, of 12
/// samples, at `loss`, claiming `compute_s` of compute, signed.
inline assignment_result small_signed_result(const node_identity& key, const assignment& a,
                                             size_t parameters, double loss = 1.0,
                                             double compute_s = 0.01) {
  assignment_result r;
  r.assignment_id = a.id;
  r.update = encode_update(std::vector<float>(parameters, 0.001f), compression::fp32);
  r.loss = loss;
  r.samples = 12;
  r.compute_s = compute_s;
  r.signature = key.sign(result_message(a.id, r.update));
  return r;
}

/// A worker of node `key` that answers every assignment at once with a small_signed_result.
inline caf::behavior prompt_worker(caf::event_based_actor*, std::shared_ptr<node_identity> key,
                                   size_t parameters) {
  return {
      [=](assign_atom, assignment& a) { return small_signed_result(*key, a, parameters); },
      [](abort_atom, uint64_t) {},
  };
}

/// A worker of node `key` that answers every assignment `delay` after it came with a
/// small_signed_result. (caf::get_atom) -> how many assignments it was given.
inline caf::behavior delayed_worker(
    caf::stateful_actor<std::map<uint64_t, caf::response_promise>>* self,
    std::shared_ptr<node_identity> key, size_t parameters, std::chrono::milliseconds delay) {
  auto given = std::make_shared<int64_t>(0);
  return {
      [=](assign_atom, assignment& a) -> caf::response_promise {
        ++*given;
        auto rp = self->make_response_promise();
        self->state[a.id] = rp;
        self->delayed_send(self, delay, caf::put_atom::value, a.id);
        return rp;
      },
      [=](caf::put_atom, uint64_t id) {
        auto it = self->state.find(id);
        if (it == self->state.end()) return;
        assignment a;
        a.id = id;
        it->second.deliver(small_signed_result(*key, a, parameters));
        self->state.erase(it);
      },
      [=](caf::get_atom) { return *given; },
      [](abort_atom, uint64_t) {},
  };
}

/// A reputation tracker that takes a job's credits and rejects nobody.
inline caf::behavior crediting_reputation(caf::event_based_actor*) {
  return {
      [](credit_atom, const std::string&, uint8_t, double, int64_t) {},
      [](reject_atom, const std::string&, std::string&) { return std::vector<std::string>{}; },
  };
}

}  // namespace gflex::test
