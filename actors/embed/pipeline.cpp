// The actors behind <gflex/pipeline.hpp>: one per stage instance, and a coordinator that
// spawns, wires and supervises them.
//
// Flow control and recovery share one mechanism. A producer keeps every item it sent to a
// consumer instance until that instance acknowledges it, and may keep at most the consumer's
// window of them: the acknowledgement is the credit. A consumer acknowledges an input only
// once the outputs it produced from it have been sent on (a batch's inputs when the batch is
// sent, a shuffled item when it leaves the buffer), in the same message handler; one to a
// producer in another process travels with those outputs until they leave this process (see
// pipe_item::carried). So when a stage instance dies, everything it had not finished is
// still held by its producers, which send it again to the replacement, and nothing it
// finished is repeated: its outputs are
// already with its consumers (and the acknowledgements its outputs to another process
// carried have reached its producers: the coordinator tells the producers of the
// replacement only once its consumers have answered the news of it). A source's state is its
// position, which it reports to the coordinator after every item sent; a train stage's is its job
// and the last round emitted.
//
// Worker processes run the same program and build the same graph; a host actor in each
// spawns the stage instances the coordinator places there. Items and adoptions crossing a
// process boundary travel encoded (the stage's codec); everything else is the same
// protocol, since CAF's handles work across processes, and a lost process is seen as its
// instances' deaths.

#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "gflex/pipeline.hpp"
#include "gflex/runtime/tcp_probe.hpp"
#include "messages.hpp"
#include "pipeline_system.hpp"
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

/// Which input of its producer an item came from, and its place among that input's
/// outputs (a flat_map makes several): a consumer keeps the last it saw from each producer
/// instance, and tells a replacement of it how many of the input's outputs it has (see
/// pipe_adoption). producer -1: none (a source's, a batch's or a shuffle's item, or one
/// sent again).
struct origin_tag {
  int producer = -1;
  uint64_t epoch = 0;
  uint64_t seq = 0;
  uint64_t index = 0;  ///< In an adoption: the outputs of that input its consumer has.
};

struct pipe_ack {
  int consumer = 0;    ///< The consumer's instance.
  uint64_t epoch = 0;  ///< The producer epoch the item was sent under.
  uint64_t seq = 0;
};

/// Acknowledgements an item carries: acks[i] to to[i].
struct carried_acks {
  std::vector<caf::actor> to;
  std::vector<pipe_ack> acks;
};

struct pipe_item {
  input_ref from;
  item value;
  origin_tag origin;
  /// Acknowledgements to producers in other processes of the inputs that made this item,
  /// which it carries until it, or what is made from it, leaves this process (or is
  /// finished with nothing sent on). Sent when the item was passed on in this process, they
  /// let those producers forget inputs that a death of this process then lost: a worker
  /// holding two chained stages lost the items the second had not finished.
  carried_acks carried;
};

/// An item for another process: its producer's codec encoded it.

struct pipe_wire_item {
  int producer = 0;
  uint64_t epoch = 0;
  uint64_t seq = 0;
  std::string bytes;
  /// Acknowledgements the sender owes for the inputs that made this item, which the receiver
  /// delivers (acks[i] to ack_to[i]) before it takes the item. Item and acks cross in one
  /// message: a process killed between two messages could otherwise leave the item delivered
  /// and its input unacknowledged, and the input, replayed, would arrive twice.
  std::vector<caf::actor> ack_to;
  std::vector<pipe_ack> acks;
  origin_tag origin;
};

struct pipe_end {
  int producer = 0;
};

/// What a stage instance talks to; from the coordinator.
struct pipe_wiring {
  std::vector<int32_t> producers_finished;  ///< One per producer instance (0 or 1).
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
  /// The input the predecessor was last sending outputs of, with (as index) how many of them
  /// reached this consumer: its replacement, given that input again, does not send those
  /// again. (An input is finished, and not given again, once its last output is sent; until
  /// then its producer takes no other input, so there is one such input at most.)
  origin_tag open;
};

/// The same, for a producer in another process (encoded with the producer's codec).
struct pipe_wire_adoption {
  int consumer = 0;
  std::vector<uint64_t> keys;
  std::vector<std::string> items;
  origin_tag open;
};

struct pipe_checkpoint {
  int stage = 0;
  int instance = 0;
  std::string position;
};

/// A worker process's instance -> the coordinator: its counts since the last report.
struct pipe_stat {
  int stage = 0;
  int64_t in = 0;
  int64_t out = 0;
  int64_t peak = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, origin_tag& x) {
  return f(caf::meta::type_name("gflex_pipe_origin"), x.producer, x.epoch, x.seq, x.index);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, pipe_wire_item& x) {
  return f(caf::meta::type_name("gflex_pipe_wire_item"), x.producer, x.epoch, x.seq, x.bytes,
           x.ack_to, x.acks, x.origin);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, pipe_ack& x) {
  return f(caf::meta::type_name("gflex_pipe_ack"), x.consumer, x.epoch, x.seq);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, pipe_end& x) {
  return f(caf::meta::type_name("gflex_pipe_end"), x.producer);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, pipe_wiring& x) {
  return f(caf::meta::type_name("gflex_pipe_wiring"), x.producers_finished, x.consumers,
           x.consumer_window, x.awaiting_adoption);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, pipe_replace& x) {
  return f(caf::meta::type_name("gflex_pipe_replace"), x.instance, x.actor);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, pipe_wire_adoption& x) {
  return f(caf::meta::type_name("gflex_pipe_wire_adoption"), x.consumer, x.keys, x.items, x.open);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, pipe_checkpoint& x) {
  return f(caf::meta::type_name("gflex_pipe_checkpoint"), x.stage, x.instance, x.position);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, pipe_stat& x) {
  return f(caf::meta::type_name("gflex_pipe_stat"), x.stage, x.in, x.out, x.peak);
}

}  // namespace
}  // namespace gflex::pipeline::detail

// In one process only (they hold items as objects, not bytes).
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(gflex::pipeline::detail::pipe_item)
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
using ptrain_atom = caf::atom_constant<caf::atom("ptrain")>;    ///< train jobs left running
using pfull_atom = caf::atom_constant<caf::atom("pfull")>;      ///< a train stage needs no more
using phold_atom = caf::atom_constant<caf::atom("phold")>;      ///< a train stage is pushing
using pwitem_atom = caf::atom_constant<caf::atom("pwitem")>;    ///< an encoded item
using pwadopt_atom = caf::atom_constant<caf::atom("pwadopt")>;  ///< an encoded adoption
using pstat_atom = caf::atom_constant<caf::atom("pstat")>;
using pjoin_atom = caf::atom_constant<caf::atom("pjoin")>;        ///< a worker process joins
using pwait_atom = caf::atom_constant<caf::atom("pwait")>;        ///< the workers, once joined
using phost_atom = caf::atom_constant<caf::atom("phost")>;        ///< a late worker process
using phosts_atom = caf::atom_constant<caf::atom("phosts")>;      ///< all that joined
using pspawn_atom = caf::atom_constant<caf::atom("pspawn")>;      ///< place an instance
using pbye_atom = caf::atom_constant<caf::atom("pbye")>;          ///< the pipeline ended
using pstarted_atom = caf::atom_constant<caf::atom("pstarted")>;  ///< every stage has an actor

/// Whether `a` lives in another process than `self`.
bool elsewhere(const caf::local_actor* self, const caf::actor& a) {
  return a && a.node() != self->node();
}

/// A worker process's check that it builds the same graph: the stages' names, kinds,
/// wiring, instances, placement, output types, and a batch's size or a shuffle's buffer and
/// seed. (A worker whose stage returned another type was admitted, and its items were
/// decoded as the pipeline's type: garbage, or a failure blamed on the stage reading them.)
std::string fingerprint(const std::vector<stage_def>& defs) {
  std::string f;
  for (const auto& d : defs)
    f += d.name + '\x1f' + std::to_string(static_cast<int>(d.kind)) + ',' +
         std::to_string(d.input) + ',' + std::to_string(d.options.instances) + ',' +
         (d.options.on_workers ? "w" : "p") + ',' + d.output_type + ',' + std::to_string(d.size) +
         ',' + std::to_string(d.seed) + '\x1e';
  return f;
}

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
  /// Runs in a worker process: its counts go to the coordinator in pipe_stat reports.
  bool remote = false;
  /// Set by the run once it has failed, before it asks which train jobs to cancel: a train
  /// stage still uploading then cancels the job it submits itself (null: never set).
  std::shared_ptr<const std::atomic<bool>> run_failed;
  /// A source: generates nothing (the train stage it feeds is pushing; see phold).
  bool paused = false;
};

