#include <doctest/doctest.h>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "gflex/runtime/digest.hpp"
#include "gflex/runtime/rng.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "gflex/schema/update.capnp.h"

using namespace gflex;

namespace {

std::vector<float> random_delta(size_t n, uint64_t seed, float sigma = 1.0f) {
  std::vector<float> v(n);
  rng r(seed);
  for (float& x : v) x = sigma * static_cast<float>(r.normal());
  return v;
}

/// The scale the encoder uses for a block: max|x| / 127.
float block_scale(std::span<const float> x) {
  float m = 0.0f;
  for (float v : x) m = std::max(m, std::fabs(v));
  return m / 127.0f;
}

std::vector<uint8_t> bytes_of(capnp::MessageBuilder& message) {
  auto flat = capnp::messageToFlatArray(message);
  auto bytes = flat.asBytes();
  return {bytes.begin(), bytes.end()};
}

/// A hand-built int8 update, for contents the encoder would never produce.
std::vector<uint8_t> int8_message(uint64_t count, uint32_t block_size,
                                  const std::vector<float>& scales,
                                  const std::vector<int8_t>& values) {
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<schema::Update>();
  root.setCompression(schema::Compression::INT8);
  root.setCount(count);
  root.setBlockSize(block_size);
  auto s = root.initScales(static_cast<unsigned>(scales.size() * sizeof(float)));
  if (!scales.empty()) std::memcpy(s.begin(), scales.data(), s.size());
  auto v = root.initValues(static_cast<unsigned>(values.size()));
  if (!values.empty()) std::memcpy(v.begin(), values.data(), v.size());
  return bytes_of(message);
}

std::vector<uint8_t> fp32_message(uint64_t count, const std::vector<float>& values) {
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<schema::Update>();
  root.setCompression(schema::Compression::FP32);
  root.setCount(count);
  auto v = root.initValues(static_cast<unsigned>(values.size() * sizeof(float)));
  if (!values.empty()) std::memcpy(v.begin(), values.data(), v.size());
  return bytes_of(message);
}

template <class T>
void check_error(const expected<T>& out, errc code, const std::string& needle) {
  REQUIRE_FALSE(out.has_value());
  CHECK(out.error().code() == code);
  INFO(out.error().message());
  CHECK(out.error().message().find(needle) != std::string::npos);
}

}  // namespace

