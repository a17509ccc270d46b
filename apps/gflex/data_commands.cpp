#include "data_commands.hpp"
#include "fail.hpp"
#include "status_json.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "client_connection.hpp"
#include "gflex/gflex.hpp"
#include "gflex/runtime/checkpoint.hpp"
#include "gflex/runtime/idx.hpp"
#include "gflex/runtime/npy.hpp"
#include "gflex/runtime/printable_text.hpp"
#include "gflex/runtime/text_corpus.hpp"
#include "parse_command_line.hpp"

namespace gflex::app {

namespace {

struct data_flags {
  connection_flags link;
  std::string name;
  data_files files;
  int64_t shards = 0;  // training shards at least; 0: one per 3,000 samples
  bool as_json = false;
  std::string owner;  // show: whose set (the operator's key sees every account's)
};

// Features [n, ...] and labels [n] as a data set: u8 features are pixels (scaled to [0, 1]),
// others must be finite; labels below `classes` (given, or the largest label + 1).
expected<dataset> labelled(const tensor& features, const tensor& labels, int64_t classes,
                           const std::string& what, const std::string& labels_file) {
  if (features.rank() < 2)
    return error(errc::shape_mismatch, what + ": features must be [samples, ...], got rank " +
                                           std::to_string(features.rank()));
  if (labels.rank() != 1 || labels.dim(0) != features.dim(0))
    return error(errc::shape_mismatch, what + ": " + std::to_string(features.dim(0)) +
                                           " samples but labels of shape " +
                                           to_string(labels.shape()) + " (need [" +
                                           std::to_string(features.dim(0)) + "])");
  const int64_t n = features.dim(0), d = features.numel() / std::max<int64_t>(n, 1);
  dataset out;
  out.features = tensor::empty({n, d}, dtype::f32);
  out.labels = tensor::empty({n}, dtype::i32);
  for (int64_t i = 0; i < features.numel(); ++i) {
    float v;
    if (features.type() == dtype::u8)
      v = static_cast<float>(features.data<uint8_t>()[i]) * (1.0f / 255.0f);
    else if (features.type() == dtype::f32)
      v = features.data<float>()[i];
    else
      v = static_cast<float>(features.data<int32_t>()[i]);
    if (!std::isfinite(v))
      return error(errc::bad_format,
                   what + ": feature value " + std::to_string(i) + " is not finite");
    out.features.data<float>()[i] = v;
  }
  int64_t largest = 0;
  for (int64_t i = 0; i < n; ++i) {
    int64_t v;
    if (labels.type() == dtype::u8)
      v = labels.data<uint8_t>()[i];
    else if (labels.type() == dtype::i32)
      v = labels.data<int32_t>()[i];
    else
      return error(errc::bad_format, labels_file + ": labels must be integers");
    if (v < 0 || (classes > 0 && v >= classes))
      return error(errc::bad_format, labels_file + ": label " + std::to_string(v) + " of sample " +
                                         std::to_string(i) + " is outside [0, " +
                                         std::to_string(classes > 0 ? classes : 65536) + ")");
    largest = std::max(largest, v);
    out.labels.data<int32_t>()[i] = static_cast<int32_t>(v);
  }
  out.classes = classes > 0 ? classes : largest + 1;
  if (out.classes < 2 || out.classes > 65536)
    return error(errc::bad_format, labels_file + ": needs 2 to 65536 classes, the labels make " +
                                       std::to_string(out.classes));
  return out;
}

// The test split is the samples' last part: of samples sorted by class it holds the last
// classes only, and the job's test accuracy says little. Said, not refused (the data may be
// meant so).
void warn_if_sorted(const dataset_splits& s) {
  std::set<int32_t> train, test;
  for (int64_t i = 0; i < s.train.size(); ++i) train.insert(s.train.labels.data<int32_t>()[i]);
  for (int64_t i = 0; i < s.test.size(); ++i) test.insert(s.test.labels.data<int32_t>()[i]);
  std::string unseen;
  for (int32_t c : test)
    if (train.count(c) == 0) unseen += (unseen.empty() ? "" : ", ") + std::to_string(c);
  const bool one_class = test.size() == 1 && train.size() > 1 &&
                         s.test.size() >= 2 * static_cast<int64_t>(train.size());
  if (!unseen.empty() || one_class)
    spdlog::warn(
        "the samples look sorted by class: the test split (their last part) {}; shuffle them "
        "first, or the test accuracy says little",
        !unseen.empty() ? "holds class(es) " + unseen + " that the training split lacks"
                        : "holds class " + std::to_string(*test.begin()) + " only");
}

// The last `fraction` of the samples become the test split.
expected<dataset_splits> split(const dataset& all, double fraction) {
  const int64_t n = all.size(), test = static_cast<int64_t>(std::floor(n * fraction));
  if (test < 1 || n - test < 1)
    return error(errc::invalid_argument, std::to_string(n) +
                                             " samples cannot give both splits a "
                                             "sample at --test-fraction " +
                                             std::to_string(fraction));
  const int64_t d = all.feature_dim();
  dataset_splits out;
  for (auto [part, begin, end] :
       {std::tuple{&out.train, int64_t{0}, n - test}, std::tuple{&out.test, n - test, n}}) {
    part->classes = all.classes;
    part->tokens = all.tokens;
    part->features = tensor::empty({end - begin, d}, dtype::f32);
    part->labels = tensor::empty({end - begin}, dtype::i32);
    std::copy_n(all.features.data<float>() + begin * d, (end - begin) * d,
                part->features.data<float>());
    std::copy_n(all.labels.data<int32_t>() + begin, end - begin, part->labels.data<int32_t>());
  }
  warn_if_sorted(out);
  return out;
}

}  // namespace

expected<dataset_splits> read_data_files(const data_files& f) {
  // The format first: a mistyped one (text) was told "--labels: required with --format text",
  // as if the format were known and the labels missing.
  if (f.format != "idx" && f.format != "npy" && f.format != "tokens")
    return error(errc::invalid_argument, "--format: idx, npy or tokens, got '" + f.format + "'");
  if (f.format == "tokens") {
    // A text's labels are its next tokens, its classes the 256 byte values: given, these
    // were ignored (a --labels file that did not exist passed).
    if (!f.labels.empty())
      return error(errc::invalid_argument,
                   "--labels: not with --format tokens (a text's labels are its next tokens)");
    if (f.classes != 0)
      return error(errc::invalid_argument,
                   "--classes: not with --format tokens (its classes are the 256 byte values)");
    // Every k-th sample is held out (text is split by position, not at its end: a corpus's
    // last part is often of another kind), so the fraction is 1/k. Another was taken as the
    // nearest 1/k: 0.4 held out 50%, 0.9 also 50%.
    const auto every = std::max<int64_t>(2, std::llround(1.0 / f.test_fraction));
    if (std::abs(1.0 / static_cast<double>(every) - f.test_fraction) > 0.01 * f.test_fraction) {
      const auto lo = std::max<int64_t>(2, static_cast<int64_t>(std::floor(1.0 / f.test_fraction)));
      return error(errc::invalid_argument,
                   "--test-fraction " + format_double(f.test_fraction) +
                       ": tokens are held out every k-th sample, so the fraction is 1/k: give " +
                       format_double(1.0 / static_cast<double>(lo)) + " or " +
                       format_double(1.0 / static_cast<double>(lo + 1)));
    }
    auto bytes = read_file(f.path);
    if (!bytes) return bytes.error();
    auto splits = make_token_splits(*bytes, f.context + 1, every);
    if (!splits) return error(splits.error().code(), f.path + ": " + splits.error().message());
    return splits;
  }
  if (f.labels.empty())
    return error(errc::invalid_argument, "--labels: required with --format " + f.format);
  expected<tensor> features = error(errc::invalid_argument, "");
  expected<tensor> labels = error(errc::invalid_argument, "");
  if (f.format == "idx") {
    // Images (rank 3) or rows of values (rank 2): the file's own rank decides, so that a
    // damaged file's error is its own, not "has 3 dimensions, expected 2".
    features = read_idx_u8(f.path, 3);
    if (!features &&
        features.error().message().find("has 2 dimensions, expected 3") != std::string::npos)
      features = read_idx_u8(f.path, 2);
    labels = read_idx_u8(f.labels, 1);
  } else {  // npy
    features = read_npy(f.path);
    labels = read_npy(f.labels);
    if (labels && labels->type() == dtype::f32)
      return error(errc::bad_format, f.labels + ": labels must be integers, not floats");
  }
  if (!features) return features.error();
  if (!labels) return labels.error();
  auto all = labelled(*features, *labels, f.classes, f.path, f.labels);
  if (!all) return all.error();
  return split(*all, f.test_fraction);
}

namespace {

nlohmann::json to_json(const data_set_info& i) {
  return {{"owner", i.owner},
          {"name", i.name},
          {"train_samples", i.train_samples},
          {"test_samples", i.test_samples},
          {"sample_values", i.sample_values},
          {"classes", i.classes},
          {"tokens", i.tokens},
          {"bytes", i.bytes},
          {"shards", i.train_shards.size() + i.test_shards.size()},
          {"usable", i.unusable.empty()},
          {"unusable", i.unusable}};
}

void print(const data_set_info& i) {
  std::printf(
      "%s/%s: %lld training and %lld test samples of %lld %s, %lld classes, %.1f MB in "
      "%zu shards\n",
      i.owner.c_str(), i.name.c_str(), static_cast<long long>(i.train_samples),
      static_cast<long long>(i.test_samples), static_cast<long long>(i.sample_values),
      i.tokens ? "tokens" : "values", static_cast<long long>(i.classes),
      static_cast<double>(i.bytes) / 1e6, i.train_shards.size() + i.test_shards.size());
  if (!i.unusable.empty()) std::printf("  unusable: %s\n", i.unusable.c_str());
}

int run_push(const data_flags& f) {
  auto data = read_data_files(f.files);
  if (!data) return fail(data.error(), 2);
  // A shard holds one sample at least: more asked for were fewer stored, said nowhere, and a
  // job of that many workers was refused later.
  if (f.shards > data->train.size())
    return fail(
        error(errc::invalid_argument,
              "--shards " + std::to_string(f.shards) + ": the training split has " +
                  std::to_string(data->train.size()) + " samples, and a shard holds one at least"),
        2);
  std::optional<client> c;
  if (int code = connect_core(f.link, c); code != 0) return code;
  auto info = c->push_data(f.name, *data, f.shards);
  if (!info) return fail_answer(info.error());
  if (f.as_json)
    std::printf("%s\n", json_text(to_json(*info)).c_str());
  else
    print(*info);
  return 0;
}

int run_list(const data_flags& f) {
  std::optional<client> c;
  if (int code = connect_core(f.link, c); code != 0) return code;
  auto sets = c->data_sets();
  if (!sets) return fail_answer(sets.error());
  if (!f.name.empty()) {
    // The operator's key lists every account's sets: two accounts' sets of one name were
    // shown as the first of them, said nowhere.
    std::vector<data_set_info> named;
    for (auto& i : *sets)
      if (i.name == f.name && (f.owner.empty() || i.owner == f.owner)) named.push_back(i);
    if (named.empty())
      return fail(
          error(errc::invalid_argument, "no data set '" + f.name + "'" +
                                            (f.owner.empty() ? std::string() : " of " + f.owner)),
          2);
    if (named.size() > 1) {
      std::string owners;
      for (const auto& i : named) owners += (owners.empty() ? "" : ", ") + i.owner;
      return fail(error(errc::invalid_argument, "data sets '" + f.name + "' of several accounts (" +
                                                    owners + "): say which with --owner"),
                  2);
    }
    *sets = std::move(named);
  }
  if (f.as_json) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& i : *sets) j.push_back(to_json(i));
    std::printf("%s\n", json_text(f.name.empty() ? j : j[0]).c_str());
    return 0;
  }
  for (const auto& i : *sets) print(i);
  return 0;
}