struct out_slot {
  caf::actor actor;
  int64_t credit = 0;
  std::map<uint64_t, item> unfinished;  ///< Sent, not yet acknowledged, by sequence number.
  /// The acknowledgements an unfinished item carried: a consumer whose process died with the
  /// item unread lost them, and its replacement is sent them again with the item (the
  /// producer's producer would otherwise keep those inputs, and never finish).
  std::map<uint64_t, carried_acks> carried;
};

struct out_entry {
  item value;
  std::vector<pipe_item> finishes;
  origin_tag origin;
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
  /// Produced, waiting for credit. An entry finishes the inputs it names once it is sent:
  /// a map's or flat_map's last output finishes its input, a batch its inputs, each of a
  /// shuffle's outputs its own. (All finished with the last of the outbox, a stage that died
  /// with some of it sent was given them all again, and its replacement sent those twice.)
  std::deque<out_entry> outbox;
  /// Per producer instance: its epoch, and the origin of the last item it sent here (see
  /// pipe_adoption).
  std::map<int, std::pair<uint64_t, origin_tag>> last_origin;
  /// Given again, these inputs (producer, epoch, seq) skip this many of their outputs: the
  /// predecessor's consumers have them.
  std::map<std::tuple<int, uint64_t, uint64_t>, uint64_t> sent_before;
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
  /// A round update waits in the outbox: its round is the stage's checkpoint once it is sent.
  /// Checkpointed as it was made, an update that waited for credit was lost with the stage:
  /// its replacement resumed past it, and the job's last round never reached the sink.
  bool train_checkpoint_due = false;
  // counts reported so far (in a worker process)
  int64_t reported_in = 0;
  int64_t reported_out = 0;
};

using stage_actor = caf::stateful_actor<stage_state>;

/// Sends acknowledgements now.
void send_acks(stage_actor* self, const carried_acks& acks) {
  for (size_t i = 0; i < acks.acks.size() && i < acks.to.size(); ++i)
    if (acks.to[i]) self->send(acks.to[i], pack_atom::value, acks.acks[i]);
}

/// Finishes an input that leaves nothing to send on: its producer may forget it, and so may
/// the producers whose acknowledgements it carried. Each input is finished once, by whichever
/// instance completes it, so the stage's items_in counts here, not on arrival (an item sent
/// again to a replacement arrived twice).
void ack(stage_actor* self, const pipe_item& in) {
  ++self->state.init.counters->in;
  if (in.from.sender)
    self->send(in.from.sender, pack_atom::value,
               pipe_ack{self->state.init.instance, in.from.epoch, in.from.seq});
  send_acks(self, in.carried);
}

void process_inbox(stage_actor* self);
void maybe_finish(stage_actor* self);

/// Sends an item to a consumer instance: as the object in this process, encoded otherwise,
/// with the acknowledgements `acks` (of the inputs it completes): to another process they
/// travel in the item's message. In this process, those to producers here go first, as their
/// own messages, and those to producers in other processes travel with the item, which keeps
/// them until it (or what is made from it) leaves this process: the item is all that holds
/// those inputs once their producers have forgotten them. Returns the acknowledgements the
/// item carries.
carried_acks send_item(stage_actor* self, const caf::actor& to, const input_ref& ref, item value,
                       const carried_acks& acks = {}, const origin_tag& origin = {}) {
  if (elsewhere(self, to)) {
    pipe_wire_item w{ref.producer, ref.epoch, ref.seq, self->state.init.def->encode(value),
                     acks.to,      acks.acks, origin};
    self->send(to, pwitem_atom::value, std::move(w));
    return acks;
  }
  carried_acks carried;
  for (size_t i = 0; i < acks.acks.size() && i < acks.to.size(); ++i) {
    if (elsewhere(self, acks.to[i])) {
      carried.to.push_back(acks.to[i]);
      carried.acks.push_back(acks.acks[i]);
    } else if (acks.to[i]) {
      self->send(acks.to[i], pack_atom::value, acks.acks[i]);
    }
  }
  self->send(to, pitem_atom::value, pipe_item{ref, std::move(value), origin, carried});
  return carried;
}

/// A replacement notes how many outputs of an input its predecessor's consumer has.
void note_sent_before(stage_actor* self, const origin_tag& open) {
  if (open.producer < 0 || open.index == 0) return;
  auto& n = self->state.sent_before[std::make_tuple(open.producer, open.epoch, open.seq)];
  n = std::max(n, open.index);
}

/// A consumer notes where an item from a producer instance came from (see pipe_adoption).
void note_origin(stage_actor* self, const input_ref& from, const origin_tag& origin) {
  if (origin.producer < 0) return;
  auto& [epoch, last] = self->state.last_origin[from.producer];
  if (from.epoch < epoch) return;  // a predecessor's, late
  epoch = from.epoch;
  last = origin;
  last.index = origin.index + 1;  // outputs of it here, at least: they go out in order
}

/// A worker process's instance tells the coordinator what it counted since its last report.
void report_counts(stage_actor* self) {
  auto& st = self->state;
  if (!st.init.remote || !st.init.coordinator) return;
  const int64_t in = st.init.counters->in.load();
  const int64_t out = st.init.counters->out.load();
  if (in == st.reported_in && out == st.reported_out) return;
  self->send(st.init.coordinator, pstat_atom::value,
             pipe_stat{st.init.stage, in - st.reported_in, out - st.reported_out,
                       st.init.counters->peak.load()});
  st.reported_in = in;
  st.reported_out = out;
}

/// Sends what the outbox holds while some consumer instance has credit; once it is empty,
/// the inputs that produced it are finished.
void train_checkpoint(stage_actor* self);

void flush(stage_actor* self) {
  auto& st = self->state;
  // Not wired yet, it has no consumers to count: a replacement train stage polls as it
  // starts, and what it made before its wiring came was dropped as read by nobody.
  if (!st.wired) return;
  if (st.slots.empty()) {  // nobody reads this stage (a train stage's updates): dropped
    st.init.counters->out += static_cast<int64_t>(st.outbox.size());
    for (const auto& e : st.outbox)
      for (const auto& in : e.finishes) ack(self, in);
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
    out_entry e = std::move(st.outbox.front());
    st.outbox.pop_front();
    --slot->credit;
    slot->unfinished.emplace(seq, e.value);
    st.init.counters->raise_peak(static_cast<int64_t>(slot->unfinished.size()));
    ++st.init.counters->out;
    // The item finishes its inputs: their acknowledgements go with it, as one message to
    // another process (kept with it until it is acknowledged in turn): a process killed
    // between two messages could otherwise leave the item delivered and its inputs
    // unacknowledged, and the inputs, replayed, would arrive twice. So do those its inputs
    // carried (see pipe_item::carried).
    carried_acks acks;
    st.init.counters->in += static_cast<int64_t>(e.finishes.size());  // see ack()
    for (const auto& in : e.finishes) {
      if (in.from.sender) {
        acks.to.push_back(in.from.sender);
        acks.acks.push_back(pipe_ack{st.init.instance, in.from.epoch, in.from.seq});
      }
      acks.to.insert(acks.to.end(), in.carried.to.begin(), in.carried.to.end());
      acks.acks.insert(acks.acks.end(), in.carried.acks.begin(), in.carried.acks.end());
    }
    auto carried = send_item(self, slot->actor, input_ref{st.init.instance, st.init.epoch, seq, {}},
                             std::move(e.value), acks, e.origin);
    if (!carried.acks.empty()) slot->carried[seq] = std::move(carried);
  }
  train_checkpoint(self);
}

/// A train stage's round update has left the outbox: its round is the checkpoint.
void train_checkpoint(stage_actor* self) {
  auto& st = self->state;
  if (!st.train_checkpoint_due || !st.outbox.empty() || !st.train) return;
  st.train_checkpoint_due = false;
  self->send(st.init.coordinator, pckpt_atom::value,
             pipe_checkpoint{st.init.stage, st.init.instance, st.train->checkpoint()});
}

void emit(stage_actor* self, item value, std::vector<pipe_item> finishes = {},
          origin_tag origin = {}) {
  self->state.outbox.push_back(out_entry{std::move(value), std::move(finishes), origin});
}

void emit_batch(stage_actor* self) {
  auto& st = self->state;
  std::vector<item> inputs;
  inputs.reserve(st.held.size());
  for (auto& h : st.held) inputs.push_back(h.value);
  auto batch = st.init.def->assemble_batch(inputs);
  emit(self, std::move(batch), std::move(st.held));
  st.held.clear();
}

