#include "market.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <iterator>
#include <map>
#include <set>
#include <unordered_map>

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
  uint32_t node = 0;  // its node's dense id (market_state::node_ids)
  // Freed while a job waited for a slot: held for that job a moment (market_state::waiting).
  caf::actor_addr reserved_for;
  clock_type::time_point reserved_until{};
  // While out on its node's claim alone (slot_bid::explore): the workload it went for.
  std::string explored_for;
};

/// A job whose last acquire got fewer slots than it wanted, with its bid: a slot another job
/// frees is held for it (`reservation`, longer than a job's 250 ms between asks) before it
/// goes to anyone else, up to the number it lacked (`short_by`). A job that has not asked
/// for `waiter_stale` waits no more.
struct waiter {
  caf::actor_addr job;
  slot_bid bid;
  clock_type::time_point asked{};
  int64_t short_by = 0;  // slots it lacked at its last ask, less those held for it since
};
constexpr auto reservation = std::chrono::milliseconds(500);
constexpr auto waiter_stale = std::chrono::seconds(2);
// The workloads a node's measured rates are kept for (by market_workload).
constexpr size_t max_measured_workloads = 64;
// Past this many workloads with an exploratory slot on record, those no longer out are dropped.
constexpr size_t max_explorations = 1024;

/// A slot given on its node's claim alone (slot_bid::explore) for a workload, while out: its
/// worker and the job that holds it.
struct exploration {
  caf::actor_addr worker;
  caf::actor_addr holder;
};

/// How long a slot whose assignments keep failing is left out: 0.5 s after the first
/// failure, doubling up to a minute, so that a broken worker cannot soak up a round's work.
clock_type::duration cooldown(int failures) {
  return std::chrono::milliseconds(500) * (1 << std::min(failures - 1, 7));
}

/// A node's rate on one workload, as the core measured it, and when it last did.
struct measurement {
  double rate = 0.0;  // samples/s, averaged over its answers
  clock_type::time_point at{};
};

// What the market knows of each node it has seen, by a dense id given at its first offer:
// an acquire reads it for every slot, and string-keyed maps made that the most of a
// dispatch's time at 10,000 nodes (docs/SCALING.md).
struct node_facts {
  double score = 0.5;                           // reputation, from the tracker (0.5 until it says)
  int64_t served = 0;                           // assignments given (its history)
  std::map<std::string, measurement> measured;  // by workload
  // Failed assignments of any of its slots in a row, and until when the node is left out:
  // a node chooses how many slots it brings (up to 1024 workers), and one that failed every
  // assignment at once went through them all, each cooling down on its own, while jobs
  // handed it their work.
  int failures = 0;
  clock_type::time_point cooldown_until{};
  // Workloads whose slot on its claim alone it failed (it ran out of memory, its work passed
  // the deadline, it broke), and when: it is not explored on them again for remeasure_after.
  // Its answer was all that would measure it, so it stayed on its claim, the cheapest, and
  // took every job's one exploratory slot for its workload: a node that says "out of memory"
  // to each kept every other new node from being measured, for good.
  std::map<std::string, clock_type::time_point> exploration_failed;
};

struct market_state {
  std::chrono::steady_clock::time_point mailbox_noted{};  // core_metrics::note_mailbox
  // A restarted market hands out no slot before then (spawn_market's `settle`).
  std::chrono::steady_clock::time_point settle_until{};
  std::vector<slot_entry> slots;
  std::map<caf::actor_addr, size_t> slot_of;  // a worker's index in `slots`
  size_t cursor = 0;  // where the next acquire starts looking, for round-robin spreading
  std::set<caf::actor_addr> watched;  // jobs monitored
  std::set<std::string> barred;       // node names caught misbehaving: never offered again
  std::unordered_map<std::string, uint32_t> node_ids;  // node name -> index in `nodes`
  std::vector<node_facts> nodes;
  double newcomer_share = 0.05;
  /// How long a node's measured rate on a workload counts without a new answer (spawn_market).
  clock_type::duration remeasure_after = std::chrono::minutes(10);
  double newcomer_quota = 0.0;  // reserved slots owed to newcomers, fractions carried over
  std::vector<waiter> waiting;  // oldest turn first
  /// Workers a job said it holds that no offer has named yet (this market was restarted, and
  /// the registry offers the slots again): busy, held by that job, once offered.
  std::map<caf::actor_addr, caf::actor> claimed;
  /// The exploratory slot out for each workload: one at a time, so that a node claiming 9e11
  /// on a workload that has not measured it gets one slot on its claim, not a round's; its
  /// answer measures it.
  std::unordered_map<std::string, exploration> exploring;
  static inline const char* name = "market";

