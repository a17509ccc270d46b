#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <thread>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "gflex/runtime/checkpoint.hpp"
#include "gflex/runtime/printable_text.hpp"
#include "gflex/runtime/shard.hpp"
#include "gflex/runtime/tensor_codec.hpp"
#include "gflex/schema/checkpoint.capnp.h"
#include "gflex/schema/tensor.capnp.h"
#include "temp_dir.hpp"

using namespace gflex;

TEST_SUITE("checkpoint") {
  TEST_CASE("round trip of named tensors through bytes and a file") {
    checkpoint c;
    c.workload = "fashion-mlp";
    c.step = 17;
    auto w = tensor::empty({3, 2}, dtype::f32);
    for (int i = 0; i < 6; ++i) w.span<float>()[i] = 0.5f * static_cast<float>(i);
    c.tensors.push_back({"fc1.weight", w});
    c.tensors.push_back({"fc1.bias", tensor::zeros({2}, dtype::f32)});
    test::temp_dir dir;
    REQUIRE(write_file_atomically(dir / "c.gfck", encode_checkpoint(c)).has_value());
    auto bytes = read_file(dir / "c.gfck");
    REQUIRE(bytes.has_value());
    auto back = decode_checkpoint(*bytes);
    REQUIRE(back.has_value());
    CHECK(back->workload == "fashion-mlp");
    CHECK(back->step == 17);
    REQUIRE(back->find("fc1.weight") != nullptr);
    CHECK(back->find("fc1.weight")->shape() == shape_t{3, 2});
    CHECK(back->find("fc1.weight")->span<float>()[5] == 2.5f);
    CHECK(back->find("nope") == nullptr);
    // Encoding is a function of the contents (fuzz_checkpoint compares the bytes).
    CHECK(encode_checkpoint(*back) == *bytes);
    // Private to its owner (a user's model); a file replaced keeps the mode it had.
    struct stat st {};
    REQUIRE(::stat((dir / "c.gfck").c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    REQUIRE(::chmod((dir / "c.gfck").c_str(), 0640) == 0);
    REQUIRE(write_file_atomically(dir / "c.gfck", encode_checkpoint(c)).has_value());
    REQUIRE(::stat((dir / "c.gfck").c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0640);
    CHECK(std::distance(std::filesystem::directory_iterator(dir.path()),
                        std::filesystem::directory_iterator()) == 1);  // no temporary left
  }

  TEST_CASE("a checkpoint whose tensors are packed is refused") {
    // Checkpoints are written raw; a packed tensor let a small file ask for 32 times its size.
    std::vector<float> values(4096);
    for (size_t i = 0; i < values.size(); ++i)
      values[i] = static_cast<float>((i * 2654435761u) % 1000) / 1000.0f;
    const auto packed = encode_vector(values, tensor_packing::zstd);
    capnp::FlatArrayMessageReader tensor_message(kj::ArrayPtr<const capnp::word>(
        reinterpret_cast<const capnp::word*>(packed.data()), packed.size() / sizeof(capnp::word)));
    REQUIRE(tensor_message.getRoot<schema::Tensor>().hasZstd());
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<schema::Checkpoint>();
    root.setWorkload("fashion-mlp");
    auto list = root.initParameters(1);
    list[0].setName("w");
    list[0].setTensor(tensor_message.getRoot<schema::Tensor>());
    auto refusal = [&] {
      auto flat = capnp::messageToFlatArray(message);
      auto bytes = flat.asBytes();
      auto c = decode_checkpoint({bytes.begin(), bytes.size()});
      REQUIRE_FALSE(c.has_value());
      return c.error().message();
    };
    CHECK(refusal() == "malformed checkpoint: tensor 'w' is packed (checkpoints hold raw tensors)");
    // The name is the file's: it reached the terminal raw, escape codes and all, at any length.
    list[0].setName("\x1b]0;x\x07\nforged" + std::string(100000, 'n'));
    const auto m = refusal();
    CHECK(is_printable_text(m));
    CHECK(m.size() < 200);
  }

  TEST_CASE("a checkpoint of borrowed vectors decodes like one of tensors") {
    std::vector<float> theta(1000), momentum(1000);
    for (size_t i = 0; i < theta.size(); ++i) {
      theta[i] = 0.25f * static_cast<float>(i);
      momentum[i] = -static_cast<float>(i);
    }
    checkpoint_view v;
    v.workload = "model";
    v.model = "[model]\n" + std::string(60000, '#');  // a long declaration (64 KiB allowed)
    v.data_set = "set";
    v.step = 4;
    v.vectors = {{"theta", theta}, {"outer_momentum", momentum}};
    auto bytes = encode_checkpoint(v);
    checkpoint c;
    c.workload = "model";
    c.model = v.model;
    c.data_set = "set";
    c.step = 4;
    for (const auto& [name, values] : v.vectors) {
      auto t = tensor::empty({static_cast<int64_t>(values.size())}, dtype::f32);
      std::copy(values.begin(), values.end(), t.data<float>());
      c.tensors.push_back({name, std::move(t)});
    }
    CHECK(bytes == encode_checkpoint(c));  // the same bytes, byte for byte
    auto back = decode_checkpoint(bytes);
    REQUIRE(back.has_value());
    REQUIRE(back->find("outer_momentum") != nullptr);
    CHECK(back->find("outer_momentum")->span<float>()[999] == -999.0f);
    CHECK(back->data_set == "set");
  }

  TEST_CASE("a view's vectors with shapes encode as the tensors of those shapes") {
    // How a model is exported: each layer a part of the flat parameters, with its shape.
    std::vector<float> flat(2 * 3 + 3);
    for (size_t i = 0; i < flat.size(); ++i) flat[i] = static_cast<float>(i) - 4.0f;
    checkpoint_view v;
    v.workload = "mlp";
    v.step = 7;
    const std::span<const float> all(flat);
    v.vectors = {{"w", all.subspan(0, 6)}, {"b", all.subspan(6, 3)}};
    v.shapes = {{2, 3}, {3}};
    checkpoint c;
    c.workload = "mlp";
    c.step = 7;
    auto w = tensor::empty({2, 3}, dtype::f32);
    std::copy_n(flat.begin(), 6, w.data<float>());
    auto b = tensor::empty({3}, dtype::f32);
    std::copy_n(flat.begin() + 6, 3, b.data<float>());
    c.tensors.push_back({"w", std::move(w)});
    c.tensors.push_back({"b", std::move(b)});
    const auto bytes = encode_checkpoint(v);
    CHECK(bytes == encode_checkpoint(c));  // the same bytes as the copied tensors give
    auto back = decode_checkpoint(bytes);
    REQUIRE(back.has_value());
    REQUIRE(back->find("w") != nullptr);
    CHECK(back->find("w")->shape() == shape_t{2, 3});
    CHECK(back->find("b")->span<float>()[2] == 4.0f);
  }

  TEST_CASE("an export of a model of 300 attention layers reads back") {
    // 1,202 parameter blocks, within the planner's 512 layers: a checkpoint read refused more
    // than 1,024 tensors, so `gflex job eval` and `fetch_parameters` failed on what `fetch`
    // had written.
    std::vector<float> block(4, 0.5f);
    checkpoint_view c;
    c.workload = "model";
    for (int i = 0; i < 1202; ++i) c.vectors.push_back({"layer" + std::to_string(i), block});
    auto decoded = decode_checkpoint(encode_checkpoint(c));
    REQUIRE_MESSAGE(decoded.has_value(), decoded.error().message());
    CHECK(decoded->tensors.size() == 1202);
    // Past the bound, refused, saying how many.
    for (size_t i = 1202; i <= max_checkpoint_tensors; ++i)
      c.vectors.push_back({"extra" + std::to_string(i), block});
    auto refused = decode_checkpoint(encode_checkpoint(c));
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().message().find("4097 tensors, more than 4096") != std::string::npos);
  }

  TEST_CASE("damaged checkpoints and missing files are clear errors") {
    checkpoint c;
    c.workload = "x";
    c.tensors.push_back({"t", tensor::zeros({4}, dtype::f32)});
    auto bytes = encode_checkpoint(c);
    for (size_t len = 0; len < bytes.size(); len += 8) {
      auto r = decode_checkpoint(std::span<const uint8_t>(bytes.data(), len));
      REQUIRE_FALSE(r.has_value());
      CHECK(r.error().code() == errc::malformed_message);
    }
    auto missing = read_file("/nonexistent/model.gfck");
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().message().find("/nonexistent/model.gfck") != std::string::npos);
  }

  TEST_CASE("read_file reads pipes and devices, within its bound, and names what it cannot") {
    test::temp_dir dir;
    // A pipe (`gflex submit <(generate-spec)`) was refused as "no such file".
    const auto fifo = dir.path() / "spec.fifo";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    std::thread writer([&] { std::ofstream(fifo, std::ios::binary) << "[job]\nrounds = 3\n"; });
    auto piped = read_file(fifo, 1024);
    // Unless it was read, a reader held open until the writer is done lets it finish.
    const int drain = piped ? -1 : ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
    writer.join();
    if (drain >= 0) ::close(drain);
    REQUIRE(piped.has_value());
    CHECK(std::string(piped->begin(), piped->end()) == "[job]\nrounds = 3\n");

    auto endless = read_file("/dev/zero", 4096);
    REQUIRE_FALSE(endless.has_value());
    CHECK(endless.error().message() == "/dev/zero: larger than 4096 bytes");

    auto on_dir = read_file(dir.path());
    REQUIRE_FALSE(on_dir.has_value());
    CHECK(on_dir.error().message() == dir.path().string() + ": is a directory");

    const auto file = dir.path() / "exact";
    std::ofstream(file, std::ios::binary) << std::string(4096, 'x');
    auto exact = read_file(file, 4096);
    REQUIRE(exact.has_value());
    CHECK(exact->size() == 4096);
    auto over = read_file(file, 4095);
    REQUIRE_FALSE(over.has_value());
    CHECK(over.error().message() == file.string() + ": larger than 4095 bytes");
  }
}

TEST_SUITE("shard") {
  TEST_CASE("a shard carries 8-bit features and labels exactly") {
    dataset d;
    d.classes = 10;
    d.features = tensor::empty({5, 4}, dtype::f32);
    d.labels = tensor::empty({5}, dtype::i32);
    for (int i = 0; i < 20; ++i) d.features.span<float>()[i] = static_cast<float>(i * 13) / 255.0f;
    for (int i = 0; i < 5; ++i) d.labels.span<int32_t>()[i] = 9 - i;
    auto bytes = encode_shard(d, 1, 4);
    auto back = decode_shard(bytes);
    REQUIRE(back.has_value());
    CHECK(back->size() == 3);
    CHECK(back->feature_dim() == 4);
    CHECK(back->labels.span<int32_t>()[0] == 8);
    CHECK(back->features.span<float>()[0] ==
          doctest::Approx(d.features.span<float>()[4]).epsilon(1e-6));
  }

  TEST_CASE("a shard of no samples is malformed, whatever its kind of features") {
    // A worker drew batches from it by index: a shard of no rows from a hostile core crashed
    // the node's process.
    for (const float value : {0.5f, 0.3f}) {  // 8-bit pixels, then real values
      CAPTURE(value);
      dataset d;
      d.classes = 3;
      d.features = tensor::empty({2, 2}, dtype::f32);
      for (auto& v : d.features.span<float>()) v = value == 0.5f ? 51.0f / 255.0f : value;
      d.labels = tensor::zeros({2}, dtype::i32);
      auto empty = decode_shard(encode_shard(d, 1, 1));
      REQUIRE_FALSE(empty.has_value());
      CHECK(empty.error().code() == errc::malformed_message);
      CHECK(empty.error().message().find("no samples") != std::string::npos);
    }
  }

  TEST_CASE("every truncation of a shard is malformed") {
    dataset d;
    d.classes = 3;
    d.features = tensor::zeros({2, 2}, dtype::f32);
    d.labels = tensor::zeros({2}, dtype::i32);
    auto bytes = encode_shard(d, 0, 2);
    for (size_t len = 0; len < bytes.size(); ++len)
      CHECK_FALSE(decode_shard(std::span<const uint8_t>(bytes.data(), len)).has_value());
  }
}