void emit_shuffled(stage_actor* self) {
  auto& st = self->state;
  const size_t k = static_cast<size_t>(st.shuffle_rng() % st.held.size());
  std::swap(st.held[k], st.held.back());
  auto value = st.held.back().value;
  emit(self, std::move(value), {std::move(st.held.back())});
  st.held.pop_back();
}

void submit_train(stage_actor* self) {
  auto& st = self->state;
  auto run_failed = [&] { return st.init.run_failed && st.init.run_failed->load(); };
  if (run_failed()) return;  // killed next: nothing to upload for
  // The push and submit below block this stage for seconds or minutes, and its window takes
  // everything its producer sends (it holds its inputs until the push, and their number is
  // not known in items): the source feeding it stops generating now, or all it made
  // meanwhile waited in this stage's mailbox and its producer's unfinished items. It is not
  // stopped for good (pfull) before the push: should the push fail, the stages before this
  // one send what it held again to its replacement.
  self->send(st.init.coordinator, phold_atom::value);
  st.train->submit();
  for (auto& h : st.held) ack(self, h);
  st.held.clear();
  self->send(st.init.coordinator, pckpt_atom::value,
             pipe_checkpoint{st.init.stage, st.init.instance, st.train->checkpoint()});
  // The run failed while this stage uploaded: the coordinator, asked which jobs to cancel,
  // may have answered before it heard of this one, which would train (and bill) on.
  if (run_failed()) {
    st.train->cancel();
    return;
  }
  // What comes after the push is dropped: the stages before this one stop (an endless
  // source ran, and the run with it, for as long as the job and after it had ended).
  self->send(st.init.coordinator, pfull_atom::value);
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
        ack(self, in);
      } else {
        st.train->absorb(get<sample_batch>(in.value));
        st.held.push_back(std::move(in));
        if (st.train->full()) submit_train(self);
      }
      break;
    default: {
      std::vector<item> outs;
      st.fn(in.value, outs);
      // Given again after its producer's predecessor died: the outputs it sent are not sent
      // twice (the function gives the same outputs, in order, for the same input).
      size_t skip = 0;
      const auto key = std::make_tuple(in.from.producer, in.from.epoch, in.from.seq);
      if (auto b = st.sent_before.find(key); b != st.sent_before.end()) {
        skip = static_cast<size_t>(std::min<uint64_t>(b->second, outs.size()));
        st.sent_before.erase(b);
      }
      if (skip == outs.size()) {  // nothing (left) to send: finished now
        ack(self, in);
        break;
      }
      for (size_t k = skip; k < outs.size(); ++k) {
        const origin_tag origin{in.from.producer, in.from.epoch, in.from.seq, k};
        if (k + 1 < outs.size())
          emit(self, std::move(outs[k]), {}, origin);
        else
          emit(self, std::move(outs[k]), {std::move(in)}, origin);
      }
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
  // A replacement takes no input before its consumers have told it which outputs of the
  // input its predecessor was sending they have (pipe_adoption).
  if (!st.awaiting_adoption.empty()) return;
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
  report_counts(self);
  self->quit();
}

