/// @file
/// Encoding of the job record the core keeps in LMDB (schemas/job.capnp).

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <string_view>

#include "gflex/schema/job.capnp.h"
#include "job_record.hpp"

namespace gflex {

void add_round(std::vector<round_point>& history, const round_point& p) {
  if (history.size() >= job_status::max_history) {
    // Every other point of the older half goes: the curve keeps its shape and its recent
    // detail, and the record stays bounded however long the job runs. The last evaluated
    // point stays whichever it is: the job's test figures are of its round (tested_round),
    // and a job evaluated every 1,000 rounds lost it and read as not yet evaluated.
    const size_t half = history.size() / 2;
    const auto last_evaluated = std::find_if(history.rbegin(), history.rend(),
                                             [](const round_point& q) { return q.evaluated; });
    const auto keep_evaluated = last_evaluated == history.rend()
                                    ? history.size()
                                    : static_cast<size_t>(history.rend() - last_evaluated) - 1;
    std::vector<round_point> kept;
    kept.reserve(history.size());
    for (size_t i = 0; i < half; ++i)
      if (i % 2 == 0 || i == keep_evaluated) kept.push_back(history[i]);
    kept.insert(kept.end(), history.begin() + static_cast<std::ptrdiff_t>(half), history.end());
    history = std::move(kept);
  }
  history.push_back(p);
}

void trim_history(std::vector<round_point>& history, int64_t round) {
  while (!history.empty() && history.back().round > round) history.pop_back();
}

int64_t tested_round(const job_status& s) {
  for (auto it = s.history.rbegin(); it != s.history.rend(); ++it)
    if (it->evaluated) return it->round;
  return 0;
}

job_status list_entry(job_status s) {
  auto last = std::find_if(s.history.rbegin(), s.history.rend(),
                           [](const round_point& p) { return p.evaluated; });
  if (last == s.history.rend()) {
    s.history.clear();
  } else {
    const round_point kept = *last;
    s.history.assign(1, kept);
  }
  return s;
}

std::vector<uint8_t> encode_job_record(const std::string& spec_text, const job_status& s) {
  capnp::MallocMessageBuilder message;
  auto r = message.initRoot<schema::JobRecord>();
  r.setId(s.job_id);
  r.setSpec(spec_text);
  r.setState(static_cast<schema::JobState>(s.state));
  r.setRound(static_cast<uint64_t>(s.round));
  r.setTestAccuracy(s.test_accuracy);
  r.setTrainLoss(s.train_loss);
  r.setTestLoss(s.test_loss);
  r.setBytesSent(s.bytes_sent);
  r.setBytesReceived(s.bytes_received);
  r.setElapsed(s.elapsed_s);
  r.setDetail(s.detail);
  r.setLateResults(s.late_results);
  r.setRejectedResults(s.rejected_results);
  r.setVerifiedResults(s.verified_results);
  r.setScreenedResults(s.screened_results);
  r.setUnverifiedResults(s.unverified_results);
  r.setComputeSeconds(s.compute_s);
  r.setRecomputeSeconds(s.recompute_s);
  r.setRollbacks(s.rollbacks);
  r.setBudget(s.budget);
  r.setCreditsSpent(s.credits_spent);
  r.setCreditsHeld(s.credits_held);
  r.setDeviceHours(s.device_hours);
  r.setCloudCost(s.cloud_cost);
  r.setOwner(s.owner);
  r.setNodes(static_cast<uint64_t>(std::max<int64_t>(s.nodes, 0)));
  r.setTestedSamples(static_cast<uint64_t>(std::max<int64_t>(s.tested_samples, 0)));
  r.setTestSamples(static_cast<uint64_t>(std::max<int64_t>(s.test_samples, 0)));
  r.setSubmittedUnix(std::max<int64_t>(s.submitted_unix, 0));
  r.setSubmission(s.submission);
  auto points = r.initHistory(static_cast<unsigned>(s.history.size()));
  for (unsigned i = 0; i < s.history.size(); ++i) {
    const auto& p = s.history[i];
    auto out = points[i];
    out.setRound(static_cast<uint64_t>(p.round));
    out.setTrainLoss(p.train_loss);
    out.setTestLoss(p.test_loss);
    out.setTestAccuracy(p.test_accuracy);
    out.setEvaluated(p.evaluated);
    out.setElapsed(p.elapsed_s);
  }
  auto flat = capnp::messageToFlatArray(message);
  auto bytes = flat.asBytes();
  return {bytes.begin(), bytes.end()};
}

expected<std::pair<std::string, job_status>> decode_job_record(std::span<const uint8_t> bytes) {
  if (bytes.size() % 8 != 0 || bytes.empty())
    return error(errc::malformed_message, "job record: bad length");
  auto words = kj::heapArray<capnp::word>(bytes.size() / 8);
  std::memcpy(words.begin(), bytes.data(), bytes.size());
  try {
    capnp::FlatArrayMessageReader reader(words.asPtr());
    auto r = reader.getRoot<schema::JobRecord>();
    job_status s;
    s.job_id = r.getId().cStr();
    // A state this build does not know (a newer core's record) reads as failed: it will not
    // be resumed.
    const auto state = static_cast<job_state>(r.getState());
    s.state = is_named(state) ? state : job_state::failed;
    s.round = static_cast<int64_t>(r.getRound());
    s.test_accuracy = r.getTestAccuracy();
    s.train_loss = r.getTrainLoss();
    s.test_loss = r.getTestLoss();
    s.bytes_sent = r.getBytesSent();
    s.bytes_received = r.getBytesReceived();
    s.elapsed_s = r.getElapsed();
    s.detail = r.getDetail().cStr();
    s.late_results = r.getLateResults();
    s.rejected_results = r.getRejectedResults();
    s.verified_results = r.getVerifiedResults();
    s.screened_results = r.getScreenedResults();
    s.unverified_results = r.getUnverifiedResults();
    s.compute_s = r.getComputeSeconds();
    s.recompute_s = r.getRecomputeSeconds();
    s.rollbacks = r.getRollbacks();
    s.budget = r.getBudget();
    s.credits_spent = r.getCreditsSpent();
    s.credits_held = r.getCreditsHeld();
    s.device_hours = r.getDeviceHours();
    s.cloud_cost = r.getCloudCost();
    s.owner = r.getOwner().cStr();
    s.nodes = static_cast<int64_t>(std::min<uint64_t>(r.getNodes(), 1u << 30));
    // Counts of rows of a split held in memory: a larger one is damage, read as unknown.
    constexpr uint64_t most_samples = uint64_t{1} << 40;
    s.tested_samples =
        static_cast<int64_t>(r.getTestedSamples() <= most_samples ? r.getTestedSamples() : 0);
    s.test_samples =
        static_cast<int64_t>(r.getTestSamples() <= most_samples ? r.getTestSamples() : 0);
    s.submitted_unix = std::max<int64_t>(r.getSubmittedUnix(), 0);
    s.submission = r.getSubmission().cStr();
    for (auto p : r.getHistory())
      s.history.push_back({static_cast<int64_t>(p.getRound()), p.getTrainLoss(), p.getTestLoss(),
                           p.getTestAccuracy(), p.getEvaluated(), p.getElapsed()});
    return std::pair<std::string, job_status>{r.getSpec().cStr(), std::move(s)};
  } catch (const kj::Exception& e) {
    return error(errc::malformed_message, std::string("job record: ") + e.getDescription().cStr());
  }
}

void fill_from_spec(job_status& s, const job_spec& spec) {
  s.rounds = spec.rounds;
  s.name = spec.name;
  s.workload = spec.workload;
  s.account = spec.account;
}

expected<void> check_submission_id(const std::string& id) {
  const bool well_formed =
      !id.empty() && id.size() <= 64 && std::all_of(id.begin(), id.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '-' || c == '_';
      });
  if (!well_formed)
    return error(errc::invalid_argument,
                 "a submission id is 1 to 64 of [A-Za-z0-9_-]; nothing was submitted");
  return {};
}

bool submitted_before(const std::string& a, const std::string& b) {
  // The number after the last '-', and the id's length first: "job-9" < "job-10".
  auto digits = [](const std::string& id) {
    const auto dash = id.rfind('-');
    return std::string_view(id).substr(dash == std::string::npos ? 0 : dash + 1);
  };
  const auto da = digits(a), db = digits(b);
  const auto pa = std::string_view(a).substr(0, a.size() - da.size()),
             pb = std::string_view(b).substr(0, b.size() - db.size());
  if (pa != pb) return pa < pb;
  if (da.size() != db.size()) return da.size() < db.size();
  return da < db;
}

}  // namespace gflex
