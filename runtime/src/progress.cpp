#include "gflex/runtime/progress.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>

namespace gflex {

progress_bar::progress_bar(std::string label, int64_t total, std::FILE* out)
    : label_(std::move(label)),
      total_(std::max<int64_t>(total, 1)),
      out_(out),
      tty_(isatty(fileno(out)) != 0),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_ - std::chrono::hours(1)) {}

double progress_bar::elapsed_s() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  char buf[32];
  if (seconds < 60) {
    std::snprintf(buf, sizeof buf, "%.1fs", seconds);
  } else {
    auto s = static_cast<long>(seconds + 0.5);
    std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  }
  return buf;
}

void progress_bar::update(int64_t done, const std::string& status) {
  auto now = std::chrono::steady_clock::now();
  // A terminal gets ~10 redraws a second; a log gets a line every 5 seconds.
  auto interval = tty_ ? std::chrono::milliseconds(100) : std::chrono::milliseconds(5000);
  if (now - last_draw_ < interval) return;
  last_draw_ = now;
  draw(done, status, false);
}

void progress_bar::clear_line() {
  if (!tty_) return;
  std::fputs("\r\033[K", out_);
  std::fflush(out_);
}

void progress_bar::finish(const std::string& status) {
  draw(total_, status, true);
}

void progress_bar::finish(int64_t done, const std::string& status) {
  draw(done, status, true);
}

void progress_bar::draw(int64_t done, const std::string& status, bool final) {
  done = std::clamp<int64_t>(done, 0, total_);
  double fraction = static_cast<double>(done) / static_cast<double>(total_);
  double elapsed = elapsed_s();
  double eta = done > 0 ? elapsed * (1.0 - fraction) / fraction : NAN;
  constexpr int width = 24;
  int filled = static_cast<int>(fraction * width);
  std::string bar(static_cast<size_t>(filled), '#');
  bar.resize(width, '.');
  std::string time = final ? format_duration(elapsed) : "ETA " + format_duration(eta);
  if (tty_) {
    std::fprintf(out_, "\r\033[K%s [%s] %3.0f%% %s | %s", label_.c_str(), bar.c_str(),
                 fraction * 100, status.c_str(), time.c_str());
    if (final) std::fputc('\n', out_);
  } else {
    std::fprintf(out_, "%s [%s] %3.0f%% %s | %s\n", label_.c_str(), bar.c_str(), fraction * 100,
                 status.c_str(), time.c_str());
  }
  std::fflush(out_);
}

}  // namespace gflex
