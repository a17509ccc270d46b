// The embedding API's in-process cluster: several jobs on one cluster, parameters fetched
// into the caller's buffer, and bad input answered with errors, never aborts.

#include <doctest/doctest.h>

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <thread>

#include "fashion_mnist_installed.hpp"
#include "gflex/gflex.hpp"
#include "gflex/kernels/model_builder.hpp"
#include "node_metrics.hpp"
#include "temp_dir.hpp"

using namespace gflex;

namespace {

std::string small_job(const std::string& name, const kernels::model_builder& model) {
  return "[job]\nname = \"" + name +
         "\"\nrounds = 2\nworkers = 2\n[inner]\nlocal_steps = 5\nbatch_size = 32\n"
         "[data]\nset = \"fashion-mnist\"\n" +
         model.toml();
}

// What a child process does with the clients of embedded clusters, in `scratch` (a directory
// of its own): 0 when everything answered as it should, else the step that did not (said on
// stderr).
int moved_clients(const std::filesystem::path& scratch) {
  auto failed = [](int step, const std::string& why) {
    std::fprintf(stderr, "step %d: %s\n", step, why.c_str());
    return step;
  };
  embedded_config config;
  config.nodes = 1;
  auto cluster = embedded_cluster::start(config);
  if (!cluster) return failed(1, cluster.error().message());
  {
    gflex::client moved = std::move(cluster->client());
    if (auto jobs = moved.jobs(); !jobs) return failed(2, jobs.error().message());
  }  // it took the cluster's actor system, and waited here for the core and nodes it runs
  if (auto jobs = cluster->client().jobs(); !jobs) return failed(3, jobs.error().message());
  auto other = embedded_cluster::start(config);
  if (!other) return failed(4, other.error().message());
  // The client assigned over was the owner of the first cluster's system: the same wait.
  cluster->client() = std::move(other->client());
  if (auto jobs = cluster->client().jobs(); !jobs) return failed(5, jobs.error().message());
  if (auto jobs = other->client().jobs(); !jobs) return failed(6, jobs.error().message());
  // A client that outlives its cluster: its requests fail, and it ends.
  std::optional<gflex::client> outliving;
  {
    auto third = embedded_cluster::start(config);
    if (!third) return failed(7, third.error().message());
    outliving.emplace(std::move(third->client()));
  }
  if (outliving->jobs()) return failed(8, "the cluster is gone, yet its client was answered");
  // A client that outlives its cluster does not keep the cluster's data directory: it held the
  // lock (the next cluster on it was refused as "in use") and a temporary directory stayed on
  // disk, until that client ended.
  embedded_config named = config;
  named.data_dir = scratch / "data";
  std::optional<gflex::client> lent;
  {
    auto fourth = embedded_cluster::start(named);
    if (!fourth) return failed(9, fourth.error().message());
    lent.emplace(std::move(fourth->client()));
    if (auto jobs = lent->jobs(); !jobs) return failed(10, jobs.error().message());
  }
  auto fifth = embedded_cluster::start(named);
  if (!fifth)
    return failed(11, "a cluster on the directory of one that ended: " + fifth.error().message());
  // The lent client's requests fail at once, saying why, and not as a lost link: following a
  // job rode one out for two minutes.
  const auto asked = std::chrono::steady_clock::now();
  auto refused = lent->jobs();
  const auto took = std::chrono::steady_clock::now() - asked;
  if (refused) return failed(12, "the cluster is gone, yet its client was answered");
  if (took > std::chrono::seconds(3))
    return failed(13, "refused after " + std::to_string(took / std::chrono::milliseconds(1)) +
                          " ms: " + refused.error().message());
  if (refused.error().message().find("the embedded cluster that lent this client has ended") ==
      std::string::npos)
    return failed(14, "refused as: " + refused.error().message());
  const auto followed = std::chrono::steady_clock::now();
  auto waited = lent->wait("job-1");
  if (waited || std::chrono::steady_clock::now() - followed > std::chrono::seconds(3))
    return failed(15, "following a job of the ended cluster did not fail at once");
  // A temporary directory goes with its cluster, though a client it lent lives on.
  const auto temporary = scratch / "tmp";
  std::filesystem::create_directories(temporary);
  ::setenv("TMPDIR", temporary.c_str(), 1);
  std::optional<gflex::client> lent_by_temporary;
  {
    auto sixth = embedded_cluster::start(config);
    if (!sixth) return failed(16, sixth.error().message());
    lent_by_temporary.emplace(std::move(sixth->client()));
  }
  for (const auto& left : std::filesystem::directory_iterator(temporary))
    return failed(17, "the ended cluster's temporary directory stayed: " + left.path().string());
  lent_by_temporary.reset();
  lent.reset();
  outliving.reset();
  return 0;
}

}  // namespace

