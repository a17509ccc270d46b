#include "pipeline_train.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <utility>

#include "gflex/kernels/workload.hpp"
#include "gflex/runtime/job_spec.hpp"
#include "link_loss.hpp"
#include "parameter_copy.hpp"
#include "spec_runs.hpp"
#include "user_data.hpp"

namespace gflex::pipeline::detail {
namespace {

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error(what);
}

dataset make_split(std::vector<float>& x, std::vector<int32_t>& y, int64_t values,
                   const train_options& o) {
  dataset d;
  const auto n = static_cast<int64_t>(y.size());
  d.features = tensor::empty({n, values}, dtype::f32);
  d.labels = tensor::empty({n}, dtype::i32);
  std::memcpy(d.features.data<float>(), x.data(), x.size() * sizeof(float));
  std::memcpy(d.labels.data<int32_t>(), y.data(), y.size() * sizeof(int32_t));
  d.classes = o.classes;
  d.tokens = o.tokens;
  return d;
}

}  // namespace

train_driver::train_driver(train_options options) : options_(std::move(options)) {
  if (options_.client == nullptr) fail("train: no client (train_options.client)");
  if (options_.max_samples < 2) fail("train: max_samples must be at least 2");
  if (options_.test_every < 2) fail("train: test_every must be at least 2");
  if (options_.classes < 2) fail("train: classes must be at least 2");
  if (options_.poll.count() < 1)
    fail(
        "train: poll must be at least 1 ms (the stage asks the core for the job's status "
        "that often)");
  // The name goes into the spec's TOML and to the core's push: checked here as the core
  // checks it, before the upstream has run, not at the push after it.
  if (!valid_data_set_name(options_.data_set))
    fail("train: data_set must be 1-64 of A-Z a-z 0-9 . _ -, got '" +
         options_.data_set.substr(0, 80) + "'");
  if (kernels::is_builtin_data_set(options_.data_set))
    fail("train: data_set '" + options_.data_set +
         "' names a built-in data set: choose another name");
  spec_ = options_.spec_toml + "\n[data]\nset = \"" + options_.data_set + "\"\n";
  auto spec = parse_job_spec(spec_, "train stage spec");
  if (!spec) fail(spec.error().message());
  auto w = kernels::find_workload(spec->workload, spec->model, "");
  if (!w) fail("train: " + w.error().message());
  if (auto runs = check_spec_runs(*spec, **w); !runs) fail("train: " + runs.error().message());
  // The data set pushed must fit the model: found only at submit, after the whole upstream
  // had run and its data had been uploaded, and again at each restart.
  if (options_.classes != (*w)->classes() || options_.tokens != (*w)->token_input())
    fail("train: train_options say " + std::to_string(options_.classes) +
         (options_.tokens ? " classes of token ids" : " classes of values") + ", the model takes " +
         std::to_string((*w)->classes()) +
         ((*w)->token_input() ? " classes of token ids" : " classes of values") +
         " (set train_options.classes and .tokens)");
  job_name_ = spec->name;
  parameters_ = (*w)->parameter_count();
  feature_dim_ = (*w)->feature_dim();
  workers_ = spec->workers;
}

void train_driver::resume(const std::string& checkpoint) {
  std::istringstream in(checkpoint);
  in >> job_id_ >> last_round_;
  if (!in) fail("train: unusable checkpoint '" + checkpoint + "'");
}

void train_driver::absorb(const sample_batch& batch) {
  if (submitted() || full()) {
    dropped_ += batch.rows();
    return;
  }
  if (batch.sample_values <= 0 ||
      batch.features.size() != static_cast<size_t>(batch.rows() * batch.sample_values))
    fail("train: a batch of " + std::to_string(batch.rows()) + " labels holds " +
         std::to_string(batch.features.size()) + " values, not rows x sample_values (" +
         std::to_string(batch.sample_values) + ")");
  if (batch.sample_values != feature_dim_)
    fail("train: samples of " + std::to_string(batch.sample_values) +
         " values, but the model takes " + std::to_string(feature_dim_));
  if (sample_values_ == 0) sample_values_ = batch.sample_values;
  if (batch.sample_values != sample_values_)
    fail("train: a batch of samples of " + std::to_string(batch.sample_values) +
         " values after samples of " + std::to_string(sample_values_));
  const bool held_out = batches_++ % options_.test_every == options_.test_every - 1;
  auto& x = held_out ? test_x_ : train_x_;
  auto& y = held_out ? test_y_ : train_y_;
  x.insert(x.end(), batch.features.begin(), batch.features.end());
  y.insert(y.end(), batch.labels.begin(), batch.labels.end());
  rows_ += batch.rows();
}

