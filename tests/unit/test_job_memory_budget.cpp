/// @file
/// The job memory budget: a job is refused at its submit when the core's memory its model
/// takes (its parameters, and its workers' updates) would pass what its account's, or the
/// whole core's, unfinished jobs may take. Before, any account could fill the core's memory
/// with large models, and the core restarted after the kill resumed them all.

#include <doctest/doctest.h>

#include <caf/all.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "configured_system.hpp"
#include "data_catalog.hpp"
#include "gflex/kernels/workload.hpp"
#include "gflex/runtime/digest.hpp"
#include "gflex/runtime/job_spec.hpp"
#include "gflex/runtime/shard.hpp"
#include "job.hpp"
#include "job_fixture.hpp"
#include "job_supervisor.hpp"
#include "messages.hpp"
#include "user_data.hpp"

using namespace gflex;

namespace {

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), path.string());
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The core's memory a job of `text` takes, its model planned as the supervisor plans it.
uint64_t memory_of(const std::string& text, const std::string& what) {
  auto spec = parse_job_spec(text, what);
  REQUIRE_MESSAGE(spec.has_value(), what);
  const bool builtin = kernels::is_builtin_data_set(spec->data_set);
  auto w = kernels::find_workload(spec->workload, spec->model, builtin ? spec->data_set : "");
  REQUIRE_MESSAGE(w.has_value(), what);
  return job_core_memory_bytes(**w, *spec);
}

// k_spec's model: a linear layer of 4 x 3 weights and 3 biases, one int8 worker.
const int64_t k_parameters = 4 * 3 + 3;

uint64_t k_memory() {
  return memory_of(test::free_spec, "k_spec");
}

// A job supervisor over a store that holds alice's and bob's data sets "c" (k_spec's), with
// `budget`; a market that offers nothing, so that the jobs wait.
struct budget_fixture : test::configured_system {
  const std::string alice = "user/alice", bob = "user/bob";
  const std::chrono::seconds wait{30};
  caf::actor store, market, supervisor;

  explicit budget_fixture(job_memory_budget budget) {
    test::failing_store_state st;
    const auto train = encode_shard(test::samples(12), 0, 12);
    const auto test_split = encode_shard(test::samples(6), 0, 6);
    for (const char* owner : {"user/alice", "user/bob"}) {
      data_upload up(owner, "c", 2, {});
      REQUIRE(up.add({0, 2, false, train}).has_value());
      REQUIRE(up.add({1, 2, true, test_split}).has_value());
      st.kept[data_set_key(owner, "c")] = encode_data_set(up.finish().value());
    }
    st.kept[data_chunk_key(digest_hex(train))] = train;
    st.kept[data_chunk_key(digest_hex(test_split))] = test_split;
    store = sys.spawn(test::failing_store, std::move(st));
    market = sys.spawn(test::offering_market, std::vector<worker_slot>{});
    job_links links;
    links.store = store;
    links.market = market;
    links.catalog = std::make_shared<data_catalog>();
    supervisor = spawn_job_supervisor(sys, links, budget);
    // Submits are refused until the stored sets are loaded; until then a listing is a
    // passing loss too. (A failure here, in the constructor, would leave the actors running
    // and the test process with them.)
    bool loaded = false;
    std::string last_error;
    for (int tries = 0; tries < 100 && !loaded; ++tries) {
      self->request(supervisor, wait, dlist_atom::value, std::string(operator_principal))
          .receive([&](std::vector<data_set_info>& sets) { loaded = sets.size() == 2; },
                   [&](caf::error& e) { last_error = sys.render(e); });
      if (!loaded) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (!loaded) {
      for (const auto& a : {supervisor, market, store})
        self->send_exit(a, caf::exit_reason::user_shutdown);
      FAIL("the stored data sets were not listed within 5 s: " << last_error);
    }
  }
  ~budget_fixture() {
    self->send_exit(supervisor, caf::exit_reason::user_shutdown);
    self->send_exit(market, caf::exit_reason::user_shutdown);
    self->send_exit(store, caf::exit_reason::user_shutdown);
  }

  // The job id, or the refusal ("refused: ...").
  std::string submit(const std::string& who, const std::string& text = test::free_spec) {
    std::string out;
    self->request(supervisor, wait, submit_atom::value, who, text)
        .receive([&](std::string& id) { out = id; },
                 [&](caf::error& e) { out = "refused: " + sys.render(e); });
    return out;
  }
  void cancel(const std::string& who, const std::string& id) {
    self->request(supervisor, wait, cancel_atom::value, who, id)
        .receive([](caf::ok_atom) {}, [&](caf::error& e) { FAIL(sys.render(e)); });
  }
};

}  // namespace

