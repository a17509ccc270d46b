#pragma once
/// @file
/// A status line at the bottom of a terminal for a program that runs for long (gflex-node):
/// redrawn in place every period while log lines scroll above it (the default logger's
/// output goes through it, so the two never mix). When stderr is not a terminal nothing is
/// drawn and the logs alone tell.

#include <chrono>
#include <functional>
#include <memory>
#include <string>

namespace gflex {

class status_line {
 public:
  /// Draws `text()` every `period` on stderr when it is a terminal (null otherwise). Call
  /// after init_logging; the default logger's lines are then printed above the line.
  static std::unique_ptr<status_line> start(std::function<std::string()> text,
                                            std::chrono::milliseconds period);
  /// Stops drawing and clears the line.
  ~status_line();
  status_line(const status_line&) = delete;
  status_line& operator=(const status_line&) = delete;

  struct impl;

 private:
  explicit status_line(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

}  // namespace gflex