  /// Whether the slot given as `x` is still out, held by the job it was given to.
  bool still_out(const exploration& x) const {
    auto it = slot_of.find(x.worker);
    if (it == slot_of.end()) return false;
    const auto& e = slots[it->second];
    return e.busy && e.holder && e.holder.address() == x.holder;
  }

  uint32_t node_id(const std::string& name) {
    auto [it, added] = node_ids.emplace(name, static_cast<uint32_t>(nodes.size()));
    if (added) nodes.emplace_back();
    return it->second;
  }

  // Drops the slots `gone` picks, each replaced by the last slot (the order of slots only
  // breaks ties between equal costs), so that the index stays right without being rebuilt:
  // rebuilding it for each of a thousand nodes lost at once stalled the market for seconds.
  template <class Pred>
  void erase_slots(Pred gone) {
    for (size_t i = 0; i < slots.size();) {
      if (!gone(slots[i])) {
        ++i;
        continue;
      }
      slot_of.erase(slots[i].slot.worker.address());
      if (i + 1 != slots.size()) {
        slots[i] = std::move(slots.back());
        slot_of[slots[i].slot.worker.address()] = i;
      }
      slots.pop_back();
    }
  }

  slot_entry* slot_at(const caf::actor& worker) {
    auto it = slot_of.find(worker.address());
    return it == slot_of.end() ? nullptr : &slots[it->second];
  }
  /// The slot as a bid sees it.
  slot_offer offer_of(const slot_entry& e, double throughput, bool available) const {
    const auto& facts = nodes[e.node];
    return {e.slot.tier, e.slot.price, throughput,    facts.score,
            available,   facts.served, e.slot.node_id};
  }

  /// A slot `holder` frees goes, for a moment, to the first other job waiting whose bid it
  /// fits; that job's turn then goes to the back.
  void hold_for_a_waiter(slot_entry& e, const caf::actor_addr& holder, clock_type::time_point now) {
    std::erase_if(waiting, [&](const waiter& w) { return now - w.asked > waiter_stale; });
    const auto offer = offer_of(e, 0.0, true);
    for (auto it = waiting.begin(); it != waiting.end(); ++it) {
      // Held for a job that waits for fewer: a job waiting for one slot had every slot a
      // job of 50 let go held for it, and the 49 it did not take idled for the reservation
      // at each round of the other.
      if (it->job == holder || it->short_by <= 0 || !fits_bid(offer, it->bid)) continue;
      e.reserved_for = it->job;
      e.reserved_until = now + reservation;
      --it->short_by;
      std::rotate(it, it + 1, waiting.end());
      return;
    }
  }

  /// The slots held for `job` go to anyone: it waits no more.
  void drop_reservations(const caf::actor_addr& job) {
    for (auto& e : slots)
      if (e.reserved_for == job) e.reserved_for = caf::actor_addr{};
  }

  /// A claim of the sender on `worker` (not offered yet) is let go.
  void drop_claim(caf::local_actor* self, const caf::actor& worker) {
    auto c = claimed.find(worker.address());
    const auto sender = self->current_sender();
    if (c != claimed.end() && sender && c->second.address() == sender->address()) claimed.erase(c);
  }

  /// The busy slot of `worker` if the current message's sender holds it, else null.
  slot_entry* held_by_sender(caf::local_actor* self, const caf::actor& worker) {
    auto* e = slot_at(worker);
    const auto sender = self->current_sender();
    if (e == nullptr || !e->busy || !e->holder || !sender ||
        e->holder.address() != sender->address())
      return nullptr;
    return e;
  }
};

/// Why a holder lets a slot go (release_atom): its node answered the work, the work failed
/// there (through the node's fault or through the job's), or neither (the work was cancelled:
/// a losing copy, a closed round, an ended job; an acquire's slot not needed).
enum class release_reason : uint8_t { no_word, answered, failed_not_at_fault, failed_at_fault };

