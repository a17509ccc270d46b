/// @file
/// The job supervisor's model exports (gflex fetch) against a store played by the test: it
/// holds every checkpoint read until told to answer, so that the exports being made at once
/// can be counted. Each holds a checkpoint and its export (up to 2 GiB for the largest
/// model): a user fetching many of their ended jobs at once must not make the core build
/// them all together.

#include <doctest/doctest.h>

#include <caf/all.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "access.hpp"
#include "configured_system.hpp"
#include "data_catalog.hpp"
#include "gflex/job_status.hpp"
#include "gflex/kernels/workload.hpp"
#include "gflex/runtime/checkpoint.hpp"
#include "gflex/runtime/metrics.hpp"
#include "job.hpp"
#include "job_record.hpp"
#include "job_supervisor.hpp"
#include "messages.hpp"

using namespace gflex;

namespace {

using read_promise = caf::typed_response_promise<bool, std::vector<uint8_t>>;

struct held_store_state {
  std::vector<read_promise> held;      // checkpoint reads not answered yet
  std::vector<std::string> held_keys;  // the key each read
  size_t peak = 0;                     // the most held at once
};

// Ended jobs job-1 .. job-N of user/alice; every checkpoint read is held until (put_atom)
// answers those held ("no checkpoint") or (put_atom, i, bytes) answers the i-th held with
// `bytes` ((put_atom, key, bytes): the one of that key); (get_atom) -> (held now, most held at
// once).
caf::behavior held_store(caf::stateful_actor<held_store_state>* self, int jobs) {
  using keys_values = caf::result<std::vector<std::string>, std::vector<std::vector<uint8_t>>>;
  return {
      [=](scan_atom, const std::string&) -> keys_values {  // data sets: none
        return {std::vector<std::string>{}, std::vector<std::vector<uint8_t>>{}};
      },
      [=](scan_atom, const std::string&, const std::string&) -> keys_values {  // job records
        std::vector<std::string> keys;
        std::vector<std::vector<uint8_t>> values;
        for (int i = 1; i <= jobs; ++i) {
          job_status s;
          s.job_id = "job-" + std::to_string(i);
          s.owner = "user/alice";
          s.state = job_state::done;
          s.round = 1;
          keys.push_back("job/" + s.job_id + "/record");
          values.push_back(encode_job_record(
              "[job]\nname = \"e\"\nworkload = \"fashion-mlp\"\nrounds = 1\nworkers = 1\n", s));
        }
        return {std::move(keys), std::move(values)};
      },
      [=](read_atom, const std::string& key) -> caf::result<bool, std::vector<uint8_t>> {
        auto rp = self->make_response_promise<bool, std::vector<uint8_t>>();
        self->state.held.push_back(rp);
        self->state.held_keys.push_back(key);
        self->state.peak = std::max(self->state.peak, self->state.held.size());
        return rp;
      },
      [=](caf::put_atom) {
        auto held = std::move(self->state.held);
        self->state.held.clear();
        self->state.held_keys.clear();
        for (auto& rp : held) rp.deliver(false, std::vector<uint8_t>{});
      },
      [=](caf::put_atom, uint64_t index, std::vector<uint8_t>& checkpoint) {
        auto& held = self->state.held;
        if (index >= held.size()) return;
        held[index].deliver(true, std::move(checkpoint));
        held.erase(held.begin() + static_cast<std::ptrdiff_t>(index));
        self->state.held_keys.erase(self->state.held_keys.begin() +
                                    static_cast<std::ptrdiff_t>(index));
      },
      [=](caf::put_atom, const std::string& key, std::vector<uint8_t>& checkpoint) {
        auto& keys = self->state.held_keys;
        auto it = std::find(keys.begin(), keys.end(), key);
        if (it == keys.end()) return;
        const auto index = it - keys.begin();
        self->state.held[static_cast<size_t>(index)].deliver(true, std::move(checkpoint));
        self->state.held.erase(self->state.held.begin() + index);
        keys.erase(it);
      },
      [=](caf::get_atom) -> caf::result<uint64_t, uint64_t> {
        return {uint64_t{self->state.held.size()}, uint64_t{self->state.peak}};
      },
  };
}

}  // namespace