TEST_SUITE("update_codec") {
  TEST_CASE("fp32 round trip is exact") {
    for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{1000}}) {
      auto delta = random_delta(n, 11 + n);
      auto out = decode_update(encode_update(delta, compression::fp32), n);
      REQUIRE(out.has_value());
      REQUIRE(out->size() == n);
      CHECK(*out == delta);
    }
  }

  TEST_CASE("an fp32 update larger than one Data field travels in pieces") {
    // 150 million values (600 MB), as a wide model's pseudo-gradient (a verification is fp32).
    const size_t n = 150'000'000;
    std::vector<float> delta(n);
    for (size_t i = 0; i < n; ++i) delta[i] = static_cast<float>(i % 65521) * 1e-3f - 30.0f;
    auto bytes = encode_update(delta, compression::fp32);
    CHECK(bytes.size() > size_t{600'000'000});
    auto out = decode_update(bytes, n);
    REQUIRE(out.has_value());
    CHECK(*out == delta);
  }

  TEST_CASE("fp32 sends delta + residual and zeroes the residual") {
    auto delta = random_delta(100, 3);
    auto carried = random_delta(100, 4, 0.01f);
    auto residual = carried;
    auto out = decode_update(encode_update(delta, compression::fp32, &residual), 100);
    REQUIRE(out.has_value());
    for (size_t i = 0; i < 100; ++i) CHECK((*out)[i] == delta[i] + carried[i]);
    CHECK(std::all_of(residual.begin(), residual.end(), [](float r) { return r == 0.0f; }));
  }

  TEST_CASE("int8 round trip errs by at most half a scale per element") {
    for (uint32_t block : {1u, 7u, 256u, 4096u}) {
      auto delta = random_delta(1000, block);
      // A zero block and a block of tiny values must survive too.
      std::fill(delta.begin(), delta.begin() + std::min<size_t>(block, 1000), 0.0f);
      auto out = decode_update(encode_update(delta, compression::int8, nullptr, block), 1000);
      REQUIRE(out.has_value());
      for (size_t begin = 0; begin < delta.size(); begin += block) {
        size_t end = std::min<size_t>(begin + block, delta.size());
        float scale = block_scale(std::span<const float>(delta).subspan(begin, end - begin));
        for (size_t i = begin; i < end; ++i) {
          // Float division and rounding can add a few ulps to the exact bound of scale/2.
          REQUIRE(std::fabs((*out)[i] - delta[i]) <= scale * (0.5f + 1e-4f));
        }
      }
    }
  }

  TEST_CASE("the residual is exactly what the quantiser dropped") {
    auto delta = random_delta(777, 21);
    std::vector<float> residual(delta.size(), 0.0f);
    auto out = decode_update(encode_update(delta, compression::int8, &residual, 64), 777);
    REQUIRE(out.has_value());
    for (size_t i = 0; i < delta.size(); ++i) CHECK(residual[i] == delta[i] - (*out)[i]);
  }

  TEST_CASE("error feedback makes the sum of outputs track the sum of inputs") {
    // One large value sets the block's scale to 1/127; the small ones are an eighth of that,
    // so without feedback they round to zero every round and their sum is lost for good.
    constexpr size_t n = 64;
    constexpr int rounds = 1000;
    std::vector<float> delta(n, 0.001f);
    delta[0] = 1.0f;
    delta[5] = -0.0007f;
    std::vector<float> residual(n, 0.0f);
    std::vector<double> sum_in(n, 0.0), sum_out(n, 0.0), sum_plain(n, 0.0);
    float worst_residual = 0.0f;
    for (int round = 0; round < rounds; ++round) {
      auto fed = decode_update(encode_update(delta, compression::int8, &residual), n);
      auto plain = decode_update(encode_update(delta, compression::int8), n);
      REQUIRE(fed.has_value());
      REQUIRE(plain.has_value());
      for (size_t i = 0; i < n; ++i) {
        sum_in[i] += delta[i];
        sum_out[i] += (*fed)[i];
        sum_plain[i] += (*plain)[i];
        worst_residual = std::max(worst_residual, std::fabs(residual[i]));
      }
    }
    // max|delta + residual| stays just above 1, so scale/2 stays just above 0.5/127.
    const float half_scale = 0.5f * (1.0f + 0.01f) / 127.0f;
    CHECK(worst_residual <= half_scale);
    for (size_t i = 0; i < n; ++i) {
      INFO("element " << i);
      CHECK(std::fabs(sum_in[i] - sum_out[i]) <= half_scale + 1e-4);
    }
    CHECK(sum_plain[1] == 0.0);
    CHECK(sum_out[1] == doctest::Approx(1.0).epsilon(0.01));
  }

  TEST_CASE("int8 is under 27% of fp32 for a real model's size") {
    auto delta = random_delta(535818, 5);
    auto fp32 = encode_update(delta, compression::fp32);
    auto int8 = encode_update(delta, compression::int8);
    CHECK(static_cast<double>(int8.size()) < 0.27 * static_cast<double>(fp32.size()));
    CHECK(decode_update(int8, delta.size()).has_value());
  }

  TEST_CASE("a buffer at an odd address decodes") {
    auto delta = random_delta(33, 8);
    auto bytes = encode_update(delta, compression::int8, nullptr, 8);
    std::vector<uint8_t> shifted(bytes.size() + 1);
    std::memcpy(shifted.data() + 1, bytes.data(), bytes.size());
    auto out = decode_update(std::span<const uint8_t>(shifted).subspan(1), 33);
    REQUIRE(out.has_value());
    CHECK(*out == *decode_update(bytes, 33));
  }

  TEST_CASE("every truncation is malformed, never a crash") {
    for (auto c : {compression::fp32, compression::int8}) {
      auto bytes = encode_update(random_delta(300, 2), c, nullptr, 32);
      for (size_t len = 0; len < bytes.size(); ++len) {
        INFO(to_string(c) << " truncated to " << len);
        check_error(decode_update(std::span<const uint8_t>(bytes.data(), len), 300),
                    errc::malformed_message, "malformed update message");
      }
    }
  }

  TEST_CASE("trailing bytes are malformed") {
    auto bytes = encode_update(random_delta(10, 1), compression::int8);
    bytes.resize(bytes.size() + 8, 0);
    check_error(decode_update(bytes, 10), errc::malformed_message, "trailing");
  }

  TEST_CASE("a count other than expected is a shape mismatch") {
    for (auto c : {compression::fp32, compression::int8}) {
      auto bytes = encode_update(random_delta(10, 1), c);
      check_error(decode_update(bytes, 11), errc::shape_mismatch,
                  "update has 10 values, expected 11");
    }
  }

  TEST_CASE("inconsistent hand-built messages are malformed") {
    SUBCASE("unknown compression") {
      capnp::MallocMessageBuilder message;
      auto root = message.initRoot<schema::Update>();
      root.setCompression(static_cast<schema::Compression>(7));
      check_error(decode_update(bytes_of(message), 0), errc::malformed_message,
                  "unknown compression code 7");
    }
    SUBCASE("block size 0") {
      check_error(decode_update(int8_message(4, 0, {}, {1, 2, 3, 4}), 4), errc::malformed_message,
                  "block size 0");
    }
    SUBCASE("block size above 2^20") {
      check_error(decode_update(int8_message(4, (1u << 20) + 1, {1.0f}, {1, 2, 3, 4}), 4),
                  errc::malformed_message, "block size");
    }
    SUBCASE("too few scales") {
      check_error(decode_update(int8_message(4, 2, {1.0f}, {1, 2, 3, 4}), 4),
                  errc::malformed_message, "scale bytes");
    }
    SUBCASE("too few values") {
      check_error(decode_update(int8_message(4, 2, {1.0f, 1.0f}, {1, 2, 3}), 4),
                  errc::malformed_message, "value bytes");
    }
    SUBCASE("fp32 with scales") {
      capnp::MallocMessageBuilder message;
      auto root = message.initRoot<schema::Update>();
      root.setCount(1);
      root.initValues(4);
      root.initScales(4);
      check_error(decode_update(bytes_of(message), 1), errc::malformed_message, "must be 0");
    }
    SUBCASE("fp32 values not a multiple of 4 bytes") {
      capnp::MallocMessageBuilder message;
      auto root = message.initRoot<schema::Update>();
      root.setCount(1);
      root.initValues(5);
      check_error(decode_update(bytes_of(message), 1), errc::malformed_message, "value bytes");
    }
    SUBCASE("a huge count with tiny data") {
      // count * 4 wraps to 0 modulo 2^64; the decoder must neither believe nor allocate it.
      auto bytes = fp32_message(uint64_t{1} << 62, {});
      check_error(decode_update(bytes, uint64_t{1} << 62, ~uint64_t{0}), errc::malformed_message,
                  "value bytes");
    }
    SUBCASE("count above the limit") {
      auto bytes = fp32_message(100, std::vector<float>(100, 1.0f));
      check_error(decode_update(bytes, 100, 50), errc::malformed_message, "exceed");
      // A message small enough to pass the byte limit still has its count checked.
      check_error(decode_update(int8_message(100, 100, {0.0f}, std::vector<int8_t>(100)), 100, 99),
                  errc::malformed_message, "count 100 exceeds the limit of 99");
    }
  }

  TEST_CASE("non-finite scales and values are named") {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    check_error(decode_update(int8_message(4, 2, {1.0f, nan}, {1, 2, 3, 4}), 4), errc::non_finite,
                "update scale 1 (values from 2)");
    check_error(
        decode_update(int8_message(2, 2, {std::numeric_limits<float>::infinity()}, {0, 0}), 2),
        errc::non_finite, "update scale 0");
    check_error(decode_update(fp32_message(3, {1.0f, 2.0f, nan}), 3), errc::non_finite,
                "update value 2");
    // A finite scale can still overflow when multiplied by q.
    check_error(decode_update(int8_message(2, 2, {std::numeric_limits<float>::max()}, {0, 127}), 2),
                errc::non_finite, "update value 1");
  }

  TEST_CASE("a packed update reads, by any range, exactly the floats decode_update gives") {
    for (auto c : {compression::int8, compression::fp32}) {
      CAPTURE(to_string(c));
      const auto bytes = encode_update(random_delta(1000, 7), c, nullptr, 64);
      const auto whole = decode_update(bytes, 1000).value();
      auto packed = decode_packed_update(bytes, 1000).value();
      CHECK(packed.size() == 1000);
      // int8 holds a byte a value and a float a block; fp32 four bytes a value.
      CHECK(packed.memory_bytes() == (c == compression::int8 ? 1000 + 16 * 4 : 4000));
      std::vector<float> joined;
      for (size_t begin = 0; begin < 1000; begin += 97) {
        std::vector<float> part(std::min<size_t>(97, 1000 - begin));
        packed.read(begin, part);
        joined.insert(joined.end(), part.begin(), part.end());
      }
      CHECK(joined == whole);
      CHECK(packed.unpack() == whole);
      CHECK(std::move(packed).unpack() == whole);
    }
  }

  TEST_CASE("a packed update is refused for what decode_update refuses, with the same error") {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    check_error(decode_packed_update(int8_message(4, 2, {1.0f, nan}, {1, 2, 3, 4}), 4),
                errc::non_finite, "update scale 1 (values from 2)");
    check_error(decode_packed_update(fp32_message(3, {1.0f, 2.0f, nan}), 3), errc::non_finite,
                "update value 2");
    check_error(
        decode_packed_update(int8_message(2, 2, {std::numeric_limits<float>::max()}, {0, 127}), 2),
        errc::non_finite, "update value 1");
    check_error(decode_packed_update(fp32_message(3, {1.0f, 2.0f, 3.0f}), 4), errc::shape_mismatch,
                "update has 3 values, expected 4");
  }

  TEST_CASE("random garbage and bit flips never crash") {
    rng r(7);
    for (int trial = 0; trial < 2000; ++trial) {
      std::vector<uint8_t> junk(r.below(2) ? 8 * (1 + r.below(40)) : r.below(300));
      for (auto& b : junk) b = static_cast<uint8_t>(r.next());
      auto out = decode_update(junk, 16);
      if (out) CHECK(out->size() == 16);
    }
    auto bytes = encode_update(random_delta(40, 9), compression::int8, nullptr, 8);
    for (size_t i = 0; i < bytes.size(); ++i) {
      for (uint8_t mask : {uint8_t{0x01}, uint8_t{0x80}, uint8_t{0xFF}}) {
        auto copy = bytes;
        copy[i] ^= mask;
        auto out = decode_update(copy, 40);
        if (out) CHECK(out->size() == 40);
      }
    }
  }

  TEST_CASE("compression names parse and print") {
    for (auto c : {compression::fp32, compression::int8}) {
      auto parsed = parse_compression(to_string(c));
      REQUIRE(parsed.has_value());
      CHECK(*parsed == c);
    }
    CHECK(std::string(to_string(compression::int8)) == "int8");
    for (const char* bad : {"", "INT8", "int4", "fp32 ", "fp16"}) {
      auto parsed = parse_compression(bad);
      REQUIRE_FALSE(parsed.has_value());
      CHECK(parsed.error().code() == errc::invalid_argument);
    }
  }
}

