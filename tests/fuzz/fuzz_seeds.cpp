/// @file
/// fuzz_seeds DIR: writes a few well-formed inputs for each fuzz target into DIR/<target>/,
/// so that fuzzing starts from data that reaches deep into each decoder.

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gflex/runtime/checkpoint.hpp"
#include "gflex/runtime/job_spec.hpp"
#include "gflex/runtime/shard.hpp"
#include "gflex/runtime/tensor_codec.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "ledger_book.hpp"
#include "reputation.hpp"

using namespace gflex;

namespace {

std::filesystem::path root;

void write(const std::string& target, const std::string& name, const void* data, size_t size) {
  auto dir = root / target;
  std::filesystem::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary)
      .write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
}

void write(const std::string& target, const std::string& name, const std::vector<uint8_t>& b) {
  write(target, name, b.data(), b.size());
}

void write(const std::string& target, const std::string& name, const std::string& s) {
  write(target, name, s.data(), s.size());
}

tensor small_tensor(dtype type) {
  auto t = tensor::empty({2, 3}, type);
  if (type == dtype::f32) {
    std::fill(t.data<float>(), t.data<float>() + t.numel(), 0.5f);
  } else {
    std::fill(t.data<uint8_t>(), t.data<uint8_t>() + t.numel(), uint8_t{7});
  }
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  root = argv[1];
  write("tensor", "f32", encode_tensor(small_tensor(dtype::f32)));
  write("tensor", "u8", encode_tensor(small_tensor(dtype::u8)));
  checkpoint c;
  c.workload = "fashion-mlp";
  c.step = 3;
  c.tensors.push_back({"theta", small_tensor(dtype::f32)});
  write("checkpoint", "one", encode_checkpoint(c));
  std::vector<float> delta{0.5f, -1.0f, 0.25f, 3.0f};
  for (auto kind : {compression::fp32, compression::int8}) {
    auto bytes = encode_update(delta, kind, nullptr, 2);
    bytes.insert(bytes.begin(), static_cast<uint8_t>(delta.size()));  // the expected count
    write("update", to_string(kind), bytes);
  }
  dataset d;
  d.features = tensor::empty({2, 4}, dtype::f32);
  d.labels = tensor::empty({2}, dtype::i32);
  d.classes = 3;
  std::fill(d.features.data<float>(), d.features.data<float>() + 8, 0.5f);
  d.labels.data<int32_t>()[0] = 1;
  d.labels.data<int32_t>()[1] = 2;
  write("shard", "two", encode_shard(d, 0, 2));
  job_spec spec;
  spec.workload = "fashion-mlp";
  write("job_spec", "defaults", to_toml(spec));
  spec.account = "user/alice";
  spec.budget = 100 * micro_per_credit;
  spec.max_price = 2 * micro_per_credit;
  write("job_spec", "metered", to_toml(spec));
  const uint8_t idx[] = {1, 0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3};  // rank-1 u8, 3 values
  std::vector<uint8_t> seed(idx, idx + sizeof idx);
  seed.insert(seed.begin(), 0);  // first byte: the expected rank - 1
  write("idx", "rank1", seed);
  ledger_book book;
  auto open = book.prepare_open("user/alice", 1).value();
  write("ledger_entry", "open", encode_entry(open));
  book.apply(open);
  auto credit =
      book.prepare("credit", "operator", {{"user/alice", 5}, {ledger_book::external, -5}}, 2);
  write("ledger_entry", "credit", encode_entry(credit.value()));
  write("ledger_entry", "amount", std::string("12.345678"));
  reputation r;
  r.name = "node-1";
  r.on_validated(reputation_policy{}, result_check::verified, 1.5);
  write("reputation", "one", encode_reputation(r));
  return 0;
}
