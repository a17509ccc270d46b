// The actors behind <gflex/pipeline.hpp>: one per stage instance, and a coordinator that
// spawns, wires and supervises them.
//
// Flow control and recovery share one mechanism. A producer keeps every item it sent to a
// consumer instance until that instance acknowledges it, and may keep at most the consumer's
// window of them: the acknowledgement is the credit. A consumer acknowledges an input only
// once the outputs it produced from it have been sent on (a batch's inputs when the batch is
// sent, a shuffled item when it leaves the buffer), in the same message handler. So when a
// stage instance dies, everything it had not finished is still held by its producers, which
// send it again to the replacement, and nothing it finished is repeated: its outputs are
// already with its consumers. A source's state is its position, which it reports to the
// coordinator after every item sent; a train stage's is its job and the last round emitted.

#include <caf/all.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "gflex/pipeline.hpp"
#include "pipeline_train.hpp"

namespace gflex::pipeline::detail {
namespace {

struct input_ref {
  int producer = 0;  ///< The producer's instance.
  uint64_t epoch = 0;
  uint64_t seq = 0;
  /// The actor that sent it, set on receipt: acknowledgements go to the very instance that
  /// holds the item (a replacement holds none of its predecessor's).
  caf::actor sender;
};

struct pipe_item {
  input_ref from;
  item value;
};

struct pipe_ack {
  int consumer = 0;    ///< The consumer's instance.
  uint64_t epoch = 0;  ///< The producer epoch the item was sent under.
  uint64_t seq = 0;
};

struct pipe_end {
  int producer = 0;
};

/// What a stage instance talks to; from the coordinator.
struct pipe_wiring {
  std::vector<bool> producers_finished;  ///< One per producer instance.
  std::vector<caf::actor> consumers;
  int64_t consumer_window = 0;
  /// A replacement waits for these consumer instances to adopt what its predecessor left
  /// with them (or to finish) before it may stop.
  std::vector<int> awaiting_adoption;
};

struct pipe_replace {
  int instance = 0;
  caf::actor actor;
};

/// consumer -> a restarted producer: items its predecessor sent that the consumer has not
/// finished, which the replacement now keeps (under these keys) until they are finished.
struct pipe_adoption {
  int consumer = 0;
  std::vector<std::pair<uint64_t, item>> items;
};

struct pipe_checkpoint {
  int stage = 0;
  int instance = 0;
  std::string position;
};

}  // namespace
}  // namespace gflex::pipeline::detail

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(gflex::pipeline::detail::pipe_item)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(gflex::pipeline::detail::pipe_ack)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(gflex::pipeline::detail::pipe_end)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(gflex::pipeline::detail::pipe_wiring)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(gflex::pipeline::detail::pipe_replace)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(gflex::pipeline::detail::pipe_checkpoint)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(gflex::pipeline::detail::pipe_adoption)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(gflex::pipeline::run_report)

