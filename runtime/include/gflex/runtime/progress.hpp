#pragma once
/// @file
/// A one-line terminal progress bar, redrawn in place when stderr is a terminal and printed
/// as occasional plain lines when it is not (logs, CI).

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace gflex {

/// Progress of a task with a known number of units of work.
class progress_bar {
 public:
  /// `total` units, of which `done` are finished when update() is called.
  progress_bar(std::string label, int64_t total, std::FILE* out = stderr);

  /// Redraws with `done` units finished and `status` (for example "loss 0.41 | 9.1k/s")
  /// after the bar; redraws are rate-limited so a hot loop may call this every step.
  void update(int64_t done, const std::string& status);

  /// Clears the bar's line on a terminal so that a log line can be printed in its place;
  /// the next update() redraws the bar below it.
  void clear_line();

  /// Draws the final state, all units finished, and ends the line.
  void finish(const std::string& status);

  /// Draws the final state with `done` units finished and ends the line: a task that ended
  /// early (a job that failed or was cancelled) shows where it stopped, not a full bar.
  void finish(int64_t done, const std::string& status);

  /// Seconds since the bar was created.
  double elapsed_s() const;

 private:
  void draw(int64_t done, const std::string& status, bool final);

  std::string label_;
  int64_t total_;
  std::FILE* out_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

/// "1m05s", "12.3s".
std::string format_duration(double seconds);

}  // namespace gflex
