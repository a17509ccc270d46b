#include "data_catalog.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <thread>

#include "gflex/runtime/digest.hpp"

namespace gflex {

expected<void> check_workers_fit(int64_t workers, size_t shards) {
  if (workers <= static_cast<int64_t>(shards)) return {};
  return error(errc::invalid_argument,
               "job spec: job.workers: " + std::to_string(workers) +
                   " workers, but the data set has only " + std::to_string(shards) +
                   " shards and a round gives each worker a different one (at most " +
                   std::to_string(shards) + ")");
}

expected<std::shared_ptr<const served_data>> data_catalog::get(const kernels::workload& w,
                                                               int64_t min_shards) {
  // A user-defined model's data depend on its declaration (a token model's sample length).
  const std::string key = w.name() + '\n' + w.model_text() +
                          (min_shards > 0 ? "\nat least " + std::to_string(min_shards) : "");
  {
    std::lock_guard<std::mutex> guard(mutex_);
    if (auto it = by_workload_.find(key); it != by_workload_.end())
      if (auto held = it->second.lock()) return std::shared_ptr<const served_data>(held);
  }
  // Loading, cutting and hashing take seconds, so they run without the lock: the data server
  // (event-based, on CAF's scheduler) reads chunks under it and must never wait for them.
  // Two jobs that load the same data at once both do the work; the first one's is kept.
  std::map<std::string, std::shared_ptr<const std::vector<uint8_t>>> new_chunks;
  auto splits = w.load_data();
  if (!splits) return splits.error();
  auto data = std::make_shared<served_data>();
  data->test = std::move(splits->test);
  data->train_samples = splits->train.size();
  const auto& train = splits->train;
  // Cutting is encoding and hashing, shard by shard: spread over the machine's cores, it is
  // most of a job's start.
  // As many shards as `shard_samples` makes, their sizes differing by one sample at most: a
  // short last shard (234 samples of the language model's 36,234) was drawn as often as the
  // others, each of its samples about 13 times as often, and weighed as much in each round.
  const int64_t cut_count = std::max((train.size() + shard_samples_ - 1) / shard_samples_,
                                     std::min(min_shards, train.size()));
  const auto ranges = shard_ranges(train.size(), 1, cut_count, std::numeric_limits<int64_t>::max());
  const auto count = static_cast<int64_t>(ranges.size());
  std::vector<std::shared_ptr<std::vector<uint8_t>>> cut(static_cast<size_t>(count));
  std::vector<shard_info> infos(static_cast<size_t>(count));
  std::atomic<int64_t> next_shard{0};
  auto cutter = [&] {
    for (int64_t i = next_shard++; i < count; i = next_shard++) {
      const auto [begin, end] = ranges[static_cast<size_t>(i)];
      auto bytes = std::make_shared<std::vector<uint8_t>>(encode_shard(train, begin, end));
      infos[static_cast<size_t>(i)] = {digest_hex(*bytes), end - begin, bytes->size()};
      cut[static_cast<size_t>(i)] = std::move(bytes);
    }
  };
  {
    const auto threads =
        std::min<int64_t>(count, std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, 8));
    std::vector<std::jthread> helpers;
    for (int64_t t = 1; t < threads; ++t) helpers.emplace_back(cutter);
    cutter();
  }
  for (int64_t i = 0; i < count; ++i) {
    new_chunks[infos[static_cast<size_t>(i)].digest] = std::move(cut[static_cast<size_t>(i)]);
    data->shards.push_back(std::move(infos[static_cast<size_t>(i)]));
  }
  std::lock_guard<std::mutex> guard(mutex_);
  if (auto it = by_workload_.find(key); it != by_workload_.end())
    if (auto held = it->second.lock()) return std::shared_ptr<const served_data>(held);
  // A shard another load holds already (the same data, another model) is shared, not kept
  // twice.
  for (auto& [digest, bytes] : new_chunks) {
    std::shared_ptr<const std::vector<uint8_t>> kept = chunks_[digest].lock();
    if (!kept) {
      kept = std::move(bytes);
      chunks_[digest] = kept;
    }
    data->held_chunks.push_back(std::move(kept));
  }
  spdlog::info("data for {}: {} training samples in {} shards, {} test samples", w.name(),
               data->train_samples, data->shards.size(), data->test.size());
  std::shared_ptr<const served_data> out(data);
  by_workload_[key] = out;
  recent_loads_.push_back(out);
  if (recent_loads_.size() > kept_loads) recent_loads_.pop_front();
  forget_unheld();
  return out;
}

