/// @file
/// A node's worker keeps the models and decoded shards of its recent assignments (made once
/// for the assignments that come back to them), not of every job it ever ran: with each new
/// job's model kept, a volunteer's memory grew job after job until an allocation failed, and
/// 32 shards of any size were kept (a user's may be 128 MiB decoded), the one let go being
/// the first by digest, however recently used.

#include <doctest/doctest.h>

#include <caf/all.hpp>

#include <chrono>
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cache.hpp"
#include "configured_system.hpp"
#include "gflex/kernels/devices.hpp"
#include "gflex/kernels/model_spec.hpp"
#include "gflex/node_activity.hpp"
#include "gflex/runtime/tensor_codec.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "messages.hpp"
#include "node_metrics.hpp"
#include "worker.hpp"

using namespace gflex;

namespace {

// `n` rows of 64 values, labels of 3 classes.
std::shared_ptr<const dataset> rows(int64_t n = 32) {
  auto d = std::make_shared<dataset>();
  d->classes = 3;
  d->features = tensor::empty({n, 64}, dtype::f32);
  d->labels = tensor::empty({n}, dtype::i32);
  for (int64_t i = 0; i < n * 64; ++i) d->features.data<float>()[i] = 0.01f * (i % 7);
  for (int64_t i = 0; i < n; ++i) d->labels.data<int32_t>()[i] = static_cast<int32_t>(i % 3);
  return d;
}

// An assignment of job `k`'s model (model_of) on shard `digest`, from zero parameters.
assignment assignment_of(int k, const std::string& digest);

// A cache that has every shard: `data`; (get_atom) -> the shards asked for, in order.
caf::behavior one_shard_cache(caf::event_based_actor*, std::shared_ptr<const dataset> data) {
  auto asked = std::make_shared<std::vector<std::string>>();
  return {
      [=](shard_atom, const std::string& digest) {
        asked->push_back(digest);
        return decoded_shard{data};
      },
      [](prefetch_atom, const std::string&) {},
      [=](caf::get_atom) { return *asked; },
  };
}

// Job `k`'s model: a hidden layer of 2,048 + k units (about 560k parameters, 9 MB of the
// worker's buffers with AdamW's state).
std::string model_of(int k) {
  return "[model]\ninput = [64]\nlayers = [ { type = \"linear\", units = " +
         std::to_string(2048 + k) +
         " }, { type = \"relu\" }, { type = \"linear\", units = 3 }, "
         "{ type = \"softmax_xent\" } ]\n";
}

assignment assignment_of(int k, const std::string& digest) {
  auto spec = kernels::parse_model_spec(model_of(k), "model");
  REQUIRE(spec.has_value());
  auto plan = kernels::plan_model(*spec);
  REQUIRE(plan.has_value());
  assignment a;
  a.id = static_cast<uint64_t>(k + 1);
  a.job_id = "job-" + std::to_string(k);
  a.workload = "model";
  a.model = model_of(k);
  a.shard = digest;
  a.local_steps = 1;
  a.batch_size = 8;
  a.lr = 0.01f;
  a.compression = static_cast<uint8_t>(compression::fp32);
  a.params = encode_tensor(tensor::zeros({plan->parameters}, dtype::f32));
  return a;
}

// What a worker reports of its assignments, sent to the test's actor as ints
// (node_activity::kind).
std::function<void(const node_activity&)> told(test::configured_system& s) {
  caf::actor test = caf::actor_cast<caf::actor>(s.self);
  return [test](const node_activity& n) { caf::anon_send(test, static_cast<int>(n.what)); };
}

}  // namespace

