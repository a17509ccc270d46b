#pragma once
/// @file
/// What gflex-node shows of its work: on a terminal, a status line (connected, the job and
/// round being computed, assignments done, samples/s, compute time, credits earned) redrawn every
/// second under the logs; otherwise, a plain log line per assignment ended.

#include <memory>
#include <mutex>
#include <string>

#include "gflex/node_activity.hpp"
#include "gflex/runtime/status_line.hpp"

namespace gflex::app {

class node_progress {
 public:
  /// `name`: the node's name; `workers`: its compute slots until the node joins and says.
  node_progress(std::string name, int workers);
  ~node_progress();

  /// Called by the node (from its threads).
  void on_activity(const node_activity& a);

  /// The status line's text now.
  std::string line() const;

 private:
  mutable std::mutex m_;
  std::string name_, node_id_, job_;
  bool connected_ = false;
  int workers_ = 1, busy_ = 0;
  int64_t round_ = 0;
  uint64_t done_ = 0, failed_ = 0, verified_ = 0;
  double samples_per_s_ = 0.0, compute_s_ = 0.0;
  int64_t earned_ = 0;                 // micro-credits, as the core last said
  std::unique_ptr<status_line> line_;  // null when stderr is not a terminal
};

}  // namespace gflex::app
