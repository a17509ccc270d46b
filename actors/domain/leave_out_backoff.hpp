#pragma once
/// @file
/// How long a job leaves a node out of its work after the work failed there (ran out of the
/// node's memory, passed the job's deadline, was refused by its kernels): briefly at first,
/// doubling with each failure in a row. A result of the node's ends the row: counted over the
/// job's life, a volunteer's machine that was slow eight times in a week-long job, among
/// hundreds of good rounds, was left out for half an hour at each slow round after.

#include <chrono>

namespace gflex {

class leave_out_backoff {
 public:
  using clock = std::chrono::steady_clock;
  static constexpr std::chrono::minutes longest{30};

  /// Notes a failure at `now`: left out for `first`, doubled for each failure before it in
  /// the row, at most `longest`.
  void failed(clock::time_point now, std::chrono::seconds first);
  /// Notes a result of the node's that the job took: the row ends.
  void succeeded() { in_a_row_ = 0; }
  /// Until when it is left out.
  clock::time_point until() const { return until_; }

 private:
  int in_a_row_ = 0;
  clock::time_point until_{};
};

}  // namespace gflex