TEST_SUITE("embedded cluster") {
  TEST_CASE("one cluster runs several jobs; parameters land in the caller's buffer" *
            doctest::skip(!test::fashion_mnist_installed())) {
    embedded_config config;
    config.nodes = 2;
    auto cluster = embedded_cluster::start(config);
    REQUIRE_MESSAGE(cluster.has_value(), cluster.error().message());
    CHECK(cluster->node_names() == std::vector<std::string>{"node-1", "node-2"});
    auto& c = cluster->client();

    kernels::model_builder model("tiny", {784});
    model.linear(16).relu().linear(10).softmax_xent();
    const int64_t count = model.plan()->parameters;
    for (const char* name : {"first", "second"}) {
      auto id = c.submit(small_job(name, model));
      REQUIRE_MESSAGE(id.has_value(), id.error().message());
      int polls = 0;
      auto done = c.wait(*id, [&](const job_status&) { ++polls; });
      REQUIRE(done.has_value());
      CHECK(done->state == job_state::done);
      CHECK(done->round == 2);
      CHECK(polls >= 1);
      std::vector<float> params(static_cast<size_t>(count), NAN);
      auto names = c.fetch_parameters(*id, params);
      REQUIRE_MESSAGE(names.has_value(), names.error().message());
      CHECK(names->size() == 4);
      CHECK(names->front() == "layer0.weight");
      CHECK(std::all_of(params.begin(), params.end(), [](float v) { return std::isfinite(v); }));
      // A buffer of the wrong size is an error that says both sizes, and is left alone.
      std::vector<float> small(10, 7.0f);
      auto wrong = c.fetch_parameters(*id, small);
      REQUIRE_FALSE(wrong.has_value());
      CHECK(wrong.error().message().find(std::to_string(count) + " parameters") !=
            std::string::npos);
      CHECK(small[0] == 7.0f);
    }
    // Bad specs are refused with the core's message; the cluster stays usable.
    auto bad = c.submit("[job]\nname = \"bad\"\nworkload = \"no-such\"\n");
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().message().find("unknown workload 'no-such'") != std::string::npos);
    // A batch whose activations pass the kernels' 32-bit sizes: run, it failed on every node.
    auto wide = c.submit(
        "[job]\nname = \"wide\"\nrounds = 1\n[inner]\nbatch_size = 65536\n[data]\n"
        "set = \"fashion-mnist\"\n[model]\ninput = [784]\nlayers = [ { type = \"linear\", "
        "units = 32768 }, { type = \"reshape\", shape = [32768, 1] }, { type = \"linear\", "
        "units = 1 }, { type = \"flatten\" }, { type = \"linear\", units = 10 }, "
        "{ type = \"softmax_xent\" } ]\n");
    REQUIRE_FALSE(wide.has_value());
    CHECK_MESSAGE(wide.error().message().find("inner.batch_size: 65536 samples of layer 1") !=
                      std::string::npos,
                  wide.error().message());
    CHECK(c.jobs().has_value());
    auto unknown = c.wait("job-999");
    CHECK_FALSE(unknown.has_value());
  }

  TEST_CASE("a worker's next shard is fetched and decoded while it computes" *
            doctest::skip(!test::fashion_mnist_installed())) {
    embedded_config config;
    config.nodes = 1;
    auto cluster = embedded_cluster::start(config);
    REQUIRE_MESSAGE(cluster.has_value(), cluster.error().message());
    kernels::model_builder model("tiny", {784});
    model.linear(10).softmax_xent();
    const std::string two = "rounds = 2\nworkers = 2";
    auto spec = small_job("ahead", model);
    spec.replace(spec.find(two), two.size(), "rounds = 4\nworkers = 1");
    const double fetched = node_metrics::shards("fetched").value();
    const double prefetched = node_metrics::shards("prefetched").value();
    auto id = cluster->client().submit(spec);
    REQUIRE_MESSAGE(id.has_value(), id.error().message());
    auto done = cluster->client().wait(*id);
    REQUIRE(done.has_value());
    CHECK(done->state == job_state::done);
    // Round 1's shard is awaited; each later round's was named by the assignment before.
    CHECK(node_metrics::shards("fetched").value() - fetched == 1);
    CHECK(node_metrics::shards("prefetched").value() - prefetched == 3);
  }

  TEST_CASE("a cluster of no nodes is an error, not an abort") {
    embedded_config config;
    config.nodes = 0;
    auto cluster = embedded_cluster::start(config);
    REQUIRE_FALSE(cluster.has_value());
    CHECK(cluster.error().message().find("[1, 64]") != std::string::npos);
  }

  TEST_CASE("a second cluster on a data directory in use is refused, and changes nothing") {
    test::temp_dir dir;
    embedded_config config;
    config.nodes = 1;
    config.data_dir = dir.path();
    auto first = embedded_cluster::start(config);
    REQUIRE(first.has_value());
    auto second = embedded_cluster::start(config);
    REQUIRE_FALSE(second.has_value());
    CHECK(second.error().code() == errc::unavailable);
    CHECK(second.error().message().find("in use by another gflex-core") != std::string::npos);
    // The first still serves: its status answers.
    CHECK(first->client().jobs().has_value());
  }

  TEST_CASE("a cluster's client moved out or assigned to leaves the cluster serving and ending") {
    // The client owned the cluster's actor system: moved out and destroyed, it waited for the
    // core and nodes that run in it, for ever; the cluster's next request found no client (a
    // null pointer). In a child process, so that a hang is seen (and killed) here.
    test::temp_dir scratch;
    REQUIRE_FALSE(scratch.path().empty());
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(100);
      ::_exit(moved_clients(scratch.path()));
    }
    int status = 0;
    bool ended = false;
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (!ended && std::chrono::steady_clock::now() < until) {
      ended = ::waitpid(pid, &status, WNOHANG) == pid;
      if (!ended) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (!ended) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
    }
    CHECK_MESSAGE(ended, "the clusters and their clients did not end within 120 s");
    if (ended) {
      CHECK_MESSAGE(WIFEXITED(status), "killed by signal ", WTERMSIG(status));
      if (WIFEXITED(status))
        CHECK_MESSAGE(WEXITSTATUS(status) == 0, "failed at step ", WEXITSTATUS(status),
                      " (its error is above)");
    }
  }
}
