#include "gflex/runtime/printable_text.hpp"

#include <array>
#include <charconv>
#include <cstdint>

namespace gflex {

bool is_printable_text(std::string_view text) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const auto* end = p + text.size();
  while (p < end) {
    const unsigned char c = *p;
    if (c < 0x80) {
      if (c < 0x20 || c == 0x7f) return false;
      ++p;
      continue;
    }
    // The sequence's length and smallest code point (anything smaller is an overlong form).
    int extra = 0;
    uint32_t cp = 0, least = 0;
    if ((c & 0xe0) == 0xc0) {
      extra = 1, cp = c & 0x1f, least = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
      extra = 2, cp = c & 0x0f, least = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
      extra = 3, cp = c & 0x07, least = 0x10000;
    } else {
      return false;  // a continuation byte first, or 0xf8 and above
    }
    if (end - p <= extra) return false;
    for (int i = 1; i <= extra; ++i) {
      if ((p[i] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (p[i] & 0x3f);
    }
    if (cp < least || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    if (cp >= 0x80 && cp <= 0x9f) return false;  // C1 controls
    p += extra + 1;
  }
  return true;
}

std::string format_double(double x) {
  std::array<char, 64> buf{};
  auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), x);
  return std::string(buf.data(), ec == std::errc{} ? end : buf.data());
}

}  // namespace gflex