TEST_SUITE("worker models") {
  TEST_CASE("a worker keeps the models of its recent jobs, not of every job it ran") {
    test::configured_system s;
    worker_config config;
    auto worker = spawn_worker(s.sys, config, s.sys.spawn(one_shard_cache, rows()));
    std::vector<uint64_t> in_use;
    for (int k = 0; k < 8; ++k) {
      s.self->request(worker, std::chrono::seconds(60), assign_atom::value, assignment_of(k, "s"))
          .receive([](assignment_result&) {}, [&](caf::error& e) { FAIL(s.sys.render(e)); });
      in_use.push_back(kernels::host_memory_in_use());
    }
    // Eight jobs' models held 8 x 9 MB; the two most recent are kept.
    CAPTURE(in_use);
    CHECK(in_use.back() < in_use[1] + (in_use[1] - in_use[0]) / 2);
    s.self->send_exit(worker, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a new job's model that does not fit beside a kept one is made without it") {
    // Models are kept by their parameters' bytes; a language model's memory is mostly its
    // attention's. Made beside a kept model, the next job's ran out of memory, and that job
    // left the node out for minutes.
    test::configured_system s;
    worker_config config;
    auto worker = spawn_worker(s.sys, config, s.sys.spawn(one_shard_cache, rows()));
    const uint64_t before = kernels::host_memory_in_use();
    auto run = [&](int k) {
      std::string failure;
      s.self->request(worker, std::chrono::seconds(60), assign_atom::value, assignment_of(k, "s"))
          .receive([](assignment_result&) {}, [&](caf::error& e) { failure = s.sys.render(e); });
      return failure;
    };
    REQUIRE(run(0).empty());
    const uint64_t one = kernels::host_memory_in_use() - before;  // job 0's model, kept
    REQUIRE(one > (uint64_t{1} << 20));
    // Room for one model and a half: job 1's fits only once job 0's is let go.
    struct limit_lifted {
      ~limit_lifted() { kernels::set_host_memory_limit(0); }
    } lifted;
    kernels::set_host_memory_limit(before + one + one / 2);
    const auto failure = run(1);
    CHECK_MESSAGE(failure.empty(), failure);
    s.self->send_exit(worker, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a worker counts no payload bytes: the uplink, which moves them, does") {
    // Both counted: the node's bytes in were twice (or workers + 1 times) what came.
    test::configured_system s;
    auto counted = [] {
      return node_metrics::bytes("in", "parameters").value() +
             node_metrics::bytes("out", "update").value();
    };
    const double before = counted();
    auto worker = spawn_worker(s.sys, worker_config{}, s.sys.spawn(one_shard_cache, rows()));
    s.self->request(worker, std::chrono::seconds(60), assign_atom::value, assignment_of(0, "s"))
        .receive([](assignment_result&) {}, [&](caf::error& e) { FAIL(s.sys.render(e)); });
    CHECK(counted() == before);
    s.self->send_exit(worker, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("an assignment its job takes back while it runs is cancelled, not failed") {
    // A slow laptop loses many backups to faster nodes: each was shown to its owner as a
    // failed assignment ("N failed" in gflex-node's status line).
    test::configured_system s;
    worker_config config;
    config.on_activity = told(s);
    auto worker = spawn_worker(s.sys, config, s.sys.spawn(one_shard_cache, rows()));
    auto a = assignment_of(0, "s");
    a.local_steps = 100000;                         // minutes: it is taken back long before
    caf::anon_send(worker, assign_atom::value, a);  // its answer is not what is tested
    std::vector<int> seen;
    auto next = [&] {
      int what = -1;
      s.self->receive([&](int w) { what = w; }, caf::after(std::chrono::seconds(30)) >> [] {});
      seen.push_back(what);
      return what;
    };
    REQUIRE(next() == static_cast<int>(node_activity::kind::started));
    config.cancelled->cancel(a.id);
    const int ended = next();
    CAPTURE(seen);
    CHECK(ended == static_cast<int>(node_activity::kind::cancelled));
    s.self->send_exit(worker, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("an assignment that ends its worker with an exception is told as failed") {
    // Its end untold, the node's status line said "working" on it for good.
    test::configured_system s;
    worker_config config;
    config.on_activity = told(s);
    config.crash_at_assignment = 1;
    auto worker = spawn_worker(s.sys, config, s.sys.spawn(one_shard_cache, rows()));
    caf::anon_send(worker, assign_atom::value, assignment_of(0, "s"));
    std::vector<int> seen;
    for (int i = 0; i < 2; ++i)
      s.self->receive([&](int w) { seen.push_back(w); },
                      caf::after(std::chrono::seconds(30)) >> [&] { seen.push_back(-1); });
    CHECK(seen == std::vector<int>{static_cast<int>(node_activity::kind::started),
                                   static_cast<int>(node_activity::kind::failed)});
  }

  TEST_CASE(
      "a broken device's failures are counted when making a model fails, not only in a step") {
    // A GPU in a failed state fails its first assignment in a step; its models dropped, each
    // one after fails making its model again, an error returned rather than thrown. Only the
    // thrown one was counted: the node never saw 5 in a row, stayed joined and failed work for
    // ever. (--device-broken-from fails assignments as such a GPU does.)
    test::configured_system s;
    worker_config config;
    config.device_broken_from = 1;
    auto worker = spawn_worker(s.sys, config, s.sys.spawn(one_shard_cache, rows()));
    for (int k = 0; k < 6; ++k)
      s.self->request(worker, std::chrono::seconds(60), assign_atom::value, assignment_of(0, "s"))
          .receive([](assignment_result&) { FAIL("a broken device computed an assignment"); },
                   [](caf::error&) {});
    CHECK(config.device_failures->load() == 6);
    s.self->send_exit(worker, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a large model's buffers go when its assignment is cancelled, as when it ends") {
    // Freed only after a result: a cancelled (or failed) assignment's large model stayed, and
    // the next job's large model was made beside it and ran out of memory.
    test::configured_system s;
    worker_config config;
    config.on_activity = told(s);
    auto worker = spawn_worker(s.sys, config, s.sys.spawn(one_shard_cache, rows()));
    const uint64_t before = kernels::host_memory_in_use();
    // A hidden layer of 262,144 units: 17.6M parameters, 70 MB (over the 64 MiB kept).
    auto a = assignment_of(262144 - 2048, "s");
    a.local_steps = 100000;  // minutes: it is taken back long before
    caf::anon_send(worker, assign_atom::value, a);
    auto next = [&] {
      int what = -1;
      s.self->receive([&](int w) { what = w; }, caf::after(std::chrono::seconds(60)) >> [] {});
      return what;
    };
    REQUIRE(next() == static_cast<int>(node_activity::kind::started));
    // Its buffers are made (parameters, gradients, AdamW's moments: 4 x 70 MB), however slow
    // the build (a sanitized one took over 300 ms).
    uint64_t running = kernels::host_memory_in_use();
    for (int tries = 0; tries < 600 && running <= before + (uint64_t{200} << 20); ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      running = kernels::host_memory_in_use();
    }
    config.cancelled->cancel(a.id);
    REQUIRE(next() == static_cast<int>(node_activity::kind::cancelled));
    const uint64_t after = kernels::host_memory_in_use();
    CAPTURE(before);
    CAPTURE(running);
    CAPTURE(after);
    REQUIRE(running > before + (uint64_t{200} << 20));
    CHECK(after < before + (uint64_t{16} << 20));
    s.self->send_exit(worker, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a loss past float's range is a diverged run, never a result the core condemns") {
    // A user's real-valued data of 1e37: each sample's loss is about 1e37, so a batch's float
    // sum passes 3.4e38 and is infinite, while AdamW's steps stay finite (the weights' second
    // moment is infinite: their step is 0). A result with an infinite loss is malformed to
    // the core, which bars the honest node that sent it.
    test::configured_system s;
    auto data = std::make_shared<dataset>(*rows(32));
    data->features = tensor::empty({32, 64}, dtype::f32);
    for (int64_t i = 0; i < 32 * 64; ++i) data->features.data<float>()[i] = 1e37f;
    worker_config config;
    auto worker = spawn_worker(s.sys, config,
                               s.sys.spawn(one_shard_cache, std::shared_ptr<const dataset>(data)));
    const std::string model =
        "[model]\ninput = [64]\nlayers = [ { type = \"linear\", units = 3 }, "
        "{ type = \"softmax_xent\" } ]\n";
    auto spec = kernels::parse_model_spec(model, "model");
    REQUIRE(spec.has_value());
    auto plan = kernels::plan_model(*spec);
    REQUIRE(plan.has_value());
    auto a = assignment_of(0, "s");
    a.model = model;
    a.local_steps = 4;
    a.batch_size = 512;
    auto params = tensor::zeros({plan->parameters}, dtype::f32);
    for (int64_t i = 0; i < plan->parameters; ++i)
      params.data<float>()[i] = 0.05f * static_cast<float>(i % 5);
    a.params = encode_tensor(params);
    std::string outcome;
    s.self->request(worker, std::chrono::seconds(60), assign_atom::value, a)
        .receive(
            [&](assignment_result& r) {
              outcome =
                  std::isfinite(r.loss) ? "finite" : "a result of loss " + std::to_string(r.loss);
            },
            [&](caf::error& e) {
              auto err = from_caf(e);
              outcome = err.code() == errc::non_finite ? "finite" : err.message();
            });
    CHECK_MESSAGE(outcome == "finite", outcome);
    s.self->send_exit(worker, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a worker keeps its most recently used shards, within a byte bound") {
    // Shards of 100 MiB decoded (one in memory, shared): two are kept beside the newest.
    test::configured_system s;
    auto cache = s.sys.spawn(one_shard_cache, rows(int64_t{100} << 20 >> 8));
    auto worker = spawn_worker(s.sys, worker_config{}, cache);
    auto run = [&](const std::string& digest) {
      s.self
          ->request(worker, std::chrono::seconds(60), assign_atom::value, assignment_of(0, digest))
          .receive([](assignment_result&) {}, [&](caf::error& e) { FAIL(s.sys.render(e)); });
    };
    // "a" is used again after "b": "b" is the least recently used when "d" comes, and goes;
    // "d" is when "b" comes back. (All of them were kept before: 32 shards of any size.)
    for (const char* d : {"a", "b", "c", "a", "d", "a", "c", "b"}) run(d);
    std::vector<std::string> asked;
    s.self->request(cache, std::chrono::seconds(10), caf::get_atom::value)
        .receive([&](std::vector<std::string>& a) { asked = std::move(a); },
                 [&](caf::error& e) { FAIL(s.sys.render(e)); });
    CHECK(asked == std::vector<std::string>{"a", "b", "c", "d", "b"});
    s.self->send_exit(worker, caf::exit_reason::user_shutdown);
  }
}
