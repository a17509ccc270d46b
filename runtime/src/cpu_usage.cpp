#include "gflex/runtime/cpu_usage.hpp"

#include <fstream>
#include <sstream>
#include <string>
#include <thread>

namespace gflex {

cpu_monitor::cpu_monitor() : last_(take()), last_at_(std::chrono::steady_clock::now()) {}

cpu_monitor::sample cpu_monitor::take() {
  sample s;
  std::ifstream stat("/proc/stat");
  std::string cpu;
  uint64_t user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  if (!(stat >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal) ||
      cpu != "cpu")
    return s;
  s.busy = user + nice + system + irq + softirq + steal;
  s.total = s.busy + idle + iowait;
  // /proc/self/stat: fields 14 and 15 are utime and stime; the name (field 2) may hold
  // spaces, so parse after its closing parenthesis.
  std::ifstream self("/proc/self/stat");
  std::string line;
  std::getline(self, line);
  auto close = line.rfind(')');
  if (close == std::string::npos) return s;
  std::istringstream rest(line.substr(close + 2));
  std::string field;
  uint64_t utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  s.self = utime + stime;
  s.ok = true;
  return s;
}

std::optional<double> cpu_monitor::others_busy(std::chrono::steady_clock::duration max_age,
                                               std::chrono::steady_clock::duration probe,
                                               std::chrono::steady_clock::duration min_window) {
  auto since = std::chrono::steady_clock::now() - last_at_;
  if (since > max_age) {
    last_ = take();
    std::this_thread::sleep_for(probe);
  } else if (since < min_window) {
    std::this_thread::sleep_for(min_window - since);
  }
  auto now = take();
  auto before = last_;
  last_ = now;
  last_at_ = std::chrono::steady_clock::now();
  if (!now.ok || !before.ok || now.total <= before.total) return std::nullopt;
  double total = static_cast<double>(now.total - before.total);
  double busy = static_cast<double>(now.busy - before.busy);
  double mine = static_cast<double>(now.self - before.self);
  double others = (busy - mine) / total;
  return others < 0.0 ? 0.0 : (others > 1.0 ? 1.0 : others);
}

}  // namespace gflex
