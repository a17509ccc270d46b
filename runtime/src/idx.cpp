#include "gflex/runtime/idx.hpp"

#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>

namespace gflex {

namespace {

error bad(const std::filesystem::path& file, const std::string& what) {
  return error(errc::bad_format, file.string() + ": " + what);
}

struct gz_closer {
  void operator()(gzFile f) const { gzclose(f); }
};
using gz_ptr = std::unique_ptr<std::remove_pointer_t<gzFile>, gz_closer>;

// Reads exactly n bytes; returns how many were read (fewer means the file ended).
expected<size_t> read_fully(gzFile f, void* out, size_t n, const std::filesystem::path& file) {
  size_t done = 0;
  auto* p = static_cast<unsigned char*>(out);
  while (done < n) {
    unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - done, 1u << 30));
    int got = gzread(f, p + done, chunk);
    if (got < 0) {
      int code = 0;
      const char* msg = gzerror(f, &code);
      return bad(file, std::string("corrupt compressed data (") + msg + ")");
    }
    if (got == 0) break;
    done += static_cast<size_t>(got);
  }
  return done;
}

uint32_t big_endian_u32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

}  // namespace

expected<tensor> read_idx_u8(const std::filesystem::path& file, size_t expected_rank) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(file, ec))
    return error(errc::io_error, file.string() + ": no such file");
  // gzopen reads plain files transparently as well as gzip ones.
  gz_ptr f(gzopen(file.c_str(), "rb"));
  if (!f)
    return error(errc::io_error, file.string() + ": cannot open (" + std::strerror(errno) + ")");

  unsigned char magic[4];
  auto got = read_fully(f.get(), magic, 4, file);
  if (!got) return got.error();
  if (*got < 4) return bad(file, "truncated header (file has " + std::to_string(*got) + " bytes)");
  // IDX magic: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions.
  if (magic[0] != 0 || magic[1] != 0) return bad(file, "wrong magic number (not an IDX file)");
  if (magic[2] != 0x08) {
    char code[8];
    std::snprintf(code, sizeof code, "0x%02x", magic[2]);
    return bad(file, "element type code " + std::string(code) + " is not unsigned byte (0x08)");
  }
  size_t rank = magic[3];
  if (rank != expected_rank)
    return bad(file, "has " + std::to_string(rank) + " dimensions, expected " +
                         std::to_string(expected_rank));

  std::vector<unsigned char> dims_raw(rank * 4);
  got = read_fully(f.get(), dims_raw.data(), dims_raw.size(), file);
  if (!got) return got.error();
  if (*got < dims_raw.size()) return bad(file, "truncated header");
  shape_t shape;
  for (size_t i = 0; i < rank; ++i) shape.push_back(big_endian_u32(&dims_raw[i * 4]));
  auto numel = checked_numel(shape, int64_t{1} << 34);
  if (!numel) return bad(file, numel.error().message());

  // The header is only a claim: read in bounded chunks, so that memory follows what the
  // file holds, never what a corrupt header says it holds.
  const auto needed = static_cast<size_t>(*numel);
  constexpr size_t chunk = size_t{1} << 20;
  std::vector<unsigned char> data;
  while (data.size() < needed) {
    size_t want = std::min(chunk, needed - data.size());
    size_t at = data.size();
    data.resize(at + want);
    got = read_fully(f.get(), data.data() + at, want, file);
    if (!got) return got.error();
    if (*got < want)
      return bad(file, "truncated: header " + to_string(shape) + " needs " +
                           std::to_string(needed) + " data bytes, file has " +
                           std::to_string(at + *got));
  }
  tensor t = tensor::empty(shape, dtype::u8);
  if (needed > 0) std::memcpy(t.raw(), data.data(), needed);
  unsigned char extra;
  got = read_fully(f.get(), &extra, 1, file);
  if (!got) return got.error();
  if (*got != 0) return bad(file, "has trailing bytes after " + to_string(shape) + " data");
  return t;
}

}  // namespace gflex
