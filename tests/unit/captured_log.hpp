#pragma once
/// @file
/// The process's log captured for a test: while one lives, spdlog's default logger writes
/// into a string (from `level` up), and the logger it replaced comes back when it ends, also
/// when a REQUIRE ends the test early.

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace gflex::test {

/// A sink that owns the text it holds.
class string_sink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  std::string text() {
    std::lock_guard<std::mutex> lock(mutex_);
    return text_;
  }
  /// Lets the text go; what comes later is dropped.
  void close() {
    std::lock_guard<std::mutex> lock(mutex_);
    text_.clear();
    text_.shrink_to_fit();
    closed_ = true;
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    if (closed_) return;
    spdlog::memory_buf_t formatted;
    formatter_->format(msg, formatted);
    text_.append(formatted.data(), formatted.size());
  }
  void flush_() override {}

 private:
  std::string text_;
  bool closed_ = false;
};

class captured_log {
 public:
  explicit captured_log(spdlog::level::level_enum level = spdlog::level::info)
      : before_(spdlog::default_logger()),
        sink_(std::make_shared<string_sink>()),
        logger_(std::make_shared<spdlog::logger>("captured", sink_)) {
    logger_->set_level(level);
    spdlog::set_default_logger(logger_);
  }
  // The logger is kept for the process, its text let go: spdlog::info() and the others call
  // through a raw pointer to the default logger, which an actor's thread may hold as the
  // capture ends (an actor system ending after it). Freed, its call ended in "pure virtual
  // method called".
  ~captured_log() {
    spdlog::set_default_logger(before_);
    sink_->close();
    static std::mutex retired_mutex;
    static std::vector<std::shared_ptr<spdlog::logger>> retired;
    std::lock_guard<std::mutex> lock(retired_mutex);
    retired.push_back(logger_);
  }
  captured_log(const captured_log&) = delete;
  captured_log& operator=(const captured_log&) = delete;

  /// What was logged so far.
  std::string text() { return sink_->text(); }
  /// How many times `needle` was logged so far.
  int count(const std::string& needle) {
    const std::string all = text();
    int n = 0;
    for (size_t at = all.find(needle); at != std::string::npos; at = all.find(needle, at + 1)) ++n;
    return n;
  }

 private:
  std::shared_ptr<spdlog::logger> before_;
  std::shared_ptr<string_sink> sink_;
  std::shared_ptr<spdlog::logger> logger_;
};

}  // namespace gflex::test
