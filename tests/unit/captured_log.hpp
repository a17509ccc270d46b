#pragma once
/// @file
/// The process's log captured for a test: while one lives, spdlog's default logger writes
/// into a string (from `level` up), and the logger it replaced comes back when it ends, also
/// when a REQUIRE ends the test early.

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <memory>
#include <sstream>
#include <string>

namespace gflex::test {

class captured_log {
 public:
  explicit captured_log(spdlog::level::level_enum level = spdlog::level::info)
      : before_(spdlog::default_logger()),
        logger_(std::make_shared<spdlog::logger>(
            "captured", std::make_shared<spdlog::sinks::ostream_sink_mt>(lines_))) {
    logger_->set_level(level);
    spdlog::set_default_logger(logger_);
  }
  ~captured_log() { spdlog::set_default_logger(before_); }
  captured_log(const captured_log&) = delete;
  captured_log& operator=(const captured_log&) = delete;

  /// What was logged so far.
  std::string text() {
    logger_->flush();
    return lines_.str();
  }
  /// How many times `needle` was logged so far.
  int count(const std::string& needle) {
    const std::string all = text();
    int n = 0;
    for (size_t at = all.find(needle); at != std::string::npos; at = all.find(needle, at + 1)) ++n;
    return n;
  }

 private:
  std::ostringstream lines_;
  std::shared_ptr<spdlog::logger> before_;
  std::shared_ptr<spdlog::logger> logger_;
};

}  // namespace gflex::test
