/// @file
/// How a starting core resumes its jobs when the store fails a read, against a store played
/// by the test: a failed read of the users' data sets fails no job (the jobs on them wait and
/// resume once the read succeeds; before, each failed for good with "no data set"), and a job
/// whose checkpoint cannot be read can be cancelled while it waits (before, it stayed
/// "running" for good and no cancel reached it).

#include <doctest/doctest.h>

#include <caf/all.hpp>

#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "configured_system.hpp"
#include "data_catalog.hpp"
#include "gflex/runtime/checkpoint.hpp"
#include "gflex/runtime/digest.hpp"
#include "gflex/runtime/shard.hpp"
#include "job.hpp"
#include "job_record.hpp"
#include "job_supervisor.hpp"
#include "messages.hpp"
#include "user_data.hpp"

using namespace gflex;

namespace {

struct failing_store_state {
  std::map<std::string, std::vector<uint8_t>> kept;
  int shard_scan_failures = 0;       ///< Scans of the data sets' shards still to fail.
  std::set<std::string> unreadable;  ///< Keys whose reads fail.
};

caf::error store_failure(const std::string& what) {
  return caf::make_error(caf::sec::runtime_error, what);
}

// A store of `kept` whose first `shard_scan_failures` scans of the shards fail, as do the
// reads of the keys in `unreadable`; commits are applied.
caf::behavior failing_store(caf::stateful_actor<failing_store_state>* self,
                            failing_store_state init) {
  self->state = std::move(init);
  using keys_values = caf::result<std::vector<std::string>, std::vector<std::vector<uint8_t>>>;
  auto scan = [=](const std::string& prefix, const std::string& suffix) -> keys_values {
    if (prefix == data_chunk_prefix && self->state.shard_scan_failures > 0) {
      --self->state.shard_scan_failures;
      return store_failure("blobs/shard: damaged (its size or digest is wrong)");
    }
    std::vector<std::string> keys;
    std::vector<std::vector<uint8_t>> values;
    for (const auto& [k, v] : self->state.kept)
      if (k.starts_with(prefix) && k.ends_with(suffix)) {
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
      [=](read_atom, const std::string& key) -> caf::result<bool, std::vector<uint8_t>> {
        if (self->state.unreadable.count(key) != 0) return store_failure(key + ": unreadable");
        auto it = self->state.kept.find(key);
        if (it == self->state.kept.end()) return {false, std::vector<uint8_t>{}};
        return {true, it->second};
      },
      [=](commit_atom, store_batch& b) -> caf::ok_atom {
        for (size_t i = 0; i < b.keys.size(); ++i) {
          if (b.values[i].empty())
            self->state.kept.erase(b.keys[i]);
          else
            self->state.kept[b.keys[i]] = std::move(b.values[i]);
        }
        return caf::ok_atom::value;
      },
  };
}

// A market with no workers: a running job waits for some.
caf::behavior empty_market() {
  return {
      [](acquire_atom, const std::string&, const std::string&, int64_t, uint8_t, int64_t, double) {
        return acquire_reply{};
      },
      [](release_atom, const caf::actor&) {},
      [](release_atom, const caf::actor&, bool) {},
  };
}

dataset samples(int64_t n) {
  dataset out;
  out.classes = 3;
  out.features = tensor::empty({n, 4}, dtype::f32);
  out.labels = tensor::empty({n}, dtype::i32);
  for (int64_t i = 0; i < n * 4; ++i) out.features.data<float>()[i] = 0.5f * (i % 5);
  for (int64_t i = 0; i < n; ++i) out.labels.data<int32_t>()[i] = static_cast<int32_t>(i % 3);
  return out;
}

const std::string k_spec =
    "[job]\nname = \"r\"\nrounds = 3\nworkers = 1\n"
    "[model]\ninput = [4]\nlayers = [ { type = \"linear\", units = 3 }, "
    "{ type = \"softmax_xent\" } ]\n"
    "[data]\nset = \"c\"\n";

// Alice's data set "c" and her running job-1, which trains on it: its checkpoint is of round
// 2, its record says `recorded_round`.
failing_store_state stored_job(int64_t recorded_round = 2) {
  failing_store_state st;
  const auto train = encode_shard(samples(12), 0, 12), test = encode_shard(samples(6), 0, 6);
  data_upload up("user/alice", "c", 2, {});
  REQUIRE(up.add({0, 2, false, train}).has_value());
  REQUIRE(up.add({1, 2, true, test}).has_value());
  st.kept[data_set_key("user/alice", "c")] = encode_data_set(up.finish().value());
  st.kept[data_chunk_key(digest_hex(train))] = train;
  st.kept[data_chunk_key(digest_hex(test))] = test;
  job_status s;
  s.job_id = "job-1";
  s.owner = "user/alice";
  s.state = job_state::running;
  s.round = recorded_round;
  st.kept[job_record_key("job-1")] = encode_job_record(k_spec, s);
  // Its linear layer's weight and bias, and the outer optimiser's momentum of each.
  const std::vector<float> theta(4 * 3 + 3, 0.125f), momentum(theta.size(), 0.0f);
  checkpoint_view c;
  c.step = 2;
  c.data_set = "c";
  c.vectors = {{"theta", theta}, {"outer_momentum", momentum}};
  st.kept[job_checkpoint_key("job-1")] = encode_checkpoint(c);
  return st;
}

struct resume_fixture : test::configured_system {
  const std::string alice = "user/alice";
  const std::chrono::seconds wait{30};
  caf::actor store, market, supervisor;

  explicit resume_fixture(failing_store_state st) {
    store = sys.spawn(failing_store, std::move(st));
    market = sys.spawn(empty_market);
    job_links links;
    links.store = store;
    links.market = market;
    links.catalog = std::make_shared<data_catalog>();
    supervisor = spawn_job_supervisor(sys, links);
  }
  ~resume_fixture() {
    self->send_exit(supervisor, caf::exit_reason::user_shutdown);
    self->send_exit(market, caf::exit_reason::user_shutdown);
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

}  // namespace

TEST_SUITE("job resume") {
  TEST_CASE("a failed read of the data sets fails no job: it waits, then resumes") {
    auto st = stored_job();
    st.shard_scan_failures = 1;  // the next read, 5 s later, succeeds
    resume_fixture f(st);
    auto s = f.await([](const job_status& s) { return !s.detail.empty(); }, 5);
    CHECK(s.state == job_state::running);
    CHECK_MESSAGE(s.detail.find("waiting for the stored data sets to load: ") == 0, s.detail);
    CHECK(s.round == 2);
    // Resumed once they load: it waits for workers from round 2.
    s = f.await([](const job_status& s) { return s.detail.find("waiting for workers") == 0; }, 15);
    CHECK(s.state == job_state::running);
    CHECK_MESSAGE(s.detail.find("waiting for workers: 1 assignment(s) of round 3") == 0, s.detail);
    CHECK(s.round == 2);
  }

  TEST_CASE("a job whose checkpoint cannot be read waits, and can be cancelled") {
    auto st = stored_job();
    st.unreadable.insert(job_checkpoint_key("job-1"));
    resume_fixture f(st);
    auto s = f.await([](const job_status& s) { return !s.detail.empty(); }, 5);
    CHECK(s.state == job_state::running);
    CHECK_MESSAGE(s.detail.find("waiting: its checkpoint cannot be read: ") == 0, s.detail);
    f.self->request(f.supervisor, f.wait, cancel_atom::value, f.alice, std::string("job-1"))
        .receive([](caf::ok_atom) {}, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    s = f.await([](const job_status& s) { return is_terminal(s.state); }, 10);
    CHECK(s.state == job_state::cancelled);
    CHECK(s.round == 2);  // what its record said: nothing was trained or lost
    CHECK_MESSAGE(s.detail.find("cancelled while it waited: waiting: its checkpoint cannot be "
                                "read") == 0,
                  s.detail);
  }

  TEST_CASE("a record a round behind its checkpoint resumes from the checkpoint's round") {
    // A top-up's record (of the last durable round) landed after the next round's record and
    // checkpoint: resumed from the record's round, that round was trained and paid again.
    resume_fixture f(stored_job(1));
    auto s = f.await([](const job_status& s) { return !s.detail.empty(); }, 10);
    CHECK_MESSAGE(s.detail.find("waiting for workers: 1 assignment(s) of round 3") == 0, s.detail);
    CHECK(s.round == 2);
  }

  TEST_CASE("a checkpoint that cannot be used ends its job, failed, at its recorded round") {
    // Started over from round 0 before, with only a line in the log: every round trained and
    // paid again.
    auto damaged = stored_job();
    damaged.kept[job_checkpoint_key("job-1")] = {1, 2, 3, 4};
    resume_fixture f(damaged);
    auto s = f.await([](const job_status& s) { return is_terminal(s.state); }, 10);
    CHECK(s.state == job_state::failed);
    CHECK(s.round == 2);
    CHECK_MESSAGE(s.detail.find("its checkpoint is damaged (") == 0, s.detail);
    CHECK_MESSAGE(s.detail.find(": the job cannot resume from it") != std::string::npos, s.detail);

    auto missing = stored_job();
    missing.kept.erase(job_checkpoint_key("job-1"));
    resume_fixture g(missing);
    s = g.await([](const job_status& s) { return is_terminal(s.state); }, 10);
    CHECK(s.state == job_state::failed);
    CHECK(s.round == 2);
    CHECK_MESSAGE(s.detail.find("its checkpoint of round 2 is missing") == 0, s.detail);
  }
}