namespace gflex::pipeline::detail {
namespace {

using pitem_atom = caf::atom_constant<caf::atom("pitem")>;
using pack_atom = caf::atom_constant<caf::atom("pack")>;
using pend_atom = caf::atom_constant<caf::atom("pend")>;
using pwire_atom = caf::atom_constant<caf::atom("pwire")>;
using pcons_atom = caf::atom_constant<caf::atom("pcons")>;  ///< a consumer was replaced
using pprod_atom = caf::atom_constant<caf::atom("pprod")>;  ///< a producer was replaced
using padopt_atom = caf::atom_constant<caf::atom("padopt")>;
using pdone_atom = caf::atom_constant<caf::atom("pdone")>;  ///< a consumer instance finished
using ppull_atom = caf::atom_constant<caf::atom("ppull")>;  ///< a source: generate more
using ptick_atom = caf::atom_constant<caf::atom("ptick")>;  ///< a train stage: poll the job
using pckpt_atom = caf::atom_constant<caf::atom("pckpt")>;
using pkill_atom = caf::atom_constant<caf::atom("pkill")>;
using prun_atom = caf::atom_constant<caf::atom("prun")>;
using pstop_atom = caf::atom_constant<caf::atom("pstop")>;

const char* kind_name(stage_kind k) {
  switch (k) {
    case stage_kind::source:
      return "source";
    case stage_kind::map:
      return "map";
    case stage_kind::filter:
      return "filter";
    case stage_kind::flat_map:
      return "flat_map";
    case stage_kind::batch:
      return "batch";
    case stage_kind::shuffle:
      return "shuffle";
    case stage_kind::sink:
      return "sink";
    case stage_kind::train:
      return "train";
  }
  return "stage";
}

/// The items a producer may have unfinished at one instance of `consumer`.
int64_t window_of(const stage_def& consumer) {
  const auto w = static_cast<int64_t>(consumer.options.window);
  switch (consumer.kind) {
    case stage_kind::batch:
      return std::max<int64_t>(w, static_cast<int64_t>(consumer.size));
    case stage_kind::shuffle:
      return std::max<int64_t>(w, static_cast<int64_t>(consumer.size) + 1);
    // A train stage holds its samples (up to max_samples, counted in rows) until they are
    // pushed, so that a restarted one gets them again.
    case stage_kind::train:
      return int64_t{1} << 40;
    default:
      return w;
  }
}

/// Counted across a stage's instances and restarts; read for the report.
struct stage_counters {
  std::atomic<int64_t> in{0};
  std::atomic<int64_t> out{0};
  std::atomic<int64_t> peak{0};
  std::mutex m;
  std::string last_error;
  void raise_peak(int64_t v) {
    int64_t p = peak.load(std::memory_order_relaxed);
    while (v > p && !peak.compare_exchange_weak(p, v, std::memory_order_relaxed)) {
    }
  }
};

struct stage_init {
  /// The stages' definitions, shared: an instance killed while the coordinator stops may
  /// still be finishing a message.
  std::shared_ptr<const std::vector<stage_def>> defs;
  const stage_def* def = nullptr;  ///< Its own, in `defs`.
  int stage = 0;
  int instance = 0;
  uint64_t epoch = 0;
  caf::actor coordinator;
  std::string checkpoint;  ///< Empty: start afresh.
  std::shared_ptr<stage_counters> counters;
};

struct out_slot {
  caf::actor actor;
  int64_t credit = 0;
  std::map<uint64_t, item> unfinished;  ///< Sent, not yet acknowledged, by sequence number.
};

struct stage_state {
  stage_init init;
  bool wired = false;
  // input side
  std::vector<bool> producer_ended;  ///< Per producer instance: its end arrived.
  bool inputs_ended = false;
  std::deque<pipe_item> inbox;  ///< Arrived, not processed yet (the outbox was full).
  std::vector<pipe_item> held;  ///< batch, shuffle, train: taken in, not finished.
  // output side
  std::vector<out_slot> slots;
  int64_t window = 0;
  size_t next_slot = 0;
  uint64_t next_seq = 0;
  bool end_sent = false;
  std::deque<item> outbox;                  ///< Produced, waiting for credit.
  std::vector<pipe_item> finished_on_sent;  ///< Inputs finished once the outbox is sent.
  std::set<int> awaiting_adoption;
  uint64_t next_adoption = 0;
  // the stage's own work
  transform fn;
  generator gen;
  int64_t position = 0;
  bool gen_done = false;
  bool pulling = false;
  std::mt19937_64 shuffle_rng;
  std::unique_ptr<train_driver> train;
  bool train_done = false;
  bool ticking = false;
};

using stage_actor = caf::stateful_actor<stage_state>;

void ack(stage_actor* self, const input_ref& ref) {
  if (ref.sender)
    self->send(ref.sender, pack_atom::value,
               pipe_ack{self->state.init.instance, ref.epoch, ref.seq});
}

void process_inbox(stage_actor* self);
void maybe_finish(stage_actor* self);

/// Sends what the outbox holds while some consumer instance has credit; once it is empty,
/// the inputs that produced it are finished.
void flush(stage_actor* self) {
  auto& st = self->state;
  if (st.slots.empty()) {  // nobody reads this stage (a train stage's updates): dropped
    st.init.counters->out += static_cast<int64_t>(st.outbox.size());
    st.outbox.clear();
  }
  while (!st.outbox.empty()) {
    out_slot* slot = nullptr;
    for (size_t k = 0; k < st.slots.size(); ++k) {
      auto& s = st.slots[(st.next_slot + k) % st.slots.size()];
      if (s.credit > 0) {
        slot = &s;
        st.next_slot = (st.next_slot + k + 1) % st.slots.size();
        break;
      }
    }
    if (slot == nullptr) return;
    const uint64_t seq = st.next_seq++;
    item value = std::move(st.outbox.front());
    st.outbox.pop_front();
    --slot->credit;
    slot->unfinished.emplace(seq, value);
    st.init.counters->raise_peak(static_cast<int64_t>(slot->unfinished.size()));
    ++st.init.counters->out;
    self->send(slot->actor, pitem_atom::value,
               pipe_item{input_ref{st.init.instance, st.init.epoch, seq}, std::move(value)});
  }
  for (const auto& in : st.finished_on_sent) ack(self, in.from);
  st.finished_on_sent.clear();
}

void emit(stage_actor* self, item value) {
  self->state.outbox.push_back(std::move(value));
}

void emit_batch(stage_actor* self) {
  auto& st = self->state;
  std::vector<item> inputs;
  inputs.reserve(st.held.size());
  for (auto& h : st.held) {
    inputs.push_back(h.value);
    st.finished_on_sent.push_back(std::move(h));
  }
  st.held.clear();
  emit(self, st.init.def->assemble_batch(inputs));
}

void emit_shuffled(stage_actor* self) {
  auto& st = self->state;
  const size_t k = static_cast<size_t>(st.shuffle_rng() % st.held.size());
  std::swap(st.held[k], st.held.back());
  emit(self, st.held.back().value);
  st.finished_on_sent.push_back(std::move(st.held.back()));
  st.held.pop_back();
}

void submit_train(stage_actor* self) {
  auto& st = self->state;
  st.train->submit();
  for (auto& h : st.held) ack(self, h.from);
  st.held.clear();
  self->send(st.init.coordinator, pckpt_atom::value,
             pipe_checkpoint{st.init.stage, st.init.instance, st.train->checkpoint()});
  if (!st.ticking) {
    st.ticking = true;
    self->send(self, ptick_atom::value);
  }
}

/// One input, by the stage's kind. Throws what the user's function throws.
void handle(stage_actor* self, pipe_item in) {
  auto& st = self->state;
  const auto& def = *st.init.def;
  switch (def.kind) {
    case stage_kind::batch:
      st.held.push_back(std::move(in));
      if (st.held.size() >= def.size) emit_batch(self);
      break;
    case stage_kind::shuffle:
      st.held.push_back(std::move(in));
      if (st.held.size() > def.size) emit_shuffled(self);
      break;
    case stage_kind::train:
      if (st.train->submitted() || st.train->full()) {
        st.train->absorb(get<sample_batch>(in.value));  // counted as dropped
        ack(self, in.from);
      } else {
        st.train->absorb(get<sample_batch>(in.value));
        st.held.push_back(std::move(in));
        if (st.train->full()) submit_train(self);
      }
      break;
    default: {
      std::vector<item> outs;
      st.fn(in.value, outs);
      for (auto& o : outs) emit(self, std::move(o));
      st.finished_on_sent.push_back(std::move(in));
      break;
    }
  }
  flush(self);
}

void on_inputs_ended(stage_actor* self) {
  auto& st = self->state;
  const auto& def = *st.init.def;
  if (def.kind == stage_kind::batch && !st.held.empty()) emit_batch(self);
  if (def.kind == stage_kind::shuffle)
    while (!st.held.empty()) emit_shuffled(self);
  if (def.kind == stage_kind::train && !st.train->submitted()) submit_train(self);
  flush(self);
}

void process_inbox(stage_actor* self) {
  auto& st = self->state;
  while (st.outbox.empty() && !st.inbox.empty()) {
    pipe_item in = std::move(st.inbox.front());
    st.inbox.pop_front();
    handle(self, std::move(in));
  }
  if (st.outbox.empty() && st.inbox.empty() && !st.inputs_ended && st.wired &&
      !st.producer_ended.empty() &&
      std::all_of(st.producer_ended.begin(), st.producer_ended.end(), [](bool b) { return b; })) {
    st.inputs_ended = true;
    on_inputs_ended(self);
  }
  maybe_finish(self);
}

/// Sends the end downstream once everything is sent, and stops once all of it is finished
/// (until then a consumer's replacement may need it again).
void maybe_finish(stage_actor* self) {
  auto& st = self->state;
  const bool is_source = st.init.def->kind == stage_kind::source;
  const bool is_train = st.init.def->kind == stage_kind::train;
  const bool done = is_source ? st.gen_done : (st.inputs_ended && st.inbox.empty());
  if (!st.wired || !done || !st.outbox.empty() || !st.held.empty() || !st.awaiting_adoption.empty())
    return;
  if (is_train && !st.train_done) return;
  if (!st.end_sent) {
    st.end_sent = true;
    for (auto& s : st.slots) self->send(s.actor, pend_atom::value, pipe_end{st.init.instance});
  }
  for (auto& s : st.slots)
    if (!s.unfinished.empty()) return;
  self->quit();
}

void pull(stage_actor* self) {
  auto& st = self->state;
  if (st.gen_done || st.pulling) return;
  const bool credit =
      std::any_of(st.slots.begin(), st.slots.end(), [](const out_slot& s) { return s.credit > 0; });
  if (!credit) return;
  st.pulling = true;
  self->send(self, ppull_atom::value);
}

/// Runs `f`; a throw stops this instance with the error (the coordinator restarts it).
template <class F>
void guarded(stage_actor* self, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    {
      std::lock_guard<std::mutex> lock(self->state.init.counters->m);
      self->state.init.counters->last_error = e.what();
    }
    self->quit(caf::make_error(caf::sec::runtime_error, std::string(e.what())));
  } catch (...) {
    {
      std::lock_guard<std::mutex> lock(self->state.init.counters->m);
      self->state.init.counters->last_error = "it threw something other than a std::exception";
    }
    self->quit(caf::make_error(caf::sec::runtime_error));
  }
}

caf::behavior stage_behavior(stage_actor* self, stage_init init) {
  auto& st = self->state;
  st.init = std::move(init);
  const auto& def = *st.init.def;
  st.shuffle_rng.seed(def.seed + st.init.epoch * 0x9E3779B97F4A7C15ull);
  guarded(self, [&] {
    if (def.make_transform) st.fn = def.make_transform();
    if (def.kind == stage_kind::source) {
      st.gen = def.make_generator();
      if (!st.init.checkpoint.empty()) st.position = std::stoll(st.init.checkpoint);
    }
    if (def.kind == stage_kind::train) {
      st.train = std::make_unique<train_driver>(def.train);
      if (!st.init.checkpoint.empty()) {
        st.train->resume(st.init.checkpoint);
        st.ticking = true;
        self->send(self, ptick_atom::value);
      }
    }
  });
  return {
      [=](pwire_atom, pipe_wiring& w) {
        auto& st = self->state;
        st.producer_ended = std::move(w.producers_finished);
        st.window = w.consumer_window;
        st.awaiting_adoption.insert(w.awaiting_adoption.begin(), w.awaiting_adoption.end());
        for (auto& a : w.consumers) st.slots.push_back(out_slot{std::move(a), st.window, {}});
        st.wired = true;
        guarded(self, [&] {
          if (st.init.def->kind == stage_kind::source)
            pull(self);
          else
            process_inbox(self);
        });
      },
      [=](pitem_atom, pipe_item& in) {
        auto& st = self->state;
        ++st.init.counters->in;
        in.from.sender = caf::actor_cast<caf::actor>(self->current_sender());
        st.inbox.push_back(std::move(in));
        guarded(self, [&] { process_inbox(self); });
      },
      [=](pack_atom, const pipe_ack& a) {
        auto& st = self->state;
        if (a.epoch != st.init.epoch || a.consumer < 0 ||
            static_cast<size_t>(a.consumer) >= st.slots.size())
          return;  // for an earlier instance of this stage
        auto& slot = st.slots[static_cast<size_t>(a.consumer)];
        if (slot.unfinished.erase(a.seq) == 0) return;
        ++slot.credit;
        guarded(self, [&] {
          flush(self);
          if (st.init.def->kind == stage_kind::source) {
            pull(self);
            maybe_finish(self);
          } else {
            process_inbox(self);
          }
        });
      },
      [=](pend_atom, const pipe_end& e) {
        auto& st = self->state;
        if (e.producer >= 0 && static_cast<size_t>(e.producer) < st.producer_ended.size())
          st.producer_ended[static_cast<size_t>(e.producer)] = true;
        guarded(self, [&] { process_inbox(self); });
      },
      [=](pcons_atom, pipe_replace& r) {
        // A consumer instance was restarted: it gets again all it had not finished, and the
        // end if it was sent.
        auto& st = self->state;
        if (r.instance < 0 || static_cast<size_t>(r.instance) >= st.slots.size()) return;
        auto& slot = st.slots[static_cast<size_t>(r.instance)];
        slot.actor = std::move(r.actor);
        slot.credit = st.window - static_cast<int64_t>(slot.unfinished.size());
        for (auto& [seq, value] : slot.unfinished)
          self->send(slot.actor, pitem_atom::value,
                     pipe_item{input_ref{st.init.instance, st.init.epoch, seq}, value});
        if (st.end_sent) self->send(slot.actor, pend_atom::value, pipe_end{st.init.instance});
        guarded(self, [&] {
          flush(self);
          if (st.init.def->kind == stage_kind::source) pull(self);
        });
      },
      [=](pprod_atom, pipe_replace& r, uint64_t epoch) {
        // A producer instance was replaced. What its predecessor sent and this stage has not
        // finished is kept by nobody now: the replacement adopts it, so that it can send it
        // again should this stage fail too. (Its predecessor's items all arrived before this
        // message: they were in the mailbox before the predecessor's death was known.)
        auto& st = self->state;
        std::vector<std::pair<uint64_t, item>> adopted;
        auto adopt = [&](pipe_item& it) {
          if (it.from.producer != r.instance || it.from.epoch >= epoch) return;
          const uint64_t key = (uint64_t{1} << 63) | st.next_adoption++;
          it.from = input_ref{r.instance, epoch, key, r.actor};
          adopted.emplace_back(key, it.value);
        };
        for (auto& x : st.inbox) adopt(x);
        for (auto& x : st.held) adopt(x);
        for (auto& x : st.finished_on_sent) adopt(x);
        self->send(r.actor, padopt_atom::value,
                   pipe_adoption{st.init.instance, std::move(adopted)});
      },
      [=](padopt_atom, pipe_adoption& a) {
        auto& st = self->state;
        if (a.consumer < 0 || static_cast<size_t>(a.consumer) >= st.slots.size()) return;
        auto& slot = st.slots[static_cast<size_t>(a.consumer)];
        for (auto& [key, value] : a.items) {
          slot.unfinished.emplace(key, std::move(value));
          --slot.credit;
        }
        st.awaiting_adoption.erase(a.consumer);
        guarded(self, [&] { maybe_finish(self); });
      },
      [=](pdone_atom, int consumer) {
        self->state.awaiting_adoption.erase(consumer);
        guarded(self, [&] { maybe_finish(self); });
      },
      [=](ppull_atom) {
        auto& st = self->state;
        st.pulling = false;
        guarded(self, [&] {
          if (st.gen_done) return;
          const bool credit = std::any_of(st.slots.begin(), st.slots.end(),
                                          [](const out_slot& s) { return s.credit > 0; });
          if (!credit) return;
          auto next = st.gen(st.position);
          if (!next) {
            st.gen_done = true;
            maybe_finish(self);
            return;
          }
          ++st.position;
          emit(self, std::move(*next));
          flush(self);
          self->send(st.init.coordinator, pckpt_atom::value,
                     pipe_checkpoint{st.init.stage, st.init.instance, std::to_string(st.position)});
          pull(self);
        });
      },
      [=](ptick_atom) {
        auto& st = self->state;
        guarded(self, [&] {
          if (st.train_done) return;
          if (st.outbox.empty()) {
            std::vector<round_update> updates;
            st.train_done = st.train->poll(updates);
            for (auto& u : updates) emit(self, make_item<round_update>(std::move(u)));
            if (!updates.empty())
              self->send(st.init.coordinator, pckpt_atom::value,
                         pipe_checkpoint{st.init.stage, st.init.instance, st.train->checkpoint()});
            flush(self);
          }
          if (st.train_done)
            maybe_finish(self);
          else
            self->delayed_send(self, st.init.def->train.poll, ptick_atom::value);
        });
      },
  };
}

// -- the coordinator ----------------------------------------------------------------------

struct instance_record {
  caf::actor actor;
  uint64_t epoch = 0;
  bool finished = false;
  std::string checkpoint;
};

struct coordinator_state {
  std::vector<stage_def> defs;
  std::shared_ptr<const std::vector<stage_def>> shared_defs;  ///< The same, for the instances.
  std::vector<int> consumer_of;  ///< The stage reading each stage's output, or -1.
  std::vector<std::vector<instance_record>> stages;
  std::vector<int> restarts;
  std::vector<std::shared_ptr<stage_counters>> counters;
  std::map<caf::actor_addr, std::pair<int, int>> by_address;
  int unfinished = 0;
  bool failed = false;
  std::string failure;
  bool ended = false;
  std::vector<caf::response_promise> waiting;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
};

using coordinator_actor = caf::stateful_actor<coordinator_state>;

caf::actor spawn_instance(coordinator_actor* self, int s, int i) {
  auto& st = self->state;
  auto& rec = st.stages[static_cast<size_t>(s)][static_cast<size_t>(i)];
  stage_init init;
  init.defs = st.shared_defs;
  init.def = &(*st.shared_defs)[static_cast<size_t>(s)];
  init.stage = s;
  init.instance = i;
  init.epoch = rec.epoch;
  init.coordinator = caf::actor_cast<caf::actor>(self);
  init.checkpoint = rec.checkpoint;
  init.counters = st.counters[static_cast<size_t>(s)];
  rec.actor = init.def->options.blocking ? self->system().spawn<caf::detached>(stage_behavior, init)
                                         : self->system().spawn(stage_behavior, init);
  self->monitor(rec.actor);
  st.by_address[rec.actor.address()] = {s, i};
  return rec.actor;
}

void wire(coordinator_actor* self, int s, int i) {
  auto& st = self->state;
  const auto& def = st.defs[static_cast<size_t>(s)];
  pipe_wiring w;
  if (def.input >= 0)
    for (auto& p : st.stages[static_cast<size_t>(def.input)]) {
      w.producers_finished.push_back(p.finished);
    }
  const int c = st.consumer_of[static_cast<size_t>(s)];
  if (c >= 0) {
    const auto& consumers = st.stages[static_cast<size_t>(c)];
    for (size_t k = 0; k < consumers.size(); ++k) {
      w.consumers.push_back(consumers[k].actor);
      // A replacement's consumers are told to hand it what its predecessor left them.
      if (st.stages[static_cast<size_t>(s)][static_cast<size_t>(i)].epoch > 0 &&
          !consumers[k].finished)
        w.awaiting_adoption.push_back(static_cast<int>(k));
    }
    w.consumer_window = window_of(st.defs[static_cast<size_t>(c)]);
  }
  self->send(st.stages[static_cast<size_t>(s)][static_cast<size_t>(i)].actor, pwire_atom::value,
             std::move(w));
}

run_report make_report(coordinator_actor* self) {
  auto& st = self->state;
  run_report r;
  for (size_t s = 0; s < st.defs.size(); ++s) {
    stage_report sr;
    sr.name = st.defs[s].name;
    sr.kind = kind_name(st.defs[s].kind);
    sr.instances = static_cast<int>(st.stages[s].size());
    sr.items_in = st.counters[s]->in.load();
    sr.items_out = st.counters[s]->out.load();
    sr.peak_unfinished = st.counters[s]->peak.load();
    sr.restarts = st.restarts[s];
    r.stages.push_back(std::move(sr));
  }
  r.elapsed_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - st.started).count();
  return r;
}