TEST_SUITE("digest") {
  TEST_CASE("known BLAKE2b-256 values") {
    CHECK(digest_hex({}) == "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8");
    const uint8_t abc[] = {'a', 'b', 'c'};
    CHECK(digest_hex(abc) == "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319");
  }

  TEST_CASE("different inputs give different digests") {
    std::vector<uint8_t> a(1000, 0);
    auto b = a;
    b[999] = 1;
    auto da = digest_hex(a);
    CHECK(da != digest_hex(b));
    CHECK(da == digest_hex(a));
    CHECK(is_digest_hex(da));
  }

  TEST_CASE("is_digest_hex accepts only 64 lowercase hex characters") {
    const std::string good = "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8";
    CHECK(is_digest_hex(good));
    CHECK_FALSE(is_digest_hex(""));
    CHECK_FALSE(is_digest_hex("../etc/passwd"));
    CHECK_FALSE(is_digest_hex(good.substr(1)));
    CHECK_FALSE(is_digest_hex(good + "0"));
    std::string upper = good;
    std::transform(upper.begin(), upper.end(), upper.begin(),
                   [](unsigned char ch) { return static_cast<char>(std::toupper(ch)); });
    CHECK_FALSE(is_digest_hex(upper));
    std::string dotted = good;
    dotted[10] = '.';
    CHECK_FALSE(is_digest_hex(dotted));
    std::string with_nul = good;
    with_nul[63] = '\0';
    CHECK_FALSE(is_digest_hex(with_nul));
  }
}