// A slot its holder lets go (release_atom): free again, after a failure counted against its
// node (a cooldown for the slot and the node) only where the node is at fault. A failure the
// job's own settings caused says nothing of the node: counted, one user's job could keep every
// node it touched out of all jobs' reach for a minute at a time. Neither is it cleared then:
// the releasing job leaves the node out of its own acquires (job.cpp, leave_out). Only an
// answer ends a run of failures: work cancelled says nothing of the node, and cleared the run
// at each losing copy or closed round, so that a node failing every assignment it finished
// cooled down for half a second each time, never longer.
void release(caf::stateful_actor<market_state>* self, const caf::actor& worker,
             release_reason why) {
  auto& st = self->state;
  st.drop_claim(self, worker);
  auto* e = st.held_by_sender(self, worker);
  if (e == nullptr) return;
  e->busy = false;
  e->holder = nullptr;
  if (!e->explored_for.empty() && why != release_reason::answered &&
      why != release_reason::no_word) {
    auto& failed = st.nodes[e->node].exploration_failed;
    if (failed.size() >= max_measured_workloads && !failed.count(e->explored_for))
      failed.erase(std::min_element(failed.begin(), failed.end(), [](const auto& a, const auto& b) {
        return a.second < b.second;
      }));
    failed[e->explored_for] = clock_type::now();
  }
  e->explored_for.clear();
  if (why == release_reason::failed_at_fault) {
    e->failures += 1;
    e->cooldown_until = clock_type::now() + cooldown(e->failures);
    auto& node = st.nodes[e->node];
    node.failures += 1;
    node.cooldown_until = clock_type::now() + cooldown(node.failures);
    return;
  }
  if (why == release_reason::answered) {
    e->failures = 0;
    st.nodes[e->node].failures = 0;
  }
  st.hold_for_a_waiter(*e, self->current_sender()->address(), clock_type::now());
}

