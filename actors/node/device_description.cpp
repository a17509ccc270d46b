#include "device_description.hpp"

namespace gflex {

std::string describe_devices(const std::vector<std::string>& ranks, const std::string& reduce,
                             size_t max_chars) {
  const std::string suffix = ranks.size() > 1 ? " (" + reduce + ")" : "";
  std::string all;
  for (size_t r = 0; r < ranks.size(); ++r) all += (r == 0 ? "" : "; ") + ranks[r];
  if (all.size() + suffix.size() <= max_chars) return all + suffix;
  // The ranks that fit beside the count of the rest (at most 24 characters) and the
  // reduction, which gives way first: the devices are what a price and a plan go by.
  constexpr size_t count_chars = 24;
  const size_t for_ranks = max_chars > count_chars ? max_chars - count_chars : 0;
  std::string out;
  size_t shown = 0;
  for (; shown < ranks.size(); ++shown) {
    const std::string next = (shown == 0 ? "" : "; ") + ranks[shown];
    if (out.size() + next.size() > for_ranks) break;
    out += next;
  }
  if (shown == 0 && !ranks.empty()) {  // even the first is too long: the start of it
    out = ranks[0].substr(0, for_ranks);
    shown = 1;
  }
  if (shown < ranks.size())
    out += (out.empty() ? "" : "; ") + std::to_string(ranks.size() - shown) + " more";
  if (!suffix.empty() && out.size() + 4 < max_chars) {
    const size_t room = max_chars - out.size() - 3;  // " (" and ")"
    out += " (" + reduce.substr(0, room) + ")";
  }
  return out.substr(0, max_chars);
}

}  // namespace gflex
