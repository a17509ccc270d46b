// The job record the core keeps in LMDB: a job's per-round history survives the round trip
// (the dashboard's curves after a restart), stays bounded, and loses the rounds taken back.
#include <doctest/doctest.h>

#include <algorithm>

#include "job_record.hpp"

using namespace gflex;

TEST_CASE("job record: the round history survives encoding") {
  job_status s;
  s.job_id = "job-7";
  s.owner = "user/alice";
  s.state = job_state::running;
  s.round = 3;
  s.nodes = 4;             // shown by `gflex status`: it read 0 after a core restart
  s.tested_samples = 500;  // an evaluation on part of the test split says so after a restart
  s.submitted_unix = 1'800'000'000;  // the deadline counts from it after a restart
  s.submission = "c0ffee-1";         // a submit asked again after a restart finds its job
  s.test_samples = 10000;
  for (int64_t r = 1; r <= 3; ++r)
    add_round(s.history,
              {r, 1.0 / static_cast<double>(r), 0.9 / static_cast<double>(r),
               0.5 + 0.1 * static_cast<double>(r), r != 2, 2.5 * static_cast<double>(r)});
  auto bytes = encode_job_record("[job]\nworkload = \"fashion-mlp\"\n", s);
  auto back = decode_job_record(bytes);
  REQUIRE(back);
  CHECK(back->second.nodes == 4);
  CHECK(back->second.tested_samples == 500);
  CHECK(back->second.submitted_unix == 1'800'000'000);
  CHECK(back->second.submission == "c0ffee-1");
  CHECK(back->second.test_samples == 10000);
  const auto& h = back->second.history;
  REQUIRE(h.size() == 3);
  for (size_t i = 0; i < h.size(); ++i) {
    CHECK(h[i].round == s.history[i].round);
    CHECK(h[i].train_loss == s.history[i].train_loss);
    CHECK(h[i].test_loss == s.history[i].test_loss);
    CHECK(h[i].test_accuracy == s.history[i].test_accuracy);
    CHECK(h[i].evaluated == s.history[i].evaluated);
    CHECK(h[i].elapsed_s == s.history[i].elapsed_s);
  }
  // A record cut short is refused, not read as a shorter history.
  bytes.resize(bytes.size() - 8);
  CHECK_FALSE(decode_job_record(bytes));
}

TEST_CASE("job record: a long job's history is thinned, keeping its ends") {
  std::vector<round_point> h;
  const int64_t rounds = 10000;
  for (int64_t r = 1; r <= rounds; ++r) add_round(h, {r, 0.0, 0.0, 0.0, true, 0.0});
  CHECK(h.size() <= job_status::max_history);
  CHECK(h.size() > job_status::max_history / 2);
  CHECK(h.front().round == 1);
  CHECK(h.back().round == rounds);
  for (size_t i = 1; i < h.size(); ++i) REQUIRE(h[i].round > h[i - 1].round);
  // The recent half keeps every round.
  CHECK(h[h.size() - 2].round == rounds - 1);
}

TEST_CASE("job record: rounds taken back leave the history") {
  std::vector<round_point> h;
  for (int64_t r = 1; r <= 5; ++r) add_round(h, {r, 0.0, 0.0, 0.0, true, 0.0});
  trim_history(h, 3);
  REQUIRE(h.size() == 3);
  CHECK(h.back().round == 3);
  trim_history(h, 0);
  CHECK(h.empty());
}

TEST_CASE("job record: the round the test figures are of") {
  job_status s;
  CHECK(tested_round(s) == 0);
  for (int64_t r = 1; r <= 37; ++r) add_round(s.history, {r, 0.0, 0.0, 0.0, r % 10 == 0, 0.0});
  s.round = 37;
  CHECK(tested_round(s) == 30);
}

TEST_CASE("job record: a job evaluated rarely keeps its last evaluated round however long") {
  // Thinning the older half dropped round 1000 (an odd index by then): the job read as not
  // yet evaluated from round 1537 to 1999.
  job_status s;
  for (int64_t r = 1; r <= 4000; ++r) {
    add_round(s.history, {r, 0.0, 0.0, 0.0, r % 1000 == 0, 0.0});
    s.round = r;
    const int64_t expected = r / 1000 * 1000;
    if (tested_round(s) != expected) {
      FAIL_CHECK("after round " << r << " the tested round is " << tested_round(s) << ", not "
                                << expected);
      break;
    }
  }
  CHECK(s.history.size() <= job_status::max_history);
}

TEST_CASE("job record: a listed job keeps the round its test figures are of, and no curve") {
  job_status s;
  s.round = 37;
  for (int64_t r = 1; r <= 37; ++r)
    add_round(s.history, {r, 0.5, 0.0, 0.0, r % 10 == 0, static_cast<double>(r)});
  const auto listed = list_entry(s);
  REQUIRE(listed.history.size() == 1);
  CHECK(tested_round(listed) == 30);
  CHECK(listed.history.front().elapsed_s == 30.0);
  // Not yet evaluated: nothing kept, and the list tells it from an accuracy of 0.
  job_status fresh;
  fresh.round = 5;
  for (int64_t r = 1; r <= 5; ++r) add_round(fresh.history, {r, 0.5, 0.0, 0.0, false, 0.0});
  CHECK(list_entry(fresh).history.empty());
  CHECK(tested_round(list_entry(fresh)) == 0);
}

TEST_CASE("job record: jobs list in the order they were submitted") {
  // Listed as text, job-10 came before job-2: the dashboard, which charts the newest eight,
  // charted job-9 to job-2 while job-12 ran.
  std::vector<std::string> ids{"job-10", "job-2", "job-9", "job-1", "job-12", "job-11"};
  std::sort(ids.begin(), ids.end(), submitted_before);
  CHECK(ids == std::vector<std::string>{"job-1", "job-2", "job-9", "job-10", "job-11", "job-12"});
  CHECK_FALSE(submitted_before("job-3", "job-3"));
}
