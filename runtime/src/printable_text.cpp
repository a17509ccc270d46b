#include "gflex/runtime/printable_text.hpp"

#include <array>
#include <charconv>
#include <cstdint>

namespace gflex {

namespace {

// The length of the printable character `p` starts (at most `end - p` bytes); 0 when it is
// not one: a control character, or bytes that are not shortest-form UTF-8 of a code point.
int printable_length(const unsigned char* p, const unsigned char* end) noexcept {
  const unsigned char c = *p;
  if (c < 0x80) return c < 0x20 || c == 0x7f ? 0 : 1;
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
    return 0;  // a continuation byte first, or 0xf8 and above
  }
  if (end - p <= extra) return 0;
  for (int i = 1; i <= extra; ++i) {
    if ((p[i] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (p[i] & 0x3f);
  }
  if (cp < least || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  if (cp >= 0x80 && cp <= 0x9f) return 0;  // C1 controls
  return extra + 1;
}

}  // namespace

bool is_printable_text(std::string_view text) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const auto* end = p + text.size();
  while (p < end) {
    const int n = printable_length(p, end);
    if (n == 0) return false;
    p += n;
  }
  return true;
}

namespace {

std::string escaped(std::string_view bytes) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char b : bytes) {
    out += "\\x";
    out += hex[b >> 4];
    out += hex[b & 0xf];
  }
  return out;
}

}  // namespace

std::string terminal_bytes::put(unsigned char b) {
  std::string out;
  if (!pending_.empty()) {
    if ((b & 0xc0) == 0x80) {
      pending_ += static_cast<char>(b);
      if (pending_.size() < expected_) return out;
      out = is_printable_text(pending_) ? pending_ : escaped(pending_);
      pending_.clear();
      return out;
    }
    out = escaped(pending_);  // cut short: b starts afresh
    pending_.clear();
  }
  if (b == '\n' || b == '\t' || (b >= 0x20 && b < 0x7f)) {
    out += static_cast<char>(b);
  } else if (b >= 0xc2 && b <= 0xf4) {  // a lead byte that may start a printable character
    pending_ = static_cast<char>(b);
    expected_ = b < 0xe0 ? 2 : b < 0xf0 ? 3 : 4;
  } else {
    out += escaped(std::string_view(reinterpret_cast<const char*>(&b), 1));
  }
  return out;
}

std::string terminal_bytes::finish() {
  std::string out = escaped(pending_);
  pending_.clear();
  return out;
}

std::string printable_text(std::string_view text) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const auto* end = p + text.size();
  std::string out;
  out.reserve(text.size());
  while (p < end) {
    const int n = printable_length(p, end);
    if (n == 0) {
      out += '?';
      ++p;
    } else {
      out.append(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
      p += n;
    }
  }
  return out;
}

std::string format_double(double x) {
  std::array<char, 64> buf{};
  auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), x);
  return std::string(buf.data(), ec == std::errc{} ? end : buf.data());
}

}  // namespace gflex