void conclude(coordinator_actor* self) {
  auto& st = self->state;
  if (!st.failed && st.unfinished > 0) return;
  st.ended = true;  // every request for the result, now or later, gets it
  for (auto& p : st.waiting) {
    if (st.failed)
      p.deliver(caf::make_error(caf::sec::runtime_error, st.failure));
    else
      p.deliver(make_report(self));
  }
  st.waiting.clear();
}

void on_down(coordinator_actor* self, const caf::down_msg& dm) {
  auto& st = self->state;
  auto it = st.by_address.find(dm.source);
  if (it == st.by_address.end()) return;
  const auto [s, i] = it->second;
  st.by_address.erase(it);
  auto& rec = st.stages[static_cast<size_t>(s)][static_cast<size_t>(i)];
  if (st.failed) return;
  if (!dm.reason) {
    rec.finished = true;
    --st.unfinished;
    // A consumer restarted before this news arrived waits for this instance's end: it gets
    // it again (an end counts once).
    const int c = st.consumer_of[static_cast<size_t>(s)];
    if (c >= 0)
      for (auto& k : st.stages[static_cast<size_t>(c)])
        if (!k.finished) self->send(k.actor, pend_atom::value, pipe_end{i});
    // A replaced producer waiting for this instance to adopt its predecessor's items need
    // not wait: it finished them.
    const int p = st.defs[static_cast<size_t>(s)].input;
    if (p >= 0)
      for (auto& r : st.stages[static_cast<size_t>(p)])
        if (!r.finished) self->send(r.actor, pdone_atom::value, i);
    conclude(self);
    return;
  }
  const auto& def = st.defs[static_cast<size_t>(s)];
  std::string why;
  {
    auto& c = *st.counters[static_cast<size_t>(s)];
    std::lock_guard<std::mutex> lock(c.m);
    why = c.last_error.empty() ? "its actor was killed" : c.last_error;
    c.last_error.clear();
  }
  if (++st.restarts[static_cast<size_t>(s)] > def.options.restarts) {
    st.failed = true;
    st.failure = "pipeline stage '" + def.name + "' failed after " +
                 std::to_string(def.options.restarts) + " restarts: " + why;
    for (auto& stage : st.stages)
      for (auto& r : stage)
        if (!r.finished && r.actor) self->send_exit(r.actor, caf::exit_reason::kill);
    conclude(self);
    return;
  }
  // Restart: the replacement is wired first, so that what its producers send it again
  // arrives after its wiring.
  ++rec.epoch;
  auto fresh = spawn_instance(self, s, i);
  wire(self, s, i);
  if (def.input >= 0)
    for (auto& p : st.stages[static_cast<size_t>(def.input)])
      if (!p.finished) self->send(p.actor, pcons_atom::value, pipe_replace{i, fresh});
  const int c = st.consumer_of[static_cast<size_t>(s)];
  if (c >= 0)
    for (auto& k : st.stages[static_cast<size_t>(c)])
      if (!k.finished) self->send(k.actor, pprod_atom::value, pipe_replace{i, fresh}, rec.epoch);
}