caf::behavior market_actor(caf::stateful_actor<market_state>* self, double newcomer_share,
                           std::chrono::milliseconds settle,
                           std::chrono::milliseconds remeasure_after) {
  self->state.settle_until = clock_type::now() + settle;
  self->state.newcomer_share = newcomer_share;
  self->state.remeasure_after = remeasure_after;
  // A job that dies holding slots (its supervisor restarts it) must not keep them busy.
  // A worker that dies (its node supervisor offers a replacement) loses its slot.
  self->set_down_handler([=](const caf::down_msg& down) {
    auto& st = self->state;
    if (st.slot_of.count(down.source))
      st.erase_slots([&](const slot_entry& e) { return e.slot.worker.address() == down.source; });
    for (auto& e : st.slots)
      if (e.holder && e.holder.address() == down.source) {
        e.busy = false;
        e.holder = nullptr;
      }
    std::erase_if(st.waiting, [&](const waiter& w) { return w.job == down.source; });
    st.drop_reservations(down.source);
    std::erase_if(st.claimed, [&](const auto& c) { return c.second.address() == down.source; });
    st.watched.erase(down.source);  // a job's address kept its memory for good
  });
  return {
      [=](offer_atom, const std::string& node_id, std::vector<worker_slot>& offered) {
        auto& slots = self->state.slots;
        for (auto& s : offered) {
          if (self->state.barred.count(s.node_name)) continue;
          s.node_id = node_id;
          self->monitor(s.worker);
          const uint32_t node = self->state.node_id(s.node_name);
          self->state.slot_of[s.worker.address()] = slots.size();
          slots.push_back({std::move(s), false, nullptr, 0, {}, node, {}, {}});
          if (auto c = self->state.claimed.find(slots.back().slot.worker.address());
              c != self->state.claimed.end()) {
            slots.back().busy = true;
            slots.back().holder = std::move(c->second);
            self->state.claimed.erase(c);
          }
        }
      },
      [=](withdraw_atom, const std::string& node_id) {
        auto& slots = self->state.slots;
        // A job waiting on a withdrawn node's worker (one that hangs with its socket open
        // is never `down`) must hear of it now, not at the assignment's deadline.
        for (const auto& e : slots)
          if (e.busy && e.holder && e.slot.node_id == node_id)
            self->send(e.holder, withdraw_atom::value, node_id);
        self->state.erase_slots([&](const slot_entry& e) { return e.slot.node_id == node_id; });
      },
      // The registry was restarted: every node joins again under a new id, so every slot
      // goes, and the jobs holding one hear of it.
      [=](withdraw_atom) {
        for (const auto& e : self->state.slots)
          if (e.busy && e.holder) self->send(e.holder, withdraw_atom::value, e.slot.node_id);
        self->state.slots.clear();
        self->state.slot_of.clear();
      },
      [=](bar_atom, const std::string& name) {
        auto& st = self->state;
        if (!st.barred.insert(name).second) return;
        // Its slots go now; a job waiting on one of them reassigns the work at once.
        for (const auto& e : st.slots)
          if (e.slot.node_name == name && e.busy && e.holder)
            self->send(e.holder, withdraw_atom::value, e.slot.node_id);
        st.erase_slots([&](const slot_entry& e) { return e.slot.node_name == name; });
      },
      [=](score_atom, const std::string& name, double score) {
        auto& st = self->state;
        st.nodes[st.node_id(name)].score = score;
      },
      // From a session (through the registry): a node answered an assignment of `workload`
      // at `rate` samples per second, as the core measured it.
      [=](rate_atom, const std::string& name, const std::string& workload, double rate) {
        if (!std::isfinite(rate) || rate <= 0.0 || rate > 1e12 || workload.size() > 128) return;
        auto& st = self->state;
        auto& measured = st.nodes[st.node_id(name)].measured;
        const auto now = clock_type::now();
        auto it = measured.find(workload);
        if (it == measured.end()) {
          // Every user's model is a workload of its own: a node that served many kept a rate
          // for each for good. One of the others makes room (a rate is measured again).
          if (measured.size() >= max_measured_workloads) {
            auto other = measured.begin();
            std::advance(other,
                         static_cast<long>(std::hash<std::string>{}(workload) % measured.size()));
            measured.erase(other);
          }
          measured.emplace(workload, measurement{rate, now});
        } else if (now - it->second.at >= st.remeasure_after) {
          // A rate that no longer counted (acquire) is not blended into the new one: the node
          // is measured afresh.
          it->second = {rate, now};
        } else {
          it->second = {0.7 * it->second.rate + 0.3 * rate, now};
        }
      },
      [=](acquire_atom, const std::string&, const std::string& workload, int64_t wanted,
          uint8_t policy, int64_t max_price, double min_reputation,
          std::vector<std::string>& avoided) -> acquire_reply {
        core_metrics::note_mailbox(self, "market");
        auto& st = self->state;
        const auto now = clock_type::now();
        if (now < st.settle_until) return acquire_reply{};  // the jobs' claims first
        // Throughputs by what the core measured for this workload, never a claim alone.
        std::vector<int32_t> node_index(st.nodes.size(), -1);  // node id -> index in speeds
        std::vector<speed_evidence> speeds;
        for (const auto& e : st.slots) {
          if (node_index[e.node] >= 0) continue;
          node_index[e.node] = static_cast<int32_t>(speeds.size());
          speed_evidence ev{e.slot.throughput, std::nullopt};
          // A rate not measured again within remeasure_after counts no more: the node is
          // priced as one not measured yet (its claim, at most the fastest measured node). Only
          // work measures a node, and a node priced out of the band of equal costs by one slow
          // answer (its owner used the machine) got none while the nodes in the band covered
          // demand, for good. The price of that bound: once a period per workload, a node
          // that is slow in truth gets work on its claim until its answers price it again.
          const auto& measured = st.nodes[e.node].measured;
          if (auto m = measured.find(workload);
              m != measured.end() && now - m->second.at < st.remeasure_after)
            ev.measured = m->second.rate;
          speeds.push_back(ev);
        }
        const auto priced = priced_throughputs(speeds);
        auto holder = caf::actor_cast<caf::actor>(self->current_sender());
        const auto asker = holder ? holder.address() : caf::actor_addr{};
        std::vector<slot_offer> offers;
        offers.reserve(st.slots.size());
        for (const auto& e : st.slots) {
          const bool held_for_another =
              e.reserved_for && e.reserved_for != asker && now < e.reserved_until;
          const auto& speed = speeds[node_index[e.node]];
          offers.push_back(st.offer_of(e, priced[node_index[e.node]],
                                       !e.busy && now >= e.cooldown_until &&
                                           now >= st.nodes[e.node].cooldown_until &&
                                           !held_for_another));
          // Not explored again on a workload whose exploratory slot it failed, for a while.
          const auto& failed = st.nodes[e.node].exploration_failed;
          const auto f = failed.find(workload);
          const bool failed_lately = f != failed.end() && now - f->second < st.remeasure_after;
          if (!speed.measured && !failed_lately) offers.back().claimed = speed.claimed;
        }
        slot_bid bid;
        bid.policy = static_cast<trust_tier>(std::min<uint8_t>(policy, 2));
        bid.max_price = max_price;
        bid.min_reputation = min_reputation;
        bid.avoided = std::move(avoided);
        // One exploratory slot per workload at a time: the node's answer measures it.
        auto x = st.exploring.find(workload);
        if (x != st.exploring.end() && !st.still_out(x->second)) {
          st.exploring.erase(x);
          x = st.exploring.end();
        }
        bid.explore = asker && x == st.exploring.end() ? 1 : 0;
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
        out.avoided = m.avoided;
        if (holder && st.watched.insert(holder.address()).second) self->monitor(holder);
        if (m.explored > 0) {
          if (st.exploring.size() >= max_explorations)
            std::erase_if(st.exploring,
                          [&](const auto& other) { return !st.still_out(other.second); });
          st.exploring[workload] = {st.slots[m.chosen.front()].slot.worker.address(), asker};
        }
        size_t to_newcomers = 0;
        for (size_t i : m.chosen) {
          auto& e = st.slots[i];
          if (offers[i].tier != static_cast<uint8_t>(node_tier::core) &&
              offers[i].served < bid.newcomer_served)
            ++to_newcomers;
          st.nodes[e.node].served += 1;
          e.busy = true;
          e.holder = holder;
          e.reserved_for = caf::actor_addr{};
          e.explored_for.clear();
          out.slots.push_back(e.slot);
        }
        if (m.explored > 0) st.slots[m.chosen.front()].explored_for = workload;
        // A job that got fewer than it wanted waits (keeping its turn); one served leaves.
        auto me = std::find_if(st.waiting.begin(), st.waiting.end(),
                               [&](const waiter& w) { return w.job == asker; });
        if (asker && m.chosen.size() < static_cast<size_t>(std::max<int64_t>(wanted, 0))) {
          if (me == st.waiting.end()) me = st.waiting.insert(st.waiting.end(), {asker, bid, now});
          me->bid = bid;
          me->asked = now;
          me->short_by = wanted - static_cast<int64_t>(m.chosen.size());
        } else if (me != st.waiting.end()) {
          st.waiting.erase(me);
          st.drop_reservations(asker);
        }
        // What newcomers got is paid off the quota; what none could take is not owed on (a
        // market without newcomers must not build up a debt to the next one that comes).
        st.newcomer_quota -= static_cast<double>(std::min(to_newcomers, bid.reserve_new));
        st.newcomer_quota = std::min(st.newcomer_quota, 1.0);
        // Slots of equal cost are taken from here on next time, to spread work.
        if (!st.slots.empty()) st.cursor = (st.cursor + m.chosen.size()) % st.slots.size();
        return out;
      },
      // From a job (or the verifier) told that this market replaced another: the workers it
      // holds assignments on, which the registry offers again as free.
      [=](acquire_atom, const std::vector<caf::actor>& held) {
        auto& st = self->state;
        auto holder = caf::actor_cast<caf::actor>(self->current_sender());
        if (!holder) return;
        if (st.watched.insert(holder.address()).second) self->monitor(holder);
        for (const auto& w : held) {
          if (!w) continue;
          if (auto* e = st.slot_at(w)) {
            if (!e->busy) {
              e->busy = true;
              e->holder = holder;
            }
          } else {
            st.claimed[w.address()] = holder;
          }
        }
      },
      // A job whose acquire timed out: the slots that acquire gave it are not among `kept`.
      [=](release_atom, const std::vector<caf::actor>& kept) {
        auto& st = self->state;
        const auto sender = self->current_sender();
        if (!sender) return;
        for (auto& e : st.slots) {
          if (!e.busy || !e.holder || e.holder.address() != sender->address()) continue;
          if (std::find(kept.begin(), kept.end(), e.slot.worker) != kept.end()) continue;
          e.busy = false;
          e.holder = nullptr;
          st.hold_for_a_waiter(e, sender->address(), clock_type::now());
        }
      },
      // Only its holder frees a slot: after a restart of this actor the registry offers every
      // slot again as free, and a job's release of work it handed out before would free a
      // slot another job has acquired since.
      // The work was cancelled, or never sent: nothing is said of the node.
      [=](release_atom, const caf::actor& worker) {
        release(self, worker, release_reason::no_word);
      },
      // Its node answered (`failed` false), or failed it through its own fault.
      [=](release_atom, const caf::actor& worker, bool failed) {
        release(self, worker, failed ? release_reason::failed_at_fault : release_reason::answered);
      },
      [=](release_atom, const caf::actor& worker, bool failed, bool node_at_fault) {
        release(self, worker,
                !failed         ? release_reason::answered
                : node_at_fault ? release_reason::failed_at_fault
                                : release_reason::failed_not_at_fault);
      },
      [=](nodes_atom) -> caf::result<int64_t, int64_t> {
        int64_t free = 0;
        for (const auto& e : self->state.slots) free += e.busy ? 0 : 1;
        return caf::result<int64_t, int64_t>(static_cast<int64_t>(self->state.slots.size()), free);
      },
  };
}

}  // namespace

caf::actor spawn_market(caf::actor_system& sys, double newcomer_share,
                        std::chrono::milliseconds settle,
                        std::chrono::milliseconds remeasure_after) {
  return sys.spawn(market_actor, newcomer_share, settle, remeasure_after);
}

}  // namespace gflex
