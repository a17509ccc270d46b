#include "data_catalog.hpp"

#include <spdlog/spdlog.h>

#include "gflex/runtime/digest.hpp"

namespace gflex {

expected<std::shared_ptr<const served_data>> data_catalog::get(const kernels::workload& w) {
  std::lock_guard<std::mutex> guard(mutex_);
  // A user-defined model's data depend on its declaration (a token model's sample length).
  const std::string key = w.name() + '\n' + w.model_text();
  if (auto it = by_workload_.find(key); it != by_workload_.end()) return it->second;
  auto splits = w.load_data();
  if (!splits) return splits.error();
  auto data = std::make_shared<served_data>();
  data->test = std::move(splits->test);
  data->train_samples = splits->train.size();
  const auto& train = splits->train;
  for (int64_t begin = 0; begin < train.size(); begin += shard_samples_) {
    int64_t end = std::min(train.size(), begin + shard_samples_);
    auto bytes = std::make_shared<std::vector<uint8_t>>(encode_shard(train, begin, end));
    shard_info info{digest_hex(*bytes), end - begin, bytes->size()};
    chunks_[info.digest] = std::move(bytes);
    data->shards.push_back(std::move(info));
  }
  spdlog::info("data for {}: {} training samples in {} shards, {} test samples", w.name(),
               data->train_samples, data->shards.size(), data->test.size());
  by_workload_[key] = data;
  return std::shared_ptr<const served_data>(data);
}

std::shared_ptr<const std::vector<uint8_t>> data_catalog::chunk(const std::string& digest) const {
  std::lock_guard<std::mutex> guard(mutex_);
  auto it = chunks_.find(digest);
  return it == chunks_.end() ? nullptr : it->second;
}

}  // namespace gflex