int run_remove(const data_flags& f) {
  std::optional<client> c;
  if (int code = connect_core(f.link, c); code != 0) return code;
  if (auto r = c->remove_data(f.name); !r) return fail_answer(r.error());
  std::printf("removed %s\n", f.name.c_str());
  return 0;
}

}  // namespace

void add_data_commands(CLI::App& app, std::function<int()>& run) {
  auto f = std::make_shared<data_flags>();
  auto set = [&run, f](int (*fn)(const data_flags&)) {
    return [&run, f, fn] { run = [f, fn] { return fn(*f); }; };
  };
  auto* data = app.add_subcommand("data", "users' data sets on a core");
  data->require_subcommand(1);

  auto* push = data->add_subcommand("push", "upload a data set (checked here, then by the core)");
  push->add_option("name", f->name, "its name (what a job's [data] set says)")->required();
  push->add_option("path", f->files.path, "the features file (tokens: a text file of bytes)")
      ->required();
  push->add_option("--format", f->files.format, "idx, npy or tokens")->required();
  push->add_option("--labels", f->files.labels, "the labels file (idx and npy)");
  push->add_option("--classes", f->files.classes, "label count (default: the largest label + 1)")
      ->check(CLI::Range(int64_t{2}, int64_t{65536}));
  push->add_option("--test-fraction", f->files.test_fraction,
                   "the part held out as the test split: the last part (idx and npy), every "
                   "(1/F)-th sample (tokens: F is 1/k)")
      ->check(finite_range(0.001, 0.9))
      ->capture_default_str();
  push->add_option("--context", f->files.context,
                   "tokens: positions per sample (a model's input = [context])")
      ->check(CLI::Range(int64_t{1}, int64_t{65536}))
      ->capture_default_str();
  push->add_option("--shards", f->shards,
                   "training shards at least (a job's workers each need their own; default: "
                   "one per 3,000 samples, as the core cuts its own data sets)")
      ->check(CLI::Range(int64_t{1}, int64_t{4095}));
  push->add_flag("--json", f->as_json, "print what was stored as JSON");
  add_connection_flags(push, f->link);
  push->callback(set(run_push));

  auto* list = data->add_subcommand("list", "this account's data sets");
  list->add_flag("--json", f->as_json, "print JSON");
  add_connection_flags(list, f->link);
  list->callback(set(run_list));

  auto* show = data->add_subcommand("show", "one data set");
  show->add_option("name", f->name, "its name")->required();
  show->add_option("--owner", f->owner,
                   "the account that holds it (user/NAME or operator), where the operator's key "
                   "sees several of that name");
  show->add_flag("--json", f->as_json, "print JSON");
  add_connection_flags(show, f->link);
  show->callback(set(run_list));

  auto* rm = data->add_subcommand("rm", "remove a data set");
  rm->add_option("name", f->name, "its name")->required();
  add_connection_flags(rm, f->link);
  rm->callback(set(run_remove));
}

}  // namespace gflex::app
