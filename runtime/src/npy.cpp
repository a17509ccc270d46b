#include "gflex/runtime/npy.hpp"

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <vector>

namespace gflex {

namespace {

// The value of `key` in the header's Python dict literal, up to the next ',' or '}' outside
// brackets and quotes.
std::string dict_value(const std::string& header, const std::string& key) {
  auto at = header.find("'" + key + "'");
  if (at == std::string::npos) return {};
  auto colon = header.find(':', at);
  if (colon == std::string::npos) return {};
  size_t i = colon + 1;
  while (i < header.size() && header[i] == ' ') ++i;
  int depth = 0;
  bool quoted = false;
  size_t start = i;
  for (; i < header.size(); ++i) {
    const char c = header[i];
    if (c == '\'') quoted = !quoted;
    if (quoted) continue;
    if (c == '(' || c == '[') ++depth;
    if (c == ')' || c == ']') --depth;
    if (depth == 0 && (c == ',' || c == '}')) break;
  }
  auto v = header.substr(start, i - start);
  while (!v.empty() && v.back() == ' ') v.pop_back();
  return v;
}

}  // namespace

expected<tensor> read_npy(const std::filesystem::path& file) {
  const std::string name = file.string();
  auto bad = [&](const std::string& what) { return error(errc::bad_format, name + ": " + what); };
  std::ifstream in(file, std::ios::binary);
  if (!in) return error(errc::io_error, name + ": cannot open");
  std::vector<char> bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (bytes.size() < 10 || std::memcmp(bytes.data(), "\x93NUMPY", 6) != 0)
    return bad("not an .npy file (no \\x93NUMPY magic)");
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len = 0, offset = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) |
                 (static_cast<size_t>(static_cast<unsigned char>(bytes[9])) << 8);
    offset = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return bad("truncated header");
    for (int i = 0; i < 4; ++i)
      header_len |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    offset = 12;
  } else {
    return bad("unknown .npy format version " + std::to_string(major));
  }
  if (header_len > 1 << 20 || offset + header_len > bytes.size()) return bad("truncated header");
  const std::string header(bytes.data() + offset, header_len);
  offset += header_len;
  const std::string descr = dict_value(header, "descr");
  const std::string fortran = dict_value(header, "fortran_order");
  const std::string shape_text = dict_value(header, "shape");
  if (descr.empty() || fortran.empty() || shape_text.size() < 2)
    return bad("header lacks descr, fortran_order or shape");
  if (fortran != "False") return bad("Fortran-ordered arrays are not supported (save in C order)");
  shape_t shape;
  {
    std::string inner = shape_text.substr(1, shape_text.size() - 2);
    size_t i = 0;
    while (i < inner.size()) {
      while (i < inner.size() && (inner[i] == ' ' || inner[i] == ',')) ++i;
      if (i >= inner.size()) break;
      size_t j = i;
      while (j < inner.size() && inner[j] >= '0' && inner[j] <= '9') ++j;
      if (j == i || j - i > 12) return bad("bad shape " + shape_text);
      shape.push_back(std::stoll(inner.substr(i, j - i)));
      i = j;
    }
  }
  if (shape.empty() || shape.size() > 4)
    return bad("arrays of 1 to 4 dimensions only, shape " + shape_text);
  auto count = checked_numel(shape);
  if (!count) return bad("shape " + shape_text + " is too large");
  struct kind {
    const char* descr;
    size_t size;
    dtype out;
  };
  static const kind kinds[] = {
      {"'<f4'", 4, dtype::f32}, {"'<f8'", 8, dtype::f32}, {"'|u1'", 1, dtype::u8},
      {"'|i1'", 1, dtype::i32}, {"'<i2'", 2, dtype::i32}, {"'<u2'", 2, dtype::i32},
      {"'<i4'", 4, dtype::i32}, {"'<u4'", 4, dtype::i32}, {"'<i8'", 8, dtype::i32}};
  const kind* k = nullptr;
  for (const auto& candidate : kinds)
    if (descr == candidate.descr) k = &candidate;
  if (k == nullptr)
    return bad("dtype " + descr +
               " is not supported (use float32, float64, uint8, or integers that fit int32)");
  const size_t want = static_cast<size_t>(*count) * k->size;
  if (bytes.size() - offset != want)
    return bad("holds " + std::to_string(bytes.size() - offset) + " data bytes, the header says " +
               std::to_string(want) + (bytes.size() - offset < want ? " (truncated)" : ""));
  tensor out = tensor::empty(shape, k->out);
  const char* src = bytes.data() + offset;
  for (int64_t i = 0; i < *count; ++i) {
    const char* p = src + static_cast<size_t>(i) * k->size;
    if (k->out == dtype::u8) {
      out.data<uint8_t>()[i] = static_cast<uint8_t>(*p);
    } else if (k->out == dtype::f32) {
      double v;
      if (k->size == 4) {
        float f;
        std::memcpy(&f, p, 4);
        v = f;
      } else {
        std::memcpy(&v, p, 8);
      }
      if (std::isfinite(v) && std::fabs(v) > std::numeric_limits<float>::max())
        return bad("value " + std::to_string(i) + " does not fit float32");
      out.data<float>()[i] = static_cast<float>(v);
    } else {
      int64_t v = 0;
      const std::string& d = descr;
      if (d == "'|i1'") v = static_cast<int8_t>(*p);
      if (d == "'<i2'") {
        int16_t x;
        std::memcpy(&x, p, 2);
        v = x;
      }
      if (d == "'<u2'") {
        uint16_t x;
        std::memcpy(&x, p, 2);
        v = x;
      }
      if (d == "'<i4'") {
        int32_t x;
        std::memcpy(&x, p, 4);
        v = x;
      }
      if (d == "'<u4'") {
        uint32_t x;
        std::memcpy(&x, p, 4);
        v = x;
      }
      if (d == "'<i8'") std::memcpy(&v, p, 8);
      if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
        return bad("value " + std::to_string(i) + " does not fit int32");
      out.data<int32_t>()[i] = static_cast<int32_t>(v);
    }
  }
  return out;
}

}  // namespace gflex