void pull(stage_actor* self) {
  auto& st = self->state;
  if (st.gen_done || st.pulling || st.init.paused) return;
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
    if (st.init.remote) self->delayed_send(self, std::chrono::milliseconds(250), pstat_atom::value);
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
        st.producer_ended.assign(w.producers_finished.begin(), w.producers_finished.end());
        st.window = w.consumer_window;
        st.awaiting_adoption.insert(w.awaiting_adoption.begin(), w.awaiting_adoption.end());
        for (auto& a : w.consumers) st.slots.push_back(out_slot{std::move(a), st.window, {}, {}});
        st.wired = true;
        guarded(self, [&] {
          flush(self);  // what a replacement train stage made before this came
          if (st.init.def->kind == stage_kind::source)
            pull(self);
          else
            process_inbox(self);
        });
      },
      [=](pitem_atom, pipe_item& in) {
        auto& st = self->state;
        in.from.sender = caf::actor_cast<caf::actor>(self->current_sender());
        note_origin(self, in.from, in.origin);
        st.inbox.push_back(std::move(in));
        guarded(self, [&] { process_inbox(self); });
      },
      [=](pwitem_atom, pipe_wire_item& w) {
        auto& st = self->state;
        const int input = st.init.def->input;
        if (input < 0 || !(*st.init.defs)[static_cast<size_t>(input)].decode) return;
        // The producer's acknowledgements of what made this item go on first (see
        // pipe_wire_item).
        if (w.ack_to.size() == w.acks.size())
          for (size_t i = 0; i < w.acks.size(); ++i)
            if (w.ack_to[i]) self->send(w.ack_to[i], pack_atom::value, w.acks[i]);
        guarded(self, [&] {
          pipe_item in{input_ref{w.producer, w.epoch, w.seq,
                                 caf::actor_cast<caf::actor>(self->current_sender())},
                       (*st.init.defs)[static_cast<size_t>(input)].decode(w.bytes),
                       w.origin,
                       {}};
          note_origin(self, in.from, in.origin);
          st.inbox.push_back(std::move(in));
          process_inbox(self);
        });
      },
      [=](pstat_atom) {
        report_counts(self);
        self->delayed_send(self, std::chrono::milliseconds(250), pstat_atom::value);
      },
      [=](pack_atom, const pipe_ack& a) {
        auto& st = self->state;
        if (a.epoch != st.init.epoch || a.consumer < 0 ||
            static_cast<size_t>(a.consumer) >= st.slots.size())
          return;  // for an earlier instance of this stage
        auto& slot = st.slots[static_cast<size_t>(a.consumer)];
        if (slot.unfinished.erase(a.seq) == 0) return;
        slot.carried.erase(a.seq);
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
        // A producer wired after the consumer's replacement (both died at once) has sent it
        // everything already: sent again, what it had not acknowledged went through twice.
        const bool sent_there = slot.actor == r.actor;
        slot.actor = std::move(r.actor);
        slot.credit = st.window - static_cast<int64_t>(slot.unfinished.size());
        // A replaced producer waiting for this consumer's adoption waits no more: the
        // consumer it waited for is dead (it died with this producer's predecessor, and what
        // both held is lost), and the fresh one holds nothing from the predecessor.
        st.awaiting_adoption.erase(r.instance);
        guarded(self, [&] {
          if (!sent_there) {
            for (auto& [seq, value] : slot.unfinished) {
              auto acks = slot.carried.find(seq);
              send_item(self, slot.actor, input_ref{st.init.instance, st.init.epoch, seq, {}},
                        value, acks == slot.carried.end() ? carried_acks{} : acks->second);
            }
            // After the items: the end tells the consumer that nothing else comes.
            if (st.end_sent) self->send(slot.actor, pend_atom::value, pipe_end{st.init.instance});
          }
          flush(self);
          if (st.init.def->kind == stage_kind::source) pull(self);
          process_inbox(self);  // it may have waited for this consumer's adoption
        });
      },
      [=](pprod_atom, pipe_replace& r, uint64_t epoch) -> bool {
        // A producer instance was replaced. What its predecessor sent and this stage has not
        // finished is kept by nobody now: the replacement adopts it, so that it can send it
        // again should this stage fail too. (Its predecessor's items all arrived before this
        // message: they were in the mailbox before the predecessor's death was known.) The
        // answer tells the coordinator that the acknowledgements those items carried are on
        // their way.
        auto& st = self->state;
        std::vector<std::pair<uint64_t, item>> adopted;
        auto adopt = [&](pipe_item& it) {
          if (it.from.producer != r.instance || it.from.epoch >= epoch) return;
          const uint64_t key = (uint64_t{1} << 63) | st.next_adoption++;
          it.from = input_ref{r.instance, epoch, key, r.actor};
          // The acknowledgements it carried go now, as an item from another process delivers
          // them on arrival: the replacement's producers are sent again what they still hold,
          // and would send this item's inputs twice.
          send_acks(self, it.carried);
          it.carried = {};
          adopted.emplace_back(key, it.value);
        };
        for (auto& x : st.inbox) adopt(x);
        for (auto& x : st.held) adopt(x);
        for (auto& e : st.outbox)
          for (auto& x : e.finishes) adopt(x);
        origin_tag open;
        if (auto l = st.last_origin.find(r.instance); l != st.last_origin.end()) {
          if (l->second.first < epoch) open = l->second.second;
          st.last_origin.erase(l);
        }
        if (!elsewhere(self, r.actor)) {
          self->send(r.actor, padopt_atom::value,
                     pipe_adoption{st.init.instance, std::move(adopted), open});
          return true;
        }
        guarded(self, [&] {
          const auto& producer = (*st.init.defs)[static_cast<size_t>(st.init.def->input)];
          pipe_wire_adoption w{st.init.instance, {}, {}, open};
          for (auto& [key, value] : adopted) {
            w.keys.push_back(key);
            w.items.push_back(producer.encode(value));
          }
          self->send(r.actor, pwadopt_atom::value, std::move(w));
        });
        return true;
      },
      [=](pwadopt_atom, pipe_wire_adoption& w) {
        auto& st = self->state;
        if (w.consumer < 0 || static_cast<size_t>(w.consumer) >= st.slots.size() ||
            w.keys.size() != w.items.size() || !st.init.def->decode)
          return;
        auto& slot = st.slots[static_cast<size_t>(w.consumer)];
        guarded(self, [&] {
          for (size_t k = 0; k < w.keys.size(); ++k) {
            slot.unfinished.emplace(w.keys[k], st.init.def->decode(w.items[k]));
            --slot.credit;
          }
          note_sent_before(self, w.open);
          st.awaiting_adoption.erase(w.consumer);
          process_inbox(self);
        });
      },
      [=](padopt_atom, pipe_adoption& a) {
        auto& st = self->state;
        if (a.consumer < 0 || static_cast<size_t>(a.consumer) >= st.slots.size()) return;
        auto& slot = st.slots[static_cast<size_t>(a.consumer)];
        for (auto& [key, value] : a.items) {
          slot.unfinished.emplace(key, std::move(value));
          --slot.credit;
        }
        note_sent_before(self, a.open);
        st.awaiting_adoption.erase(a.consumer);
        guarded(self, [&] { process_inbox(self); });
      },
      [=](pdone_atom, int consumer) {
        self->state.awaiting_adoption.erase(consumer);
        guarded(self, [&] { process_inbox(self); });
      },
      [=](ppull_atom) {
        auto& st = self->state;
        st.pulling = false;
        guarded(self, [&] {
          if (st.gen_done || st.init.paused) return;
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
      [=](phold_atom) { self->state.init.paused = true; },
      [=](ptick_atom) {
        auto& st = self->state;
        guarded(self, [&] {
          if (st.train_done) return;
          if (st.outbox.empty()) {
            std::vector<round_update> updates;
            st.train_done = st.train->poll(updates);
            for (auto& u : updates) emit(self, make_item<round_update>(std::move(u)));
            if (!updates.empty()) st.train_checkpoint_due = true;
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
  caf::actor actor;  ///< None while it is being placed in a worker process.
  uint64_t epoch = 0;
  bool finished = false;
  std::string checkpoint;
};

struct host_record {
  caf::actor actor;
  bool alive = true;
};

struct coordinator_state {
  std::vector<stage_def> defs;
  std::shared_ptr<const std::vector<stage_def>> shared_defs;  ///< The same, for the instances.
  std::vector<int> consumer_of;  ///< The stage reading each stage's output, or -1.
  std::vector<std::vector<instance_record>> stages;
  std::vector<int> restarts;
  // Restarts that count against a stage's budget: a lost worker process is not the stage's
  // failure, and one held several of its instances (a stage of 8 on 2 workers: 4 at once).
  std::vector<int> failures;
  std::vector<std::shared_ptr<stage_counters>> counters;
  std::vector<bool> paused;  ///< Per stage: a source whose train stage is pushing (phold).
  std::map<caf::actor_addr, std::pair<int, int>> by_address;
  std::vector<host_record> hosts;  ///< Worker processes, in the order they joined.
  size_t next_host = 0;
  int workers_lost = 0;
  int placing = 0;  ///< Instances not placed yet at the start.
  bool started = false;
  int unfinished = 0;
  bool failed = false;
  std::string failure;
  bool ended = false;
  std::vector<caf::response_promise> waiting;
  /// Asked when every stage has an actor (pstarted): answered true at the start, false when
  /// the run ends before it.
  std::vector<caf::response_promise> starting;
  std::chrono::steady_clock::time_point started_at = std::chrono::steady_clock::now();
  std::shared_ptr<const std::atomic<bool>> run_failed;  ///< See stage_init::run_failed.
  /// A restart's adoption requests (pprod) not answered yet, by the consumer instance asked:
  /// that instance's death settles them too. One in a lost process never answers (CAF drops
  /// what is sent to a proxy it has killed), and the producers of the replacement were never
  /// told of it: the run hung. (Not settled by a timeout: a live consumer busy with a slow
  /// item answers late, and its predecessor's acknowledgements with it.)
  std::map<caf::actor_addr, std::vector<std::function<void()>>> adoption_asks;
};

using coordinator_actor = caf::stateful_actor<coordinator_state>;

void install(coordinator_actor* self, int s, int i, caf::actor a) {
  auto& st = self->state;
  auto& rec = st.stages[static_cast<size_t>(s)][static_cast<size_t>(i)];
  rec.actor = std::move(a);
  self->monitor(rec.actor);
  st.by_address[rec.actor.address()] = {s, i};
}

stage_init init_for(coordinator_actor* self, int s, int i) {
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
  init.run_failed = st.run_failed;
  init.paused = st.paused[static_cast<size_t>(s)];  // a replacement stays paused
  return init;
}

caf::actor spawn_stage(caf::actor_system& sys, stage_init init) {
  return init.def->options.blocking ? sys.spawn<caf::detached>(stage_behavior, std::move(init))
                                    : sys.spawn(stage_behavior, std::move(init));
}

/// The next worker process still alive, in turn; none when all are lost.
caf::actor next_host(coordinator_state& st) {
  for (size_t k = 0; k < st.hosts.size(); ++k) {
    auto& h = st.hosts[(st.next_host + k) % st.hosts.size()];
    if (h.alive) {
      st.next_host = (st.next_host + k + 1) % st.hosts.size();
      return h.actor;
    }
  }
  return {};
}

/// Starts instance `i` of stage `s`: in a worker process for an on_workers stage while one
/// is alive, in this one otherwise; `then` runs once its actor is known.
void place(coordinator_actor* self, int s, int i, std::function<void()> then) {
  auto& st = self->state;
  auto& rec = st.stages[static_cast<size_t>(s)][static_cast<size_t>(i)];
  rec.actor = caf::actor{};
  caf::actor host;
  if (st.defs[static_cast<size_t>(s)].options.on_workers) host = next_host(st);
  if (!host) {
    install(self, s, i, spawn_stage(self->system(), init_for(self, s, i)));
    then();
    return;
  }
  const uint64_t epoch = rec.epoch;
  self->request(host, std::chrono::seconds(10), pspawn_atom::value, s, i, epoch, rec.checkpoint,
                caf::actor_cast<caf::actor>(self))
      .then(
          [=](caf::actor& a) {
            auto& st = self->state;
            auto& rec = st.stages[static_cast<size_t>(s)][static_cast<size_t>(i)];
            // Finished meanwhile: a train stage downstream needed no more (pfull), and the
            // instance, counted as finished, must not run (its end would count twice).
            if (st.failed || st.ended || rec.epoch != epoch || rec.finished || !a) {
              if (a) self->send_exit(a, caf::exit_reason::kill);
              return;
            }
            install(self, s, i, std::move(a));
            then();
          },
          [=](caf::error&) {
            // That process cannot take it (lost, or too slow to answer): another one, or
            // this one, does.
            auto& st = self->state;
            for (auto& h : st.hosts)
              if (h.actor == host && h.alive) {
                h.alive = false;
                ++st.workers_lost;
              }
            if (st.failed || st.ended ||
                st.stages[static_cast<size_t>(s)][static_cast<size_t>(i)].finished)
              return;
            place(self, s, i, then);
          });
}

void wire(coordinator_actor* self, int s, int i) {
  auto& st = self->state;
  const auto& def = st.defs[static_cast<size_t>(s)];
  pipe_wiring w;
  if (def.input >= 0)
    for (auto& p : st.stages[static_cast<size_t>(def.input)])
      w.producers_finished.push_back(p.finished ? 1 : 0);
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

/// Once every instance is placed: consumers are wired before producers, so that a stage is
/// wired before the first item can reach it.
void start(coordinator_actor* self) {
  auto& st = self->state;
  st.started = true;
  for (size_t s = st.stages.size(); s-- > 0;)
    for (size_t i = 0; i < st.stages[s].size(); ++i)
      wire(self, static_cast<int>(s), static_cast<int>(i));
  for (auto& p : st.starting) p.deliver(true);
  st.starting.clear();
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
      std::chrono::duration<double>(std::chrono::steady_clock::now() - st.started_at).count();
  r.workers_joined = static_cast<int>(st.hosts.size());
  r.workers_lost = st.workers_lost;
  return r;
}

// The train stage whose instance sent the current message, or -1 where the sender is no
// live train stage's instance (or the run failed): pfull and phold stop and pause the stages
// before it, which only the train stage they feed may ask.
int train_stage_asking(coordinator_actor* self) {
  auto& st = self->state;
  auto it = st.by_address.find(caf::actor_cast<caf::actor_addr>(self->current_sender()));
  if (st.failed || it == st.by_address.end() ||
      st.defs[static_cast<size_t>(it->second.first)].kind != stage_kind::train)
    return -1;
  return it->second.first;
}

void conclude(coordinator_actor* self) {
  auto& st = self->state;
  if (!st.failed && st.unfinished > 0) return;
  st.ended = true;  // every request for the result, now or later, gets it
  for (auto& p : st.starting) p.deliver(false);  // it ended before it started
  st.starting.clear();
  for (auto& p : st.waiting) {
    if (st.failed)
      p.deliver(caf::make_error(caf::sec::runtime_error, st.failure));
    else
      p.deliver(make_report(self));
  }
  st.waiting.clear();
}

/// Why an instance died, for the pipeline's error once its restarts are spent.
std::string death_cause(coordinator_actor* self, stage_counters& c, const caf::error& reason) {
  std::lock_guard<std::mutex> lock(c.m);
  std::string why = std::move(c.last_error);
  c.last_error.clear();
  if (!why.empty()) return why;
  // An instance in a worker process: its error came with its death.
  if (reason == caf::sec::runtime_error && !reason.context().empty() &&
      reason.context().match_element<std::string>(0))
    return reason.context().get_as<std::string>(0);
  if (reason == caf::exit_reason::remote_link_unreachable) return "its worker process was lost";
  if (reason == caf::exit_reason::kill) return "its actor was killed";
  return self->system().render(reason);
}

void on_down(coordinator_actor* self, const caf::down_msg& dm) {
  auto& st = self->state;
  // A consumer that died holds nothing of a replaced producer's predecessor: the restarts
  // waiting for its answer wait no more.
  if (auto asks = st.adoption_asks.find(dm.source); asks != st.adoption_asks.end()) {
    auto settle = std::move(asks->second);
    st.adoption_asks.erase(asks);
    for (auto& f : settle) f();
  }
  auto it = st.by_address.find(dm.source);
  if (it == st.by_address.end()) {
    for (auto& h : st.hosts)
      if (h.alive && h.actor.address() == dm.source) {
        h.alive = false;
        ++st.workers_lost;
      }
    return;
  }
  const int s = it->second.first, i = it->second.second;
  st.by_address.erase(it);
  auto& rec = st.stages[static_cast<size_t>(s)][static_cast<size_t>(i)];
  if (st.failed || rec.finished) return;  // finished counts once (see pfull)
  if (!dm.reason) {
    rec.finished = true;
    --st.unfinished;
    // A consumer restarted before this news arrived waits for this instance's end: it gets
    // it again (an end counts once).
    const int c = st.consumer_of[static_cast<size_t>(s)];
    if (c >= 0)
      for (auto& k : st.stages[static_cast<size_t>(c)])
        if (!k.finished && k.actor) self->send(k.actor, pend_atom::value, pipe_end{i});
    // A replaced producer waiting for this instance to adopt its predecessor's items need
    // not wait: it finished them.
    const int p = st.defs[static_cast<size_t>(s)].input;
    if (p >= 0)
      for (auto& r : st.stages[static_cast<size_t>(p)])
        if (!r.finished && r.actor) self->send(r.actor, pdone_atom::value, i);
    conclude(self);
    return;
  }
  const auto& def = st.defs[static_cast<size_t>(s)];
  const std::string why = death_cause(self, *st.counters[static_cast<size_t>(s)], dm.reason);
  ++st.restarts[static_cast<size_t>(s)];
  const bool process_lost = dm.reason == caf::exit_reason::remote_link_unreachable;
  if (!process_lost && ++st.failures[static_cast<size_t>(s)] > def.options.restarts) {
    st.failed = true;
    st.failure = "pipeline stage '" + def.name + "' failed after " +
                 std::to_string(def.options.restarts) + " restarts: " + why;
    for (auto& stage : st.stages)
      for (auto& r : stage)
        if (!r.finished && r.actor) self->send_exit(r.actor, caf::exit_reason::kill);
    conclude(self);
    return;
  }
  ++rec.epoch;
  if (!st.started) {  // died before the start: it is wired with the others
    ++st.placing;
    place(self, s, i, [=] {
      if (--self->state.placing == 0) start(self);
    });
    return;
  }
  // Restart: the replacement is wired first, so that what its producers send it again
  // arrives after its wiring.
  place(self, s, i, [=] {
    auto& st = self->state;
    auto fresh = st.stages[static_cast<size_t>(s)][static_cast<size_t>(i)].actor;
    const uint64_t epoch = st.stages[static_cast<size_t>(s)][static_cast<size_t>(i)].epoch;
    wire(self, s, i);
    // The producers send the replacement what its predecessor had not finished only once its
    // consumers have taken in everything the predecessor sent them: an item to another
    // process carries the acknowledgements of the inputs it was made from, and a consumer
    // that had not read it yet would pass them on too late (the inputs, sent again, went
    // through twice). Each consumer answers the news of the replacement after every message
    // of the predecessor, and the acknowledgements it passes on go before its answer.
    auto answers_due = std::make_shared<int>(1);
    auto tell_producers = [=] {
      if (--*answers_due > 0) return;
      auto& st = self->state;
      const auto& rec = st.stages[static_cast<size_t>(s)][static_cast<size_t>(i)];
      if (st.failed || rec.epoch != epoch) return;  // failed, or replaced again meanwhile
      const int p = st.defs[static_cast<size_t>(s)].input;
      if (p >= 0)
        for (auto& r : st.stages[static_cast<size_t>(p)])
          if (!r.finished && r.actor)
            self->send(r.actor, pcons_atom::value, pipe_replace{i, fresh});
    };
    const int c = st.consumer_of[static_cast<size_t>(s)];
    if (c >= 0)
      for (auto& k : st.stages[static_cast<size_t>(c)])
        if (!k.finished && k.actor) {
          ++*answers_due;
          // Answered, failed or settled by the consumer's death (adoption_asks): once.
          auto answered = [tell_producers, done = std::make_shared<bool>(false)] {
            if (std::exchange(*done, true)) return;
            tell_producers();
          };
          st.adoption_asks[k.actor.address()].push_back(answered);
          self->request(k.actor, caf::infinite, pprod_atom::value, pipe_replace{i, fresh}, epoch)
              .then([=](bool) { answered(); },
                    [=](caf::error&) { answered(); });  // it died: it holds nothing
        }
    tell_producers();
  });
}

void add_host(coordinator_actor* self, caf::actor host) {
  if (!host) return;
  self->monitor(host);
  self->state.hosts.push_back(host_record{std::move(host), true});
}

caf::behavior coordinator_behavior(coordinator_actor* self, std::vector<stage_def> defs,
                                   std::vector<caf::actor> hosts,
                                   std::shared_ptr<const std::atomic<bool>> run_failed) {
  auto& st = self->state;
  st.run_failed = std::move(run_failed);
  st.defs = std::move(defs);
  st.shared_defs = std::make_shared<const std::vector<stage_def>>(st.defs);
  const size_t n = st.defs.size();
  st.consumer_of.assign(n, -1);
  st.stages.resize(n);
  st.restarts.assign(n, 0);
  st.failures.assign(n, 0);
  st.paused.assign(n, false);
  for (size_t s = 0; s < n; ++s) {
    st.counters.push_back(std::make_shared<stage_counters>());
    if (st.defs[s].input >= 0)
      st.consumer_of[static_cast<size_t>(st.defs[s].input)] = static_cast<int>(s);
    st.stages[s].resize(static_cast<size_t>(st.defs[s].options.instances));
    st.unfinished += st.defs[s].options.instances;
  }
  self->set_down_handler([=](caf::down_msg& dm) { on_down(self, dm); });
  for (auto& h : hosts) add_host(self, std::move(h));
  st.placing = st.unfinished;
  for (size_t s = 0; s < n; ++s)
    for (size_t i = 0; i < st.stages[s].size(); ++i)
      place(self, static_cast<int>(s), static_cast<int>(i), [=] {
        if (--self->state.placing == 0) start(self);
      });
  return {
      [=](prun_atom) -> caf::result<run_report> {
        auto p = self->make_response_promise<run_report>();
        self->state.waiting.push_back(p);
        conclude(self);
        return p;
      },
      // run() asks before it calls on_running: stages on worker processes are placed by a
      // request to their process, and until it answers such a stage has no actor (a kill
      // from on_running found none and did nothing).
      [=](pstarted_atom) -> caf::result<bool> {
        auto& st = self->state;
        if (st.started || st.ended) return st.started;
        auto p = self->make_response_promise<bool>();
        st.starting.push_back(p);
        return p;
      },
      [=](phost_atom, caf::actor& host) { add_host(self, std::move(host)); },
      [=](pckpt_atom, const pipe_checkpoint& c) {
        auto& st = self->state;
        auto it = st.by_address.find(caf::actor_cast<caf::actor_addr>(self->current_sender()));
        if (it == st.by_address.end() || it->second != std::make_pair(c.stage, c.instance))
          return;  // from an instance already replaced
        st.stages[static_cast<size_t>(c.stage)][static_cast<size_t>(c.instance)].checkpoint =
            c.position;
      },
      [=](pstat_atom, const pipe_stat& x) {
        auto& st = self->state;
        if (x.stage < 0 || static_cast<size_t>(x.stage) >= st.counters.size()) return;
        auto& c = *st.counters[static_cast<size_t>(x.stage)];
        c.in += x.in;
        c.out += x.out;
        c.raise_peak(x.peak);
      },
      // The jobs of train stages that did not finish: (stage, job id) each, for the caller to
      // cancel when the run fails (they would otherwise train, and bill, on).
      [=](ptrain_atom) {
        auto& st = self->state;
        std::vector<std::string> out;
        for (size_t s = 0; s < st.stages.size(); ++s) {
          if (st.defs[s].kind != stage_kind::train) continue;
          for (const auto& r : st.stages[s]) {
            const auto job = r.checkpoint.substr(0, r.checkpoint.find(' '));
            if (!r.finished && !job.empty()) out.push_back(std::to_string(s) + " " + job);
          }
        }
        return out;
      },
      // A train stage has pushed its samples: the stages before it (a chain that feeds it
      // alone) are stopped, counted as finished, and it is told that its inputs ended.
      [=](pfull_atom) {
        auto& st = self->state;
        const int train = train_stage_asking(self);
        if (train < 0) return;
        for (int p = st.defs[static_cast<size_t>(train)].input; p >= 0;
             p = st.defs[static_cast<size_t>(p)].input)
          for (auto& r : st.stages[static_cast<size_t>(p)]) {
            if (r.finished) continue;
            r.finished = true;
            --st.unfinished;
            if (r.actor) {
              st.by_address.erase(r.actor.address());  // its end is no failure
              self->send_exit(r.actor, caf::exit_reason::kill);
            }
          }
        const int input = st.defs[static_cast<size_t>(train)].input;
        if (input >= 0)
          for (auto& k : st.stages[static_cast<size_t>(train)])
            if (!k.finished && k.actor)
              for (size_t i = 0; i < st.stages[static_cast<size_t>(input)].size(); ++i)
                self->send(k.actor, pend_atom::value, pipe_end{static_cast<int>(i)});
        conclude(self);
      },
      // A train stage starts its push: the source of the chain that feeds it generates no
      // more (its instances, and any replacement), until the push's end stops it (pfull).
      [=](phold_atom) {
        auto& st = self->state;
        const int train = train_stage_asking(self);
        if (train < 0) return;
        int p = st.defs[static_cast<size_t>(train)].input;
        while (p >= 0 && st.defs[static_cast<size_t>(p)].input >= 0)
          p = st.defs[static_cast<size_t>(p)].input;
        if (p < 0) return;
        st.paused[static_cast<size_t>(p)] = true;
        for (auto& r : st.stages[static_cast<size_t>(p)])
          if (!r.finished && r.actor) self->send(r.actor, phold_atom::value);
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

// -- worker processes ---------------------------------------------------------------------

bool same_secret(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t k = 0; k < a.size(); ++k)
    diff |= static_cast<unsigned char>(a[k] ^ (k < b.size() ? b[k] : 0));
  return diff == 0;
}

struct gate_state {
  std::string token;
  std::string fingerprint;
  size_t wanted = 0;
  std::vector<caf::actor> hosts;
  caf::actor coordinator;  ///< Once the pipeline runs: later workers go to it.
  std::vector<caf::response_promise> waiting;
  /// Set once the pipeline gave up before it started: why, for a worker that joins later.
  std::string given_up;
};

using gate_actor = caf::stateful_actor<gate_state>;

/// The pipeline's published actor: the only one a process that connects can reach before it
/// has joined. It admits worker processes with the token and the same graph.
caf::behavior gate_behavior(gate_actor* self, std::string token, std::string fingerprint,
                            size_t wanted) {
  self->state.token = std::move(token);
  self->state.fingerprint = std::move(fingerprint);
  self->state.wanted = wanted;
  auto local = [=] {
    return self->current_sender() && self->current_sender()->node() == self->node();
  };
  auto deliver = [=] {
    auto& st = self->state;
    if (st.hosts.size() < st.wanted) return;
    for (auto& p : st.waiting) p.deliver(st.hosts);
    st.waiting.clear();
  };
  return {
      [=](pjoin_atom, const std::string& token, const std::string& fingerprint,
          caf::actor& host) -> caf::result<bool> {
        auto& st = self->state;
        if (!same_secret(token, st.token))
          return caf::make_error(caf::sec::runtime_error, std::string("pipeline: a wrong token"));
        if (fingerprint != st.fingerprint)
          return caf::make_error(caf::sec::runtime_error,
                                 std::string("pipeline: this process builds a different graph "
                                             "(stages, wiring, instances or placement differ)"));
        if (!host || host.node() != self->current_sender()->node())
          return caf::make_error(caf::sec::runtime_error,
                                 std::string("pipeline: a worker joins with its own host"));
        if (!st.given_up.empty())
          return caf::make_error(caf::sec::runtime_error,
                                 "pipeline: the pipeline did not start: " + st.given_up);
        st.hosts.push_back(host);
        if (st.coordinator) self->send(st.coordinator, phost_atom::value, host);
        deliver();
        return true;
      },
      [=](pwait_atom) -> caf::result<std::vector<caf::actor>> {
        if (!local()) return caf::sec::unexpected_message;
        auto p = self->make_response_promise<std::vector<caf::actor>>();
        self->state.waiting.push_back(p);
        deliver();
        return p;
      },
      [=](prun_atom, caf::actor& coordinator) {
        if (local()) self->state.coordinator = std::move(coordinator);
      },
      [=](phosts_atom) -> caf::result<std::vector<caf::actor>> {
        if (!local()) return caf::sec::unexpected_message;
        return self->state.hosts;
      },
      // The pipeline gives up before it starts: all that joined, each to be told why, and
      // a worker that joins while they are told is refused with the reason (it saw only
      // this actor go, and took the pipeline's process for lost).
      [=](pbye_atom, std::string& why) -> caf::result<std::vector<caf::actor>> {
        if (!local() || why.empty()) return caf::sec::unexpected_message;
        self->state.given_up = std::move(why);
        return self->state.hosts;
      },
  };
}

struct host_state {
  std::shared_ptr<const std::vector<stage_def>> defs;
  std::vector<caf::actor> instances;
  std::shared_ptr<std::atomic<int>> spawned;
  caf::actor gate;
  bool ended = false;
};

using host_actor = caf::stateful_actor<host_state>;

/// A worker process's actor: starts the stage instances the pipeline places here, and ends
/// with the pipeline (or when the pipeline's process is lost).
caf::behavior host_behavior(host_actor* self, std::shared_ptr<const std::vector<stage_def>> defs,
                            std::shared_ptr<std::atomic<int>> spawned, caf::actor gate) {
  self->state.defs = std::move(defs);
  self->state.spawned = std::move(spawned);
  self->state.gate = gate;
  self->monitor(gate);
  self->set_down_handler([=](caf::down_msg& dm) {
    if (dm.source != self->state.gate.address()) return;
    for (auto& a : self->state.instances) self->send_exit(a, caf::exit_reason::kill);
    self->quit(caf::make_error(caf::sec::runtime_error,
                               std::string("pipeline: the pipeline's process was lost")));
  });
  auto from_pipeline = [=] {
    return self->current_sender() && self->current_sender()->node() == gate.node();
  };
  return {
      [=](pspawn_atom, int s, int i, uint64_t epoch, const std::string& checkpoint,
          caf::actor& coordinator) -> caf::result<caf::actor> {
        auto& st = self->state;
        if (!from_pipeline() || s < 0 || static_cast<size_t>(s) >= st.defs->size() ||
            !(*st.defs)[static_cast<size_t>(s)].options.on_workers || i < 0 ||
            i >= (*st.defs)[static_cast<size_t>(s)].options.instances)
          return caf::sec::unexpected_message;
        stage_init init;
        init.defs = st.defs;
        init.def = &(*st.defs)[static_cast<size_t>(s)];
        init.stage = s;
        init.instance = i;
        init.epoch = epoch;
        init.coordinator = std::move(coordinator);
        init.checkpoint = checkpoint;
        init.counters = std::make_shared<stage_counters>();
        init.remote = true;
        auto a = spawn_stage(self->system(), std::move(init));
        st.instances.push_back(a);
        ++*st.spawned;
        return a;
      },
      [=](pbye_atom) -> bool {
        if (!from_pipeline()) return false;
        for (auto& a : self->state.instances) self->send_exit(a, caf::exit_reason::kill);
        self->quit();
        return true;
      },
      // The pipeline gave up before it started (too few workers joined, its deadline passed,
      // on_listening threw): join() returns why, not that the pipeline's process was lost.
      [=](pbye_atom, const std::string& why) -> bool {
        if (!from_pipeline()) return false;
        for (auto& a : self->state.instances) self->send_exit(a, caf::exit_reason::kill);
        self->quit(caf::make_error(caf::sec::runtime_error,
                                   "pipeline: the pipeline did not start: " + why));
        return true;
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

/// `workers`: the run's worker processes; -1 in a worker process (which does not check it).
expected<void> validate(const std::vector<stage_def>& stages, int workers) {
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
    if (d.kind == stage_kind::train && workers >= 0) {
      // Its options and spec are checked now, before any stage starts: at run time a bad one
      // fails the stage only after the upstream has run. Not in a worker process (workers
      // -1): a train stage never runs there, and a worker has no client to give it.
      try {
        train_driver probe(d.train);
      } catch (const std::exception& e) {
        return bad(at + e.what());
      }
    }
    if (d.options.on_workers) {
      if (d.kind == stage_kind::train)
        return bad(at + "a train stage runs in the pipeline's own process, not on workers");
      // A source sends its item, then its position to the coordinator: two messages, and a
      // worker process killed between them left the item sent and the position before it,
      // so the replacement generated that item again (twice through the pipeline).
      if (source) return bad(at + "a source runs in the pipeline's own process, not on workers");
      if (workers == 0)
        return bad(at + "runs on workers, but the run has none (run_options::workers)");
      if (d.input >= 0 && !stages[static_cast<size_t>(d.input)].decode)
        return bad(at + "runs on workers, but its input type (the output of '" +
                   stages[static_cast<size_t>(d.input)].name +
                   "') has no gflex::pipeline::codec to cross processes");
    }
  }
  for (size_t s = 0; s < stages.size(); ++s) {
    if (readers[s] < 0 && stages[s].kind != stage_kind::sink && stages[s].kind != stage_kind::train)
      return bad("pipeline stage " + std::to_string(s) + " '" + stages[s].name +
                 "': nothing reads its output (end the pipeline with a sink)");
    if (readers[s] >= 0 && !stages[s].encode &&
        (stages[s].options.on_workers ||
         stages[static_cast<size_t>(readers[s])].options.on_workers))
      return bad("pipeline stage " + std::to_string(s) + " '" + stages[s].name +
                 "': its output crosses processes, but its type has no gflex::pipeline::codec");
  }
  return {};
}

std::string render(caf::actor_system& sys, const caf::error& e) {
  if (!e.context().empty() && e.context().match_element<std::string>(0))
    return e.context().get_as<std::string>(0);
  return sys.render(e);
}

}  // namespace

/// The actor system of a pipeline's process or of a worker process: with `network`, the
/// middleman and the messages that cross processes.
void configure_pipeline_system(caf::actor_system_config& cfg, bool network) {
  cfg.set("scheduler.max-threads",
          static_cast<size_t>(std::max(2u, std::thread::hardware_concurrency())));
  if (!network) return;
  // A worker process whose machine lost power or its network, or that was stopped, sends no
  // reset: without heartbeats CAF never saw it go, its instances were never restarted, and
  // run() and join() waited for ever. As the runtime's own links (configure_actor_system).
  cfg.set("middleman.heartbeat-interval", caf::timespan{link_heartbeat});
  cfg.set("middleman.connection-timeout", caf::timespan{link_silence});
  cfg.load<caf::io::middleman>();
  cfg.add_message_type<pipe_wire_item>("gflex_pipe_wire_item");
  cfg.add_message_type<pipe_ack>("gflex_pipe_ack");
  cfg.add_message_type<pipe_end>("gflex_pipe_end");
  cfg.add_message_type<pipe_wiring>("gflex_pipe_wiring");
  cfg.add_message_type<pipe_replace>("gflex_pipe_replace");
  cfg.add_message_type<pipe_wire_adoption>("gflex_pipe_wire_adoption");
  cfg.add_message_type<pipe_checkpoint>("gflex_pipe_checkpoint");
  cfg.add_message_type<pipe_stat>("gflex_pipe_stat");
  cfg.add_message_type<std::vector<caf::actor>>("gflex_actor_list");
  cfg.add_message_type<std::vector<int32_t>>("gflex_int32_list");
}

}  // namespace gflex::pipeline::detail

namespace gflex::pipeline {

expected<run_report> graph::run(const std::function<void(running&)>& on_running,
                                std::chrono::milliseconds deadline) const {
  run_options options;
  options.on_running = on_running;
  options.deadline = deadline;
  return run(options);
}

expected<run_report> graph::run(const run_options& options) const {
  // The deadline counts from here: from after on_running (and the workers' joining) a run
  // whose on_running blocked had none while it did.
  const auto deadline_at = std::chrono::steady_clock::now() + options.deadline;
  if (auto ok = detail::validate(*stages_, options.workers); !ok) return ok.error();
  if (options.workers < 0 || options.workers > 256)
    return error(errc::invalid_argument, "pipeline: workers must be in [0, 256]");
  if (options.deadline.count() < 0)
    return error(errc::invalid_argument,
                 "pipeline: the deadline must not be negative (zero: no deadline)");
  if (options.join_timeout.count() < 0)
    return error(errc::invalid_argument, "pipeline: join_timeout must not be negative");
  if (options.workers > 0 && options.token.size() < 16)
    return error(errc::invalid_argument,
                 "pipeline: worker processes need a token of at least 16 characters");
  caf::actor_system_config cfg;
  detail::configure_pipeline_system(cfg, options.workers > 0);
  caf::actor_system sys{cfg};
  caf::scoped_actor self{sys};
  std::vector<caf::actor> hosts;
  caf::actor gate;
  // Before the start: the workers that joined are told why the pipeline gives up, each
  // answering before this process closes its links, and then the gate stops. Stopped alone,
  // the gate's end was all they saw, and they ended with "the pipeline's process was lost".
  auto give_up = [&](const std::string& why) {
    std::vector<caf::actor> joined;
    self->request(gate, std::chrono::seconds(5), detail::pbye_atom::value, why)
        .receive([&](std::vector<caf::actor>& h) { joined = std::move(h); }, [](caf::error&) {});
    for (auto& h : joined)
      self->request(h, std::chrono::seconds(2), detail::pbye_atom::value, why)
          .receive([](bool) {}, [](caf::error&) {});
    self->send_exit(gate, caf::exit_reason::user_shutdown);
  };
  if (options.workers > 0) {
    gate = sys.spawn(detail::gate_behavior, options.token, detail::fingerprint(*stages_),
                     static_cast<size_t>(options.workers));
    auto port = sys.middleman().publish(gate, options.port, options.listen_host.c_str(), true);
    if (!port) {
      self->send_exit(gate, caf::exit_reason::user_shutdown);
      return error(errc::unavailable, "pipeline: cannot listen on " + options.listen_host + ":" +
                                          std::to_string(options.port) + ": " +
                                          detail::render(sys, port.error()));
    }
    if (options.on_listening) {
      // The caller's exception goes back to it, the gate stopped first (else the actor
      // system's end would wait for it for ever).
      try {
        options.on_listening(*port);
      } catch (...) {
        give_up("on_listening threw");
        throw;
      }
    }
    // The run's deadline bounds the wait too (it counts from the call of run()).
    auto wait_for = options.join_timeout;
    bool deadline_first = false;
    if (options.deadline.count() > 0) {
      const auto left = std::max(std::chrono::milliseconds(1),
                                 std::chrono::duration_cast<std::chrono::milliseconds>(
                                     deadline_at - std::chrono::steady_clock::now()));
      deadline_first = left < wait_for;
      wait_for = std::min(wait_for, left);
    }
    std::optional<std::string> failed;
    self->request(gate, caf::duration{wait_for}, detail::pwait_atom::value)
        .receive([&](std::vector<caf::actor>& h) { hosts = std::move(h); },
                 [&](caf::error&) {
                   char text[64];
                   std::snprintf(text, sizeof text, "%g",
                                 static_cast<double>(options.deadline.count()) / 1000.0);
                   failed = deadline_first
                                ? "its deadline of " + std::string(text) +
                                      " s passed while it waited for " +
                                      std::to_string(options.workers) + " worker processes to join"
                                : std::to_string(options.workers) +
                                      " worker processes did not join within " +
                                      std::to_string(options.join_timeout.count()) + " ms";
                 });
    if (failed) {
      give_up(*failed);
      return error(errc::unavailable, "pipeline: " + *failed);
    }
  }
  auto run_failed = std::make_shared<std::atomic<bool>>(false);
  auto coordinator = sys.spawn(detail::coordinator_behavior, *stages_, hosts,
                               std::shared_ptr<const std::atomic<bool>>(run_failed));
  if (gate) self->send(gate, detail::prun_atom::value, coordinator);
  const auto deadline = options.deadline;
  auto time_left = [&] {
    return std::max(std::chrono::milliseconds(1),
                    std::chrono::duration_cast<std::chrono::milliseconds>(
                        deadline_at - std::chrono::steady_clock::now()));
  };
  const std::string deadline_passed = [&] {
    char text[64];
    std::snprintf(text, sizeof text, "%g", static_cast<double>(deadline.count()) / 1000.0);
    return "pipeline: its deadline of " + std::string(text) + " s passed";
  }();
  // Stopped at the deadline even while on_running has not returned.
  if (deadline.count() > 0)
    self->delayed_send(coordinator, time_left(), detail::pstop_atom::value, deadline_passed);
  // An exception from the caller's on_running stops the run as a failure (every stage
  // killed, a train stage's job cancelled, the workers told) and is then rethrown: unwound
  // at once, the actor system's end would wait for the running stages for ever.
  std::exception_ptr thrown;
  // The handle lives until the run has ended, not just through on_running: a caller's thread
  // that kills a stage later (fault injection while the run goes on) used it destroyed.
  detail::running_pipeline handle(sys, coordinator);
  // on_running is called once every stage has an actor, those placed on worker processes
  // included (bounded by the deadline); not for a run that ended before (its deadline
  // passed, or a stage failed past its restarts, while the stages were placed).
  bool started = false;
  if (options.on_running)
    self->request(coordinator, deadline.count() > 0 ? caf::duration{time_left()} : caf::infinite,
                  detail::pstarted_atom::value)
        .receive([&](bool s) { started = s; }, [](caf::error&) {});
  if (started) {
    try {
      options.on_running(handle);
    } catch (...) {
      thrown = std::current_exception();
      self->send(coordinator, detail::pstop_atom::value, std::string("pipeline: on_running threw"));
    }
  }
  expected<run_report> result = error(errc::stage_failed, "pipeline: no result");
  auto wait = [&](caf::duration limit) {
    bool timed_out = false;
    self->request(coordinator, limit, detail::prun_atom::value)
        .receive([&](run_report& r) { result = std::move(r); },
                 [&](caf::error& e) {
                   if (e == caf::sec::request_timeout) {
                     timed_out = true;
                     return;
                   }
                   result = error(errc::stage_failed, detail::render(sys, e));
                 });
    return timed_out;
  };
  if (deadline.count() > 0 ? wait(caf::duration{time_left()}) : wait(caf::infinite)) {
    self->send(coordinator, detail::pstop_atom::value, deadline_passed);
    wait(caf::infinite);
    if (result)
      result = error(errc::unavailable, "pipeline: its deadline passed");
    else
      result = error(errc::unavailable, result.error().message());
  } else if (!result && deadline.count() > 0 && std::chrono::steady_clock::now() >= deadline_at) {
    result = error(errc::unavailable, result.error().message());  // stopped at the deadline
  }
  if (!result) {
    // A failed run leaves no job of its train stages training (and billing) behind. Said
    // before the coordinator is asked: a stage that submits its job after it answered cancels
    // that job itself (submit_train).
    run_failed->store(true);
    std::vector<std::string> left;
    self->request(coordinator, std::chrono::seconds(10), detail::ptrain_atom::value)
        .receive([&](std::vector<std::string>& l) { left = std::move(l); }, [](caf::error&) {});
    std::string cancelled;
    for (const auto& entry : left) {
      const auto space = entry.find(' ');
      const auto s = static_cast<size_t>(std::stoul(entry.substr(0, space)));
      const auto job = entry.substr(space + 1);
      auto* c = (*stages_)[s].train.client;
      if (c == nullptr) continue;
      if (auto ok = c->cancel(job); ok)
        cancelled += (cancelled.empty() ? "" : ", ") + job;
      else if (ok.error().message().find("has already ended") == std::string::npos)
        cancelled += (cancelled.empty() ? "" : ", ") + job +
                     " (not cancelled: " + ok.error().message() + ")";
    }
    if (!cancelled.empty())
      result = error(result.error().code(),
                     result.error().message() + "; its training job(s) cancelled: " + cancelled);
  }
  self->send_exit(coordinator, caf::exit_reason::user_shutdown);
  if (gate) {
    // The workers end with the pipeline: each is told, and answers, before this process
    // closes its links (a lost one does not answer and is not waited for long).
    std::vector<caf::actor> joined;
    self->request(gate, std::chrono::seconds(5), detail::phosts_atom::value)
        .receive([&](std::vector<caf::actor>& h) { joined = std::move(h); }, [](caf::error&) {});
    for (auto& h : joined)
      self->request(h, std::chrono::seconds(2), detail::pbye_atom::value)
          .receive([](bool) {}, [](caf::error&) {});
    self->send_exit(gate, caf::exit_reason::user_shutdown);
  }
  if (thrown) std::rethrow_exception(thrown);
  return result;
}

expected<join_report> graph::join(const join_options& options) const {
  if (auto ok = detail::validate(*stages_, -1); !ok) return ok.error();
  if (options.connect_timeout.count() < 0)
    return error(errc::invalid_argument, "pipeline: connect_timeout must not be negative");
  caf::actor_system_config cfg;
  detail::configure_pipeline_system(cfg, true);
  caf::actor_system sys{cfg};
  const std::string where = options.host + ":" + std::to_string(options.port);
  // The pipeline may not be listening yet: tried again until the timeout. Each try is
  // probed first with the time left: remote_actor connects in blocking mode, and to an
  // address whose packets are dropped it waited for the kernel's SYN retries (about 2
  // minutes), whatever the timeout.
  const auto until = std::chrono::steady_clock::now() + options.connect_timeout;
  caf::expected<caf::actor> gate = caf::sec::cannot_connect_to_node;
  std::string why;
  while (true) {
    const auto left = std::max(std::chrono::milliseconds(100),
                               std::chrono::duration_cast<std::chrono::milliseconds>(
                                   until - std::chrono::steady_clock::now()));
    if (auto reachable = probe_tcp(options.host, options.port, left); !reachable) {
      why = reachable.error().message();
    } else {
      gate = sys.middleman().remote_actor(options.host, options.port);
      if (gate) break;
      why = where + ": " + detail::render(sys, gate.error());
    }
    if (std::chrono::steady_clock::now() >= until) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  if (!gate)
    return error(errc::unavailable,
                 "pipeline: cannot reach the pipeline at " + why + " (tried for " +
                     std::to_string(options.connect_timeout.count()) + " ms: connect_timeout)");
  auto defs = std::make_shared<const std::vector<detail::stage_def>>(*stages_);
  auto spawned = std::make_shared<std::atomic<int>>(0);
  auto host = sys.spawn(detail::host_behavior, defs, spawned, *gate);
  caf::scoped_actor self{sys};
  std::optional<error> refused;
  self->request(*gate, std::chrono::seconds(10), detail::pjoin_atom::value, options.token,
                detail::fingerprint(*stages_), host)
      .receive([](bool) {},
               [&](caf::error& e) {
                 refused = error(errc::permission_denied, "pipeline at " + where +
                                                              " refused "
                                                              "this process: " +
                                                              detail::render(sys, e));
               });
  if (refused) {
    self->send_exit(host, caf::exit_reason::kill);
    return *refused;
  }
  self->monitor(host);
  std::optional<error> lost;
  self->receive([&](caf::down_msg& dm) {
    if (dm.reason) lost = error(errc::unavailable, detail::render(sys, dm.reason));
  });
  if (lost) return *lost;
  return join_report{spawned->load()};
}

}  // namespace gflex::pipeline