caf::behavior coordinator_behavior(coordinator_actor* self, std::vector<stage_def> defs) {
  auto& st = self->state;
  st.defs = std::move(defs);
  st.shared_defs = std::make_shared<const std::vector<stage_def>>(st.defs);
  const size_t n = st.defs.size();
  st.consumer_of.assign(n, -1);
  st.stages.resize(n);
  st.restarts.assign(n, 0);
  for (size_t s = 0; s < n; ++s) {
    st.counters.push_back(std::make_shared<stage_counters>());
    if (st.defs[s].input >= 0)
      st.consumer_of[static_cast<size_t>(st.defs[s].input)] = static_cast<int>(s);
    st.stages[s].resize(static_cast<size_t>(st.defs[s].options.instances));
    st.unfinished += st.defs[s].options.instances;
  }
  self->set_down_handler([=](caf::down_msg& dm) { on_down(self, dm); });
  for (size_t s = 0; s < n; ++s)
    for (size_t i = 0; i < st.stages[s].size(); ++i)
      spawn_instance(self, static_cast<int>(s), static_cast<int>(i));
  // Consumers before producers: a stage is wired before the first item can reach it.
  for (size_t s = n; s-- > 0;)
    for (size_t i = 0; i < st.stages[s].size(); ++i)
      wire(self, static_cast<int>(s), static_cast<int>(i));
  return {
      [=](prun_atom) -> caf::result<run_report> {
        auto p = self->make_response_promise<run_report>();
        self->state.waiting.push_back(p);
        conclude(self);
        return p;
      },
      [=](pckpt_atom, const pipe_checkpoint& c) {
        auto& st = self->state;
        auto it = st.by_address.find(caf::actor_cast<caf::actor_addr>(self->current_sender()));
        if (it == st.by_address.end()) return;  // from an instance already replaced
        st.stages[static_cast<size_t>(c.stage)][static_cast<size_t>(c.instance)].checkpoint =
            c.position;
      },
      [=](pstop_atom, const std::string& why) {
        // The caller gives up (its deadline passed): every stage is killed.
        auto& st = self->state;
        if (st.ended) return;
        std::string unfinished;
        for (size_t s = 0; s < st.stages.size(); ++s)
          for (auto& r : st.stages[s])
            if (!r.finished) {
              if (r.actor) self->send_exit(r.actor, caf::exit_reason::kill);
              if (unfinished.find("'" + st.defs[s].name + "'") == std::string::npos)
                unfinished += (unfinished.empty() ? "'" : ", '") + st.defs[s].name + "'";
            }
        st.failed = true;
        st.failure = why + " (unfinished: " + unfinished + ")";
        conclude(self);
      },
      [=](pkill_atom, const std::string& name, int instance) -> bool {
        auto& st = self->state;
        for (size_t s = 0; s < st.defs.size(); ++s) {
          if (st.defs[s].name != name) continue;
          if (instance < 0 || static_cast<size_t>(instance) >= st.stages[s].size()) return false;
          auto& rec = st.stages[s][static_cast<size_t>(instance)];
          if (rec.finished || !rec.actor) return false;
          self->send_exit(rec.actor, caf::exit_reason::kill);
          return true;
        }
        return false;
      },
  };
}

