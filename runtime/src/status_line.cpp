#include "gflex/runtime/status_line.hpp"

#include <pthread.h>
#include <signal.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>
#include <vector>

namespace gflex {

namespace {

// Sits in front of the logger's own sinks: a log line first clears the status line, then is
// written, then the status line is drawn again under it.
class under_status_sink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit under_status_sink(std::vector<spdlog::sink_ptr> inner) : inner_(std::move(inner)) {}

  void show(const std::string& text) {
    std::lock_guard<std::mutex> lock(mutex_);
    text_ = text;
    draw();
  }
  void clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    text_.clear();
    std::fputs("\r\033[2K", stderr);
    std::fflush(stderr);
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    std::fputs("\r\033[2K", stderr);
    std::fflush(stderr);
    for (auto& s : inner_)
      if (s->should_log(msg.level)) s->log(msg);
    for (auto& s : inner_) s->flush();
    draw();
  }
  void flush_() override {
    for (auto& s : inner_) s->flush();
  }

 private:
  void draw() {
    if (text_.empty()) return;
    // One line, cut to the terminal's width: a wrapped line could not be redrawn in place.
    winsize w{};
    size_t width = ioctl(STDERR_FILENO, TIOCGWINSZ, &w) == 0 && w.ws_col > 1 ? w.ws_col - 1 : 79;
    std::string shown = text_.size() > width ? text_.substr(0, width) : text_;
    std::fprintf(stderr, "\r\033[2K\033[1m%s\033[0m", shown.c_str());
    std::fflush(stderr);
  }

  std::vector<spdlog::sink_ptr> inner_;
  std::string text_;
};

}  // namespace

struct status_line::impl {
  std::function<std::string()> text;
  std::chrono::milliseconds period;
  std::shared_ptr<under_status_sink> sink;
  std::mutex m;
  std::condition_variable wake;
  bool stopping = false;
  std::thread loop;
};

std::unique_ptr<status_line> status_line::start(std::function<std::string()> text,
                                                std::chrono::milliseconds period) {
  if (!isatty(STDERR_FILENO)) return nullptr;
  auto p = std::make_unique<impl>();
  p->text = std::move(text);
  p->period = period;
  auto logger = spdlog::default_logger();
  p->sink = std::make_shared<under_status_sink>(logger->sinks());
  logger->sinks() = {p->sink};
  // The drawing thread takes no signals: the program waits for SIGINT and SIGTERM itself.
  sigset_t all, previous;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &previous);
  p->loop = std::thread([q = p.get()] {
    std::unique_lock<std::mutex> lock(q->m);
    while (!q->stopping) {
      lock.unlock();
      q->sink->show(q->text());
      lock.lock();
      q->wake.wait_for(lock, q->period, [q] { return q->stopping; });
    }
  });
  pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  return std::unique_ptr<status_line>(new status_line(std::move(p)));
}

status_line::status_line(std::unique_ptr<impl> p) : impl_(std::move(p)) {}

status_line::~status_line() {
  {
    std::lock_guard<std::mutex> lock(impl_->m);
    impl_->stopping = true;
  }
  impl_->wake.notify_all();
  impl_->loop.join();
  // The sink stays in front of the logger's own (with no line to draw it only passes lines
  // through): swapping the logger's sinks back while other threads may log would race.
  impl_->sink->clear();
}

}  // namespace gflex
