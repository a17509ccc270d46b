#include "market.hpp"

#include <set>

#include "messages.hpp"

namespace gflex {

namespace {

struct slot_entry {
  worker_slot slot;
  bool busy = false;
  caf::actor holder;  // the job that acquired it, while busy
};

struct market_state {
  std::vector<slot_entry> slots;
  size_t cursor = 0;  // where the next acquire starts looking, for round-robin spreading
  std::set<caf::actor_addr> watched;  // jobs monitored
  static inline const char* name = "market";
};

caf::behavior market_actor(caf::stateful_actor<market_state>* self) {
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
      [=](acquire_atom, const std::string&, int64_t wanted) -> std::vector<worker_slot> {
        auto& st = self->state;
        std::vector<worker_slot> out;
        for (size_t i = 0; i < st.slots.size() && static_cast<int64_t>(out.size()) < wanted; ++i) {
          auto& e = st.slots[(st.cursor + i) % st.slots.size()];
          if (e.busy) continue;
          e.busy = true;
          e.holder = caf::actor_cast<caf::actor>(self->current_sender());
          if (e.holder && self->state.watched.insert(e.holder.address()).second)
            self->monitor(e.holder);
          out.push_back(e.slot);
        }
        if (!st.slots.empty()) st.cursor = (st.cursor + out.size()) % st.slots.size();
        return out;
      },
      [=](release_atom, const caf::actor& worker) {
        for (auto& e : self->state.slots)
          if (e.slot.worker == worker) {
            e.busy = false;
            e.holder = nullptr;
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

caf::actor spawn_market(caf::actor_system& sys) {
  return sys.spawn(market_actor);
}

}  // namespace gflex
