#include <doctest/doctest.h>

#include <cstdint>
#include <numeric>
#include <vector>

#include "gflex/runtime/payload_chunks.hpp"

using namespace gflex;

namespace {

std::vector<uint8_t> pattern(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>((i * 2654435761u) >> 13);
  return v;
}

std::span<const uint8_t> piece(const std::vector<uint8_t>& bytes, uint64_t chunk, uint64_t i) {
  auto r = chunk_at(bytes.size(), chunk, i);
  return std::span<const uint8_t>(bytes).subspan(r.offset, r.size);
}

}  // namespace

TEST_CASE("payload chunks: split, then reassembled in any order") {
  const uint64_t chunk = 4096;
  for (size_t n : {size_t{0}, size_t{1}, size_t{4096}, size_t{4097}, size_t{3 * 4096 + 17}}) {
    CAPTURE(n);
    auto bytes = pattern(n);
    auto digests = chunk_digests(bytes, chunk);
    REQUIRE(digests.size() == chunk_count(n, chunk));
    auto a = chunk_assembler::make(n, chunk, digests, 1 << 20);
    REQUIRE(a.has_value());
    // Backwards, with one chunk given twice: the second copy changes nothing.
    for (uint64_t i = digests.size(); i-- > 0;) REQUIRE(a->add(i, piece(bytes, chunk, i)));
    REQUIRE(a->add(0, piece(bytes, chunk, 0)));
    REQUIRE(a->complete());
    CHECK(a->take() == bytes);
  }
}

TEST_CASE("payload chunks: a wrong piece is refused and changes nothing") {
  const uint64_t chunk = 1024;
  auto bytes = pattern(5000);
  auto digests = chunk_digests(bytes, chunk);
  auto a = chunk_assembler::make(bytes.size(), chunk, digests, 1 << 20);
  REQUIRE(a.has_value());
  auto forged = std::vector<uint8_t>(piece(bytes, chunk, 2).begin(), piece(bytes, chunk, 2).end());
  forged[7] ^= 1;
  auto r = a->add(2, forged);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().message().find("does not match its digest") != std::string::npos);
  CHECK(a->missing() == digests.size());
  CHECK_FALSE(a->has(2));
  // Right bytes under the wrong index, a short piece, an index past the end.
  CHECK_FALSE(a->add(3, piece(bytes, chunk, 2)).has_value());
  CHECK_FALSE(a->add(1, piece(bytes, chunk, 1).first(100)).has_value());
  CHECK_FALSE(a->add(99, piece(bytes, chunk, 1)).has_value());
  CHECK(a->missing() == digests.size());
  REQUIRE(a->add(2, piece(bytes, chunk, 2)));
  CHECK_FALSE(a->has(3));
  CHECK(a->has(2));
}

TEST_CASE("payload chunks: impossible announcements are refused before memory is taken") {
  auto bytes = pattern(10000);
  auto digests = chunk_digests(bytes, 4096);
  CHECK_FALSE(chunk_assembler::make(10000, 4096, digests, 9999).has_value());     // over the bound
  CHECK_FALSE(chunk_assembler::make(10000, 512, digests, 1 << 20).has_value());   // tiny chunks
  CHECK_FALSE(chunk_assembler::make(20000, 4096, digests, 1 << 20).has_value());  // count
  auto bad = digests;
  bad[1] = "../../etc/passwd";
  CHECK_FALSE(chunk_assembler::make(10000, 4096, bad, 1 << 20).has_value());
  // A lie that would take 1 TiB is refused by the bound, not by an allocation failure.
  auto huge = chunk_assembler::make(uint64_t{1} << 40, uint64_t{64} << 20,
                                    std::vector<std::string>(16384, digests[0]), 1ull << 32);
  REQUIRE_FALSE(huge.has_value());
  CHECK(huge.error().message().find("at most") != std::string::npos);
}

TEST_CASE("payload chunks: an announcement takes memory only as its chunks come") {
  // The whole payload was zero-filled when announced: a core naming parameters of a gigabyte
  // and serving none of them had a node hold a gigabyte per fetch.
  const uint64_t chunk = 4096;
  auto bytes = pattern(4 * chunk - 100);
  auto digests = chunk_digests(bytes, chunk);
  auto a = chunk_assembler::make(bytes.size(), chunk, digests, 1 << 20);
  REQUIRE(a.has_value());
  CHECK(a->held() == 0);
  REQUIRE(a->add(1, piece(bytes, chunk, 1)));
  CHECK(a->held() == 2 * chunk);
  REQUIRE(a->add(0, piece(bytes, chunk, 0)));
  CHECK(a->held() == 2 * chunk);
  REQUIRE(a->add(3, piece(bytes, chunk, 3)));
  CHECK(a->held() == bytes.size());
  REQUIRE(a->add(2, piece(bytes, chunk, 2)));
  REQUIRE(a->complete());
  CHECK(a->take() == bytes);
}
