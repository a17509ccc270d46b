#include <doctest/doctest.h>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <zstd.h>

#include <algorithm>
#include <cstring>

#include "gflex/runtime/rng.hpp"
#include "gflex/runtime/tensor_codec.hpp"
#include "gflex/schema/tensor.capnp.h"

using namespace gflex;

namespace {

tensor random_tensor(shape_t shape, uint64_t seed) {
  auto t = tensor::empty(std::move(shape), dtype::f32);
  rng r(seed);
  for (float& v : t.span<float>()) v = static_cast<float>(r.normal());
  return t;
}

}  // namespace

TEST_SUITE("tensor_codec") {
  TEST_CASE("round trip keeps dtype, shape and bytes") {
    for (auto shape : {shape_t{}, shape_t{0}, shape_t{7}, shape_t{3, 5}, shape_t{2, 3, 4}}) {
      auto t = random_tensor(shape, 42);
      auto bytes = encode_tensor(t);
      auto back = decode_tensor(bytes);
      REQUIRE(back.has_value());
      CHECK(back->type() == dtype::f32);
      CHECK(back->shape() == t.shape());
      CHECK(std::memcmp(back->raw(), t.raw(), t.nbytes()) == 0);
    }
    auto labels = tensor::empty({4}, dtype::u8);
    for (int i = 0; i < 4; ++i) labels.span<uint8_t>()[i] = static_cast<uint8_t>(i * 60);
    auto back = decode_tensor(encode_tensor(labels));
    REQUIRE(back.has_value());
    CHECK(back->type() == dtype::u8);
    CHECK(back->span<uint8_t>()[3] == 180);
  }

  TEST_CASE("a buffer at an odd address decodes") {
    auto bytes = encode_tensor(random_tensor({9}, 1));
    std::vector<uint8_t> shifted(bytes.size() + 1);
    std::memcpy(shifted.data() + 1, bytes.data(), bytes.size());
    auto back = decode_tensor(std::span<const uint8_t>(shifted).subspan(1));
    REQUIRE(back.has_value());
    CHECK(back->numel() == 9);
  }

  TEST_CASE("every truncation is a clear error, never a crash") {
    auto bytes = encode_tensor(random_tensor({4, 4}, 3));
    for (size_t len = 0; len < bytes.size(); ++len) {
      auto r = decode_tensor(std::span<const uint8_t>(bytes.data(), len));
      REQUIRE_FALSE(r.has_value());
      CHECK(r.error().code() == errc::malformed_message);
      CHECK(r.error().message().find("malformed tensor message") != std::string::npos);
    }
  }

  TEST_CASE("random garbage is rejected") {
    rng r(7);
    for (int trial = 0; trial < 500; ++trial) {
      std::vector<uint8_t> junk(8 * (1 + r.below(40)));
      for (auto& b : junk) b = static_cast<uint8_t>(r.next());
      auto out = decode_tensor(junk);
      if (!out) CHECK(out.error().code() == errc::malformed_message);
    }
  }

  TEST_CASE("inconsistent contents are rejected") {
    auto t = random_tensor({2, 3}, 5);
    auto bytes = encode_tensor(t);
    // Flip a byte at a time. Whatever decodes must be a tensor the message holds whole: its
    // element bytes are bytes of the message (it travels raw), none made up or left unset, and
    // it encodes and decodes again to the same type, shape and bytes.
    for (size_t i = 0; i < bytes.size(); ++i) {
      auto copy = bytes;
      copy[i] ^= 0xFF;
      auto out = decode_tensor(copy);
      if (!out) continue;
      INFO("byte " << i << " flipped decodes to shape " << to_string(out->shape()));
      const auto* elements = static_cast<const uint8_t*>(out->raw());
      const size_t n = out->nbytes();
      CHECK(std::search(copy.begin(), copy.end(), elements, elements + n) != copy.end());
      auto again = decode_tensor(encode_tensor(*out));
      REQUIRE(again.has_value());
      CHECK(again->type() == out->type());
      CHECK(again->shape() == out->shape());
      REQUIRE(again->nbytes() == n);
      CHECK(std::memcmp(again->raw(), elements, n) == 0);
    }
    SUBCASE("trailing bytes") {
      bytes.resize(bytes.size() + 8, 0);
      auto out = decode_tensor(bytes);
      REQUIRE_FALSE(out.has_value());
      CHECK(out.error().message().find("trailing") != std::string::npos);
    }
  }

  TEST_CASE("limits are enforced") {
    auto bytes = encode_tensor(random_tensor({1, 1, 1, 1, 1}, 9));
    decode_limits tight;
    tight.max_rank = 4;
    auto out = decode_tensor(bytes, tight);
    REQUIRE_FALSE(out.has_value());
    CHECK(out.error().message().find("rank 5") != std::string::npos);
    decode_limits small;
    small.max_bytes = 16;
    CHECK_FALSE(decode_tensor(bytes, small).has_value());
  }

  TEST_CASE("a vector encodes as the 1-D tensor of its values") {
    std::vector<float> v(777);
    for (size_t i = 0; i < v.size(); ++i) v[i] = 0.125f * static_cast<float>(i) - 3.0f;
    auto t = tensor::empty({777}, dtype::f32);
    std::copy(v.begin(), v.end(), t.data<float>());
    CHECK(encode_vector(v) == encode_tensor(t));
  }

  TEST_CASE("a tensor larger than one Data field travels in pieces") {
    // 2^26 + 3 floats: 256 MiB and 12 bytes, more than one 2^28-byte piece.
    const int64_t n = (int64_t{1} << 26) + 3;
    auto t = tensor::empty({n}, dtype::f32);
    auto v = t.span<float>();
    for (int64_t i = 0; i < n; ++i) v[i] = static_cast<float>(i % 1000003) * 0.5f;
    auto bytes = encode_tensor(t);
    decode_limits limits;
    auto back = decode_tensor(bytes, limits);
    REQUIRE(back.has_value());
    REQUIRE(back->numel() == n);
    CHECK(std::memcmp(back->raw(), t.raw(), t.nbytes()) == 0);
    // The default bound takes a model at the planner's 2^28 parameters: its 1 GiB of values
    // in four pieces, with at most twice the header and piece overhead of these two (a bound
    // of exactly 1 GiB refused every such model's parameters on every node).
    const size_t overhead = bytes.size() - t.nbytes();
    CHECK(overhead < 4096);
    CHECK((size_t{1} << 30) + 2 * overhead <= decode_limits{}.max_bytes);
  }

  TEST_CASE("pieces of the wrong sizes, or data in both forms, are refused") {
    auto build = [](std::vector<unsigned> pieces, unsigned data_bytes, uint64_t numel) {
      capnp::MallocMessageBuilder m;
      auto root = m.initRoot<schema::Tensor>();
      root.setDtype(schema::DType::U8);
      root.initShape(1).set(0, numel);
      if (data_bytes > 0) root.initData(data_bytes);
      auto list = root.initPieces(static_cast<unsigned>(pieces.size()));
      for (unsigned i = 0; i < pieces.size(); ++i) list.init(i, pieces[i]);
      auto flat = capnp::messageToFlatArray(m);
      auto b = flat.asBytes();
      return std::vector<uint8_t>(b.begin(), b.end());
    };
    // A short first piece (only the last may be short), both forms, an empty piece.
    for (const auto& bytes :
         {build({100, 100}, 0, 200), build({100}, 100, 200), build({0}, 0, 0)}) {
      auto out = decode_tensor(bytes);
      REQUIRE_FALSE(out.has_value());
      CHECK(out.error().message().find("pieces") != std::string::npos);
    }
    // One short piece alone is a whole blob.
    auto one = decode_tensor(build({100}, 0, 100));
    REQUIRE(one.has_value());
    CHECK(one->numel() == 100);
    // Raw data shorter or longer than the shape says: refused, never a tensor partly unset or
    // written past its end.
    for (unsigned data_bytes : {100u, 300u}) {
      auto out = decode_tensor(build({}, data_bytes, 200));
      REQUIRE_FALSE(out.has_value());
      CHECK(out.error().code() == errc::malformed_message);
      CHECK_MESSAGE(out.error().message().find("shape [200] of u8 needs 200 data bytes but the "
                                               "message has " +
                                               std::to_string(data_bytes)) != std::string::npos,
                    out.error().message());
    }
  }

  TEST_CASE("packed tensors decode to the same bytes and are smaller") {
    // Parameters as a model holds them (small normal values), pixels with a dark background.
    auto params = tensor::empty({100000}, dtype::f32);
    rng r(11);
    for (float& v : params.span<float>()) v = 0.05f * static_cast<float>(r.normal());
    auto pixels = tensor::empty({300, 784}, dtype::u8);
    for (auto& p : pixels.span<uint8_t>())
      p = r.below(3) == 0 ? static_cast<uint8_t>(r.below(256)) : 0;
    for (const tensor* t : {&params, &pixels}) {
      auto raw = encode_tensor(*t);
      auto packed = encode_tensor(*t, tensor_packing::zstd);
      CHECK(packed.size() < raw.size() * 9 / 10);
      auto back = decode_tensor(packed);
      REQUIRE(back.has_value());
      CHECK(back->type() == t->type());
      CHECK(back->shape() == t->shape());
      CHECK(std::memcmp(back->raw(), t->raw(), t->nbytes()) == 0);
    }
    CHECK(encode_vector(params.span<float>(), tensor_packing::zstd) ==
          encode_tensor(params, tensor_packing::zstd));
    // A raw message packed afterwards is the message packed at once; bytes that are no tensor
    // message stay as they are.
    CHECK(repack_tensor(encode_tensor(params), tensor_packing::zstd) ==
          encode_tensor(params, tensor_packing::zstd));
    const std::vector<uint8_t> junk{1, 2, 3};
    CHECK(repack_tensor(junk, tensor_packing::zstd) == junk);
    // Bytes that do not compress travel raw, and so do bytes that compress more than a reader
    // lets a frame expand (all zeros).
    auto zeros = tensor::empty({100000}, dtype::u8);
    std::fill_n(zeros.data<uint8_t>(), zeros.numel(), uint8_t{0});
    CHECK(encode_tensor(zeros, tensor_packing::zstd) == encode_tensor(zeros));
    auto noise = tensor::empty({4096}, dtype::u8);
    for (auto& b : noise.span<uint8_t>()) b = static_cast<uint8_t>(r.next());
    CHECK(encode_tensor(noise, tensor_packing::zstd) == encode_tensor(noise));
  }

  TEST_CASE("a packed tensor whose frame disagrees with its shape is refused") {
    // A message whose zstd field holds `frame`, for a u8 tensor of `numel` elements.
    auto message = [](const std::vector<uint8_t>& frame, uint64_t numel, unsigned data_bytes) {
      capnp::MallocMessageBuilder m;
      auto root = m.initRoot<schema::Tensor>();
      root.setDtype(schema::DType::U8);
      root.initShape(1).set(0, numel);
      if (data_bytes > 0) root.initData(data_bytes);
      root.setZstd(kj::arrayPtr(frame.data(), frame.size()));
      auto flat = capnp::messageToFlatArray(m);
      auto b = flat.asBytes();
      return std::vector<uint8_t>(b.begin(), b.end());
    };
    auto compress = [](const std::vector<uint8_t>& bytes, bool say_size) {
      ZSTD_CCtx* cctx = ZSTD_createCCtx();
      ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, say_size ? 1 : 0);
      std::vector<uint8_t> frame(ZSTD_compressBound(bytes.size()));
      size_t n = ZSTD_compress2(cctx, frame.data(), frame.size(), bytes.data(), bytes.size());
      ZSTD_freeCCtx(cctx);
      REQUIRE_FALSE(ZSTD_isError(n));
      frame.resize(n);
      return frame;
    };
    auto refused = [](const std::vector<uint8_t>& bytes, const std::string& why) {
      auto out = decode_tensor(bytes);
      REQUIRE_FALSE(out.has_value());
      CHECK(out.error().code() == errc::malformed_message);
      INFO(out.error().message());
      CHECK(out.error().message().find(why) != std::string::npos);
    };
    // Bytes that pack about twice (a value in [0, 16) each).
    std::vector<uint8_t> values(1000);
    rng r(5);
    for (auto& b : values) b = static_cast<uint8_t>(r.below(16));
    REQUIRE(decode_tensor(message(compress(values, true), 1000, 0)).has_value());
    // More or fewer bytes than the shape needs (a 64 MiB frame for 1000 elements is refused
    // before anything of its size is made).
    refused(message(compress(values, true), 999, 0),
            "needs 999 data bytes but the zstd frame holds 1000");
    // A frame that says what the shape needs but would expand over 32 times.
    refused(message(compress(std::vector<uint8_t>(1 << 20, 0), true), 1 << 20, 0),
            "may not expand to 1048576 (at most 32 times)");
    refused(message(compress(std::vector<uint8_t>(size_t{64} << 20, 0), true), 1000, 0),
            "holds 67108864");
    refused(message(compress(values, false), 1000, 0), "does not say its size");
    refused(message({1, 2, 3, 4, 5, 6, 7, 8, 9}, 1000, 0), "is not one");
    refused(message(compress(values, true), 1000, 16), "both packed and raw");
    // A frame cut short says its size but cannot give it.
    auto cut = compress(values, true);
    cut.resize(cut.size() - 3);
    refused(message(cut, 1000, 0), "does not decompress");
  }
}
