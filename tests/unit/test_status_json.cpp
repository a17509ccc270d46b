/// @file
/// A job's status as `gflex status --json` (and `submit --wait --json`, `demo --json`) prints
/// it: a job not evaluated yet has no test figures, not zeros, which read as a model that
/// learnt nothing or as 0 bits per byte (perfect).

#include <doctest/doctest.h>

#include "status_json.hpp"

using namespace gflex;

TEST_CASE("a job not yet evaluated has null test figures and says so") {
  job_status s;
  s.job_id = "job-1";
  s.state = job_state::running;
  s.round = 3;
  auto j = app::to_json(s);
  CHECK(j["evaluated"] == false);
  CHECK(j["test_accuracy"].is_null());
  CHECK(j["test_loss"].is_null());
  CHECK(j["test_bits"].is_null());
}

TEST_CASE("a job evaluated at a round has its test figures") {
  job_status s;
  s.job_id = "job-1";
  s.state = job_state::done;
  s.round = 3;
  s.test_accuracy = 0.875;
  s.test_loss = 0.5;
  round_point p;
  p.round = 3;
  p.evaluated = true;
  s.history.push_back(p);
  auto j = app::to_json(s);
  CHECK(j["evaluated"] == true);
  CHECK(j["test_accuracy"] == 0.875);
  CHECK(j["test_loss"] == 0.5);
  CHECK(j["test_bits"].get<double>() > 0.72);
}