// A job supervisor over a held_store of `jobs` ended jobs, once it has read their records.
struct exports_fixture : test::configured_system {
  static constexpr int jobs = 7;
  const std::string alice = "user/alice";
  const std::chrono::seconds wait{30};
  caf::actor store = sys.spawn(held_store, jobs);
  caf::actor supervisor;
  std::vector<caf::response_handle<caf::blocking_actor, caf::message, true>> fetches;

  explicit exports_fixture(std::chrono::milliseconds export_idle = std::chrono::minutes(5)) {
    job_links links;
    links.store = store;
    links.catalog = std::make_shared<data_catalog>();
    links.payload_chunk_bytes = 64 << 10;  // a model of several parts
    supervisor = spawn_job_supervisor(sys, links, default_job_memory_budget(), export_idle);
    // Until it has read them, the supervisor says so (unavailable: ask again).
    size_t listed = 0;
    std::string refused;
    for (int tries = 0; tries < 50 && listed < jobs; ++tries) {
      self->request(supervisor, wait, jobs_atom::value, alice)
          .receive([&](std::vector<job_status>& all) { listed = all.size(); },
                   [&](caf::error& e) { refused = sys.render(e); });
      if (listed < jobs) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (listed < jobs) {
      // Stopped here: a fixture that throws is never destroyed, and its actors would keep
      // the actor system (and the test) from ending.
      self->send_exit(supervisor, caf::exit_reason::user_shutdown);
      self->send_exit(store, caf::exit_reason::user_shutdown);
    }
    REQUIRE_MESSAGE(listed == jobs, refused);
  }
  ~exports_fixture() {
    self->send_exit(supervisor, caf::exit_reason::user_shutdown);
    self->send_exit(store, caf::exit_reason::user_shutdown);
  }

  void fetch(int job) {
    fetches.push_back(self->request(supervisor, wait, fetch_atom::value, alice,
                                    "job-" + std::to_string(job), uint64_t{0}));
  }
  std::pair<uint64_t, uint64_t> store_counts() {
    std::pair<uint64_t, uint64_t> out;
    self->request(store, wait, caf::get_atom::value)
        .receive(
            [&](uint64_t held, uint64_t peak) {
              out = {held, peak};
            },
            [&](caf::error& e) { FAIL(sys.render(e)); });
    return out;
  }
  // Answers every checkpoint read, in turn, until none is held.
  void answer_all() {
    for (int round = 0; round < 20 && store_counts().first > 0; ++round) {
      caf::anon_send(store, caf::put_atom::value);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  // How the fetches were answered: (models, "no committed round", "fetch again", other).
  std::array<int, 4> outcomes() {
    std::array<int, 4> n{};
    for (auto& f : fetches)
      f.receive([&](model_part&) { ++n[0]; },
                [&](caf::error& e) {
                  const auto why = from_caf(e).message();
                  if (why.find("has no committed round yet") != std::string::npos)
                    ++n[1];
                  else if (why.find("fetch again shortly") != std::string::npos)
                    ++n[2];
                  else
                    ++n[3];
                });
    fetches.clear();
    return n;
  }
};

// Its exports go after 1 s unused.
struct idle_exports_fixture : exports_fixture {
  idle_exports_fixture() : exports_fixture(std::chrono::seconds(1)) {}
};

namespace {

// A whole checkpoint of fashion-mlp at step 1, its parameters all 0.5.
std::vector<uint8_t> fashion_checkpoint() {
  auto w = kernels::find_workload("fashion-mlp");
  REQUIRE(w.has_value());
  const std::vector<float> theta(static_cast<size_t>((*w)->parameter_count()), 0.5f);
  checkpoint_view c;
  c.workload = "fashion-mlp";
  c.step = 1;
  c.vectors = {{"theta", theta}};
  return encode_checkpoint(c);
}

}  // namespace

TEST_SUITE("model exports") {
  TEST_CASE_FIXTURE(exports_fixture,
                    "at most four exports are made at once; the other fetches wait, past 64 an "
                    "account refused") {
    // Every job's model at once, then 300 more fetches of the last job's: 4 are made, 64 of
    // alice's fetches wait, the rest are refused. The operator's fetch still waits its turn.
    for (int i = 1; i <= jobs; ++i) fetch(i);
    for (int k = 0; k < 300; ++k) fetch(jobs);
    fetches.push_back(self->request(supervisor, wait, fetch_atom::value,
                                    std::string(operator_principal), std::string("job-6"),
                                    uint64_t{0}));
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    CHECK(store_counts().first == 4);
    answer_all();  // each builder that ends lets a waiting fetch start one
    const auto n = outcomes();
    CHECK(store_counts().second == 4);
    CHECK(n[0] == 0);
    CHECK(n[1] == 4 + 64 + 1);
    CHECK(n[2] == 307 - 4 - 64);
    CHECK(n[3] == 0);
  }

  TEST_CASE_FIXTURE(exports_fixture,
                    "an export being read is kept; a fetch that needs its place waits") {
    // A real checkpoint of the workload, for the second export only.
    auto w = kernels::find_workload("fashion-mlp");
    REQUIRE(w.has_value());
    const std::vector<float> theta(static_cast<size_t>((*w)->parameter_count()), 0.5f);
    checkpoint_view c;
    c.workload = "fashion-mlp";
    c.step = 1;
    c.vectors = {{"theta", theta}};
    for (int i = 1; i <= 5; ++i) fetch(i);  // 4 being made, job-5's waits
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    REQUIRE(store_counts().first == 4);
    caf::anon_send(store, caf::put_atom::value, job_checkpoint_key("job-2"), encode_checkpoint(c));
    // job-2's export is made, and its first part read; job-5's fetch waits. Before, it took
    // job-2's place, and the reader's next part was "gone".
    model_part first;
    fetches[1].receive([&](model_part& p) { first = std::move(p); },
                       [&](caf::error& e) { FAIL(sys.render(e)); });
    REQUIRE(first.total > first.bytes.size());  // more than one part
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    CHECK(store_counts().first == 3);
    self->request(supervisor, wait, fetch_atom::value, alice, std::string("job-2"),
                  uint64_t{first.bytes.size()})
        .receive([&](model_part& p) { CHECK(p.offset == first.bytes.size()); },
                 [&](caf::error& e) { FAIL(sys.render(e)); });
    fetches.erase(fetches.begin() + 1);
    answer_all();  // the builders that end let job-5's fetch start one
    const auto n = outcomes();
    CHECK(n[1] == 4);
    CHECK(n[3] == 0);
  }

  TEST_CASE_FIXTURE(idle_exports_fixture,
                    "an export unused for its idle time goes, fetched "
                    "again or not") {
    // Dropped only as a later fetch came: after a gflex fetch, the export (up to about 1 GiB)
    // stayed in the core's memory for as long as no one fetched again.
    const auto kept = metrics::gauge_of("gflex_core_model_export_bytes", "");
    const double before = kept.value();
    fetch(2);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    REQUIRE(store_counts().first == 1);
    caf::anon_send(store, caf::put_atom::value, job_checkpoint_key("job-2"), fashion_checkpoint());
    model_part first;
    fetches[0].receive([&](model_part& p) { first = std::move(p); },
                       [&](caf::error& e) { FAIL(sys.render(e)); });
    fetches.clear();
    REQUIRE(first.total > first.bytes.size());
    CHECK(kept.value() - before == static_cast<double>(first.total));
    // Read again 0.5 s after it was made: it stays 1 s from then, past its first due time.
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    self->request(supervisor, wait, fetch_atom::value, alice, std::string("job-2"),
                  uint64_t{first.bytes.size()})
        .receive([&](model_part& p) { CHECK(p.offset == first.bytes.size()); },
                 [&](caf::error& e) { FAIL(sys.render(e)); });
    std::this_thread::sleep_for(std::chrono::milliseconds(700));
    CHECK(kept.value() - before == static_cast<double>(first.total));
    // Then it goes, with no further fetch.
    for (int tries = 0; tries < 50 && kept.value() > before; ++tries)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    CHECK_MESSAGE(kept.value() == before,
                  "the export's " << (kept.value() - before) << " bytes are still kept");
  }
}
