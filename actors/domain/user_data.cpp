#include "user_data.hpp"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "gflex/runtime/digest.hpp"
#include "gflex/runtime/shard.hpp"
#include "json_fields.hpp"

namespace gflex {

uint64_t core_memory_bytes(const data_set_info& info) {
  // Both factors are bounded by the upload's limits (max_test_values), far from overflow.
  const auto test_values =
      static_cast<uint64_t>(info.test_samples) * (static_cast<uint64_t>(info.sample_values) + 1);
  return info.bytes + 4 * test_values;
}

std::optional<std::string> missing_samples(int64_t train, int64_t test) {
  if (train > 0 && test > 0) return std::nullopt;
  return "needs training and test samples, has " + std::to_string(train) + " and " +
         std::to_string(test);
}

std::optional<std::string> sample_kind_mismatch(const sample_kind& got, const sample_kind& first,
                                                const std::string& first_what) {
  if (got == first) return std::nullopt;
  return "has " + std::to_string(got.values) + " values per sample and " +
         std::to_string(got.classes) + " classes" + (got.tokens ? " (tokens)" : "") + ", " +
         first_what + " " + std::to_string(first.values) + " and " + std::to_string(first.classes) +
         (first.tokens ? " (tokens)" : "");
}

expected<std::vector<data_part_rows>> plan_data_parts(const dataset_splits& data,
                                                      int64_t min_train_shards,
                                                      const user_data_limits& limits) {
  const int64_t train = data.train.size(), test = data.test.size();
  // The core refuses both only once every part is in: up to a gigabyte sent for nothing.
  if (auto missing = missing_samples(train, test))
    return error(errc::invalid_argument, "the data set " + *missing);
  const sample_kind train_kind{data.train.feature_dim(), data.train.classes, data.train.tokens};
  const sample_kind test_kind{data.test.feature_dim(), data.test.classes, data.test.tokens};
  if (auto mismatch = sample_kind_mismatch(test_kind, train_kind, "the training split"))
    return error(errc::invalid_argument, "the test split " + *mismatch);
  const int64_t test_values = test * data.test.feature_dim();
  if (test_values > limits.max_test_values)
    return error(errc::invalid_argument, "the test split has " + std::to_string(test_values) +
                                             " values, over the core's limit of " +
                                             std::to_string(limits.max_test_values) +
                                             ": hold out fewer samples");
  // Sized at 4 bytes a value (pixels and small token ids travel as one): under the core's
  // 32 MiB a part whatever the data.
  constexpr int64_t part_bytes = int64_t{8} << 20;
  const auto test_rows = shard_ranges(test, data.test.feature_dim() * 4, 1, part_bytes);
  const auto max_parts = static_cast<int64_t>(limits.max_parts);
  const int64_t room = max_parts - static_cast<int64_t>(test_rows.size());
  int64_t wanted = min_train_shards > 0
                       ? min_train_shards
                       : train / default_shard_samples + (train % default_shard_samples != 0);
  // The default gives way to the core's limit on parts; a count asked for does not.
  if (min_train_shards <= 0) wanted = std::min(wanted, std::max<int64_t>(room, 1));
  const auto train_rows = shard_ranges(train, data.train.feature_dim() * 4, wanted, part_bytes);
  const auto parts = static_cast<int64_t>(train_rows.size() + test_rows.size());
  if (parts > max_parts)
    return error(errc::invalid_argument,
                 "the data set would be sent in " + std::to_string(parts) +
                     " parts, over the core's limit of " + std::to_string(max_parts) +
                     (min_train_shards > 0 ? ": ask for fewer training shards"
                                           : ": it is too large for one data set"));
  std::vector<data_part_rows> out;
  for (auto [begin, end] : train_rows) out.push_back({false, begin, end});
  for (auto [begin, end] : test_rows) out.push_back({true, begin, end});
  return out;
}

bool valid_data_set_name(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

std::string data_set_key(const std::string& owner, const std::string& name) {
  return std::string(data_set_prefix) + owner + "/" + name;
}

std::optional<std::pair<std::string, std::string>> data_set_of_key(const std::string& key) {
  const std::string prefix = data_set_prefix;
  const auto slash = key.rfind('/');
  if (!key.starts_with(prefix) || slash == std::string::npos || slash <= prefix.size() ||
      slash + 1 == key.size())
    return std::nullopt;
  return std::pair{key.substr(prefix.size(), slash - prefix.size()), key.substr(slash + 1)};
}

std::string data_chunk_key(const std::string& digest) {
  return data_chunk_prefix + digest;
}

data_upload::data_upload(std::string owner, std::string name, uint32_t count,
                         user_data_limits limits)
    : count_(count), limits_(limits) {
  info_.owner = std::move(owner);
  info_.name = std::move(name);
}

expected<void> data_upload::add(const data_part& p) {
  auto bad = [&](const std::string& what) {
    return error(errc::invalid_argument,
                 "data set '" + info_.name + "', part " + std::to_string(p.index) + ": " + what);
  };
  if (p.count != count_ || p.index != info_.parts_received)
    return bad("expected part " + std::to_string(info_.parts_received) + " of " +
               std::to_string(count_) + " (parts are sent in order, from 0)");
  if (p.shard.size() > limits_.max_part_bytes)
    return bad("a shard of " + std::to_string(p.shard.size()) + " bytes is over the limit of " +
               std::to_string(limits_.max_part_bytes));
  if (info_.bytes + p.shard.size() > limits_.max_bytes)
    return bad("the data set would pass " + std::to_string(limits_.max_bytes) + " bytes");
  auto shard = decode_shard(p.shard, limits_.max_part_values);
  if (!shard) return bad(shard.error().message());
  if (shard->size() == 0) return bad("an empty shard");
  const int64_t values = shard->size() * shard->feature_dim();
  if (values > limits_.max_part_values)
    return bad("a shard of " + std::to_string(values) + " values is over the limit of " +
               std::to_string(limits_.max_part_values));
  if (p.test && test_values_ + values > limits_.max_test_values)
    return bad("the test split would pass " + std::to_string(limits_.max_test_values) + " values");
  if (info_.parts_received > 0)
    if (auto mismatch = sample_kind_mismatch({shard->feature_dim(), shard->classes, shard->tokens},
                                             {info_.sample_values, info_.classes, info_.tokens},
                                             "the first part"))
      return bad(*mismatch);
  if (!p.test && !info_.test_shards.empty())
    return bad("training shards come before the test shards");
  info_.sample_values = shard->feature_dim();
  info_.classes = shard->classes;
  info_.tokens = shard->tokens;
  auto bytes = std::make_shared<const std::vector<uint8_t>>(p.shard);
  const std::string digest = digest_hex(*bytes);
  (p.test ? info_.test_shards : info_.train_shards).push_back(digest);
  (p.test ? info_.test_samples : info_.train_samples) += shard->size();
  if (p.test) test_values_ += values;
  info_.bytes += p.shard.size();
  chunks_[digest] = std::move(bytes);
  ++info_.parts_received;
  return {};
}

expected<data_set_info> data_upload::finish() const {
  if (!complete())
    return error(errc::invalid_argument, "data set '" + info_.name + "': the upload is incomplete");
  if (auto missing = missing_samples(info_.train_samples, info_.test_samples))
    return error(errc::invalid_argument, "data set '" + info_.name + "': " + *missing);
  return info_;
}

std::vector<uint8_t> encode_data_set(const data_set_info& i) {
  nlohmann::json j = {{"owner", i.owner},
                      {"name", i.name},
                      {"train_samples", i.train_samples},
                      {"test_samples", i.test_samples},
                      {"sample_values", i.sample_values},
                      {"classes", i.classes},
                      {"tokens", i.tokens},
                      {"bytes", i.bytes},
                      {"train_shards", i.train_shards},
                      {"test_shards", i.test_shards}};
  auto text = j.dump();
  return {text.begin(), text.end()};
}

expected<data_set_info> decode_data_set(std::span<const uint8_t> bytes) {
  try {
    auto j = nlohmann::json::parse(bytes.begin(), bytes.end());
    data_set_info i;
    i.owner = j.at("owner").get<std::string>();
    i.name = j.at("name").get<std::string>();
    i.train_samples = integer_at<int64_t>(j, "train_samples");
    i.test_samples = integer_at<int64_t>(j, "test_samples");
    i.sample_values = integer_at<int64_t>(j, "sample_values");
    i.classes = integer_at<int64_t>(j, "classes");
    i.tokens = j.at("tokens").get<bool>();
    i.bytes = integer_at<uint64_t>(j, "bytes");
    i.train_shards = j.at("train_shards").get<std::vector<std::string>>();
    i.test_shards = j.at("test_shards").get<std::vector<std::string>>();
    return i;
  } catch (const std::exception& e) {
    return error(errc::store_error, std::string("damaged data set manifest: ") + e.what());
  }
}

}  // namespace gflex
