/// Users' data sets (actors/domain/user_data.hpp): an upload checked part by part, the
/// stored manifest, token and real-valued shards, and the .npy reader's refusals.

#include <doctest/doctest.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "data_catalog.hpp"
#include "gflex/kernels/model_builder.hpp"
#include "gflex/runtime/npy.hpp"
#include "gflex/runtime/shard.hpp"
#include "gflex/runtime/text_corpus.hpp"
#include "user_data.hpp"

using namespace gflex;

namespace {

dataset values(int64_t n, int64_t d, int64_t classes, float scale) {
  dataset out;
  out.classes = classes;
  out.features = tensor::empty({n, d}, dtype::f32);
  out.labels = tensor::empty({n}, dtype::i32);
  for (int64_t i = 0; i < n * d; ++i) out.features.data<float>()[i] = scale * (i % 7 - 3);
  for (int64_t i = 0; i < n; ++i) out.labels.data<int32_t>()[i] = static_cast<int32_t>(i % classes);
  return out;
}

data_part part(uint32_t index, uint32_t count, bool test, const dataset& d) {
  return {index, count, test, encode_shard(d, 0, d.size())};
}

}  // namespace

TEST_SUITE("user data") {
  TEST_CASE("an upload is cut as the core cuts its own sets, and refused before it is sent") {
    // Cut only by an 8 MiB bound, a user's 1.5 MB text made one shard (the built-in copy of
    // it, 13): no job of two workers could train on it, and nothing asked for more.
    dataset_splits text;
    text.train = values(22'000, 65, 10, 0.5f);
    text.test = values(500, 65, 10, 0.5f);
    auto parts = plan_data_parts(text, 0);
    REQUIRE(parts.has_value());
    int64_t train_parts = 0, rows = 0;
    for (const auto& p : *parts) {
      if (!p.test) ++train_parts;
      if (!p.test) rows += p.end - p.begin;
    }
    CHECK(train_parts == 8);  // 22,000 / 3,000, rounded up
    CHECK(rows == 22'000);
    CHECK(parts->back().test);
    // A count asked for is kept; past the core's limit on parts, it is refused here.
    auto asked = plan_data_parts(text, 20);
    REQUIRE(asked.has_value());
    CHECK(asked->size() == 21);
    user_data_limits few;
    few.max_parts = 10;
    auto over = plan_data_parts(text, 20, few);
    REQUIRE_FALSE(over.has_value());
    CHECK(over.error().message().find("21 parts, over the core's limit of 10") !=
          std::string::npos);
    // The default gives way to the limit.
    auto fitted = plan_data_parts(text, 0, few);
    REQUIRE(fitted.has_value());
    CHECK(fitted->size() <= 10);
    // A test split the core would refuse once every training part was in.
    user_data_limits small_test;
    small_test.max_test_values = 1000;
    auto big_test = plan_data_parts(text, 0, small_test);
    REQUIRE_FALSE(big_test.has_value());
    CHECK(big_test.error().message().find("the test split has 32500 values") != std::string::npos);
    // What the core refuses only once every training part is in (an empty split), or at the
    // first test part (samples of another kind), is refused here, in the core's words.
    dataset_splits no_test{text.train, {}};
    auto empty = plan_data_parts(no_test, 0);
    REQUIRE_FALSE(empty.has_value());
    CHECK(empty.error().code() == errc::invalid_argument);
    CHECK_MESSAGE(
        empty.error().message() == "the data set needs training and test samples, has 22000 and 0",
        empty.error().message());
    dataset_splits no_train{{}, text.test};
    auto untrained = plan_data_parts(no_train, 0);
    REQUIRE_FALSE(untrained.has_value());
    CHECK(untrained.error().message().find("has 0 and 500") != std::string::npos);
    dataset_splits narrow{text.train, values(500, 64, 10, 0.5f)};
    auto wrong_dim = plan_data_parts(narrow, 0);
    REQUIRE_FALSE(wrong_dim.has_value());
    CHECK_MESSAGE(wrong_dim.error().message() ==
                      "the test split has 64 values per sample and 10 classes, the training "
                      "split 65 and 10",
                  wrong_dim.error().message());
    dataset_splits fewer{text.train, values(500, 65, 9, 0.5f)};
    auto wrong_classes = plan_data_parts(fewer, 0);
    REQUIRE_FALSE(wrong_classes.has_value());
    CHECK(wrong_classes.error().message().find("65 values per sample and 9 classes") !=
          std::string::npos);
    dataset_splits as_tokens{text.train, values(500, 65, 10, 0.0f)};
    as_tokens.test.tokens = true;
    auto wrong_kind = plan_data_parts(as_tokens, 0);
    REQUIRE_FALSE(wrong_kind.has_value());
    CHECK(wrong_kind.error().message().find("10 classes (tokens), the training split 65 and 10") !=
          std::string::npos);
    // The core's refusal of such a part reads the same.
    data_upload up("user/alice", "set", 2, {});
    REQUIRE(up.add(part(0, 2, false, values(10, 65, 10, 0.5f))).has_value());
    auto core = up.add(part(1, 2, true, narrow.test));
    REQUIRE_FALSE(core.has_value());
    CHECK(core.error().message().find(
              "has 64 values per sample and 10 classes, the first part 65 and 10") !=
          std::string::npos);
  }

  TEST_CASE("real-valued and token shards round-trip exactly") {
    auto real = values(5, 4, 3, 0.37f);
    auto back = decode_shard(encode_shard(real, 0, 5));
    REQUIRE(back.has_value());
    for (int64_t i = 0; i < 20; ++i)
      CHECK(back->features.data<float>()[i] == real.features.data<float>()[i]);
    std::vector<uint8_t> text(200);
    for (size_t i = 0; i < text.size(); ++i) text[i] = static_cast<uint8_t>(i * 7);
    auto tokens = make_token_splits(text, 9, 10);
    REQUIRE(tokens.has_value());
    auto t = decode_shard(encode_shard(tokens->train, 0, tokens->train.size()));
    REQUIRE(t.has_value());
    CHECK(t->tokens);
    CHECK(t->classes == 256);
    CHECK(t->features.data<float>()[8] == tokens->train.features.data<float>()[8]);
  }

  TEST_CASE("labels of more than 256 classes round-trip, pixels or real values") {
    // Labels went as a byte whatever the class count: 299 came back as 43, unseen.
    auto real = values(4, 3, 300, 0.37f);
    real.labels.data<int32_t>()[1] = 299;
    auto pixels = values(4, 3, 300, 0.0f);
    for (auto& v : pixels.features.span<float>()) v = 51.0f / 255.0f;
    pixels.labels.data<int32_t>()[2] = 298;
    for (const auto* d : {&real, &pixels}) {
      REQUIRE(check_dataset(*d, "d").has_value());
      auto back = decode_shard(encode_shard(*d, 0, d->size()));
      REQUIRE_MESSAGE(back.has_value(), back.error().message());
      CHECK(back->classes == 300);
      for (int64_t i = 0; i < 4; ++i)
        CHECK(back->labels.data<int32_t>()[i] == d->labels.data<int32_t>()[i]);
      CHECK(back->features.data<float>()[5] == d->features.data<float>()[5]);
    }
  }

  TEST_CASE("a shard of samples with no values is refused, and passes no values limit") {
    // Every limit on an upload counts values: rows of none passed them all, while their
    // labels alone took gigabytes of the core's memory.
    auto none = values(1000, 0, 3, 0.5f);
    auto r = decode_shard(encode_shard(none, 0, 1000));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message() == "malformed shard: samples of no values");
    user_data_limits tight;
    tight.max_test_values = 100;
    data_upload up("user/alice", "set", 2, tight);
    REQUIRE(up.add(part(0, 2, false, values(10, 4, 3, 0.5f))).has_value());
    CHECK_FALSE(up.add(part(1, 2, true, none)).has_value());
  }

  TEST_CASE("an upload takes parts in order that agree with the first") {
    auto a = values(10, 4, 3, 0.5f), other = values(10, 5, 3, 0.5f);
    data_upload up("user/alice", "set", 3, {});
    CHECK(up.add(part(0, 3, false, a)).has_value());
    auto skipped = up.add(part(2, 3, true, a));
    REQUIRE_FALSE(skipped.has_value());
    CHECK(skipped.error().message().find("expected part 1 of 3") != std::string::npos);
    auto wider = up.add(part(1, 3, false, other));
    REQUIRE_FALSE(wider.has_value());
    CHECK(wider.error().message().find("has 5 values per sample") != std::string::npos);
    CHECK(up.info().parts_received == 1);  // the refused parts changed nothing
    CHECK(up.add(part(1, 3, false, a)).has_value());
    CHECK_FALSE(up.finish().has_value());  // incomplete
    CHECK(up.add(part(2, 3, true, a)).has_value());
    auto info = up.finish();
    REQUIRE(info.has_value());
    CHECK(info->train_samples == 20);
    CHECK(info->test_samples == 10);
    CHECK(info->train_shards.size() == 2);
    auto back = decode_data_set(encode_data_set(*info));
    REQUIRE(back.has_value());
    CHECK(back->train_shards == info->train_shards);
    CHECK(back->sample_values == 4);
    std::vector<uint8_t> damaged{'{', '}'};
    CHECK_FALSE(decode_data_set(damaged).has_value());
  }

  TEST_CASE("an upload refuses a damaged shard, one over its limits, and no test split") {
    auto a = values(10, 4, 3, 0.5f);
    data_upload up("user/alice", "set", 2, user_data_limits{4096, 100, 1000, 64});
    auto big = up.add(part(0, 2, false, a));
    REQUIRE_FALSE(big.has_value());
    CHECK(big.error().message().find("would pass 100 bytes") != std::string::npos);
    data_upload fine("user/alice", "set", 1, {});
    auto p = part(0, 1, false, a);
    p.shard.resize(p.shard.size() / 2);
    auto cut = fine.add(p);
    REQUIRE_FALSE(cut.has_value());
    CHECK(cut.error().message().find("malformed") != std::string::npos);
    CHECK(fine.add(part(0, 1, false, a)).has_value());
    auto no_test = fine.finish();
    REQUIRE_FALSE(no_test.has_value());
    CHECK(no_test.error().message().find("needs training and test samples") != std::string::npos);
    CHECK(valid_data_set_name("fm-npy.v2"));
    CHECK_FALSE(valid_data_set_name("a/b"));
    CHECK_FALSE(valid_data_set_name(""));
  }

  TEST_CASE("a shard is held to the values it may decode to, and the test split to its own") {
    // The bound is on values decoded, whatever the shard's bytes (a packed tensor of a few
    // bytes can say a gigabyte of zeros): 64,000 here.
    const auto packed = part(0, 2, false, values(1000, 64, 3, 0.0f));
    user_data_limits tight;
    tight.max_part_values = 10000;
    tight.max_test_values = 300;
    data_upload up("user/alice", "set", 2, tight);
    auto refused = up.add(packed);
    REQUIRE_FALSE(refused.has_value());
    CHECK_MESSAGE(refused.error().message().find("10000") != std::string::npos,
                  refused.error().message());
    CHECK(up.info().parts_received == 0);
    auto a = values(10, 20, 3, 0.5f);  // 200 values a part
    REQUIRE(up.add(part(0, 2, false, a)).has_value());
    auto test = up.add(part(1, 2, true, values(20, 20, 3, 0.5f)));  // 400 test values
    REQUIRE_FALSE(test.has_value());
    CHECK(test.error().message().find("test split would pass 300 values") != std::string::npos);
    CHECK(up.add(part(1, 2, true, a)).has_value());
    auto info = up.finish();
    REQUIRE(info.has_value());
    // A set stored before the limits were checked is refused by the catalog, not decoded.
    data_catalog catalog;
    tight.max_test_values = 100;
    auto loaded = catalog.put_user_set(*info, up.chunks(), tight);
    REQUIRE_FALSE(loaded.has_value());
    CHECK(loaded.error().message().find("test split passes 100 values") != std::string::npos);
    CHECK(catalog.put_user_set(*info, up.chunks()).has_value());
  }

  TEST_CASE(
      "a removed or replaced data set's shards are served while a job holds them, then "
      "freed") {
    auto upload = [](const dataset& train, const dataset& test) {
      data_upload up("user/alice", "set", 2, {});
      REQUIRE(up.add(part(0, 2, false, train)).has_value());
      REQUIRE(up.add(part(1, 2, true, test)).has_value());
      return up;
    };
    auto first = upload(values(10, 4, 3, 0.5f), values(5, 4, 3, 0.5f));
    auto second = upload(values(10, 4, 3, 0.25f), values(5, 4, 3, 0.5f));
    data_catalog catalog;
    const auto info = first.finish().value();
    REQUIRE(catalog.put_user_set(info, first.chunks()).has_value());
    const std::string shard = info.train_shards.at(0);
    std::weak_ptr<const std::vector<uint8_t>> bytes = first.chunks().at(shard);
    first = upload(values(1, 4, 3, 0.5f), values(1, 4, 3, 0.5f));  // the upload lets go
    CHECK(catalog.chunk(shard) != nullptr);
    // A job trains on it while it is replaced: its shards are served until the job ends.
    kernels::model_builder m("m", {4});
    m.linear(3).softmax_xent();
    auto plan = m.plan();
    REQUIRE(plan.has_value());
    auto w = kernels::make_graph_workload("m", std::move(*plan), m.toml(), [] {
      return expected<dataset_splits>(error(errc::invalid_argument, "not loaded"));
    });
    auto held = catalog.user_set("user/alice", "set", *w);
    REQUIRE(held.has_value());
    REQUIRE(catalog.put_user_set(second.finish().value(), second.chunks()).has_value());
    CHECK(catalog.chunk(shard) != nullptr);
    held->reset();
    catalog.drop_user_set("user/alice", "set");
    CHECK(catalog.chunk(shard) == nullptr);
    CHECK(bytes.expired());  // its memory too
  }

  TEST_CASE("a shard two sets hold is served while either holds it") {
    // Two uploads of the same data (by two accounts here) hold a copy each; the catalog
    // pointed at the newer one, and once that set went (removed, replaced, its commit failed)
    // the older set's shard was served by nobody: its jobs asked for it for good.
    auto upload = [](const std::string& owner, float test_scale) {
      data_upload up(owner, "set", 2, {});
      REQUIRE(up.add(part(0, 2, false, values(10, 4, 3, 0.5f))).has_value());
      REQUIRE(up.add(part(1, 2, true, values(5, 4, 3, test_scale))).has_value());
      return up;
    };
    for (const bool replaced : {false, true}) {
      CAPTURE(replaced);
      data_catalog catalog;
      std::string shard;
      {
        auto alice = upload("user/alice", 0.5f);
        const auto info = alice.finish().value();
        REQUIRE(catalog.put_user_set(info, alice.chunks()).has_value());
        shard = info.train_shards.at(0);
        auto bob = upload("user/bob", 0.25f);
        const auto bobs = bob.finish().value();
        REQUIRE(bobs.train_shards.at(0) == shard);
        REQUIRE(catalog.put_user_set(bobs, bob.chunks()).has_value());
      }  // the uploads let go
      if (replaced) {
        data_upload other("user/bob", "set", 2, {});
        REQUIRE(other.add(part(0, 2, false, values(10, 4, 3, 0.125f))).has_value());
        REQUIRE(other.add(part(1, 2, true, values(5, 4, 3, 0.25f))).has_value());
        REQUIRE(catalog.put_user_set(other.finish().value(), other.chunks()).has_value());
      } else {
        catalog.drop_user_set("user/bob", "set");
      }
      CHECK(catalog.chunk(shard) != nullptr);  // alice's set holds it
      catalog.drop_user_set("user/alice", "set");
      CHECK(catalog.chunk(shard) == nullptr);
    }
  }

  TEST_CASE(".npy files: the formats users save, and what is refused") {
    const std::string dir = "/tmp";
    auto write = [&](const std::string& name, const std::string& descr, const std::string& shape,
                     const std::string& payload, bool fortran = false) {
      std::string header = "{'descr': '" + descr +
                           "', 'fortran_order': " + (fortran ? "True" : "False") +
                           ", 'shape': " + shape + ", }";
      header += std::string(63 - (10 + header.size()) % 64, ' ') + "\n";
      std::ofstream out(dir + "/" + name, std::ios::binary);
      out << "\x93NUMPY" << '\x01' << '\x00' << static_cast<char>(header.size() & 0xff)
          << static_cast<char>(header.size() >> 8) << header << payload;
      return dir + "/" + name;
    };
    std::string floats(4 * 6, '\0');
    const float v[6] = {1.5f, -2, 0, 3, 4, 5};
    std::memcpy(floats.data(), v, sizeof v);
    auto ok = read_npy(write("gflex_ok.npy", "<f4", "(2, 3)", floats));
    REQUIRE(ok.has_value());
    CHECK(ok->shape() == shape_t{2, 3});
    CHECK(ok->data<float>()[1] == -2.0f);
    std::string longs(8 * 2, '\0');
    const int64_t l[2] = {3, 1};
    std::memcpy(longs.data(), l, sizeof l);
    auto labels = read_npy(write("gflex_l.npy", "<i8", "(2,)", longs));
    REQUIRE(labels.has_value());
    CHECK(labels->data<int32_t>()[0] == 3);
    auto err = [](const expected<tensor>& t) { return t ? std::string() : t.error().message(); };
    CHECK(err(read_npy(write("gflex_short.npy", "<f4", "(2, 3)", floats.substr(0, 10))))
              .find("(truncated)") != std::string::npos);
    CHECK(err(read_npy(write("gflex_c.npy", "<c8", "(2, 3)", floats + floats)))
              .find("dtype '<c8' is not supported") != std::string::npos);
    CHECK(err(read_npy(write("gflex_be.npy", ">f4", "(2, 3)", floats)))
              .find("dtype '>f4' is not supported") != std::string::npos);
    CHECK(err(read_npy(write("gflex_f.npy", "<f4", "(2, 3)", floats, true)))
              .find("Fortran-ordered") != std::string::npos);
    const int64_t huge[2] = {int64_t{1} << 40, 0};
    std::memcpy(longs.data(), huge, sizeof huge);
    CHECK(err(read_npy(write("gflex_h.npy", "<i8", "(2,)", longs))).find("does not fit int32") !=
          std::string::npos);
    CHECK(err(read_npy("/tmp/gflex-no-such.npy")).find("cannot open") != std::string::npos);
    for (const char* f : {"gflex_ok.npy", "gflex_l.npy", "gflex_short.npy", "gflex_c.npy",
                          "gflex_be.npy", "gflex_f.npy", "gflex_h.npy"})
      std::remove((dir + "/" + f).c_str());
  }

  TEST_CASE("a manifest's store key gives back the owner and name it was made of") {
    const auto id = data_set_of_key(data_set_key("user/alice", "x.v2"));
    REQUIRE(id.has_value());
    CHECK(id->first == "user/alice");
    CHECK(id->second == "x.v2");
    for (const std::string bad : {"dataset/", "dataset/x", "dataset/user/alice/", "other/a/b"})
      CHECK_FALSE_MESSAGE(data_set_of_key(bad).has_value(), bad);
  }
}
