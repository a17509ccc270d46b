// The data catalog serves chunks to the data server (an event-based actor on CAF's
// scheduler) while a job loads another data set: loading must not hold the lock chunk()
// takes.

#include <doctest/doctest.h>

#include <chrono>
#include <future>
#include <thread>

#include "data_catalog.hpp"
#include "gflex/kernels/model_builder.hpp"
#include "gflex/runtime/digest.hpp"
#include "two_class_rows.hpp"

using namespace gflex;

namespace {

std::unique_ptr<kernels::workload> workload_loading_for(std::chrono::milliseconds delay,
                                                        const std::string& name,
                                                        int64_t train_rows = 40) {
  kernels::model_builder m(name, {4});
  m.linear(2).softmax_xent();
  auto plan = m.plan();
  REQUIRE(plan.has_value());
  return kernels::make_graph_workload(
      name, std::move(*plan), m.toml(), [delay, train_rows]() -> expected<dataset_splits> {
        std::this_thread::sleep_for(delay);
        return dataset_splits{test::two_class_rows(train_rows), test::two_class_rows(10)};
      });
}

}  // namespace

TEST_SUITE("data catalog") {
  TEST_CASE("chunks are served while another data set loads") {
    data_catalog catalog(10);
    auto fast = workload_loading_for(std::chrono::milliseconds(0), "fast");
    auto first = catalog.get(*fast);
    REQUIRE(first.has_value());
    REQUIRE((*first)->shards.size() == 4);
    const std::string digest = (*first)->shards[0].digest;

    auto slow = workload_loading_for(std::chrono::milliseconds(1500), "slow");
    auto loading = std::async(std::launch::async, [&] { return catalog.get(*slow); });
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the load is under way
    const auto start = std::chrono::steady_clock::now();
    auto bytes = catalog.chunk(digest);
    const auto waited = std::chrono::steady_clock::now() - start;
    CHECK(bytes != nullptr);
    CHECK_MESSAGE(waited < std::chrono::milliseconds(300),
                  "chunk() waited "
                      << std::chrono::duration_cast<std::chrono::milliseconds>(waited).count()
                      << " ms for another data set's load");
    auto second = loading.get();
    REQUIRE(second.has_value());
    CHECK(catalog.chunk((*second)->shards[0].digest) != nullptr);
    // The second call finds it loaded.
    auto again = catalog.get(*slow);
    REQUIRE(again.has_value());
    CHECK(again->get() == second->get());
  }

  TEST_CASE("a job that needs more shards than the core's cut gets a finer cut of its own") {
    // A job submitted under a smaller --shard-samples than the core restarted with had more
    // workers than shards, and failed for good at its resume.
    data_catalog catalog(10);
    auto w = workload_loading_for(std::chrono::milliseconds(0), "fine", 40);
    auto usual = catalog.get(*w);
    REQUIRE(usual.has_value());
    CHECK((*usual)->shards.size() == 4);
    auto finer = catalog.get(*w, 7);
    REQUIRE(finer.has_value());
    CHECK((*finer)->shards.size() == 7);
    int64_t samples = 0;
    for (const auto& shard : (*finer)->shards) {
      samples += shard.samples;
      CHECK(catalog.chunk(shard.digest) != nullptr);  // served like any other
    }
    CHECK(samples == 40);
    CHECK((*catalog.get(*w))->shards.size() == 4);         // the usual cut is still the usual one
    CHECK((*catalog.get(*w, 2))->shards.size() == 4);      // never coarser than the core's
    CHECK((*catalog.get(*w, 1000))->shards.size() == 40);  // at most one sample a shard
  }

  TEST_CASE("shards cut on several threads are those cut one by one, in order, of even size") {
    // 103 samples in shards of 10 were ten of 10 and one of 3, whose samples were drawn three
    // times as often as the others' and weighed as much in each round: now 11 of 9 or 10.
    data_catalog catalog(10);
    auto w = workload_loading_for(std::chrono::milliseconds(0), "odd", 103);
    auto data = catalog.get(*w);
    REQUIRE(data.has_value());
    const auto train = test::two_class_rows(103);
    REQUIRE((*data)->shards.size() == 11);
    CHECK((*data)->train_samples == 103);
    for (int64_t i = 0; i < 11; ++i) {
      const auto& s = (*data)->shards[static_cast<size_t>(i)];
      const int64_t begin = i * 103 / 11, end = (i + 1) * 103 / 11;
      const auto expected = encode_shard(train, begin, end);
      CHECK(s.samples == end - begin);
      CHECK((s.samples == 9 || s.samples == 10));
      CHECK(s.digest == digest_hex(expected));
      CHECK(s.bytes == expected.size());
      auto bytes = catalog.chunk(s.digest);
      REQUIRE(bytes != nullptr);
      CHECK(*bytes == expected);
    }
  }

  TEST_CASE("a workload's data stay while a job holds them, and the two loaded last besides") {
    // Each model declaration (or workload name) loads its own data: a core kept every one it
    // ever loaded, its test split and shards, for good.
    data_catalog catalog(10);
    std::vector<std::weak_ptr<const served_data>> loaded;
    std::shared_ptr<const served_data> held;
    for (int k = 0; k < 4; ++k) {
      auto w =
          workload_loading_for(std::chrono::milliseconds(0), "w" + std::to_string(k), 40 + 10 * k);
      auto d = catalog.get(*w);
      REQUIRE(d.has_value());
      loaded.push_back(*d);
      if (k == 1) held = *d;  // a job training on it
    }
    CHECK(loaded[0].expired());        // neither held nor among the two loaded last: freed
    CHECK_FALSE(loaded[1].expired());  // held by its job
    CHECK(catalog.chunk(held->shards[0].digest) != nullptr);
    CHECK_FALSE(loaded[2].expired());
    CHECK_FALSE(loaded[3].expired());
    // Asked again while held: the same data, not a second load.
    auto again = catalog.get(*workload_loading_for(std::chrono::milliseconds(0), "w1", 50));
    REQUIRE(again.has_value());
    CHECK(again->get() == held.get());
  }
}
