#include "store.hpp"

#include "core_metrics.hpp"

#include "gflex/runtime/store.hpp"
#include "messages.hpp"

#include <optional>
#include <thread>

namespace gflex {

namespace {

struct store_state {
  std::chrono::steady_clock::time_point mailbox_noted{};  // core_metrics::note_mailbox
  std::shared_ptr<key_value_store> db;
  static inline const char* name = "store";
};

caf::behavior store_actor(caf::stateful_actor<store_state>* self,
                          std::shared_ptr<key_value_store> db,
                          std::chrono::milliseconds commit_delay) {
  self->state.db = std::move(db);
  // Set once here too, not only after a commit: a core restarted with nothing to commit
  // showed 0 until its first one, however large its store.
  core_metrics::store_bytes().set(static_cast<double>(self->state.db->used_bytes()));
  return {
      [=](commit_atom, store_batch& batch) -> caf::result<caf::ok_atom> {
        core_metrics::note_mailbox(self, "store");
        if (batch.keys.size() != batch.values.size())
          return to_caf(error(errc::invalid_argument, "store batch keys and values differ"));
        if (commit_delay.count() > 0) std::this_thread::sleep_for(commit_delay);  // test aid
        std::vector<store_write> writes;
        writes.reserve(batch.keys.size());
        // An empty value deletes its key (the callers' way to remove a data set, its
        // unnamed shards, an API key): written as an empty value instead, a removed set's
        // manifest came back at the next start as a damaged set, its shards were "deleted"
        // again at every start, and a removal's read-back never found it gone.
        for (size_t i = 0; i < batch.keys.size(); ++i) {
          std::optional<std::vector<uint8_t>> value;
          if (!batch.values[i].empty()) value = std::move(batch.values[i]);
          writes.push_back({std::move(batch.keys[i]), std::move(value)});
        }
        if (auto ok = self->state.db->commit(writes); !ok) return to_caf(ok.error());
        core_metrics::store_bytes().set(static_cast<double>(self->state.db->used_bytes()));
        return caf::ok_atom::value;
      },
      [=](read_atom, const std::string& key) -> caf::result<bool, std::vector<uint8_t>> {
        auto value = self->state.db->get(key);
        if (!value) return to_caf(value.error());
        if (!value->has_value()) return {false, std::vector<uint8_t>{}};
        return {true, std::move(**value)};
      },
      [=](scan_atom, const std::string& prefix)
          -> caf::result<std::vector<std::string>, std::vector<std::vector<uint8_t>>> {
        std::vector<std::string> keys;
        std::vector<std::vector<uint8_t>> values;
        auto ok = self->state.db->scan(prefix, [&](std::string_view k, std::span<const uint8_t> v) {
          keys.emplace_back(k);
          values.emplace_back(v.begin(), v.end());
          return true;
        });
        if (!ok) return to_caf(ok.error());
        return {std::move(keys), std::move(values)};
      },
      [=](keys_atom, const std::string& prefix) -> caf::result<std::vector<std::string>> {
        auto keys = self->state.db->keys(prefix);
        if (!keys) return to_caf(keys.error());
        return std::move(*keys);
      },
      [=](scan_atom, const std::string& prefix, const std::string& suffix)
          -> caf::result<std::vector<std::string>, std::vector<std::vector<uint8_t>>> {
        std::vector<std::string> keys;
        std::vector<std::vector<uint8_t>> values;
        auto ok = self->state.db->scan_ending(prefix, suffix,
                                              [&](std::string_view k, std::span<const uint8_t> v) {
                                                keys.emplace_back(k);
                                                values.emplace_back(v.begin(), v.end());
                                                return true;
                                              });
        if (!ok) return to_caf(ok.error());
        return {std::move(keys), std::move(values)};
      },
  };
}

}  // namespace

expected<caf::actor> spawn_store(caf::actor_system& sys, const std::filesystem::path& dir,
                                 std::chrono::milliseconds commit_delay) {
  auto db = store::open(dir);
  if (!db) return db.error();
  return spawn_store(sys, std::make_shared<store>(std::move(*db)), commit_delay);
}

caf::actor spawn_store(caf::actor_system& sys, std::shared_ptr<key_value_store> db,
                       std::chrono::milliseconds commit_delay) {
  return sys.spawn<caf::detached>(store_actor, std::move(db), commit_delay);
}

}  // namespace gflex