class running_pipeline final : public running {
 public:
  running_pipeline(caf::actor_system& sys, caf::actor coordinator)
      : sys_(sys), coordinator_(std::move(coordinator)) {}
  bool kill(const std::string& name, int instance) override {
    bool killed = false;
    caf::scoped_actor self{sys_};
    self->request(coordinator_, std::chrono::seconds(10), pkill_atom::value, name, instance)
        .receive([&](bool k) { killed = k; }, [&](caf::error&) {});
    return killed;
  }

 private:
  caf::actor_system& sys_;
  caf::actor coordinator_;
};

expected<void> validate(const std::vector<stage_def>& stages) {
  auto bad = [](const std::string& what) { return error(errc::invalid_argument, what); };
  if (stages.empty()) return bad("pipeline: no stages");
  std::set<std::string> names;
  std::vector<int> readers(stages.size(), -1);
  for (size_t s = 0; s < stages.size(); ++s) {
    const auto& d = stages[s];
    const std::string at = "pipeline stage " + std::to_string(s) + " '" + d.name + "': ";
    if (d.name.empty()) return bad("pipeline stage " + std::to_string(s) + ": no name");
    if (!names.insert(d.name).second) return bad(at + "a second stage of that name");
    const bool source = d.kind == stage_kind::source;
    if (source != (d.input < 0)) return bad(at + "a source reads no stage; any other reads one");
    if (d.input >= static_cast<int>(s)) return bad(at + "reads a later stage (a cycle)");
    if (d.input >= 0) {
      auto& r = readers[static_cast<size_t>(d.input)];
      if (r >= 0)
        return bad(at + "reads the output of '" + stages[static_cast<size_t>(d.input)].name +
                   "', which '" + stages[static_cast<size_t>(r)].name + "' reads already");
      r = static_cast<int>(s);
    }
    const bool parallel = d.kind == stage_kind::map || d.kind == stage_kind::filter ||
                          d.kind == stage_kind::flat_map || d.kind == stage_kind::sink;
    if (d.options.instances < 1 || d.options.instances > 256 ||
        (!parallel && d.options.instances != 1))
      return bad(at + "instances must be 1" + (parallel ? std::string(" to 256") : std::string()));
    if (d.options.window < 1 || d.options.window > (1 << 20))
      return bad(at + "window must be in [1, 1048576]");
    if (d.options.restarts < 0 || d.options.restarts > 1000)
      return bad(at + "restarts must be in [0, 1000]");
    if ((d.kind == stage_kind::batch || d.kind == stage_kind::shuffle) &&
        (d.size < 1 || d.size > (1u << 20)))
      return bad(at + (d.kind == stage_kind::batch ? "the batch size" : "the buffer") +
                 " must be in [1, 1048576]");
  }
  for (size_t s = 0; s < stages.size(); ++s)
    if (readers[s] < 0 && stages[s].kind != stage_kind::sink && stages[s].kind != stage_kind::train)
      return bad("pipeline stage " + std::to_string(s) + " '" + stages[s].name +
                 "': nothing reads its output (end the pipeline with a sink)");
  return {};
}

}  // namespace
}  // namespace gflex::pipeline::detail

