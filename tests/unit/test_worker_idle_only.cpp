/// @file
/// `gflex-node --idle-only`: a worker refuses a job's assignment while other processes keep
/// the machine busy, yet still computes the core's checks (a verification is the platform's
/// own work, short and bounded), and a worker without the flag computes either way.

#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <caf/all.hpp>

#include <algorithm>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "cache.hpp"
#include "configured_system.hpp"
#include "gflex/kernels/model_spec.hpp"
#include "gflex/runtime/tensor_codec.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "messages.hpp"
#include "worker.hpp"

using namespace gflex;

namespace {

// Child processes that keep every CPU busy until this goes out of scope (killed by pid).
struct busy_machine {
  std::vector<pid_t> children;
  busy_machine() {
    const unsigned cpus = std::max(1u, std::thread::hardware_concurrency());
    for (unsigned i = 0; i < cpus; ++i) {
      pid_t child = fork();
      if (child == 0) {
        volatile uint64_t y = 0;
        for (;;) y = y + 1;
      }
      if (child > 0) children.push_back(child);
    }
    // The scheduler has them running before the worker first looks.
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ~busy_machine() {
    for (pid_t c : children) kill(c, SIGKILL);
    for (pid_t c : children) waitpid(c, nullptr, 0);
  }
  busy_machine(const busy_machine&) = delete;
  busy_machine& operator=(const busy_machine&) = delete;
};

const char* model_text =
    "[model]\ninput = [16]\nlayers = [ { type = \"linear\", units = 3 }, "
    "{ type = \"softmax_xent\" } ]\n";

std::shared_ptr<const dataset> rows() {
  auto d = std::make_shared<dataset>();
  d->classes = 3;
  d->features = tensor::empty({24, 16}, dtype::f32);
  d->labels = tensor::empty({24}, dtype::i32);
  for (int64_t i = 0; i < 24 * 16; ++i) d->features.data<float>()[i] = 0.01f * (i % 5);
  for (int64_t i = 0; i < 24; ++i) d->labels.data<int32_t>()[i] = static_cast<int32_t>(i % 3);
  return d;
}

caf::behavior shard_cache(caf::event_based_actor*, std::shared_ptr<const dataset> data) {
  return {
      [=](shard_atom, const std::string&) { return decoded_shard{data}; },
      [](prefetch_atom, const std::string&) {},
  };
}

assignment assignment_of(uint64_t id, bool verify) {
  auto spec = kernels::parse_model_spec(model_text, "model");
  REQUIRE(spec.has_value());
  auto plan = kernels::plan_model(*spec);
  REQUIRE(plan.has_value());
  assignment a;
  a.id = id;
  a.job_id = "job-idle";
  a.workload = "model";
  a.model = model_text;
  a.shard = "s";
  a.local_steps = 1;
  a.batch_size = 8;
  a.lr = 0.01f;
  a.verify = verify;
  a.compression = static_cast<uint8_t>(compression::fp32);
  a.params = encode_tensor(tensor::zeros({plan->parameters}, dtype::f32));
  return a;
}

// The worker's answer to `a`: empty where it computed it, else its error's text.
std::string run(test::configured_system& s, const caf::actor& worker, const assignment& a) {
  std::string failure = "no answer";
  s.self->request(worker, std::chrono::seconds(60), assign_atom::value, a)
      .receive([&](assignment_result&) { failure.clear(); },
               [&](caf::error& e) { failure = s.sys.render(e); });
  return failure;
}

}  // namespace

TEST_SUITE("worker idle only") {
  TEST_CASE("an idle-only worker refuses a job's work while the machine is busy") {
    test::configured_system s;
    worker_config config;
    config.idle_only = true;
    auto worker = spawn_worker(s.sys, config, s.sys.spawn(shard_cache, rows()));
    std::string job_work, check;
    {
      busy_machine busy;
      job_work = run(s, worker, assignment_of(1, false));
      check = run(s, worker, assignment_of(2, true));
    }
    CAPTURE(job_work);
    CHECK(job_work.find("--idle-only: the machine is busy") != std::string::npos);
    CHECK(check.empty());  // the core's check is computed all the same
    s.self->send_exit(worker, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a worker without idle-only computes a job's work on a busy machine") {
    test::configured_system s;
    worker_config config;
    auto worker = spawn_worker(s.sys, config, s.sys.spawn(shard_cache, rows()));
    std::string job_work;
    {
      busy_machine busy;
      job_work = run(s, worker, assignment_of(1, false));
    }
    CHECK(job_work.empty());
    s.self->send_exit(worker, caf::exit_reason::user_shutdown);
  }
}
