#include "gflex/runtime/credits.hpp"

#include <charconv>

namespace gflex {

namespace {

error refuse(const std::string& what) {
  return error(errc::invalid_argument, what);
}

}  // namespace

expected<int64_t> parse_credits(std::string_view text) {
  auto bad = [&](const std::string& why) {
    return refuse("amount '" + std::string(text) + "': " + why);
  };
  if (text.empty()) return bad("empty");
  auto dot = text.find('.');
  auto whole = text.substr(0, dot);
  auto frac = dot == std::string_view::npos ? std::string_view() : text.substr(dot + 1);
  if (whole.empty() || (dot != std::string_view::npos && frac.empty()))
    return bad("expected digits, like 12 or 0.25");
  for (char c : whole)
    if (c < '0' || c > '9') return bad("expected a non-negative decimal number of credits");
  for (char c : frac)
    if (c < '0' || c > '9') return bad("expected a non-negative decimal number of credits");
  if (frac.size() > 6) return bad("at most 6 decimals (a micro-credit)");
  if (whole.size() > 13) return bad("more than 1e12 credits");
  int64_t w = 0;
  std::from_chars(whole.data(), whole.data() + whole.size(), w);
  int64_t f = 0;
  for (size_t i = 0; i < 6; ++i) f = f * 10 + (i < frac.size() ? frac[i] - '0' : 0);
  if (w > max_amount_micro / micro_per_credit) return bad("more than 1e12 credits");
  int64_t micro = w * micro_per_credit + f;
  if (micro > max_amount_micro) return bad("more than 1e12 credits");
  return micro;
}

std::string format_credits(int64_t micro) {
  std::string sign = micro < 0 ? "-" : "";
  uint64_t m = micro < 0 ? static_cast<uint64_t>(-(micro + 1)) + 1 : static_cast<uint64_t>(micro);
  std::string out = sign + std::to_string(m / micro_per_credit);
  uint64_t frac = m % micro_per_credit;
  if (frac != 0) {
    std::string digits = std::to_string(frac);
    digits.insert(0, 6 - digits.size(), '0');
    while (digits.back() == '0') digits.pop_back();
    out += "." + digits;
  }
  return out;
}

}  // namespace gflex
