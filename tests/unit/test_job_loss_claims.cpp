/// @file
/// The loss a node reports of its result. Every loss head (softmax_xent, next_token_xent,
/// mse) gives a loss of 0 or more: a negative one is made up, and its result is malformed,
/// held against the node as a non-finite one is. A large one is taken: an honest run that
/// diverges slowly reports large finite losses.

#include <doctest/doctest.h>

#include <optional>

#include "gflex/runtime/identity.hpp"
#include "gflex/runtime/job_spec.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "job_fixture.hpp"

using namespace gflex;
using namespace gflex::test;

namespace {

// A worker of node `key` that answers every assignment at once with a small signed update,
// saying its loss was `loss`.
caf::behavior claiming_worker(caf::event_based_actor*, std::shared_ptr<node_identity> key,
                              size_t parameters, double loss) {
  return {
      [=](assign_atom, assignment& a) {
        assignment_result r;
        r.assignment_id = a.id;
        r.update = encode_update(std::vector<float>(parameters, 0.001f), compression::fp32);
        r.loss = loss;
        r.samples = 12;
        r.compute_s = 0.01;
        r.signature = key->sign(result_message(a.id, r.update));
        return r;
      },
      [](abort_atom, uint64_t) {},
  };
}

// A reputation tracker that takes the job's credits and rejections.
caf::behavior taking_reputation(caf::event_based_actor*) {
  return {
      [](credit_atom, const std::string&, uint8_t, double, int64_t) {},
      [](reject_atom, const std::string&, std::string&) { return std::vector<std::string>{}; },
  };
}

// What became of alice's job-1 (k_spec, resumed at round 2: its one round is 3) on a
// core-tier node that says its loss was `loss`: why the node was rejected, or how the job
// ended; nullopt for either if it did not within 10 s.
struct outcome {
  std::optional<std::string> rejected;
  std::optional<job_status> end;
};

outcome run_with_loss(double loss) {
  configured_system f;
  auto stored = stored_job(2, k_spec, 1);
  auto spec = parse_job_spec(k_spec, "test");
  REQUIRE(spec.has_value());
  // Made before any actor: a REQUIRE that fails after would leave them running.
  auto catalog = catalog_of(stored);
  const size_t parameters = 4 * 3 + 3;
  auto key = std::make_shared<node_identity>(node_identity::generate());
  worker_slot slot =
      node_slot(f.sys.spawn(claiming_worker, key, parameters, loss), "id-claimer", "claimer");
  slot.tier = static_cast<uint8_t>(node_tier::core);  // trusted: no re-computation
  slot.public_key = key->public_key();
  job_links links;
  links.store = f.sys.spawn(failing_store, stored);
  links.market = f.sys.spawn(offering_market, std::vector<worker_slot>{slot});
  links.reputation = f.sys.spawn(taking_reputation);
  links.supervisor = caf::actor_cast<caf::actor>(f.self);  // the test stands for it
  links.catalog = catalog;
  auto start = resumed_start(stored, k_spec, *spec, 2);
  auto job = spawn_job(f.sys, std::move(start), links);
  outcome out;
  for (int tries = 0; tries < 200 && !out.rejected && !out.end; ++tries)
    f.self->receive([&](reject_atom, const std::string& node,
                        const std::string& why) { out.rejected = node + ": " + why; },
                    [&](progress_atom, job_status& s) {
                      if (is_terminal(s.state)) out.end = std::move(s);
                    },
                    caf::after(std::chrono::milliseconds(50)) >> [] {});
  for (const auto& a : {job, links.market, links.reputation, links.store})
    f.self->send_exit(a, caf::exit_reason::user_shutdown);
  f.self->send_exit(slot.worker, caf::exit_reason::user_shutdown);
  return out;
}

}  // namespace

TEST_SUITE("job loss claims") {
  TEST_CASE("a result that reports a negative loss is malformed, held against its node") {
    const auto out = run_with_loss(-1.0);
    REQUIRE_MESSAGE(
        out.rejected.has_value(),
        "the node was not rejected; the job "
            << (out.end ? std::string("ended ") + to_string(out.end->state) : "went on"));
    CHECK_MESSAGE(out.rejected->find("claimer: its result is malformed: negative loss") == 0,
                  *out.rejected);
    CHECK_FALSE(out.end.has_value());
  }

  TEST_CASE("a result that reports a loss of 0, or a large finite one, is taken") {
    for (const double loss : {0.0, 1e30}) {
      CAPTURE(loss);
      const auto out = run_with_loss(loss);
      CHECK_MESSAGE(!out.rejected.has_value(), out.rejected.value_or(""));
      REQUIRE(out.end.has_value());
      CHECK(out.end->state == job_state::done);
      CHECK(out.end->train_loss == loss);
    }
  }
}
