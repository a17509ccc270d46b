#include "reputation_tracker.hpp"

#include <sodium.h>
#include <spdlog/spdlog.h>

#include <map>
#include <set>

#include "gflex/runtime/rng.hpp"
#include "messages.hpp"

namespace gflex {

std::string reputation_key(const std::string& name) {
  return "node/" + name + "/reputation";
}

namespace {

struct tracker_state {
  reputation_policy policy;
  caf::actor store;
  caf::actor market;
  caf::actor gate;  // the gatekeeper: bans a caught node's key and tokens
  std::map<std::string, reputation> records;
  std::map<std::string, std::set<std::string>> names_of_key;  // by public key hex
  std::set<std::string> dirty;
  bool flush_scheduled = false;
  rng draw{0};
  static inline const char* name = "reputation_tracker";
};

using tracker_actor = caf::stateful_actor<tracker_state>;

reputation& record_of(tracker_actor* self, const std::string& name) {
  auto& r = self->state.records[name];
  if (r.name.empty()) r.name = name;
  return r;
}

// Records written per batch: each record stands alone, and etcd refuses a transaction of more
// than --max-txn-ops operations (128 by default). In one batch, 130 nodes changed together
// were never stored, the batch growing at each retry.
constexpr size_t records_per_batch = 100;

void store_records(tracker_actor* self, std::set<std::string> names);

void flush(tracker_actor* self) {
  auto& st = self->state;
  st.flush_scheduled = false;
  while (!st.dirty.empty()) {
    std::set<std::string> names;
    while (!st.dirty.empty() && names.size() < records_per_batch)
      names.insert(st.dirty.extract(st.dirty.begin()));
    store_records(self, std::move(names));
  }
}

void store_records(tracker_actor* self, std::set<std::string> names) {
  auto& st = self->state;
  store_batch batch;
  for (const auto& name : names) {
    self->send(st.market, score_atom::value, name, st.records[name].score());
    auto text = encode_reputation(st.records[name]);
    batch.keys.push_back(reputation_key(name));
    batch.values.emplace_back(text.begin(), text.end());
  }
  self->request(st.store, std::chrono::seconds(30), commit_atom::value, std::move(batch))
      .then([](caf::ok_atom) {},
            [=](caf::error& e) mutable {
              // Written again in a second: a flag lost here was lost for good (a flagged
              // node's record never changes again), and a restarted core gave it work.
              spdlog::error("reputation: cannot store records (trying again in 1 s): {}",
                            self->system().render(e));
              auto& st = self->state;
              st.dirty.merge(names);
              if (!st.flush_scheduled) {
                st.flush_scheduled = true;
                self->delayed_send(self, std::chrono::seconds(1), tick_atom::value);
              }
            });
}

void changed(tracker_actor* self, const std::string& name, bool now) {
  auto& st = self->state;
  st.dirty.insert(name);
  if (now) {
    flush(self);
  } else if (!st.flush_scheduled) {
    st.flush_scheduled = true;
    self->delayed_send(self, std::chrono::milliseconds(100), tick_atom::value);
  }
}

caf::behavior tracker(tracker_actor* self, caf::actor store, caf::actor market, caf::actor gate,
                      reputation_policy policy) {
  auto& st = self->state;
  st.store = std::move(store);
  st.gate = std::move(gate);
  st.market = std::move(market);
  st.policy = policy;
  uint64_t seed = 0;
  randombytes_buf(&seed, sizeof seed);
  st.draw = rng(seed);
  // Nothing is answered before the records are in: a barred node must not get work
  // because the core just restarted.
  self->request(st.store, std::chrono::seconds(60), scan_atom::value, std::string("node/"))
      .await(
          [=](std::vector<std::string>& keys, std::vector<std::vector<uint8_t>>& values) {
            auto& st = self->state;
            for (size_t i = 0; i < keys.size(); ++i) {
              if (!keys[i].ends_with("/reputation")) continue;
              auto r = decode_reputation(std::string_view(
                  reinterpret_cast<const char*>(values[i].data()), values[i].size()));
              if (!r) {
                spdlog::error("store: {}: {}", keys[i], r.error().message());
                continue;
              }
              if (r->flagged) {
                self->send(st.market, bar_atom::value, r->name);
                // Its key's ban again: the gatekeeper's write of it may have failed.
                if (!r->public_key.empty())
                  self->send(st.gate, bar_atom::value, r->public_key, r->name);
              }
              self->send(st.market, score_atom::value, r->name, r->score());
              if (!r->public_key.empty()) st.names_of_key[r->public_key].insert(r->name);
              st.records[r->name] = std::move(*r);
            }
            spdlog::debug("reputation: {} node record(s) loaded", st.records.size());
          },
          [=](caf::error& e) {
            spdlog::error("reputation: cannot read records: {}", self->system().render(e));
            self->quit(e);
          });
  return {
      [=](hello_atom, const std::string& name, uint8_t tier,
          const std::string& key) -> caf::result<caf::ok_atom> {
        auto& st = self->state;
        auto known = st.records.find(name);
        // A name belongs to the key it first joined with: nobody else may take it (and its
        // reputation and payouts).
        if (known != st.records.end() && !known->second.public_key.empty() &&
            known->second.public_key != key)
          return to_caf(
              error(errc::permission_denied,
                    "the name " + name +
                        " belongs to another node key; join under another name (gflex-node "
                        "--name; a node is named after its host unless told)"));
        if (auto& names = st.names_of_key[key];
            names.count(name) == 0 && names.size() >= max_names_per_key)
          return to_caf(error(errc::permission_denied,
                              "this node key has joined under " + std::to_string(names.size()) +
                                  " names already, the most one key may have"));
        auto& r = record_of(self, name);
        st.names_of_key[key].insert(name);
        auto t =
            tier == static_cast<uint8_t>(node_tier::core) ? node_tier::core : node_tier::community;
        if (r.tier != t || r.public_key != key) {
          r.tier = t;
          r.public_key = key;
          changed(self, name, true);
        }
        return caf::ok_atom::value;
      },
      [=](sample_atom, const std::string& name) -> bool {
        auto& st = self->state;
        double p = record_of(self, name).verify_probability(st.policy);
        return p >= 1.0 || (p > 0.0 && st.draw.uniform() < p);
      },
      [=](credit_atom, const std::string& name, uint8_t check, double compute_s, int64_t earned) {
        if (check > static_cast<uint8_t>(result_check::unverified)) return;
        record_of(self, name)
            .on_validated(self->state.policy, static_cast<result_check>(check), compute_s, earned);
        changed(self, name, false);
      },
      // Answers every other name of its key, flagged now or before: the job that caught the node
      // discards their work too, and has the other jobs do so (a caught key's other names
      // kept their unconfirmed results, and were paid for them). Answered at every telling, not
      // only the first: a job whose request timed out (this tracker busy reading its records)
      // tells it again, and that answer is the only one it gets; discarding is idempotent.
      [=](reject_atom, const std::string& name, std::string& reason) -> std::vector<std::string> {
        auto& st = self->state;
        std::vector<std::string> siblings;
        auto& r = record_of(self, name);
        bool first = !r.flagged;
        spdlog::warn("node {} {}: {}", name, first ? "flagged" : "rejected again", reason);
        r.on_rejected(st.policy, std::move(reason));
        if (first) {
          self->send(st.market, bar_atom::value, name);
          // Its key is banned and its tokens revoked: it cannot come back as someone else.
          if (!r.public_key.empty()) self->send(st.gate, bar_atom::value, r.public_key, name);
        }
        // Nor go on as the other names of its key, already joined.
        auto it = r.public_key.empty() ? st.names_of_key.end() : st.names_of_key.find(r.public_key);
        if (it != st.names_of_key.end()) {
          for (const auto& other : it->second) {
            if (other == name) continue;
            siblings.push_back(other);
            auto& sibling = record_of(self, other);
            if (sibling.flagged) continue;
            spdlog::warn("node {} flagged: its node key was caught as {}", other, name);
            sibling.on_rejected(st.policy, "its node key was caught as " + name);
            self->send(st.market, bar_atom::value, other);
            st.dirty.insert(other);
          }
        }
        changed(self, name, true);
        return siblings;
      },
      [=](tick_atom) { flush(self); },
      // What a node has been paid for validated results (0 for a name with no record).
      [=](earned_atom, const std::string& name) -> int64_t {
        auto it = self->state.records.find(name);
        return it == self->state.records.end() ? 0 : it->second.earned;
      },
      [=](nodes_atom) -> std::vector<node_status> {
        std::vector<node_status> out;
        for (const auto& [name, r] : self->state.records) out.push_back(status_of(name, r));
        return out;
      },
      [=](update_atom, const std::string& role, caf::actor& replacement) {
        auto& st = self->state;
        if (role == "store") st.store = std::move(replacement);
        if (role == "gate") {
          // A restarted gatekeeper knows the bans its store holds; those it could not write
          // were held only by the one that ended: every caught key is banned again (as at
          // start), or the caught node joined again under a new name.
          st.gate = std::move(replacement);
          for (const auto& [name, r] : st.records)
            if (r.flagged && !r.public_key.empty())
              self->send(st.gate, bar_atom::value, r.public_key, name);
        }
        if (role == "market") {
          st.market = std::move(replacement);
          for (const auto& [name, r] : st.records) {
            if (r.flagged) self->send(st.market, bar_atom::value, name);
            self->send(st.market, score_atom::value, name, r.score());
          }
        }
      },
  };
}

}  // namespace

caf::actor spawn_reputation_tracker(caf::actor_system& sys, caf::actor store, caf::actor market,
                                    caf::actor gate, reputation_policy policy) {
  return sys.spawn(tracker, std::move(store), std::move(market), std::move(gate), policy);
}

}  // namespace gflex