void train_driver::submit() {
  if (train_y_.empty() || test_y_.empty())
    fail("train: the stream gave " + std::to_string(batches_) + " batches: too few for a " +
         "training and a held-out split (every " + std::to_string(options_.test_every) +
         "th batch is held out)");
  dataset_splits splits;
  splits.train = make_split(train_x_, train_y_, sample_values_, options_);
  splits.test = make_split(test_x_, test_y_, sample_values_, options_);
  // A core restarting (or a follower taking over) during the upload is ridden out as a poll
  // rides it out: the stage failed at once, each replacement's push failed as fast, and the
  // stage's restarts were spent within a second.
  const auto until = std::chrono::steady_clock::now() + gflex::detail::link_loss_patience;
  auto pushed = options_.client->push_data(options_.data_set, splits, workers_);
  if (!pushed && gflex::detail::is_link_loss(pushed.error()))
    spdlog::warn("train: pushing data set {}: {}; trying again for up to 2 minutes",
                 options_.data_set, pushed.error().message());
  while (!pushed && gflex::detail::is_link_loss(pushed.error()) &&
         std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    pushed = options_.client->push_data(options_.data_set, splits, workers_);
  }
  if (!pushed) fail("train: pushing the data set: " + pushed.error().message());
  // A submit whose answer is lost may have made the job all the same (client::submit says
  // so): it trained and billed with nobody to follow or cancel it, and the stage's restart
  // was refused the push (the set cannot be replaced while a job trains on it). It is looked
  // for among the jobs that were not there before.
  std::set<std::string> before;
  auto listed = options_.client->jobs();
  if (listed)
    for (const auto& j : *listed) before.insert(j.job_id);
  auto id = send_submit ? send_submit(spec_) : options_.client->submit(spec_);
  if (!id && listed && id.error().code() == errc::unavailable)
    id = find_submitted(before, id.error());
  if (!id) fail("train: the job is refused: " + id.error().message());
  job_id_ = *id;
  std::vector<float>().swap(train_x_);
  std::vector<float>().swap(test_x_);
  std::vector<int32_t>().swap(train_y_);
  std::vector<int32_t>().swap(test_y_);
}

expected<std::string> train_driver::find_submitted(const std::set<std::string>& before,
                                                   const error& lost) {
  const auto until = std::chrono::steady_clock::now() + gflex::detail::link_loss_patience;
  for (;;) {
    auto listed = options_.client->jobs();
    if (!listed && gflex::detail::is_link_loss(listed.error()) &&
        std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::seconds(1));
      continue;
    }
    if (!listed) return lost;
    std::vector<std::string> made;
    for (const auto& j : *listed)
      if (!before.contains(j.job_id) && j.name == job_name_) made.push_back(j.job_id);
    if (made.empty()) return lost;  // not made: a restart submits again
    if (made.size() > 1)
      return error(errc::unavailable, lost.message() + "; and " + std::to_string(made.size()) +
                                          " new jobs are named '" + job_name_ + "' (" +
                                          made.front() + ", ...): none is followed");
    spdlog::warn("train: the answer to the submit was lost, but job {} was made: following it",
                 made.front());
    return made.front();
  }
}

bool train_driver::rides_out(const error& e) {
  if (!gflex::detail::is_link_loss(e)) return false;
  const auto now = std::chrono::steady_clock::now();
  if (lost_since_ == std::chrono::steady_clock::time_point{}) {
    lost_since_ = now;  // said once a loss, not at every poll
    spdlog::warn("train: job {}: {}; following it again for up to 2 minutes", job_id_, e.message());
  }
  return now - lost_since_ <= gflex::detail::link_loss_patience;
}

bool train_driver::poll(std::vector<round_update>& out) {
  // A core restarting (or a follower taking over) is ridden out as client::wait rides it
  // out: it failed the stage, and its restarts were spent within a second.
  auto s = options_.client->status(job_id_);
  if (!s && rides_out(s.error())) return false;
  if (!s) fail("train: job " + job_id_ + ": " + s.error().message());
  // A paused job waits for its owner (its budget spent: a top-up resumes it); the stage goes
  // on following it, and says why once, not in silence.
  if (s->state == job_state::paused && s->detail != paused_detail_)
    spdlog::warn("train: job {} is paused: {}", job_id_, s->detail);
  paused_detail_ = s->state == job_state::paused ? s->detail : std::string();
  if (s->round > last_round_) {
    // The status and the parameters are two asks: a round committed between them (or an
    // export made before the last) would pair one round's loss and accuracy with another's
    // parameters. The parameters say their round; the status is asked again until it is of
    // the same round, a few times, or this poll emits nothing and the next tries again.
    auto params = std::make_shared<std::vector<float>>(static_cast<size_t>(parameters_));
    bool paired = false;
    for (int ask = 0; ask < 3 && !paired; ++ask) {
      if (between_asks) between_asks(*s);
      auto bytes = options_.client->fetch(job_id_);
      if (!bytes && rides_out(bytes.error())) return false;
      if (!bytes)
        fail("train: fetching job " + job_id_ + "'s parameters: " + bytes.error().message());
      auto round = gflex::detail::copy_parameters(*bytes, job_id_, *params, nullptr);
      if (!round)
        fail("train: fetching job " + job_id_ + "'s parameters: " + round.error().message());
      if (*round != s->round) {
        s = options_.client->status(job_id_);
        if (!s && rides_out(s.error())) return false;
        if (!s) fail("train: job " + job_id_ + ": " + s.error().message());
      }
      paired = *round == s->round;
    }
    if (!paired) return false;
    if (s->round > last_round_) {
      last_round_ = s->round;
      out.push_back(round_update{*s, std::move(params)});
    }
  }
  lost_since_ = {};
  if (!is_terminal(s->state)) return false;
  if (s->state != job_state::done)
    fail("train: job " + job_id_ + " " + to_string(s->state) + ": " + s->detail);
  return true;
}

void train_driver::cancel() {
  if (!submitted()) return;
  if (auto ok = options_.client->cancel(job_id_); !ok)
    spdlog::warn("train: job {} of a failed run: not cancelled: {}", job_id_, ok.error().message());
}

std::string train_driver::checkpoint() const {
  return job_id_ + " " + std::to_string(last_round_);
}

}  // namespace gflex::pipeline::detail