namespace gflex::pipeline {

expected<run_report> graph::run(const std::function<void(running&)>& on_running,
                                std::chrono::milliseconds deadline) const {
  if (auto ok = detail::validate(stages_); !ok) return ok.error();
  caf::actor_system_config cfg;
  cfg.set("scheduler.max-threads",
          static_cast<size_t>(std::max(2u, std::thread::hardware_concurrency())));
  caf::actor_system sys{cfg};
  auto coordinator = sys.spawn(detail::coordinator_behavior, stages_);
  if (on_running) {
    detail::running_pipeline handle(sys, coordinator);
    on_running(handle);
  }
  expected<run_report> result = error(errc::stage_failed, "pipeline: no result");
  caf::scoped_actor self{sys};
  auto wait = [&](caf::duration limit) {
    bool timed_out = false;
    self->request(coordinator, limit, detail::prun_atom::value)
        .receive([&](run_report& r) { result = std::move(r); },
                 [&](caf::error& e) {
                   if (e == caf::sec::request_timeout) {
                     timed_out = true;
                     return;
                   }
                   result = error(errc::stage_failed, e.context().empty()
                                                          ? sys.render(e)
                                                          : e.context().get_as<std::string>(0));
                 });
    return timed_out;
  };
  if (deadline.count() > 0 ? wait(caf::duration{deadline}) : wait(caf::infinite)) {
    const double s = static_cast<double>(deadline.count()) / 1000.0;
    char text[64];
    std::snprintf(text, sizeof text, "%g", s);
    self->send(coordinator, detail::pstop_atom::value,
               "pipeline: its deadline of " + std::string(text) + " s passed");
    wait(caf::infinite);
    if (result)
      result = error(errc::unavailable, "pipeline: its deadline passed");
    else
      result = error(errc::unavailable, result.error().message());
  }
  self->send_exit(coordinator, caf::exit_reason::user_shutdown);
  return result;
}

}  // namespace gflex::pipeline