TEST_SUITE("job memory budget") {
  TEST_CASE("a job takes its parameters thrice and two rounds of its workers' updates") {
    auto spec = parse_job_spec(test::free_spec, "k_spec");
    REQUIRE(spec.has_value());
    spec->workers = 3;
    spec->compression = compression::int8;
    // 1000 parameters: 4 blocks of 256 at int8, a 4-byte scale each.
    CHECK(job_core_memory_bytes(1000, *spec) == 12 * 1000 + 2 * 3 * (1000 + 4 * 4));
    spec->compression = compression::fp32;
    CHECK(job_core_memory_bytes(1000, *spec) == 12 * 1000 + 2 * 3 * 4 * 1000);
    // The largest model (2^28 parameters) with the most workers (1024) at fp32: 2 TiB.
    spec->workers = 1024;
    CHECK(job_core_memory_bytes(int64_t{1} << 28, *spec) ==
          (uint64_t{3} << 30) + 2 * 1024 * (uint64_t{1} << 30));
  }

  TEST_CASE("the shipped jobs and the large-model test's job fit the default budget") {
    // The per-account default, and as core-wide bound the same 8 GiB (half a 16 GiB machine's
    // memory), not the build machine's own.
    CHECK(default_job_memory_budget().per_account == uint64_t{8} << 30);
    CHECK(default_job_memory_budget().core > 0);
    const job_memory_budget budget;
    const std::filesystem::path root(GFLEX_SOURCE_DIR);
    std::map<std::string, uint64_t> jobs;
    for (const auto& file : std::filesystem::directory_iterator(root / "apps/jobs"))
      if (file.path().extension() == ".toml")
        jobs[file.path().filename().string()] =
            memory_of(read_text(file.path()), file.path().string());
    REQUIRE(jobs.size() >= 3);
    // The wide MLP tests/integration/large_model.sh submits (153.5 million parameters).
    const auto script = read_text(root / "tests/integration/large_model.sh");
    const std::string open = "<<'TOML'\n";
    const auto begin = script.find(open);
    REQUIRE(begin != std::string::npos);
    const auto end = script.find("\nTOML\n", begin);
    REQUIRE(end != std::string::npos);
    const auto wide = script.substr(begin + open.size(), end - begin - open.size());
    jobs["large_model.sh"] = memory_of(wide, "large_model.sh");
    CHECK(jobs["large_model.sh"] > uint64_t{2} << 30);  // it is the large one
    for (const auto& job : jobs) {
      // Named, not bound: clang refuses a structured binding in doctest's CAPTURE.
      const std::string& name = job.first;
      const uint64_t bytes = job.second;
      CAPTURE(name);
      CAPTURE(bytes);
      CHECK(bytes <= budget.per_account);
      CHECK(bytes <= budget.core);
    }
  }

  TEST_CASE("an account's jobs are refused past its budget, and an ended one makes room") {
    const uint64_t one = k_memory();
    budget_fixture f({2 * one + one / 2, uint64_t{1} << 40});
    CHECK(f.submit(f.alice) == "job-1");
    CHECK(f.submit(f.alice) == "job-2");
    const auto refused = f.submit(f.alice);
    CHECK_MESSAGE(refused.find("limit_exceeded") != std::string::npos, refused);
    const std::string says = "its model's " + std::to_string(k_parameters) + " parameters need " +
                             std::to_string(one) + " bytes";
    CHECK_MESSAGE(refused.find(says) != std::string::npos, refused);
    CHECK_MESSAGE(refused.find("user/alice's unfinished jobs have " + std::to_string(one / 2) +
                               " bytes") != std::string::npos,
                  refused);
    // Another account's budget is its own.
    CHECK(f.submit(f.bob) == "job-3");
    f.cancel(f.alice, "job-1");
    CHECK(f.submit(f.alice) == "job-4");
  }

  TEST_CASE("a job's evaluation on the core counts against the budget") {
    // Each job evaluates on the core, on a thread of its own, all of them at once: a copy of
    // the parameters and a batch's working values (here 2 million values a sample, a batch of
    // 31: 248 MiB). Uncounted, the budget took 117 MB for each such job, and five of them fit
    // where each held 420 MB as it evaluated.
    std::string wide = test::free_spec;
    const std::string linear = R"({ type = "linear", units = 3 })";
    REQUIRE(wide.find(linear) != std::string::npos);
    wide.replace(wide.find(linear), linear.size(),
                 R"({ type = "linear", units = 1048576 }, { type = "relu" }, )" + linear);
    auto spec = parse_job_spec(wide, "wide");
    REQUIRE(spec.has_value());
    auto w = kernels::find_workload(spec->workload, spec->model, "");
    REQUIRE(w.has_value());
    const auto parameters = (*w)->parameter_count();
    CHECK((*w)->evaluation_bytes() >= uint64_t{240} << 20);
    const uint64_t one = memory_of(wide, "wide");
    CHECK(one == job_core_memory_bytes(parameters, *spec) + 4 * static_cast<uint64_t>(parameters) +
                     (*w)->evaluation_bytes());
    budget_fixture f({uint64_t{600} << 20, uint64_t{1} << 40});
    CHECK(f.submit(f.alice, wide) == "job-1");
    const auto refused = f.submit(f.alice, wide);
    CHECK_MESSAGE(refused.find("limit_exceeded") != std::string::npos, refused);
    CHECK_MESSAGE(
        refused.find("an evaluation's copy of the parameters and batch") != std::string::npos,
        refused);
  }

  TEST_CASE("every account's jobs together are refused past the core's budget") {
    const uint64_t one = k_memory();
    budget_fixture f({uint64_t{1} << 40, 2 * one + one / 2});
    CHECK(f.submit(f.alice) == "job-1");
    CHECK(f.submit(f.bob) == "job-2");
    const auto refused = f.submit(f.bob);
    CHECK_MESSAGE(refused.find("limit_exceeded") != std::string::npos, refused);
    CHECK_MESSAGE(refused.find("the core's unfinished jobs have " + std::to_string(one / 2) +
                               " bytes") != std::string::npos,
                  refused);
  }

  TEST_CASE("a job being submitted counts against the budget") {
    // Its record is still being written: parallel submits could all pass the budget.
    const uint64_t one = k_memory();
    budget_fixture f({one + one / 2, uint64_t{1} << 40});
    f.self->send(f.store, test::held_atom::value, job_record_key("job-1"));
    auto first =
        f.self->request(f.supervisor, f.wait, submit_atom::value, f.alice, test::free_spec);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    const auto refused = f.submit(f.alice);
    CHECK_MESSAGE(refused.find("user/alice's unfinished jobs have") != std::string::npos, refused);
    f.self->send(f.store, caf::put_atom::value, test::held_atom::value);
    std::string id;
    first.receive([&](std::string& s) { id = s; }, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    CHECK(id == "job-1");
  }
}
