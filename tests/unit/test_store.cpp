#include <doctest/doctest.h>

#include <caf/all.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "configured_system.hpp"
#include "core_metrics.hpp"
#include "gflex/runtime/metrics.hpp"
#include "gflex/runtime/store.hpp"
#include "messages.hpp"
#include "store.hpp"
#include "temp_dir.hpp"

using namespace gflex;

namespace {
std::vector<uint8_t> bytes(const std::string& s) {
  return {s.begin(), s.end()};
}
}  // namespace

TEST_SUITE("store") {
  TEST_CASE("put, get, batch commit and prefix scan on a real LMDB file") {
    test::temp_dir dir;
    {
      auto s = store::open(dir.path());
      REQUIRE(s.has_value());
      REQUIRE(s->put("job/1", bytes("a")).has_value());
      std::vector<store_write> batch = {{"job/2", bytes("b")},
                                        {"job/3", bytes("c")},
                                        {"round/1", bytes("r")},
                                        {"job/1", std::nullopt}};
      REQUIRE(s->commit(batch).has_value());
      auto missing = s->get("job/1");
      REQUIRE(missing.has_value());
      CHECK_FALSE(missing->has_value());
    }
    // Reopen: what was committed is there.
    auto s = store::open(dir.path());
    REQUIRE(s.has_value());
    auto v = s->get("job/3");
    REQUIRE(v.has_value());
    REQUIRE(v->has_value());
    CHECK(**v == bytes("c"));
    std::vector<std::string> keys;
    REQUIRE(s->scan("job/", [&](std::string_view k, std::span<const uint8_t>) {
               keys.emplace_back(k);
               return true;
             }).has_value());
    CHECK(keys == std::vector<std::string>{"job/2", "job/3"});
    keys.clear();
    REQUIRE(s->scan_ending("job/", "3", [&](std::string_view k, std::span<const uint8_t>) {
               keys.emplace_back(k);
               return true;
             }).has_value());
    CHECK(keys == std::vector<std::string>{"job/3"});
  }

  TEST_CASE("a failed batch changes nothing") {
    test::temp_dir dir;
    auto s = store::open(dir.path());
    REQUIRE(s.has_value());
    REQUIRE(s->put("k", bytes("old")).has_value());
    // LMDB refuses empty keys: the whole batch, including the valid write, must roll back.
    std::vector<store_write> batch = {{"k", bytes("new")}, {"", bytes("x")}};
    auto r = s->commit(batch);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code() == errc::store_error);
    CHECK(**s->get("k") == bytes("old"));
  }

  TEST_CASE(
      "large values live in checked files beside LMDB, replaced and removed with their keys") {
    test::temp_dir dir;
    auto blobs = [&] {
      size_t n = 0;
      for (const auto& e : std::filesystem::directory_iterator(dir.path() / "blobs"))
        n += e.is_regular_file() ? 1 : 0;
      return n;
    };
    std::vector<uint8_t> big(size_t{20} << 20);
    for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint8_t>(i * 7 + (i >> 12));
    {
      auto s = store::open(dir.path());
      REQUIRE(s.has_value());
      std::vector<store_write> batch = {{"job/1/checkpoint", big}, {"job/1/record", bytes("r")}};
      REQUIRE(s->commit(batch).has_value());
      CHECK(blobs() == 1);
      // LMDB holds only the reference; the store's size counts the file all the same.
      CHECK(std::filesystem::file_size(dir.path() / "data.mdb") < size_t{1} << 20);
      CHECK(s->used_bytes() >= static_cast<int64_t>(big.size()));
      CHECK(s->used_bytes() < static_cast<int64_t>(big.size()) + (int64_t{1} << 20));
    }
    auto s = store::open(dir.path());  // reopened: the reference still finds its file
    REQUIRE(s.has_value());
    CHECK(**s->get("job/1/checkpoint") == big);
    size_t scanned = 0;
    REQUIRE(s->scan("job/1/", [&](std::string_view k, std::span<const uint8_t> v) {
      if (k == "job/1/checkpoint") CHECK(std::equal(v.begin(), v.end(), big.begin(), big.end()));
      return ++scanned > 0;
    }));
    CHECK(scanned == 2);
    // A new value replaces the file; a failed batch leaves the old one in place.
    big[5] ^= 1;
    std::vector<store_write> failed = {{"job/1/checkpoint", big}, {"", bytes("x")}};
    REQUIRE_FALSE(s->commit(failed).has_value());
    CHECK(blobs() == 1);
    REQUIRE(s->put("job/1/checkpoint", big).has_value());
    CHECK(blobs() == 1);
    CHECK(**s->get("job/1/checkpoint") == big);
    // A damaged file is an error, never wrong bytes.
    for (const auto& e : std::filesystem::directory_iterator(dir.path() / "blobs")) {
      std::fstream f(e.path(), std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(1000);
      f.put('\x55');
    }
    auto damaged = s->get("job/1/checkpoint");
    REQUIRE_FALSE(damaged.has_value());
    CHECK(damaged.error().message().find("damaged") != std::string::npos);
    // A scan of the records beside it reads no checkpoint's file (a core resuming its jobs
    // reads none of the ended ones' checkpoints); a scan of all reads it, and fails.
    std::vector<std::string> records;
    REQUIRE(s->scan_ending("job/", "/record", [&](std::string_view k, std::span<const uint8_t>) {
      records.emplace_back(k);
      return true;
    }));
    CHECK(records == std::vector<std::string>{"job/1/record"});
    CHECK_FALSE(s->scan("job/", [](std::string_view, std::span<const uint8_t>) { return true; }));
    // Its keys are listed all the same, no value read.
    CHECK(*s->keys("job/") == std::vector<std::string>{"job/1/checkpoint", "job/1/record"});
    // The same value stored again repairs it (a data set pushed again): the damaged file of
    // that name was kept, and every later read failed.
    REQUIRE(s->put("job/1/checkpoint", big).has_value());
    CHECK(blobs() == 1);
    auto repaired = s->get("job/1/checkpoint");
    REQUIRE_MESSAGE(repaired.has_value(), repaired.error().message());
    CHECK(**repaired == big);
    // Erasing the key removes the file.
    std::vector<store_write> erase = {{"job/1/checkpoint", std::nullopt}};
    REQUIRE(s->commit(erase).has_value());
    CHECK(blobs() == 0);
  }

  TEST_CASE("files no key names (left by a crash) go when the store opens; named ones stay") {
    test::temp_dir dir;
    std::vector<uint8_t> big(size_t{17} << 20, 0x42);
    {
      auto s = store::open(dir.path());
      REQUIRE(s.has_value());
      REQUIRE(s->put("job/1/checkpoint", big).has_value());
    }
    const auto blobs = dir.path() / "blobs";
    std::ofstream(blobs / "0000-left-by-a-crash") << "x";
    std::ofstream(blobs / "half-written.tmp") << "y";
    auto s = store::open(dir.path());
    REQUIRE(s.has_value());
    size_t files = 0;
    for (const auto& e : std::filesystem::directory_iterator(blobs)) {
      CHECK(e.path().filename().string().size() == 81);  // the named blob
      files += 1;
    }
    CHECK(files == 1);
    CHECK(**s->get("job/1/checkpoint") == big);
  }

  TEST_CASE("a truncated data.mdb is refused, naming its size and the size its pages need") {
    test::temp_dir dir;
    {
      auto s = store::open(dir.path());
      REQUIRE(s.has_value());
      // Enough records for a tree of many pages, whose root lies far into the file.
      for (int i = 0; i < 2000; ++i)
        REQUIRE(s->put("job/" + std::to_string(i), std::vector<uint8_t>(200, 7)).has_value());
    }
    const auto file = dir.path() / "data.mdb";
    const auto full = std::filesystem::file_size(file);
    REQUIRE(full > 3 * 4096);
    std::filesystem::resize_file(file, 3 * 4096);
    // LMDB alone maps it and faults (SIGBUS) at the first read past the end.
    auto s = store::open(dir.path());
    REQUIRE_FALSE(s.has_value());
    CHECK(s.error().code() == errc::store_error);
    const auto& why = s.error().message();
    CHECK_MESSAGE(why.find(file.string() + " is truncated") != std::string::npos, why);
    CHECK_MESSAGE(why.find("holds 12288 bytes") != std::string::npos, why);
    CHECK_MESSAGE(why.find("need " + std::to_string(full)) != std::string::npos, why);
    CHECK(std::filesystem::file_size(file) == 3 * 4096);  // left as it was
  }

  TEST_CASE("an emptied or missing data.mdb where a store was is refused, not started empty") {
    test::temp_dir dir;
    {
      auto s = store::open(dir.path());
      REQUIRE(s.has_value());
      REQUIRE(s->put("ledger/1", bytes("credits")).has_value());
    }
    const auto file = dir.path() / "data.mdb";
    std::filesystem::resize_file(file, 0);
    auto emptied = store::open(dir.path());
    REQUIRE_FALSE(emptied.has_value());
    CHECK(emptied.error().code() == errc::store_error);
    CHECK_MESSAGE(emptied.error().message().find(file.string() + " is empty") != std::string::npos,
                  emptied.error().message());
    CHECK(emptied.error().message().find("lock.mdb") != std::string::npos);
    CHECK(std::filesystem::file_size(file) == 0);  // not made a new store
    // Missing, with only a large value's file beside it.
    std::filesystem::remove(file);
    std::filesystem::remove(dir.path() / "lock.mdb");
    std::ofstream(dir.path() / "blobs" / "a-blob") << "x";
    auto missing = store::open(dir.path());
    REQUIRE_FALSE(missing.has_value());
    CHECK_MESSAGE(
        missing.error().message().find(file.string() + " is missing") != std::string::npos,
        missing.error().message());
    CHECK(missing.error().message().find("blobs/") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(file));
    // Moved out as the message says, the store starts empty.
    std::filesystem::remove_all(dir.path() / "blobs");
    auto fresh = store::open(dir.path());
    REQUIRE(fresh.has_value());
    CHECK(fresh->keys("")->empty());
  }

  TEST_CASE("the store's size is shown from the start, large values' files included") {
    // gflex_core_store_bytes was set only after a commit: a core restarted with nothing to
    // commit showed 0, and it counted LMDB's pages only, not the checkpoints under blobs/.
    test::temp_dir dir;
    const std::vector<uint8_t> big(size_t{17} << 20, 0x42);
    {
      auto s = store::open(dir.path());
      REQUIRE(s.has_value());
      REQUIRE(s->put("job/1/checkpoint", big).has_value());
    }
    core_metrics::store_bytes().set(0);
    test::configured_system actors;
    auto actor = spawn_store(actors.sys, dir.path());
    REQUIRE(actor.has_value());
    // Set on the actor's own thread as it starts: waited for, no message sent.
    for (int i = 0; i < 100 && core_metrics::store_bytes().value() == 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    const double shown = core_metrics::store_bytes().value();
    CHECK(shown >= static_cast<double>(big.size()));
    CHECK(shown < static_cast<double>(big.size() + (size_t{1} << 20)));
    CHECK(metrics::render().find("gflex_core_store_bytes ") != std::string::npos);
    actors.self->send_exit(*actor, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("the store actor deletes a key given an empty value") {
    // The core removes data sets, their unnamed shards and API keys so; LMDB kept an empty
    // value, which a scan then returned (a removed set came back as a damaged one).
    test::temp_dir dir;
    test::configured_system actors;
    auto actor = spawn_store(actors.sys, dir.path());
    REQUIRE(actor.has_value());
    auto commit = [&](store_batch batch) {
      bool ok = false;
      actors.self->request(*actor, std::chrono::seconds(10), commit_atom::value, std::move(batch))
          .receive([&](caf::ok_atom) { ok = true; }, [&](caf::error& e) { FAIL(to_string(e)); });
      return ok;
    };
    auto scan = [&] {
      std::vector<std::string> keys;
      actors.self->request(*actor, std::chrono::seconds(10), scan_atom::value, std::string("set/"))
          .receive([&](std::vector<std::string>& k,
                       std::vector<std::vector<uint8_t>>&) { keys = std::move(k); },
                   [&](caf::error& e) { FAIL(to_string(e)); });
      return keys;
    };
    REQUIRE(commit({{"set/a", "set/b"}, {bytes("manifest a"), bytes("manifest b")}}));
    CHECK(scan() == std::vector<std::string>{"set/a", "set/b"});
    REQUIRE(commit({{"set/a"}, {std::vector<uint8_t>{}}}));
    CHECK(scan() == std::vector<std::string>{"set/b"});
    bool found = true;
    actors.self->request(*actor, std::chrono::seconds(10), read_atom::value, std::string("set/a"))
        .receive([&](bool f, std::vector<uint8_t>&) { found = f; },
                 [&](caf::error& e) { FAIL(to_string(e)); });
    CHECK_FALSE(found);
    // Deleting what is not there is no error.
    CHECK(commit({{"set/none"}, {std::vector<uint8_t>{}}}));
    actors.self->send_exit(*actor, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("an unusable directory is a clear error") {
    auto s = store::open("/proc/gflex-cannot-exist");
    REQUIRE_FALSE(s.has_value());
    CHECK(s.error().message().find("/proc/gflex-cannot-exist") != std::string::npos);
  }
}
