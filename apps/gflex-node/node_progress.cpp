#include "node_progress.hpp"

#include <spdlog/spdlog.h>

#include "gflex/runtime/credits.hpp"

#include <chrono>
#include <cstdio>

namespace gflex::app {

node_progress::node_progress(std::string name, int workers)
    : name_(std::move(name)), workers_(workers) {
  line_ = status_line::start([this] { return line(); }, std::chrono::seconds(1));
}

node_progress::~node_progress() = default;

void node_progress::on_activity(const node_activity& a) {
  using kind = node_activity::kind;
  if (a.what == kind::stopping) {
    // The process ends without unwinding: the line is cleared now. Taken out under the lock
    // (workers read it as they tell their ends), ended outside it (its thread draws line(),
    // which takes the lock).
    std::unique_ptr<status_line> ended;
    {
      std::lock_guard<std::mutex> lock(m_);
      ended = std::move(line_);
    }
    return;
  }
  std::lock_guard<std::mutex> lock(m_);
  switch (a.what) {
    case kind::joined:
      connected_ = true;
      node_id_ = a.node_id;
      // What the node runs (a GPU node: its GPU groups times --streams-per-gpu).
      if (a.workers > 0) workers_ = a.workers;
      break;
    case kind::lost:
      connected_ = false;
      break;
    case kind::started:
      busy_ += 1;
      job_ = a.job_id;
      round_ = a.round;
      // Without a terminal the logs tell: a line when an assignment starts computing (its
      // shard and parameters in hand), and one when it ends.
      if (!line_)
        spdlog::info("computing {} round {}{}", a.job_id, a.round,
                     a.verify ? " (a re-computation)" : "");
      break;
    case kind::done:
    case kind::failed:
      busy_ = busy_ > 0 ? busy_ - 1 : 0;
      if (a.what == kind::done) {
        done_ += 1;
        verified_ += a.verify ? 1 : 0;
        samples_per_s_ = a.samples_per_s;
        compute_s_ += a.compute_s;
      } else {
        failed_ += 1;
      }
      if (!line_)
        spdlog::info("{} {} round {}{}{}", a.what == kind::done ? "computed" : "could not compute",
                     a.job_id, a.round, a.verify ? " (a re-computation)" : "",
                     a.what == kind::done
                         ? fmt::format(": {:.0f} samples/s, {:.2f} s", a.samples_per_s, a.compute_s)
                         : std::string());
      break;
    case kind::cancelled:
      busy_ = busy_ > 0 ? busy_ - 1 : 0;
      if (!line_)
        spdlog::info(
            "stopped computing {} round {}: its job took it back (another node's copy "
            "won, or the round closed)",
            a.job_id, a.round);
      break;
    case kind::earned:
      if (!line_ && a.earned != earned_)
        spdlog::info("earned {} credits so far", format_credits(a.earned));
      earned_ = a.earned;
      break;
    case kind::stopping:
      break;
  }
}

std::string node_progress::line() const {
  std::lock_guard<std::mutex> lock(m_);
  // The facts that matter most first: a narrow terminal cuts the end of the line.
  std::string s = name_;
  s += connected_ ? " | connected as " + node_id_ : " | connecting to the core";
  if (busy_ > 0)
    s += fmt::format(" | working on {} round {} ({}/{} workers)", job_, round_, busy_, workers_);
  else
    s += " | idle";
  s += " | earned " + format_credits(earned_) + " credits";
  s += fmt::format(" | assignments: {} done", done_);
  if (verified_ > 0) s += fmt::format(" ({} re-computations)", verified_);
  if (failed_ > 0) s += fmt::format(", {} failed", failed_);
  if (samples_per_s_ > 0) s += fmt::format(" | {:.0f} samples/s", samples_per_s_);
  s += fmt::format(" | {:.1f} min of compute", compute_s_ / 60.0);
  return s;
}

}  // namespace gflex::app