expected<void> data_catalog::put_user_set(
    const data_set_info& info,
    const std::map<std::string, std::shared_ptr<const std::vector<uint8_t>>>& chunks,
    const user_data_limits& limits) {
  auto data = std::make_shared<served_data>();
  std::vector<dataset> tests;
  int64_t test_rows = 0;
  for (const auto& digest : info.test_shards) {
    auto it = chunks.find(digest);
    if (it == chunks.end())
      return error(errc::store_error, "data set " + info.owner + "/" + info.name + ": test shard " +
                                          digest + " is missing");
    auto d = decode_shard(*it->second, limits.max_part_values);
    if (!d) return d.error();
    test_rows += d->size();
    if (test_rows * d->feature_dim() > limits.max_test_values)
      return error(errc::invalid_argument, "data set " + info.owner + "/" + info.name +
                                               ": the test split passes " +
                                               std::to_string(limits.max_test_values) + " values");
    tests.push_back(std::move(*d));
  }
  if (tests.empty())
    return error(errc::store_error, "data set " + info.name + " has no test split");
  const int64_t dim = tests.front().feature_dim();
  data->test.classes = tests.front().classes;
  data->test.tokens = tests.front().tokens;
  data->test.features = tensor::empty({test_rows, dim}, dtype::f32);
  data->test.labels = tensor::empty({test_rows}, dtype::i32);
  int64_t row = 0;
  for (const auto& d : tests) {
    std::copy_n(d.features.data<float>(), d.size() * dim,
                data->test.features.data<float>() + row * dim);
    std::copy_n(d.labels.data<int32_t>(), d.size(), data->test.labels.data<int32_t>() + row);
    row += d.size();
  }
  for (const auto& digest : info.train_shards) {
    auto it = chunks.find(digest);
    if (it == chunks.end())
      return error(errc::store_error, "data set " + info.owner + "/" + info.name +
                                          ": training shard " + digest + " is missing");
    auto d = decode_shard(*it->second, limits.max_part_values);
    if (!d) return d.error();
    data->shards.push_back({digest, d->size(), it->second->size()});
    data->train_samples += d->size();
    data->held_chunks.push_back(it->second);
  }
  std::lock_guard<std::mutex> guard(mutex_);
  // One copy of a shard is served, whoever holds it: a shard another set holds already (two
  // uploads of the same data, by one account or two) is shared, not pointed away from. The
  // entry pointed at the newer copy only, and once that set went (removed, replaced, its
  // commit failed) the older set's shard was served by nobody: its jobs asked for it for good.
  for (size_t i = 0; i < info.train_shards.size(); ++i) {
    auto& served = chunks_[info.train_shards[i]];
    if (auto live = served.lock())
      data->held_chunks[i] = std::move(live);
    else
      served = data->held_chunks[i];
  }
  user_sets_[{info.owner, info.name}] = {info, std::move(data)};  // a replaced one goes
  damaged_sets_.erase({info.owner, info.name});
  forget_unheld();
  return {};
}

void data_catalog::note_damaged_set(const std::string& owner, const std::string& name,
                                    std::string why) {
  std::lock_guard<std::mutex> guard(mutex_);
  damaged_sets_[{owner, name}] = std::move(why);
}

std::optional<data_catalog::user_set_entry> data_catalog::registered_user_set(
    const std::string& owner, const std::string& name) const {
  std::lock_guard<std::mutex> guard(mutex_);
  auto it = user_sets_.find({owner, name});
  if (it == user_sets_.end()) return std::nullopt;
  return it->second;
}

void data_catalog::restore_user_set(user_set_entry entry) {
  std::lock_guard<std::mutex> guard(mutex_);
  const auto& shards = entry.data->shards;
  // Its shards are served still (the set's data is held) unless nobody held them: then they
  // are served from its copy. Pointed at its copy whatever, a live copy another set holds
  // was pointed away from (put_user_set).
  for (size_t i = 0; i < shards.size() && i < entry.data->held_chunks.size(); ++i)
    if (auto& served = chunks_[shards[i].digest]; served.expired())
      served = entry.data->held_chunks[i];
  const std::pair<std::string, std::string> key{entry.info.owner, entry.info.name};
  damaged_sets_.erase(key);
  user_sets_[key] = std::move(entry);
  forget_unheld();
}

void data_catalog::drop_user_set(const std::string& owner, const std::string& name) {
  std::lock_guard<std::mutex> guard(mutex_);
  user_sets_.erase({owner, name});
  damaged_sets_.erase({owner, name});
  forget_unheld();
}

void data_catalog::forget_unheld() {
  for (auto it = chunks_.begin(); it != chunks_.end();)
    it = it->second.expired() ? chunks_.erase(it) : std::next(it);
  for (auto it = by_workload_.begin(); it != by_workload_.end();)
    it = it->second.expired() ? by_workload_.erase(it) : std::next(it);
}

expected<std::shared_ptr<const served_data>> data_catalog::user_set(
    const std::string& owner, const std::string& name, const kernels::workload& w) const {
  std::lock_guard<std::mutex> guard(mutex_);
  auto it = user_sets_.find({owner, name});
  if (auto damaged = damaged_sets_.find({owner, name});
      it == user_sets_.end() && damaged != damaged_sets_.end())
    return error(errc::store_error,
                 "data.set: '" + name + "' cannot be read from the core's store (" +
                     damaged->second + "); push it again, or remove it with gflex data rm");
  if (it == user_sets_.end())
    return error(errc::invalid_argument, "data.set: " + owner + " has no data set '" + name +
                                             "' (push it with gflex data push)");
  const auto& i = it->second.info;
  const bool token_model = w.token_input();
  if (i.sample_values != w.feature_dim() || i.classes != w.classes() || i.tokens != token_model)
    return error(errc::invalid_argument,
                 "data.set: '" + name + "' has " + std::to_string(i.sample_values) +
                     (i.tokens ? " tokens" : " values") + " per sample and " +
                     std::to_string(i.classes) + " classes; the model takes " +
                     std::to_string(w.feature_dim()) + (token_model ? " tokens" : " values") +
                     " and " + std::to_string(w.classes()));
  return it->second.data;
}

std::shared_ptr<const std::vector<uint8_t>> data_catalog::chunk(const std::string& digest) const {
  std::lock_guard<std::mutex> guard(mutex_);
  auto it = chunks_.find(digest);
  return it == chunks_.end() ? nullptr : it->second.lock();
}

}  // namespace gflex
