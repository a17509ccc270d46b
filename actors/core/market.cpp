#include "market.hpp"

#include <chrono>
#include <cmath>
#include <map>
#include <set>

#include "core_metrics.hpp"
#include "gflex/runtime/job_spec.hpp"
#include "matcher.hpp"
#include "messages.hpp"
#include "reputation.hpp"

namespace gflex {

namespace {

using clock_type = std::chrono::steady_clock;

struct slot_entry {
  worker_slot slot;
  bool busy = false;
  caf::actor holder;  // the job that acquired it, while busy
  int failures = 0;   // assignments failed in a row
  clock_type::time_point cooldown_until{};
};

/// How long a slot whose assignments keep failing is left out: 0.5 s after the first
/// failure, doubling up to a minute, so that a broken worker cannot soak up a round's work.
clock_type::duration cooldown(int failures) {
  return std::chrono::milliseconds(500) * (1 << std::min(failures - 1, 7));
}

struct market_state {
  std::chrono::steady_clock::time_point mailbox_noted{};  // core_metrics::note_mailbox
  std::vector<slot_entry> slots;
  size_t cursor = 0;  // where the next acquire starts looking, for round-robin spreading
  std::set<caf::actor_addr> watched;      // jobs monitored
  std::set<std::string> barred;           // node names caught misbehaving: never offered again
  std::map<std::string, double> scores;   // reputation by node name, from the tracker
  std::map<std::string, int64_t> served;  // assignments given, by node name (its history)
  // Rates the core measured (samples per second, averaged), by workload and node name.
  std::map<std::string, std::map<std::string, double>> measured;
  double newcomer_share = 0.05;
  double newcomer_quota = 0.0;  // reserved slots owed to newcomers, fractions carried over
  static inline const char* name = "market";
};

caf::behavior market_actor(caf::stateful_actor<market_state>* self, double newcomer_share) {
  self->state.newcomer_share = newcomer_share;
  // A job that dies holding slots (its supervisor restarts it) must not keep them busy.
  // A worker that dies (its node supervisor offers a replacement) loses its slot.
  self->set_down_handler([=](const caf::down_msg& down) {
    auto& slots = self->state.slots;
    slots.erase(
        std::remove_if(slots.begin(), slots.end(),
                       [&](const slot_entry& e) { return e.slot.worker.address() == down.source; }),
        slots.end());
    for (auto& e : slots)
      if (e.holder && e.holder.address() == down.source) {
        e.busy = false;
        e.holder = nullptr;
      }
  });
  return {
      [=](offer_atom, const std::string& node_id, std::vector<worker_slot>& offered) {
        auto& slots = self->state.slots;
        for (auto& s : offered) {
          if (self->state.barred.count(s.node_name)) continue;
          s.node_id = node_id;
          self->monitor(s.worker);
          slots.push_back({std::move(s), false, nullptr});
        }
      },
      [=](withdraw_atom, const std::string& node_id) {
        auto& slots = self->state.slots;
        // A job waiting on a withdrawn node's worker (one that hangs with its socket open
        // is never `down`) must hear of it now, not at the assignment's deadline.
        for (const auto& e : slots)
          if (e.busy && e.holder && e.slot.node_id == node_id)
            self->send(e.holder, withdraw_atom::value, node_id);
        slots.erase(std::remove_if(slots.begin(), slots.end(),
                                   [&](const slot_entry& e) { return e.slot.node_id == node_id; }),
                    slots.end());
      },
      // The registry was restarted: every node joins again under a new id, so every slot
      // goes, and the jobs holding one hear of it.
      [=](withdraw_atom) {
        for (const auto& e : self->state.slots)
          if (e.busy && e.holder) self->send(e.holder, withdraw_atom::value, e.slot.node_id);
        self->state.slots.clear();
      },
      [=](bar_atom, const std::string& name) {
        auto& st = self->state;
        if (!st.barred.insert(name).second) return;
        // Its slots go now; a job waiting on one of them reassigns the work at once.
        for (const auto& e : st.slots)
          if (e.slot.node_name == name && e.busy && e.holder)
            self->send(e.holder, withdraw_atom::value, e.slot.node_id);
        st.slots.erase(
            std::remove_if(st.slots.begin(), st.slots.end(),
                           [&](const slot_entry& e) { return e.slot.node_name == name; }),
            st.slots.end());
      },
      [=](score_atom, const std::string& name, double score) { self->state.scores[name] = score; },
      // From a session (through the registry): a node answered an assignment of `workload`
      // at `rate` samples per second, as the core measured it.
      [=](rate_atom, const std::string& name, const std::string& workload, double rate) {
        if (!std::isfinite(rate) || rate <= 0.0 || rate > 1e12 || workload.size() > 128) return;
        auto& by_node = self->state.measured[workload];
        auto it = by_node.find(name);
        if (it == by_node.end())
          by_node.emplace(name, rate);
        else
          it->second = 0.7 * it->second + 0.3 * rate;
      },
      [=](acquire_atom, const std::string&, const std::string& workload, int64_t wanted,
          uint8_t policy, int64_t max_price, double min_reputation) -> acquire_reply {
        core_metrics::note_mailbox(self, "market");
        auto& st = self->state;
        const auto now = clock_type::now();
        // Throughputs by what the core measured for this workload, never a claim alone.
        std::map<std::string, size_t> node_index;
        std::vector<speed_evidence> speeds;
        const auto measured = st.measured.find(workload);
        for (const auto& e : st.slots) {
          if (!node_index.emplace(e.slot.node_name, speeds.size()).second) continue;
          speed_evidence ev{e.slot.throughput, std::nullopt};
          if (measured != st.measured.end())
            if (auto m = measured->second.find(e.slot.node_name); m != measured->second.end())
              ev.measured = m->second;
          speeds.push_back(ev);
        }
        const auto priced = priced_throughputs(speeds);
        std::vector<slot_offer> offers;
        offers.reserve(st.slots.size());
        for (const auto& e : st.slots) {
          auto score = st.scores.find(e.slot.node_name);
          auto served = st.served.find(e.slot.node_name);
          offers.push_back({e.slot.tier, e.slot.price, priced[node_index[e.slot.node_name]],
                            score == st.scores.end() ? 0.5 : score->second,
                            !e.busy && now >= e.cooldown_until,
                            served == st.served.end() ? 0 : served->second});
        }
        slot_bid bid{static_cast<trust_tier>(std::min<uint8_t>(policy, 2)), max_price,
                     min_reputation};
        if (bid.policy != trust_tier::core && wanted > 0) {
          st.newcomer_quota += st.newcomer_share * static_cast<double>(wanted);
          bid.reserve_new = static_cast<size_t>(std::floor(st.newcomer_quota));
        }
        auto m =
            match_slots(offers, bid, static_cast<size_t>(std::max<int64_t>(wanted, 0)), st.cursor);
        acquire_reply out;
        out.busy = m.busy;
        out.wrong_tier = m.wrong_tier;
        out.too_expensive = m.too_expensive;
        out.low_reputation = m.low_reputation;
        auto holder = caf::actor_cast<caf::actor>(self->current_sender());
        if (holder && st.watched.insert(holder.address()).second) self->monitor(holder);
        size_t to_newcomers = 0;
        for (size_t i : m.chosen) {
          auto& e = st.slots[i];
          if (offers[i].tier != static_cast<uint8_t>(node_tier::core) &&
              offers[i].served < bid.newcomer_served)
            ++to_newcomers;
          st.served[e.slot.node_name] += 1;
          e.busy = true;
          e.holder = holder;
          out.slots.push_back(e.slot);
        }
        // What newcomers got is paid off the quota; what none could take is not owed on (a
        // market without newcomers must not build up a debt to the next one that comes).
        st.newcomer_quota -= static_cast<double>(std::min(to_newcomers, bid.reserve_new));
        st.newcomer_quota = std::min(st.newcomer_quota, 1.0);
        // Slots of equal cost are taken from here on next time, to spread work.
        if (!st.slots.empty()) st.cursor = (st.cursor + m.chosen.size()) % st.slots.size();
        return out;
      },
      [=](release_atom, const caf::actor& worker) {
        for (auto& e : self->state.slots)
          if (e.slot.worker == worker) {
            e.busy = false;
            e.holder = nullptr;
            e.failures = 0;
          }
      },
      [=](release_atom, const caf::actor& worker, bool failed) {
        for (auto& e : self->state.slots)
          if (e.slot.worker == worker) {
            e.busy = false;
            e.holder = nullptr;
            if (failed) {
              e.failures += 1;
              e.cooldown_until = clock_type::now() + cooldown(e.failures);
            }
          }
      },
      [=](nodes_atom) -> caf::result<int64_t, int64_t> {
        int64_t free = 0;
        for (const auto& e : self->state.slots) free += e.busy ? 0 : 1;
        return caf::result<int64_t, int64_t>(static_cast<int64_t>(self->state.slots.size()), free);
      },
  };
}

}  // namespace

caf::actor spawn_market(caf::actor_system& sys, double newcomer_share) {
  return sys.spawn(market_actor, newcomer_share);
}

}  // namespace gflex
