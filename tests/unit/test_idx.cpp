#include <doctest/doctest.h>

#include "gflex/runtime/idx.hpp"
#include "idx_writer.hpp"
#include "temp_dir.hpp"

using namespace gflex;
using gflex::test::idx_bytes;
using gflex::test::write_file;

TEST_SUITE("idx") {
  TEST_CASE("reads plain and gzip files") {
    test::temp_dir dir;
    std::vector<uint8_t> pixels(2 * 3 * 4);
    for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>(i * 7);
    for (bool gzip : {false, true}) {
      auto file = dir / (gzip ? "a.gz" : "a");
      write_file(file, idx_bytes({2, 3, 4}, pixels), gzip);
      auto t = read_idx_u8(file, 3);
      REQUIRE(t.has_value());
      CHECK(t->shape() == shape_t{2, 3, 4});
      CHECK(t->span<uint8_t>()[5] == 35);
    }
  }

  TEST_CASE("bad files give errors that name the file") {
    test::temp_dir dir;
    auto file = dir / "bad-idx1-ubyte.gz";
    auto expect_error = [&](errc code, const std::string& fragment) {
      auto t = read_idx_u8(file, 1);
      REQUIRE_FALSE(t.has_value());
      CHECK(t.error().code() == code);
      CHECK(t.error().message().find(file.string()) != std::string::npos);
      CHECK_MESSAGE(t.error().message().find(fragment) != std::string::npos, t.error().message());
    };
    SUBCASE("missing") {
      expect_error(errc::io_error, "no such file");
    }
    SUBCASE("wrong magic") {
      write_file(file, {1, 2, 8, 1, 0, 0, 0, 1, 9}, true);
      expect_error(errc::bad_format, "magic");
    }
    SUBCASE("wrong element type") {
      write_file(file, {0, 0, 0x0D, 1, 0, 0, 0, 1, 9, 9, 9, 9}, true);
      expect_error(errc::bad_format, "element type code 0x0d is not unsigned byte");
    }
    SUBCASE("a header claiming billions of values on a ten-byte file") {
      // Found by fuzzing: memory must follow the file, not the header's claim.
      write_file(file, {0, 0, 8, 1, 0xfc, 0xa2, 0x5d, 0x00, 1, 2}, false);
      expect_error(errc::bad_format, "truncated");
    }
    SUBCASE("wrong rank") {
      write_file(file, idx_bytes({1, 1}, {5}), true);
      expect_error(errc::bad_format, "dimensions");
    }
    SUBCASE("truncated header") {
      write_file(file, {0, 0, 8}, false);
      expect_error(errc::bad_format, "truncated");
    }
    SUBCASE("truncated data") {
      write_file(file, idx_bytes({10}, {1, 2, 3}), true);
      expect_error(errc::bad_format, "truncated");
    }
    SUBCASE("trailing bytes") {
      write_file(file, idx_bytes({2}, {1, 2, 3}), true);
      expect_error(errc::bad_format, "trailing");
    }
    SUBCASE("corrupt gzip stream") {
      auto bytes = idx_bytes({64}, std::vector<uint8_t>(64, 3));
      write_file(file, bytes, true);
      std::vector<char> raw;
      {
        std::ifstream in(file, std::ios::binary);
        raw.assign(std::istreambuf_iterator<char>(in), {});
      }
      raw.resize(raw.size() / 2);  // cut the deflate stream in half
      std::ofstream(file, std::ios::binary)
          .write(raw.data(), static_cast<std::streamsize>(raw.size()));
      auto t = read_idx_u8(file, 1);
      REQUIRE_FALSE(t.has_value());
      CHECK(t.error().message().find(file.string()) != std::string::npos);
    }
  }
}
