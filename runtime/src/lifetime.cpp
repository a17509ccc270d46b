#include "gflex/runtime/lifetime.hpp"

#include <charconv>

namespace gflex {

expected<int64_t> parse_lifetime(std::string_view text) {
  auto bad = [&] {
    return error(errc::invalid_argument,
                 "--expires: '" + std::string(text) +
                     "' is not a lifetime (0 for never, or a count with s, m, h or d: 90m, 7d)");
  };
  if (text == "0") return int64_t{0};
  if (text.size() < 2) return bad();
  int64_t unit = 0;
  switch (text.back()) {
    case 's':
      unit = 1;
      break;
    case 'm':
      unit = 60;
      break;
    case 'h':
      unit = 3600;
      break;
    case 'd':
      unit = 86400;
      break;
    default:
      return bad();
  }
  int64_t count = 0;
  auto digits = text.substr(0, text.size() - 1);
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), count);
  if (ec != std::errc() || end != digits.data() + digits.size() || count <= 0) return bad();
  constexpr int64_t ten_years = 10 * 366 * 86400LL;
  if (count > ten_years / unit) return bad();
  return count * unit;
}

}  // namespace gflex
