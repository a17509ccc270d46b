/// @file
/// A result the verifier refuses (it holds all it may) or finds no core-tier worker for is
/// asked again later and later, and its wait is logged once. Asked again every 5 s, thousands
/// of refused results made a job re-ask hundreds of times a second, each ask unpacking the
/// whole update and writing a warning.

#include <doctest/doctest.h>

#include <mutex>
#include <optional>

#include "captured_log.hpp"
#include "gflex/runtime/identity.hpp"
#include "gflex/runtime/job_spec.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "job_fixture.hpp"

using namespace gflex;
using namespace gflex::test;

namespace {

// A reputation tracker that samples every result for re-computation.
caf::behavior sampling_reputation(caf::event_based_actor*) {
  return {
      [](sample_atom, const std::string&) { return true; },
      [](credit_atom, const std::string&, uint8_t, double, int64_t) {},
      [](reject_atom, const std::string&, std::string&) { return std::vector<std::string>{}; },
  };
}

// When each check came to a verifier.
struct asks {
  std::mutex mutex;
  std::vector<std::chrono::steady_clock::time_point> at;

  /// How many came within `window` of the first; 0 if none came.
  size_t within(std::chrono::milliseconds window) {
    std::lock_guard<std::mutex> lock(mutex);
    if (at.empty()) return 0;
    return static_cast<size_t>(std::count_if(
        at.begin(), at.end(), [&](const auto& t) { return t - at.front() <= window; }));
  }
  size_t count() {
    std::lock_guard<std::mutex> lock(mutex);
    return at.size();
  }
};

// A verifier that answers every check at once with `code`: limit_exceeded as one that holds
// all it may, unavailable as one that held it with no core-tier worker free.
caf::behavior answering_verifier(caf::event_based_actor*, errc code, std::shared_ptr<asks> seen) {
  return {
      [=](verify_atom, verify_request&) -> caf::result<double, double, double> {
        {
          std::lock_guard<std::mutex> lock(seen->mutex);
          seen->at.push_back(std::chrono::steady_clock::now());
        }
        return to_caf(error(code, code == errc::limit_exceeded
                                      ? "4096 re-computations are waiting for a core-tier worker"
                                      : "no core-tier worker was free to re-compute it"));
      },
  };
}

}  // namespace

TEST_SUITE("job verification back-off") {
  TEST_CASE(
      "a result the verifier refuses is asked again later and later; one it held, after a fixed "
      "wait") {
    for (const auto code : {errc::limit_exceeded, errc::unavailable}) {
      const std::string code_name = to_string(code);
      CAPTURE(code_name);
      captured_log log(spdlog::level::warn);
      configured_system f;
      auto stored = stored_job(2, k_spec, 1);
      auto spec = parse_job_spec(k_spec, "test");
      REQUIRE(spec.has_value());
      // Made before any actor: a REQUIRE that fails after would leave them running.
      auto catalog = catalog_of(stored);
      const size_t parameters = 4 * 3 + 3;
      auto key = std::make_shared<node_identity>(node_identity::generate());
      worker_slot slot =
          node_slot(f.sys.spawn(prompt_worker, key, parameters), "id-volunteer", "volunteer");
      slot.tier = static_cast<uint8_t>(node_tier::community);
      slot.public_key = key->public_key();
      auto seen = std::make_shared<asks>();
      job_links links;
      links.store = f.sys.spawn(failing_store, stored);
      links.market = f.sys.spawn(offering_market, std::vector<worker_slot>{slot});
      links.reputation = f.sys.spawn(sampling_reputation);
      links.verifier = f.sys.spawn(answering_verifier, code, seen);
      links.verify_retry = std::chrono::milliseconds(50);
      links.supervisor = caf::actor_cast<caf::actor>(f.self);  // the test stands for it
      links.catalog = catalog;
      auto start = resumed_start(stored, k_spec, *spec, 2);
      auto job = spawn_job(f.sys, std::move(start), links);

      // The volunteer's result of round 3 is sampled and sent to the verifier.
      for (int tries = 0; tries < 100 && seen->count() == 0; ++tries)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      const bool asked = seen->count() >= 1;
      // 3 s from the first ask: asked again 50 ms after each answer, 60 times or so; doubling
      // from 50 ms, after 50, 150, 350, 750 and 1550 ms (then 3150).
      if (asked) std::this_thread::sleep_for(std::chrono::milliseconds(3300));
      const auto in_window = seen->within(std::chrono::milliseconds(3000));
      for (const auto& a : {job, links.market, links.reputation, links.store, links.verifier})
        f.self->send_exit(a, caf::exit_reason::user_shutdown);
      f.self->send_exit(slot.worker, caf::exit_reason::user_shutdown);
      REQUIRE_MESSAGE(asked, "the result was never sent to the verifier");
      CHECK_MESSAGE(in_window >= 4, "the result was not asked again: " << in_window << " asks");
      if (code == errc::limit_exceeded) {
        CHECK_MESSAGE(in_window <= 8, "asked " << in_window << " times in 3 s: no back-off");
      } else {
        // The verifier held each ask for its wait before it said no worker was free: asked
        // again after the base delay each time (here 50 ms), not later and later.
        CHECK_MESSAGE(in_window >= 20, "asked " << in_window << " times in 3 s: backed off");
      }
      // The wait is logged once for the result, not at each ask.
      CHECK(log.count("waiting for a verifier for the result of volunteer for round 3") == 1);
    }
  }
}
