#include "job.hpp"

#include "billing.hpp"

#include <sodium.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <utility>

#include "core_metrics.hpp"
#include "data_catalog.hpp"
#include "evaluation_budget.hpp"
#include "gflex/kernels/trainer.hpp"
#include "gflex/runtime/check.hpp"
#include "gflex/runtime/checkpoint.hpp"
#include "gflex/runtime/identity.hpp"
#include "gflex/runtime/payload_chunks.hpp"
#include "gflex/runtime/tensor_codec.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "leave_out_backoff.hpp"
#include "messages.hpp"
#include "reputation.hpp"
#include "robust_aggregation.hpp"
#include "store_write.hpp"

namespace gflex {

std::string job_record_key(const std::string& job_id) {
  return "job/" + job_id + "/record";
}
std::string job_checkpoint_key(const std::string& job_id) {
  return "job/" + job_id + "/checkpoint";
}

namespace {

using clock_type = std::chrono::steady_clock;

/// An assignment out on a worker.
struct in_flight {
  int64_t shard = 0;
  worker_slot slot;
  clock_type::time_point started;
  assignment work;  // as sent, without its parameters (kept for a re-computation)
};

/// Where an accepted result stands with verification.
enum class check_state : uint8_t {
  deciding,    // the reputation tracker is drawing whether to re-compute it
  verifying,   // a core-tier worker is re-computing it
  clear,       // not sampled (or from the core tier)
  verified,    // re-computed and matched
  unverified,  // sampled, but used without re-computation (no core-tier worker; policy accept)
};

/// A result that passed the immediate checks.
struct round_result {
  uint64_t assignment_id = 0;
  worker_slot slot;
  assignment work;
  packed_update update;  // as it came (int8 at a quarter of its float size), read by blocks
  double loss = 0.0;
  double compute_s = 0.0;
  double wall_s = 0.0;  // from sending the assignment to its answer, as the core saw it
  check_state check = check_state::deciding;
  bool excluded = false;  // an outlier left out of the round's mean while it is re-computed
  // Screened as unlike the rest of its round (an outlier, or one that stands out): used only
  // once a re-computation reproduces it.
  bool stood_out = false;
  // Counted in the job's screened_results already: a round collected again after a rollback
  // is screened anew, and a result it kept is one result however often it is screened.
  bool counted_screened = false;
  // A count sketch of the update (update_sketch; empty for a core-tier result): the round's
  // later results are compared with it, a copy of another key's result being re-computed.
  std::vector<float> sketch{};
  // Its asks of the verifier in a row that were refused (the verifier held all it may) or
  // found no core-tier worker: each waits twice as long as the one before (verify). Asked
  // again every 5 s, thousands of refused results made the job re-ask some hundreds of times
  // a second, each ask unpacking the whole update and logging a line.
  int verify_deferrals = 0;
  // What the verifier said of its last ask that was not answered with a re-computation: the
  // wait is logged once per change of it, not at every ask.
  errc verify_said = errc::none;
  // A re-ask is scheduled (verify): an ask made meanwhile (to a restarted verifier) takes
  // its place.
  bool reask_due = false;
};

using round_results = std::map<int64_t, round_result>;  // by shard: the first valid one wins

/// Reads the same block of coordinates of several results' updates into buffers of its own:
/// how a round's updates are screened and averaged without decoding any of them whole.
class update_blocks {
 public:
  static constexpr size_t size = size_t{1} << 16;

  update_blocks(size_t dim, size_t results)
      : dim_(dim), buffers_(results, std::vector<float>(std::min(size, dim))) {}

  /// Coordinates [begin, begin + size) (fewer at the end) of each result's update.
  std::vector<std::span<const float>> read(const std::vector<round_result*>& results,
                                           size_t begin) {
    const size_t len = std::min(size, dim_ - begin);
    std::vector<std::span<const float>> out;
    for (size_t i = 0; i < results.size(); ++i) {
      std::span<float> into(buffers_[i].data(), len);
      results[i]->update.read(begin, into);
      out.emplace_back(into);
    }
    return out;
  }

 private:
  size_t dim_;
  std::vector<std::vector<float>> buffers_;
};

/// A round that has been applied to the parameters while some of its results are still
/// being verified. The next round runs on top of it; if a verification fails, both are
/// undone (theta and momentum restored) and this round is collected again without the
/// caught node's work. It is committed only once every sampled result is verified.
struct unconfirmed_round {
  int64_t index = 0;
  std::vector<float> theta_before;
  std::vector<float> momentum_before;
  std::shared_ptr<const shared_params> params;
  round_results results;
  double train_loss_before = 0.0;
  int64_t nodes_before = 0;
};

/// A committed round's figures: what clients are shown of a running job, and what an ended
/// job's record says, never those of a round that a crash or a failed verification could
/// still take back. All of them together: a status with one round's count and another's
/// test loss paired figures that never were. The bill is among them: a round is paid in the
/// transaction that commits it, and shown paid before, it was shown paid by a round that a
/// crash took back (the figures went down after a restart), and a client that reports each
/// rise of credits_spent never heard of the real payment.
struct committed_figures {
  int64_t round = 0;
  double test_accuracy = 0.0;
  double test_loss = 0.0;
  double train_loss = 0.0;
  int64_t nodes = 0;
  double compute_s = 0.0;
  int64_t credits_spent = 0;
  double device_hours = 0.0;
  int64_t cloud_cost = 0;

  static committed_figures of(const job_status& s) {
    return {s.round,     s.test_accuracy, s.test_loss,    s.train_loss, s.nodes,
            s.compute_s, s.credits_spent, s.device_hours, s.cloud_cost};
  }
  /// Puts these figures in `s`, its history cut after their round.
  void show_in(job_status& s) const {
    s.round = round;
    s.test_accuracy = test_accuracy;
    s.test_loss = test_loss;
    s.train_loss = train_loss;
    s.nodes = nodes;
    s.compute_s = compute_s;
    s.credits_spent = credits_spent;
    s.device_hours = device_hours;
    s.cloud_cost = cloud_cost;
    trim_history(s.history, round);
  }
};

struct job_actor_state {
  job_start job;
  job_links links;
  std::string verifier_missing;  // why the last re-computation found no core-tier worker
  std::unique_ptr<kernels::workload> workload;
  std::shared_ptr<const served_data> data;
  dataset tested;  // the test samples an evaluation takes (evaluation_budget.hpp)

  // The current round.
  std::shared_ptr<const shared_params> round_params;  // encoded theta it started from
  std::deque<int64_t> unassigned;                     // shards still to hand out
  std::map<uint64_t, in_flight> pending;
  round_results results;
  std::map<int64_t, int> copies;  // assignments out per shard (backups make it > 1)
  std::set<int64_t> backed_up;    // shards given a backup copy this round
  std::vector<double> durations;  // seconds each answered assignment of this round took
  std::chrono::steady_clock::time_point round_started;
  // When the round's first assignment went out: its quorum deadline counts from there, not
  // from its opening, so that time paused for budget or waiting for workers does not close
  // it on the first results that come in.
  std::optional<std::chrono::steady_clock::time_point> first_sent;
  bool closing = false;  // past its deadline with a quorum: close with what is in
  bool waiting_for_workers = false;
  std::optional<unconfirmed_round> unconfirmed;
  // Nodes (by key) whose workers said this round's work diverged (non-finite): what each said
  // last, and when it first said it. Decided on (decide_divergence) once the round cannot go
  // on without them, or diverged_nodes_to_fail of them said it.
  struct divergence_report {
    std::string said;
    clock_type::time_point first;
  };
  std::map<std::vector<uint8_t>, divergence_report> diverged;
  // Their nodes (by id): an acquire that finds every other node busy or gone, and only these
  // left out, finds no node left to compute the round's work.
  std::set<std::string> diverged_nodes;
  // The work the last of them said diverged, and its words: what the core tier is asked to
  // compute should the round's divergence be checked.
  assignment diverged_work;
  std::string diverged_said;
  // Whether one of them is a core-tier node's (the platform's own word), and whether the
  // round's divergence is being re-computed on the core tier, or was and did not diverge there
  // (the reports are then not believed for the rest of the round).
  bool diverged_on_core = false;
  bool divergence_checking = false;
  // What the divergence check asked (asked again of a restarted verifier).
  assignment divergence_work;
  std::string divergence_said;
  // While the check waits for a core-tier worker, what the job's status says of the wait
  // (show_divergence_wait); empty otherwise.
  std::string divergence_waiting;
  // Counts the verifiers this job has asked: a restarted one holds none of the checks the
  // one before held (their promises went with it, never answered), so they are asked again,
  // and answers to an earlier one's requests are ignored.
  uint64_t verifier_generation = 0;
  bool divergence_disproved = false;
  std::set<std::string> caught;  // nodes caught misbehaving during this job
  // Rejections the reputation tracker has not taken yet (report_rejection). An ended job stays
  // until they are told (ended_and_recorded): a job that ended then lost them.
  int rejections_untold = 0;
  bool ended_and_recorded = false;
  /// Nodes (by id) this job's work does not suit: it ran out of their memory, or ran past
  /// the round's deadline on them. The market leaves them out of the job's acquires until
  /// `until` (leave_out: a while, doubling each time, up to 30 minutes: the model may not fit
  /// or be too slow there at all, or another program held the node for a while). Sent again
  /// at once, the work failed there again, round after round, with no word of why.
  struct unsuited_node {
    std::string failure;  // what the work did there: "ran out of their memory (...)"
    leave_out_backoff backoff;
  };
  std::map<std::string, unsuited_node> unsuited;
  /// Each node key's last updates, sketched: a node that sends its stored updates in turn
  /// repeats none of them back to back. For the keys heard from last, four times as many as
  /// the job's workers (and 64 more), replaced over the job's life.
  std::optional<replay_sketches> last_sketches;
  // Metered jobs: escrow held per round index (a rolled-back round keeps its hold), and
  // whether the next round waits for its hold or for a top-up.
  std::map<int64_t, int64_t> held;
  bool holding = false;
  bool paused = false;
  bool paused_for_budget = false;  // re-tried when a round settles and frees escrow
  // Paused because the account could not hold a round's escrow (its budget could): a top-up
  // of 0 resumes it once the account is credited (topup_atom).
  bool paused_for_account = false;
  // Drawn at the actor's start; names this run's ledger operations (ledger_op), so that a
  // restarted job's operations never meet those of the run it replaces.
  std::string run_id;
  // Ledger operations whose outcome is being asked (ask_booked), by operation id.
  std::map<std::string, std::function<void(bool)>> asking;
  // What the last durable commit holds; clients are shown these, never rounds that a crash
  // or a failed verification could still take back.
  committed_figures durable;
  bool finished = false;
  // A round's commit (its record and checkpoint, and its payments) is on its way: a job that
  // ends meanwhile writes its end record once it is answered, from what is durable then (the
  // end record, written first, said the round before while the checkpoint and the payments
  // were the round's, and an answer after the end paused the ended job).
  int settling = 0;  // commits on their way
  // The escrow of the round whose commit is on its way: the ledger holds it until the commit
  // lands (it leaves st.held when the round is settled in memory), so the status still shows
  // it held, as the bill does not show the round paid yet.
  int64_t settling_hold = 0;
  // Escrow an interrupted run left is still to be returned (return_stale_escrow): a job that
  // ends meanwhile (cancelled) writes its end once it is back. Its end returns only what
  // this run holds, and the interrupted run's escrow stayed held for good.
  bool stale_escrow = false;
  // Rounds' commits are numbered as they are sent (from 1); those not yet answered. A
  // top-up's record is written once every commit sent before it is answered: a round's
  // record, encoded before the top-up and booked through the ledger, could otherwise land
  // after the top-up's and take the added budget back.
  int64_t commits_sent = 0;
  std::set<int64_t> commits_open;
  struct budget_write {
    int64_t after = 0;    ///< The last commit sent before the top-up.
    uint64_t number = 0;  ///< The top-up's (its give-up timer names it).
    std::function<void()> write;
    std::function<void()> give_up;  ///< Past topup_wait: refused, nothing changed.
  };
  std::vector<budget_write> budget_writes;
  uint64_t topups = 0;
  // A round's escrow hold is on its way (or asked after): a job that ends meanwhile records
  // its end, returning escrow, once it is answered, with the hold if it was booked.
  bool hold_in_flight = false;
  // Answered once the job's end is recorded (or cannot be): a cancel is acknowledged only
  // when a restarted core would no longer resume the job.
  std::vector<caf::typed_response_promise<caf::ok_atom>> end_waiters;
  // Cancels that came while the last round's commit was on its way (try_confirm shows the job
  // done from then): answered once it is (answer_waiting_cancels). Taken at once, a job whose
  // every round then committed was recorded "cancelled by its owner".
  std::vector<caf::typed_response_promise<caf::ok_atom>> cancels_at_last_commit;
  int end_writes_failed = 0;  // the end record's writes that failed so far (it is tried again)
  int escrow_tries = 0;       // asks of the ledger for an interrupted run's escrow that failed
  // A round's escrow hold the ledger could not book (its store failed, its keeper restarted
  // and lost its queue): asked again (hold_again) after a wait that grows with hold_tries.
  // Paused as a refused one was, the job waited for a top-up that its account and budget
  // did not need, and one at its budget's cap could never be resumed.
  int hold_tries = 0;
  std::function<void()> hold_again;
  std::set<caf::actor_addr> monitored;

  clock_type::time_point resumed_at = clock_type::now();
  double elapsed_before = 0.0;

  static inline const char* name = "job";
};

using job_actor = caf::stateful_actor<job_actor_state>;

uint64_t fresh_assignment_id() {
  uint64_t id = 0;
  while (id == 0) randombytes_buf(&id, sizeof id);  // unique and unguessable
  return id;
}

uint64_t mix_seed(uint64_t seed, uint64_t round, uint64_t shard) {
  uint64_t z = seed ^ (round * 0x9E3779B97F4A7C15ULL) ^ (shard * 0xBF58476D1CE4E5B9ULL);
  z = (z ^ (z >> 31)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 29);
}

std::string format_g(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", x);
  return buf;
}

// The job's status as clients are shown it: a running job's figures (its bill included) are
// those of its last durable commit.
job_status shown_status(job_actor* self) {
  auto& st = self->state;
  auto& s = st.job.status;
  s.elapsed_s =
      st.elapsed_before + std::chrono::duration<double>(clock_type::now() - st.resumed_at).count();
  auto shown = s;
  if (!is_terminal(s.state)) {
    st.durable.show_in(shown);
    shown.credits_held += st.settling_hold;
  }
  if (shown.round > 0 && s.state == job_state::running) {
    double per_round = s.elapsed_s / static_cast<double>(shown.round);
    shown.eta_s = s.eta_s = per_round * static_cast<double>(s.rounds - shown.round);
  }
  return shown;
}

void publish(job_actor* self) {
  self->send(self->state.links.supervisor, progress_atom::value, shown_status(self));
}

void dispatch(job_actor* self);
void start_round(job_actor* self);

bool metered(const job_actor_state& st) {
  return !st.job.spec.account.empty();
}

std::string escrow_of(const job_actor_state& st) {
  return "escrow/" + st.job.id;
}

int64_t total_held(const job_actor_state& st) {
  int64_t sum = 0;
  for (const auto& [round, amount] : st.held) sum += amount;
  return sum;
}

// The ledger's id of this run's operation `what` for round `index` (0-based).
std::string ledger_op(const job_actor_state& st, const char* what, int64_t index) {
  return st.job.id + "/" + st.run_id + "/" + what + "/" + std::to_string(index);
}

// Whether a failed ledger request may still have been booked: a timeout, or the keeper gone
// with the request queued (CAF's own errors). The keeper's refusals are definite.
bool outcome_unknown(const caf::error& e) {
  return e.category() != error_category;
}

void ask_booked(job_actor* self, const std::string& op);

// Learns whether the ledger booked operation `op` and calls `then` with the answer. The keeper
// answers after every message sent to it before, and only once their outcome is known, so the
// answer is definite; a question that goes unanswered is asked again a second later.
void ask_booked(job_actor* self, const std::string& op, std::function<void(bool)> then) {
  self->state.asking[op] = std::move(then);
  ask_booked(self, op);
}

void ask_booked(job_actor* self, const std::string& op) {
  auto& st = self->state;
  self->request(st.links.ledger, st.links.ledger_wait, booked_atom::value, op)
      .then(
          [=](uint64_t seq) {
            auto it = self->state.asking.find(op);
            if (it == self->state.asking.end()) return;
            auto then = std::move(it->second);
            self->state.asking.erase(it);
            spdlog::info("job {}: the ledger {} {}", self->state.job.id,
                         seq != 0 ? "booked" : "did not book", op);
            then(seq != 0);
          },
          [=](caf::error& e) {
            spdlog::warn("job {}: cannot learn whether the ledger booked {} ({}); asking again",
                         self->state.job.id, op, from_caf(e).message());
            self->delayed_send(self, std::chrono::seconds(1), booked_atom::value, op);
          });
}

void pause(job_actor* self, const std::string& why) {
  auto& st = self->state;
  if (st.finished) return;  // a refusal that came after the end: the job stays ended
  st.paused = true;
  st.job.status.state = job_state::paused;
  st.job.status.detail = why;
  spdlog::warn("job {}: paused: {}", st.job.id, why);
  publish(self);
}

void record_end(job_actor* self);

// Whether the ledger refused a transaction's postings themselves (an account that would go
// below zero, one it does not know) or the run that asked (replaced by a later one): asked
// again, it refuses again. Its store failing, or its keeper gone, says nothing of them.
bool refused_by_ledger(const caf::error& e) {
  if (e.category() != error_category) return false;
  const auto code = static_cast<errc>(e.code());
  return code == errc::invalid_argument || code == errc::permission_denied;
}

void request_hold(job_actor* self, int64_t index, int64_t hold);

// Holds the current round's escrow (once per round index: a rolled-back round keeps its
// hold), then hands out its assignments. A budget or an account that cannot cover the hold
// pauses the job until a top-up; a ledger that cannot book it now is asked again.
void hold_round(job_actor* self) {
  auto& st = self->state;
  const int64_t index = st.job.status.round;
  if (!metered(st) || st.held.count(index) != 0 || st.paused) {
    dispatch(self);
    return;
  }
  const int64_t hold = round_escrow(st.job.spec);
  auto& s = st.job.status;
  if (s.credits_spent + total_held(st) + hold > s.budget) {
    // With a round still unconfirmed its escrow may come back soon: wait for it quietly. So
    // too while a round's commit is on its way: the pause's words would name as spent what
    // the round has not paid yet (it is tried again once the commit is answered).
    st.paused_for_budget = true;
    if (total_held(st) > 0 || st.settling > 0) {
      st.paused = true;
      return;
    }
    pause(self, "budget exhausted: " + format_credits(s.credits_spent) + " credits spent and " +
                    format_credits(total_held(st)) + " in escrow of a budget of " +
                    format_credits(s.budget) + "; round " + std::to_string(index + 1) + " needs " +
                    format_credits(hold) + " in escrow (gflex topup " + st.job.id +
                    " AMOUNT resumes it)");
    return;
  }
  if (hold == 0) {
    st.held[index] = 0;
    dispatch(self);
    return;
  }
  st.holding = true;
  request_hold(self, index, hold);
}

// Asks the ledger to hold `hold` credits of the account in escrow for round `index`.
void request_hold(job_actor* self, int64_t index, int64_t hold) {
  auto& st = self->state;
  auto held = [=] {
    auto& st = self->state;
    st.holding = false;
    st.hold_in_flight = false;
    st.held[index] = hold;
    if (st.hold_tries > 0 && !st.finished) st.job.status.detail.clear();  // its wait is over
    st.hold_tries = 0;
    if (st.finished) {
      // The job ended (cancelled, failed) while the hold was on its way: its end waited for
      // it, and returns it with the rest. Returned apart after an end already recorded, it
      // was lost when the ended job's actor quit first, and stayed in escrow for good.
      if (st.settling == 0) record_end(self);
      return;
    }
    st.job.status.credits_held = total_held(st);
    dispatch(self);
  };
  auto refused = [=](const std::string& why) {
    auto& st = self->state;
    st.holding = false;
    st.hold_in_flight = false;
    if (st.finished) {
      if (st.settling == 0) record_end(self);
      return;
    }
    st.hold_tries = 0;
    pause(self, "the account " + st.job.spec.account + " cannot hold round " +
                    std::to_string(index + 1) + "'s escrow (" + format_credits(hold) +
                    " credits): " + why + " (credit it, then gflex topup " + st.job.id +
                    " AMOUNT resumes it; an AMOUNT of 0 leaves its budget as it is)");
    st.paused_for_account = st.paused;
  };
  // Not booked, and not for want of credits: the hold is asked for again, later and later
  // (as an interrupted run's escrow is returned). The round waits for it, holding nothing; a
  // job that ends meanwhile records its end at once.
  auto again = [=](const std::string& why) {
    auto& st = self->state;
    st.hold_in_flight = false;
    if (st.finished) {
      st.holding = false;
      if (st.settling == 0) record_end(self);
      return;
    }
    st.hold_tries += 1;
    const auto wait = std::chrono::seconds(std::min(60, 2 << std::min(st.hold_tries - 1, 5)));
    const auto waiting = "waiting for the ledger to hold round " + std::to_string(index + 1) +
                         "'s escrow (" + why + "); asking again in " +
                         std::to_string(wait.count()) + " s";
    spdlog::warn("job {}: {}", st.job.id, waiting);
    st.job.status.detail = waiting;
    publish(self);
    st.hold_again = [=] { request_hold(self, index, hold); };
    self->delayed_send(self, wait, tick_atom::value, transfer_atom::value);
  };
  // A hold the ledger did not answer may still be booked: the job asks before it decides, so
  // that escrow never holds what the job does not know of (a second hold after a top-up,
  // stranded in escrow when the job ends).
  const auto op = ledger_op(st, "hold", index);
  st.hold_in_flight = true;
  std::vector<posting> postings{{st.job.spec.account, -hold}, {escrow_of(st), hold}};
  self->request(st.links.ledger, st.links.ledger_wait, transfer_atom::value, std::string("hold"),
                st.job.id + " round " + std::to_string(index + 1) + ": escrow", std::move(postings),
                op)
      .then([=](uint64_t) { held(); },
            [=](caf::error& e) {
              const auto why = from_caf(e).message();
              if (refused_by_ledger(e)) return refused(why);
              if (!outcome_unknown(e)) return again(why);
              ask_booked(self, op, [=](bool booked) { booked ? held() : again(why); });
            });
}

// What a round's applied results cost (billing.hpp) and the transaction that settles its
// escrow. The hold leaves `held` here; it goes back there if the commit fails.
payment payment_of(const job_actor_state& st, const round_result& r) {
  if (!metered(st)) return {};
  return payment_for({r.slot.node_name, r.slot.price, r.compute_s, r.wall_s},
                     st.job.spec.deadline_s, st.links.fee);
}

// An outlier left out of its round's mean that was never re-computed (no core-tier worker
// could, and the operator accepts unverified results): nothing of it was used and nothing
// shows it honest, so it is neither paid nor credited. A node sending noise while the core
// tier was busy earned for work thrown away. A result that merely stood out is left out so
// too once it can only be unverified (verify, try_advance).
bool unproven_outlier(const round_result& r) {
  return r.excluded && r.check == check_state::unverified;
}

settlement settle_round(job_actor_state& st, int64_t index, const round_results& results) {
  std::vector<billed_result> billed;
  for (const auto& [shard, r] : results)
    if (!unproven_outlier(r))
      billed.push_back({r.slot.node_name, r.slot.price, r.compute_s, r.wall_s});
  const int64_t hold = st.held.count(index) ? st.held[index] : 0;
  auto out = settle_round(st.job.id, index, hold, st.job.spec.account, escrow_of(st), billed,
                          st.job.spec.deadline_s, st.links.fee);
  st.held.erase(index);
  return out;
}
void try_advance(job_actor* self);
void try_confirm(job_actor* self);

void record_end(job_actor* self);

void finish(job_actor* self, job_state state, const std::string& detail) {
  auto& st = self->state;
  if (st.finished) return;
  st.finished = true;
  st.job.status.state = state;
  st.job.status.detail = detail;
  st.job.status.eta_s = 0.0;
  for (auto& [id, a] : st.pending) {
    self->send(a.slot.worker, abort_atom::value, id);
    self->send(st.links.market, release_atom::value, a.slot.worker);
  }
  st.pending.clear();
  if (st.settling > 0 || st.hold_in_flight || st.stale_escrow) {
    spdlog::info("job {}: ends once {} is answered", st.job.id,
                 st.settling > 0     ? "its round's commit"
                 : st.hold_in_flight ? "its round's escrow hold"
                                     : "the return of an interrupted run's escrow");
    return;
  }
  record_end(self);
}

// What a cancel of a job that ended otherwise (done, failed) is told.
error already_ended(const job_actor_state& st) {
  const auto& detail = st.job.status.detail;
  return error(errc::invalid_argument, "job '" + st.job.id + "' has already ended (" +
                                           to_string(st.job.status.state) +
                                           (detail.empty() ? std::string() : ": " + detail) + ")");
}

// Answers the cancels that waited for the last round's commit, once the job has ended: one
// cancelled is acknowledged with its end recorded, any other end is said.
void answer_waiting_cancels(job_actor* self) {
  auto& st = self->state;
  if (!st.finished) return;
  for (auto& rp : std::exchange(st.cancels_at_last_commit, {})) {
    if (st.job.status.state != job_state::cancelled)
      rp.deliver(to_caf(already_ended(st)));
    else if (st.ended_and_recorded)
      rp.deliver(caf::ok_atom::value);
    else
      st.end_waiters.push_back(rp);
  }
}

// Writes the ended job's record, returning what escrow still holds.
void record_end(job_actor* self) {
  auto& st = self->state;
  const auto state = st.job.status.state;
  if (state != job_state::done) {
    // What the store holds is what the job ends with.
    st.durable.show_in(st.job.status);
  }
  // What escrow still holds goes back with the final record, in one transaction.
  // Escrow is let go of once the record is written: an end whose write failed is written
  // again, returning it then.
  const int64_t releasing = metered(st) ? total_held(st) : 0;
  std::vector<posting> release;
  if (releasing > 0) release = {{escrow_of(st), -releasing}, {st.job.spec.account, releasing}};
  // The record goes with the release: once it is stored, escrow holds nothing of the job.
  auto ended = st.job.status;
  ended.credits_held = 0;
  store_batch batch;
  batch.keys.push_back(job_record_key(st.job.id));
  batch.values.push_back(encode_job_record(st.job.spec_text, ended));
  // Until the release is booked the ended job is shown holding what escrow still holds:
  // shown ended with 0 in escrow while its end was written (and again while a failing store
  // had it written again and again), it was what `gflex ledger verify` reported as stale.
  st.job.status.credits_held = releasing;
  publish(self);
  const auto op = ledger_op(st, "end", st.job.status.round);
  const bool named = !release.empty();
  auto written =
      metered(st) ? self->request(st.links.ledger, st.links.ledger_wait, settle_atom::value,
                                  std::string("release"),
                                  st.job.id + " ended (" + to_string(state) + "): escrow returned",
                                  std::move(release), std::move(batch), named ? op : std::string())
                  : self->request(st.links.store, std::chrono::seconds(30), commit_atom::value,
                                  std::move(batch));
  auto recorded = [=] {
    auto& st = self->state;
    st.held.clear();
    st.job.status.credits_held = 0;
    publish(self);
    // The ledger's audit counts the job ended (its escrow stale) only from now on.
    self->send(st.links.supervisor, progress_atom::value, stop_atom::value);
    for (auto& rp : st.end_waiters) rp.deliver(caf::ok_atom::value);
    st.ended_and_recorded = true;
    if (self->state.rejections_untold == 0) self->quit();
  };
  auto not_recorded = [=](const std::string& why) {
    // The record still says running. The job stays to write it again, later and later: it
    // quit, shown as ended while its record said running, and the next core to start
    // resumed it (a cancelled job trained and billed again), its escrow held until then.
    auto& st = self->state;
    st.end_writes_failed += 1;
    const auto wait = std::chrono::seconds(1 << std::min(st.end_writes_failed - 1, 5));
    spdlog::error("job {}: cannot record its end ({}); trying again in {} s", st.job.id, why,
                  wait.count());
    for (auto& rp : st.end_waiters)
      rp.deliver(
          to_caf(error(errc::store_error, "job " + st.job.id + ": its end is not recorded yet (" +
                                              why + "); the core writes it again")));
    st.end_waiters.clear();
    self->delayed_send(self, wait, tick_atom::value, stop_atom::value);
  };
  std::move(written).then([=](caf::ok_atom) { recorded(); },
                          [=](caf::error& e) {
                            const auto why = self->system().render(e);
                            if (!named || !outcome_unknown(e)) return not_recorded(why);
                            ask_booked(self, op, [=](bool booked) {
                              if (!booked) return not_recorded(why);
                              recorded();
                            });
                          });
}

// Distinct nodes whose workers, saying a round diverged, have it decided (decide_divergence)
// even while other nodes could still compute its work: a run that diverges does so on every
// node (the same parameters, shard and seed), and is otherwise handed out for ever, each
// failure cooling a worker down; one node's word, or two's, is not enough while another node
// can take the work (a faulty GPU, or a hostile node, says it of work that runs).
constexpr size_t diverged_nodes_to_fail = 3;
// How many times in all a rejection is told to a reputation tracker that does not take it, 2 s
// apart (report_rejection): a restart of the tracker takes well under a minute.
constexpr int rejection_attempts = 30;

void fail_assignment(job_actor* self, uint64_t id, const std::string& why,
                     bool node_at_fault = true);

// The job ends: its round diverged on the nodes of st.diverged (`said`: what the last one said).
void end_diverged(job_actor* self, const std::string& said) {
  auto& st = self->state;
  const auto nodes =
      std::to_string(st.diverged.size()) + (st.diverged.size() == 1 ? " node" : " nodes");
  spdlog::warn("job {}: round {} diverged on {} ({}); the job ends", st.job.id,
               st.job.status.round + 1, nodes, said);
  finish(self, job_state::failed,
         "training diverged in round " + std::to_string(st.job.status.round + 1) + " on " + nodes +
             " (" + said + "); a lower lr, or inputs of a smaller scale, may train");
}

// How long a top-up waits for the rounds' commits sent before it (its record is written after
// theirs) before it is refused: the job supervisor waits 60 s for its answer, which comes
// after a store write of up to 30 s more.
constexpr auto topup_wait = std::chrono::seconds(20);

// How long a job waits for the verifier: it answers once a re-computation is done or has
// failed; this bound is for a verifier that is gone (one replaced is told of, and asked
// again). A check whose waits doubled past it is asked again, and goes on from the wait it
// reached (the verifier remembers a work's timeouts). Longer, it held each request's timer
// that much longer: CAF 0.17 does not cancel a request's timeout once it is answered.
const auto verify_wait = std::chrono::seconds(static_cast<int64_t>(max_deadline_s) + 3600);

// `detail` with the divergence check's wait (divergence_waiting) after it: the acquires' and the
// round watch's details, set four times a second, otherwise hid it as soon as it was shown.
std::string with_divergence_wait(const job_actor_state& st, std::string detail) {
  if (st.divergence_waiting.empty()) return detail;
  return detail.empty() ? st.divergence_waiting : detail + "; " + st.divergence_waiting;
}

// Shows in the job's status that its divergence check waits (`waiting`), or (empty) that it
// waits no longer. Under --unverified wait the check may wait as long as the core tier is
// busy, the job holding its escrow: without a word in its status, nobody could tell why.
void show_divergence_wait(job_actor* self, std::string waiting) {
  auto& st = self->state;
  auto detail = st.job.status.detail;
  // The wait shown before ends the detail (with_divergence_wait): it is taken off first.
  if (!st.divergence_waiting.empty() && detail.ends_with(st.divergence_waiting)) {
    detail.resize(detail.size() - st.divergence_waiting.size());
    if (detail.ends_with("; ")) detail.resize(detail.size() - 2);
  }
  st.divergence_waiting = std::move(waiting);
  detail = with_divergence_wait(st, std::move(detail));
  // An ended job's status says how it ended.
  if (st.finished || detail == st.job.status.detail) return;
  st.job.status.detail = std::move(detail);
  publish(self);
}

// Community nodes alone said the round diverged: keys cost nothing, and three that said it of
// every assignment ended any job. The work is computed on the core tier first: the job ends
// if it diverges there too (or, with three nodes' word, there is no core tier to ask);
// otherwise the reports are not believed for the rest of the round.
void check_divergence(job_actor* self, const assignment& work, const std::string& said) {
  auto& st = self->state;
  if (!st.links.verifier) {
    // Nothing better to go on than the reports: fewer than three nodes' word stays unbelieved
    // (the round waits for another node to compute its work).
    if (st.diverged.size() >= diverged_nodes_to_fail) end_diverged(self, said);
    return;
  }
  st.divergence_checking = true;
  st.divergence_work = work;
  st.divergence_said = said;
  verify_request req;
  req.work = work;
  req.work.params_ref = st.round_params;
  req.deadline_s = st.job.spec.deadline_s;
  // No update is claimed: the verifier answers whether the core tier computes the work.
  const auto round = st.job.status.round;
  const auto generation = st.verifier_generation;
  self->request(st.links.verifier, verify_wait, verify_atom::value, std::move(req))
      .then(
          [=](double, double, double) {
            auto& st = self->state;
            if (st.finished || st.job.status.round != round || generation != st.verifier_generation)
              return;
            st.divergence_checking = false;
            st.divergence_disproved = true;
            show_divergence_wait(self, "");
            spdlog::warn(
                "job {}: {} node(s) said round {} diverged, but the core tier computed it: "
                "their reports are not believed",
                st.job.id, st.diverged.size(), round + 1);
          },
          [=](caf::error& e) {
            auto& st = self->state;
            if (st.finished || st.job.status.round != round || generation != st.verifier_generation)
              return;
            const auto err = from_caf(e, &self->system());
            // No core-tier worker was free in time. Under --unverified wait the check is asked
            // again: taking the reports then let three keys end any job whenever the core tier
            // was busy for a minute. Under accept the word of three community nodes is taken,
            // as their unverified results are; that of one or two (a key that says it again,
            // the only nodes the job has) is not: one key would end any job then.
            if (err.code() == errc::unavailable &&
                (!st.links.accept_unverified || st.diverged.size() < diverged_nodes_to_fail)) {
              spdlog::warn(
                  "job {}: {} node(s) said round {} diverged; waiting for the core tier to "
                  "check it: {}",
                  st.job.id, st.diverged.size(), round + 1, err.message());
              const auto nodes = std::to_string(st.diverged.size()) +
                                 (st.diverged.size() == 1 ? " node" : " nodes");
              show_divergence_wait(self, "waiting for the core tier to check whether round " +
                                             std::to_string(round + 1) + " diverges, as " + nodes +
                                             " said: " + err.message());
              self->delayed_send(self, std::chrono::seconds(5), verify_atom::value, round,
                                 generation);
              return;
            }
            st.divergence_checking = false;
            show_divergence_wait(self, "");
            // Diverged there too, or no core-tier worker to ask (nothing better to go on).
            if (err.code() == errc::non_finite || err.code() == errc::unavailable)
              return end_diverged(self, said);
            spdlog::warn("job {}: the core tier could not check round {}'s divergence: {}",
                         st.job.id, round + 1, err.message());
          });
}

// Decides the round's divergence once it cannot go on without it (no node left to compute
// its work but those that said it diverged, or a key that said it again of work it was given
// after): a core-tier node's word (the platform's own) ends the job, and community nodes'
// alone is checked on the core tier. Waiting for a third node's word, a job that only one or
// two nodes could take (a core of two core-tier servers, `gflex demo --nodes 2`) handed its
// work out for ever, its nodes cooled down and its escrow held.
void decide_divergence(job_actor* self) {
  auto& st = self->state;
  if (st.finished || st.divergence_disproved || st.divergence_checking || st.diverged.empty())
    return;
  if (st.diverged_on_core) return end_diverged(self, st.diverged_said);
  const auto work = st.diverged_work;
  const auto said = st.diverged_said;
  check_divergence(self, work, said);
}

// Past the job's deadline (CAF's timeout, the session's own), or the core failing to serve
// the work's parameters or shard (unavailable): slowness, the core's or the job's, not the
// node's fault. A node's session passes a node's `unavailable` on as such only where it saw
// the core fail one of the work's chunks, or the node wait for them as long as a node waits
// (node_session.cpp, core_may_have_failed); said sooner, it is the node's io_error: taken
// from the node at its word, one that answered every assignment so was never cooled down.
bool core_too_slow(const caf::error& e, const error& err) {
  return e == caf::sec::request_timeout || err.code() == errc::unavailable;
}

// Whether a worker's error says the assignment ran out of device or host memory (the
// worker's words: "out of device memory", "allocating ...: out of host memory (...)").
bool ran_out_of_memory(const error& err) {
  const auto& m = err.message();
  return err.code() == errc::device_error && m.find("out of") != std::string::npos &&
         m.find("memory") != std::string::npos;
}

// The nodes the job's acquires leave out now (leave_out), by id.
std::vector<std::string> avoided_nodes(job_actor_state& st) {
  const auto now = clock_type::now();
  std::vector<std::string> out;
  for (const auto& [node, unsuited] : st.unsuited)
    if (now < unsuited.backoff.until()) out.push_back(node);
  return out;
}

// Leaves the node of assignment `a` out of this job's acquires for `first`, doubling with
// each time after in a row (a result of the node's the job takes ends the row), up to 30
// minutes: its work `failure` there ("ran out of their memory").
void leave_out(job_actor_state& st, const in_flight& a, std::string failure,
               std::chrono::seconds first) {
  auto& unsuited = st.unsuited[a.slot.node_id];
  unsuited.failure = std::move(failure);
  unsuited.backoff.failed(clock_type::now(), first);
}

// An assignment its worker answered with an error.
void assignment_failed(job_actor* self, uint64_t id, const caf::error& e) {
  auto& st = self->state;
  auto it = st.pending.find(id);
  const auto err = from_caf(e, &self->system());
  // Sent again to a node it did not fit, the work fails there again, and a model too large
  // for every node went round them for ever with no word of why.
  if (it != st.pending.end() && ran_out_of_memory(err))
    leave_out(st, it->second,
              "ran out of their memory (" + it->second.slot.node_name + ": " +
                  err.message().substr(0, 200) + ")",
              std::chrono::minutes(1));
  // Past the deadline the job sets, the work is too slow there for this job, not for others:
  // sent again as soon as the market's short cooldown ended, a deadline too short for every
  // node kept each of them computing assignments for nothing, round after round. Briefly at
  // first: a volunteer's machine is often slow for a while, when its owner uses it.
  if (it != st.pending.end() && e == caf::sec::request_timeout)
    leave_out(st, it->second,
              "took longer than deadline_s (" + format_g(st.job.spec.deadline_s) + " s) on " +
                  it->second.slot.node_name,
              std::chrono::seconds(10));
  // A size or shape the node's kernels (cuDNN's, a GPU's) do not take: the job's model, sent
  // to that node again, fails there again.
  const bool refused_by_kernels = err.code() == errc::invalid_argument;
  if (it != st.pending.end() && refused_by_kernels)
    leave_out(st, it->second,
              "was refused by their kernels (" + it->second.slot.node_name + ": " +
                  err.message().substr(0, 200) + ")",
              std::chrono::minutes(1));
  // Diverged there: freed at once with no cooldown, the node's slot (the cheapest, or the only
  // one free) got the same shard back at the next acquire and said it again, and the round
  // never closed. A GPU that gives NaN for everything, or a node that answers every assignment
  // so, stalled the job. It is left out, as for any work that fails on one node.
  bool diverged_at_fault = false;
  if (it != st.pending.end() && err.code() == errc::non_finite) {
    const auto& slot = it->second.slot;
    // Its word is not the job's model's once the core tier computed the work: the market cools
    // it down. Before that, a key that says so twice in a round (it was left out after the
    // first) is held at fault only where there is no core tier to ask. While the check waits
    // (--unverified wait, the core tier busy) an honest node given the work again says it
    // again, and was cooled down for every job for a report nobody had disproved.
    diverged_at_fault =
        st.divergence_disproved || (!st.links.verifier && st.diverged.count(slot.public_key) != 0);
    leave_out(st, it->second,
              "diverged there (" + slot.node_name + ": " + err.message().substr(0, 200) + ")",
              std::chrono::minutes(1));
  }
  if (it != st.pending.end() && err.code() == errc::non_finite && !st.divergence_disproved) {
    const auto& slot = it->second.slot;
    const auto now = clock_type::now();
    auto [report, first] = st.diverged.try_emplace(
        slot.public_key, job_actor_state::divergence_report{err.message(), now});
    // Given the round's work again once it was no longer left out, and saying it again: no
    // other node took that work meanwhile.
    const bool again = !first && it->second.started > report->second.first;
    report->second.said = err.message();
    st.diverged_nodes.insert(slot.node_id);
    st.diverged_on_core = st.diverged_on_core || slot.tier == static_cast<uint8_t>(node_tier::core);
    if (!st.divergence_checking) {
      st.diverged_work = it->second.work;
      st.diverged_said = err.message();
    }
    if (st.diverged.size() >= diverged_nodes_to_fail && st.diverged_on_core)
      return end_diverged(self, err.message());
    if (st.diverged.size() >= diverged_nodes_to_fail) {
      decide_divergence(self);
    } else if (again) {
      // Checked on the core tier even where a core-tier node says it: a faulty GPU of the
      // platform's says it each time, while the core tier's other workers compute the work.
      if (!st.divergence_checking) check_divergence(self, st.diverged_work, st.diverged_said);
    }
  }
  // Out of memory, past the deadline, diverged (believed) or refused by the kernels: the job's
  // model and settings, not the node, as far as anyone else's job can tell. The market frees
  // the slot for them.
  const bool node_at_fault =
      diverged_at_fault || !(ran_out_of_memory(err) || core_too_slow(e, err) ||
                             err.code() == errc::non_finite || refused_by_kernels);
  fail_assignment(self, id, self->system().render(e), node_at_fault);
}

// A copy that went out before the one that won, still unanswered: it ran longer than the
// winner's whole run, so its samples over the time it ran bound its node's rate (a true
// bound, however the node spent that time), which goes to the market as a measurement, as a
// session's of an answer does. Cancelled with no word, a node that took work and never
// answered (or an honest one its owner slowed) was never measured once a backup beat it: it
// kept its claimed rate, the cheapest it was given every round's first copies, and each
// round waited for a backup.
void measure_lost_race(job_actor* self, const in_flight& loser) {
  const auto& a = loser.work;
  const double samples = static_cast<double>(std::max<int64_t>(a.local_steps, 0)) *
                         static_cast<double>(std::max<int64_t>(a.batch_size, 0));
  const double ran = std::chrono::duration<double>(clock_type::now() - loser.started).count();
  if (samples <= 0.0 || ran <= 0.0) return;
  spdlog::info(
      "job {}: {} lost the race for shard {} after {:.1f} s unanswered; measured at "
      "{:.3g} samples/s at most",
      self->state.job.id, loser.slot.node_name, loser.shard, ran, samples / ran);
  self->send(self->state.links.market, rate_atom::value, loser.slot.node_name,
             market_workload(a.workload, a.model), samples / ran);
}

void fail_assignment(job_actor* self, uint64_t id, const std::string& why, bool node_at_fault) {
  auto& st = self->state;
  auto it = st.pending.find(id);
  if (it == st.pending.end()) return;
  int64_t shard = it->second.shard;
  core_metrics::assignments("failed").inc();
  spdlog::warn("job {}: assignment {:016x} on {} failed ({}); reassigning shard {}", st.job.id, id,
               it->second.slot.node_name, why, shard);
  // A worker that is merely slow (past the deadline) is still computing it: it stops, rather
  // than finish it for nothing while the next assignments queue behind it.
  self->send(it->second.slot.worker, abort_atom::value, id);
  self->send(st.links.market, release_atom::value, it->second.slot.worker, true, node_at_fault);
  st.pending.erase(it);
  // Another copy (a backup) may still be running, or may already have answered.
  // A backup of it may be queued already (watch_round): queued twice, two copies went out.
  if (--st.copies[shard] <= 0 && !st.results.count(shard) &&
      std::find(st.unassigned.begin(), st.unassigned.end(), shard) == st.unassigned.end())
    st.unassigned.push_front(shard);
  dispatch(self);
}

std::vector<float> floats_of(const tensor* t) {
  if (t == nullptr || t->type() != dtype::f32) return {};
  auto s = t->span<float>();
  return {s.begin(), s.end()};
}

// The shards round `index` hands out, in order.
std::vector<int64_t> shards_of_round(const job_actor_state& st, int64_t index) {
  std::vector<int64_t> out;
  auto shards = static_cast<int64_t>(st.data->shards.size());
  for (int64_t k = 0; k < st.job.spec.workers; ++k)
    out.push_back((index * st.job.spec.workers + k) % shards);
  return out;
}

// Drops every result of `node` from `results`; returns how many of them had gone into the
// round's mean (an outlier left out of it needs no rollback).
size_t drop_node(round_results& results, const std::string& node) {
  size_t dropped = 0;
  for (auto it = results.begin(); it != results.end();) {
    if (it->second.slot.node_name == node) {
      dropped += it->second.excluded ? 0 : 1;
      it = results.erase(it);
    } else {
      ++it;
    }
  }
  return dropped;
}

// Starts the bookkeeping of the current round (a new one, or one collected again after a
// rollback): nothing handed out yet, no backups, and its watch every quarter second.
void open_round(job_actor* self) {
  auto& st = self->state;
  st.unassigned.clear();
  st.copies.clear();
  st.backed_up.clear();
  st.durations.clear();
  st.closing = false;
  st.diverged.clear();
  st.diverged_nodes.clear();
  st.diverged_on_core = false;
  st.divergence_checking = false;
  st.divergence_disproved = false;
  show_divergence_wait(self, "");  // a new round's work is checked anew, if need be
  st.round_started = clock_type::now();
  st.first_sent.reset();
  self->delayed_send(self, std::chrono::milliseconds(250), tick_atom::value,
                     static_cast<uint64_t>(st.job.status.round));
}

// Undoes the unconfirmed round and the current one: theta and momentum go back to before
// the unconfirmed round, which is collected again (its other results kept, their checks
// going on); the current round's work is discarded, never credited. `why`: what it is
// collected again without.
void roll_back(job_actor* self, const char* why = "the caught work") {
  auto& st = self->state;
  GFLEX_CHECK(st.unconfirmed->params != nullptr,
              "a round kept nothing to roll back to, yet one of its results was re-computed");
  auto u = std::move(*st.unconfirmed);
  st.unconfirmed.reset();
  for (auto& [id, a] : st.pending) {
    self->send(a.slot.worker, abort_atom::value, id);
    self->send(st.links.market, release_atom::value, a.slot.worker);
  }
  st.pending.clear();
  st.job.theta = std::move(u.theta_before);
  st.job.momentum = std::move(u.momentum_before);
  auto& s = st.job.status;
  s.round = u.index;
  s.train_loss = u.train_loss_before;
  s.nodes = u.nodes_before;
  s.rollbacks += 1;
  spdlog::warn("job {}: round {} rolled back: it is collected again without {}", st.job.id,
               u.index + 1, why);
  st.round_params = u.params;
  st.results = std::move(u.results);
  // A pause is for the next round's escrow (the budget or the account short of it, or a quiet
  // wait for this one's to settle): that round is gone with the rollback, and this one still
  // holds its own escrow, so it is collected now. Paused on, nothing dispatched it: the job
  // waited for a top-up it did not need (the quiet wait ends only with a settle or a top-up).
  // The next round asks for its hold again when it starts.
  if (st.paused && st.held.count(u.index) != 0) {
    const bool said = s.state == job_state::paused;
    st.paused = false;
    st.paused_for_budget = false;
    st.paused_for_account = false;
    if (said) {
      s.state = job_state::running;
      s.detail.clear();
      publish(self);
    }
  }
  open_round(self);
  for (int64_t shard : shards_of_round(st, u.index))
    if (!st.results.count(shard)) st.unassigned.push_back(shard);
  dispatch(self);
}

// All the work of a caught node in the rounds not yet committed is discarded, never paid
// (rolling the unconfirmed round back if it held any), and it is given no more.
// `node` and `why` are copies: a caller's name may live in a result this erases.
void discard_work_of(job_actor* self, const std::string node, const std::string why) {
  auto& st = self->state;
  st.caught.insert(node);
  std::vector<uint64_t> out;
  for (const auto& [id, a] : st.pending)
    if (a.slot.node_name == node) out.push_back(id);
  for (uint64_t id : out) {
    self->send(st.pending[id].slot.worker, abort_atom::value, id);
    fail_assignment(self, id, "its node was caught: " + why);
  }
  drop_node(st.results, node);
  if (st.unconfirmed && drop_node(st.unconfirmed->results, node) > 0) {
    if (st.unconfirmed->params != nullptr) {
      roll_back(self);
      return;
    }
    // Applied past undoing: none of the round's results could still be re-computed when it
    // was applied (the caught one was cleared, not sampled), so nothing to roll back to was
    // kept. Its share stays in the parameters, bounded by the robust mean like any other;
    // the node is neither paid nor credited for it (its result is gone from the round).
    spdlog::warn(
        "job {}: round {} was applied with a result of {}, which is not paid; it cannot "
        "be rolled back",
        st.job.id, st.unconfirmed->index + 1, node);
  }
  // The caught result may have been the last check the unconfirmed round waited for (an
  // outlier left out of its mean: nothing to roll back).
  try_confirm(self);
  // With the last round applied there is no current round to refill: its index would be one
  // past the job's end.
  if (st.finished || st.job.status.round >= st.job.status.rounds) return;
  for (int64_t shard : shards_of_round(st, st.job.status.round))
    if (!st.results.count(shard) && st.copies[shard] <= 0 &&
        std::find(st.unassigned.begin(), st.unassigned.end(), shard) == st.unassigned.end())
      st.unassigned.push_back(shard);
  dispatch(self);
}

// The reputation tracker hears that `node` was caught, and why (its `attempt`th telling). It
// flags the other names of its key too, and says which: their work here is discarded as
// well, and the other jobs discard theirs. A tracker restarting or too busy to answer lost the
// rejection: the cheat kept its score, and its key's other names their work. It is told
// again, every 2 s, up to `rejection_attempts` times in all.
void report_rejection(job_actor* self, const std::string& node, const std::string& why,
                      int attempt) {
  auto& st = self->state;
  if (!st.links.reputation) return;
  st.rejections_untold += 1;
  // One telling done, taken or given up: the last of an ended job lets it go.
  auto told = [self] {
    auto& st = self->state;
    if (--st.rejections_untold == 0 && st.ended_and_recorded) self->quit();
  };
  self->request(st.links.reputation, std::chrono::seconds(30), reject_atom::value, node, why)
      .then(
          [=](std::vector<std::string>& siblings) {
            told();
            auto& st = self->state;
            for (const auto& other : siblings) {
              const std::string sibling_why = "its node key was caught as " + node;
              self->send(st.links.supervisor, reject_atom::value, other, sibling_why);
              if (!st.finished) discard_work_of(self, other, sibling_why);
            }
          },
          [=](caf::error& e) {
            spdlog::warn("job {}: the reputation tracker did not take the rejection of {}{}: {}",
                         self->state.job.id, node,
                         attempt < rejection_attempts ? "; telling it again" : "",
                         self->system().render(e));
            if (attempt < rejection_attempts) {
              self->state.rejections_untold += 1;  // until the next telling counts itself
              self->delayed_send(self, std::chrono::seconds(2), reject_atom::value, node, why,
                                 attempt + 1);
            }
            told();
          });
}

// A node was caught in this job: its reputation hears why, its work here is discarded, and
// the other jobs discard theirs (a caught cheat loses its unpaid credits everywhere).
// `node` is a copy: callers pass a result's own slot name, which the discard erases (read
// after that, a freed name matched none of the node's other results, which were then kept,
// credited and paid).
void caught(job_actor* self, const std::string node, const std::string why) {
  auto& st = self->state;
  st.job.status.rejected_results += 1;
  report_rejection(self, node, why, 1);
  self->send(st.links.supervisor, reject_atom::value, node, why);
  discard_work_of(self, node, why);
}

round_result* find_result(job_actor_state& st, uint64_t assignment_id) {
  for (auto* results : {&st.results, st.unconfirmed ? &st.unconfirmed->results : nullptr}) {
    if (results == nullptr) continue;
    for (auto& [shard, r] : *results)
      if (r.assignment_id == assignment_id) return &r;
  }
  return nullptr;
}

size_t unsettled(const round_results& results) {
  size_t n = 0;
  for (const auto& [shard, r] : results)
    n += (r.check == check_state::deciding || r.check == check_state::verifying) ? 1 : 0;
  return n;
}

void verify(job_actor* self, uint64_t assignment_id) {
  auto& st = self->state;
  auto* r = find_result(st, assignment_id);
  if (r == nullptr) return;
  r->reask_due = false;
  verify_request req;
  req.work = r->work;
  // The parameters it started from: the current round's, or the unconfirmed round's.
  bool current = false;
  for (const auto& [shard, x] : st.results) current = current || x.assignment_id == assignment_id;
  req.work.params_ref = current ? st.round_params : st.unconfirmed->params;
  req.claimed = r->update.unpack();
  req.deadline_s = st.job.spec.deadline_s;
  const auto generation = st.verifier_generation;
  self->request(st.links.verifier, verify_wait, verify_atom::value, std::move(req))
      .then(
          [=](double distance, double norm_ratio, double compute_s) {
            auto& st = self->state;
            st.job.status.recompute_s += std::isfinite(compute_s) ? std::max(compute_s, 0.0) : 0.0;
            auto* r = find_result(st, assignment_id);
            // Discarded meanwhile, settled by an answer before, or asked again of a verifier
            // that replaced the one this answers for.
            if (r == nullptr || st.finished || r->check != check_state::verifying ||
                generation != st.verifier_generation)
              return;
            const auto tolerance = st.job.spec.tolerance;
            const double norm_off = std::abs(norm_ratio - 1.0);
            const bool match = distance <= tolerance && norm_off <= st.job.spec.norm_tolerance;
            core_metrics::assignments(match ? "verified" : "refuted").inc();
            spdlog::info(
                "job {}: re-computed round {} shard {} of {}: distance {:.4f}, norm ratio {:.4f} "
                "({})",
                st.job.id, r->work.round + 1, r->work.shard.substr(0, 12), r->slot.node_name,
                distance, norm_ratio, match ? "match" : "MISMATCH");
            st.verifier_missing.clear();
            if (match) {
              r->check = check_state::verified;
              st.job.status.verified_results += 1;
              try_confirm(self);
              try_advance(self);
              return;
            }
            caught(self, r->slot.node_name,
                   "its result for round " + std::to_string(r->work.round + 1) +
                       " differs from a re-computation: relative L2 distance " +
                       format_g(distance) + " (tolerance " + format_g(tolerance) +
                       "), norm ratio " + format_g(norm_ratio) + " (within " +
                       format_g(st.job.spec.norm_tolerance) + " of 1)");
          },
          [=](caf::error& e) {
            auto& st = self->state;
            auto* r = find_result(st, assignment_id);
            if (r == nullptr || st.finished || r->check != check_state::verifying ||
                generation != st.verifier_generation)
              return;
            // Bounced by a verifier that had died: it says nothing of the core tier. Its
            // replacement is at hand (the core's supervisor restarts it, and the job asks it
            // again what is still being verified): taken as "could not run", --unverified
            // accept used the result unchecked.
            if (e == caf::sec::request_receiver_down) return;
            const auto err = from_caf(e);
            // The core tier's re-computation diverged: the work diverges, whatever the node
            // sent (the trusted tier decides, as it does when community nodes say a round
            // diverged). Taken as "could not run", the round waited for a verifier for good,
            // or (--unverified accept) used the node's finite update unchecked.
            if (err.code() == errc::non_finite)
              return finish(self, job_state::failed,
                            "training diverged in round " + std::to_string(r->work.round + 1) +
                                " on the core tier's re-computation of " + r->slot.node_name +
                                "'s work (" + err.message() +
                                "); a lower lr, or inputs of a smaller scale, may train");
            // No core-tier worker to re-compute it, or its re-computations failed (the core
            // tier cannot run the work: out of its memory, a shard it cannot fetch): the
            // operator's policy decides. Asked again every second, such a result held its
            // round unconfirmed for good, at up to three re-computations a try, with no word
            // in the job's status. A verifier that holds all it may (limit_exceeded) refused
            // the request at once: it is asked again, as under --unverified wait, and the
            // result is used unverified only once the verifier has held it for
            // --verify-wait-s with no core-tier worker free (errc::unavailable). Taken at
            // once, a flood of re-computations let every result through unchecked.
            const bool refused = err.code() == errc::limit_exceeded;
            const bool failed_there = err.code() != errc::unavailable && !refused;
            if (st.links.accept_unverified && !refused) {
              r->check = check_state::unverified;
              st.job.status.unverified_results += 1;
              // One that stood out is used only once reproduced: left out as an outlier is,
              // it is neither used nor paid. Already in the applied round's mean, that round
              // is rolled back and applied again without it.
              const bool applied = r->stood_out && !r->excluded && st.unconfirmed &&
                                   std::any_of(st.unconfirmed->results.begin(),
                                               st.unconfirmed->results.end(), [&](const auto& x) {
                                                 return x.second.assignment_id == assignment_id;
                                               });
              if (r->stood_out) r->excluded = true;
              spdlog::warn(
                  "job {}: the result of {} for round {} is {} unverified ({}; the core runs "
                  "with --unverified accept)",
                  st.job.id, r->slot.node_name, r->work.round + 1,
                  r->stood_out ? "left out of its mean" : "used", err.message());
              if (applied) {
                roll_back(self, "a result that stood out and cannot be re-computed");
                try_advance(self);
                return;
              }
              try_confirm(self);
              try_advance(self);
              return;
            }
            st.verifier_missing =
                failed_there ? "its re-computations failed: " + err.message() : err.message();
            // Refused at once (the verifier holds all it may): asked again later and later
            // (verify_retry, doubling up to 60 times it), as the core tier is saturated. No
            // core-tier worker free: after verify_retry, as the verifier held the ask for its
            // wait (--verify-wait-s) before it said so; doubling, a round waited minutes more
            // once a worker was free. Its re-computations failing: every 30 s.
            r->verify_deferrals = refused ? r->verify_deferrals + 1 : 0;
            const auto base = st.links.verify_retry;
            const auto wait =
                failed_there ? std::chrono::milliseconds(std::chrono::seconds(30))
                : refused    ? std::min(base * (int64_t{1} << std::min(r->verify_deferrals - 1, 6)),
                                        base * 60)
                             : base;
            const bool said_before = r->verify_said == err.code();
            r->verify_said = err.code();
            spdlog::log(said_before ? spdlog::level::debug : spdlog::level::warn,
                        "job {}: waiting for a verifier for the result of {} for round {}: {}; "
                        "asking again in {:.3g} s{}",
                        st.job.id, r->slot.node_name, r->work.round + 1, st.verifier_missing,
                        std::chrono::duration<double>(wait).count(),
                        said_before ? "" : " (said again, this is not logged)");
            r->reask_due = true;
            self->delayed_send(self, wait, verify_atom::value, assignment_id);
          });
}

// A round's commit `number` was answered (committed or not): the top-ups' records waiting
// only for commits up to the oldest one still open are written now.
void commit_answered(job_actor* self, int64_t number) {
  auto& st = self->state;
  st.commits_open.erase(number);
  const int64_t oldest_open =
      st.commits_open.empty() ? std::numeric_limits<int64_t>::max() : *st.commits_open.begin();
  std::vector<std::function<void()>> ready;
  std::erase_if(st.budget_writes, [&](auto& w) {
    if (w.after >= oldest_open) return false;
    ready.push_back(std::move(w.write));
    return true;
  });
  for (auto& write : ready) write();
}

// Credits, evaluates and commits the unconfirmed round once every sampled result of it is
// verified; then the current round may be applied.
void try_confirm(job_actor* self) {
  auto& st = self->state;
  if (st.finished || !st.unconfirmed || unsettled(st.unconfirmed->results) > 0) return;
  // One round's commit on its way at a time: the next waits for its answer. Sent behind a
  // commit that then failed, the next round's landed on top of it: its checkpoint held the
  // failed round's update, whose nodes were never paid.
  if (st.settling > 0) return;
  auto u = std::move(*st.unconfirmed);
  st.unconfirmed.reset();
  // A machine-readable record of what the round applied for good: tests/chaos/chaos.py checks
  // from it that no assignment and no (round, shard) is applied twice.
  std::string applied;
  for (const auto& [shard, r] : u.results)
    if (!r.excluded) applied += fmt::format(" {:016x}:{}", r.assignment_id, shard);
  spdlog::debug("job {}: round {} confirmed, applied{}", st.job.id, u.index + 1, applied);
  const auto& spec = st.job.spec;
  auto& s = st.job.status;
  // Evaluated before anything is credited or settled: a failed evaluation ends the job, whose
  // end returns what it holds in escrow. Settled first, the round's hold had left st.held
  // without being paid out or returned, and stayed in escrow for good.
  const bool last = s.round == s.rounds;
  const bool evaluate = s.round % spec.eval_every == 0 || last;
  if (evaluate) {
    // Made for the evaluation and let go after it: held for the job's life, every job kept a
    // pool of a thread per core, and a core of a few hundred jobs ran out of threads.
    auto backend = kernels::make_cpu_backend(0);
    auto eval = kernels::evaluate(*st.workload, st.tested, *backend, st.job.theta);
    if (!eval) {
      finish(self, job_state::failed, "evaluation failed: " + eval.error().message());
      return;
    }
    s.test_accuracy = eval->accuracy();
    s.test_loss = eval->mean_loss();
  }
  // The nodes' credit (their streaks, their earnings) once the round is committed: a round
  // that is not, or is redone after a crash, credited them for it anyway, or twice.
  struct credit {
    std::string node;
    uint8_t check;
    double compute_s;
    int64_t earned;
  };
  std::vector<credit> credits;
  for (const auto& [shard, r] : u.results) {
    if (unproven_outlier(r)) continue;
    const auto pay = payment_of(st, r);
    // The compute credited is what the node is paid for: its claim, capped at the time the
    // core saw the assignment take (a claim of 1e308 s would make the record unreadable).
    const auto check = r.check == check_state::verified     ? result_check::verified
                       : r.check == check_state::unverified ? result_check::unverified
                                                            : result_check::cleared;
    credits.push_back({r.slot.node_name, static_cast<uint8_t>(check),
                       std::min(r.compute_s, r.wall_s), pay.cost - pay.fee});
    st.job.status.compute_s += std::min(r.compute_s, r.wall_s);
  }
  // The bill figures count the round from here (the budget's check of the next hold needs
  // them), and are shown (and recorded at an end) only once its commit lands: committed_figures.
  settlement pay;
  if (metered(st)) {
    pay = settle_round(st, u.index, u.results);
    st.settling_hold = pay.hold;
    s.credits_spent += pay.paid;
    s.credits_held = total_held(st);
    s.device_hours += pay.hours;
    s.cloud_cost = std::llround(s.device_hours * st.links.cloud_price * 1e6);
  }
  st.elapsed_before += std::chrono::duration<double>(clock_type::now() - st.resumed_at).count();
  st.resumed_at = clock_type::now();
  s.elapsed_s = st.elapsed_before;
  if (last) s.state = job_state::done;
  trim_history(s.history, s.round - 1);  // a round committed again after a rollback
  add_round(s.history,
            {s.round, s.train_loss, s.test_loss, s.test_accuracy, evaluate, s.elapsed_s});

  // Record and checkpoint of the round in one transaction: a restart resumes from here. The
  // checkpoint is encoded from theta and momentum where they are (a large model's are not
  // copied first).
  checkpoint_view c;
  c.workload = spec.workload;
  c.model = spec.model;
  c.data_set = spec.data_set;
  c.step = static_cast<uint64_t>(s.round);
  c.vectors = {{"theta", st.job.theta}};
  if (!st.job.momentum.empty()) c.vectors.push_back({"outer_momentum", st.job.momentum});
  store_batch batch;
  batch.keys = {job_record_key(st.job.id), job_checkpoint_key(st.job.id)};
  // Moved in, not listed: an initializer list's elements are copied, and a large model's
  // checkpoint would be in memory twice while it is.
  batch.values.reserve(2);
  batch.values.push_back(encode_job_record(st.job.spec_text, s));
  batch.values.push_back(encode_checkpoint(c));
  // The store applies commits in the order they are sent, and a round counts as committed
  // (and is reported) only once its transaction is durable. A crash before that resumes
  // from the round before; the in-memory result of this one is then recomputed, never
  // applied twice.
  const auto figures = committed_figures::of(s);
  // A metered round's payments are booked in the same transaction as its record and
  // checkpoint: a round is committed and paid, or neither.
  const settlement settled{{}, pay.hold, pay.paid, pay.hours, {}};
  const int64_t settled_index = u.index;
  const int64_t commit_number = ++st.commits_sent;
  st.commits_open.insert(commit_number);
  auto committed = [=] {
    auto& st = self->state;
    st.settling -= 1;
    st.settling_hold = 0;
    for (const auto& c : credits)
      self->send(st.links.reputation, credit_atom::value, c.node, c.check, c.compute_s, c.earned);
    st.durable = figures;
    commit_answered(self, commit_number);  // after the durable figures: a top-up records them
    core_metrics::rounds_committed().inc();
    spdlog::info("job {}: round {}/{} committed, loss {:.4f}, test accuracy {:.4f}", st.job.id,
                 figures.round, st.job.status.rounds, figures.train_loss, figures.test_accuracy);
    if (st.finished) {  // ended meanwhile: its record says this round
      if (st.settling == 0 && !st.hold_in_flight) record_end(self);
      answer_waiting_cancels(self);
      return;
    }
    if (last) {
      finish(self, job_state::done, "");
      answer_waiting_cancels(self);  // done: not cancelled
      return;
    }
    publish(self);
    // A round waiting for escrow may fit the budget now that this one is settled.
    if (st.paused_for_budget) {
      st.paused_for_budget = false;
      st.paused = false;
      if (st.job.status.state == job_state::paused) {
        st.job.status.state = job_state::running;
        st.job.status.detail.clear();
      }
      hold_round(self);
    }
    try_confirm(self);  // the next round, confirmed while this one's commit was on its way
  };
  auto not_committed = [=](const std::string& why) {
    // The round was not settled: its hold goes back to escrow (and with the job's end to
    // its account), and what it would have paid is not spent.
    auto& st = self->state;
    st.settling -= 1;
    st.settling_hold = 0;
    commit_answered(self, commit_number);
    if (metered(st) && settled.hold > 0) {
      st.held[settled_index] = settled.hold;
      st.job.status.credits_spent -= settled.paid;
      st.job.status.device_hours -= settled.hours;
      st.job.status.credits_held = total_held(st);
    }
    if (st.finished) {  // ended meanwhile: the hold goes back with its end
      if (st.settling == 0 && !st.hold_in_flight) record_end(self);
      answer_waiting_cancels(self);
      return;
    }
    // The last round not committed, a cancel that waited for it is taken.
    if (!st.cancels_at_last_commit.empty())
      finish(self, job_state::cancelled, "cancelled by its owner");
    else
      finish(self, job_state::failed, "cannot commit round: " + why);
    answer_waiting_cancels(self);
  };
  // A settlement the ledger did not answer may still be booked (and its record and
  // checkpoint written with it): the job asks before it takes the round as lost, or it would
  // return the round's hold a second time when it ends. Only a settlement with postings is
  // booked as an operation (a round of no escrow and no pay moves nothing).
  const bool named = metered(st) && !pay.postings.empty();
  const auto op = ledger_op(st, "settle", u.index);
  // A commit not answered in time may still land (the store finishes what it took): one of
  // no operation to ask after is read back, its record (which names the round) being the
  // one written. Taken for refused, a slow disk failed a healthy job whose round was stored,
  // and its end record then said the round before.
  auto read_back = [=, record = batch.values.front()](const std::string& why) {
    self->request(self->state.links.store, std::chrono::minutes(5), read_atom::value,
                  job_record_key(self->state.job.id))
        .then(
            [=](bool found, std::vector<uint8_t>& value) {
              if (found && value == record)
                committed();
              else
                not_committed(why);
            },
            [=](caf::error&) { not_committed(why); });
  };
  st.settling += 1;
  auto written = metered(st) ? self->request(st.links.ledger, st.links.ledger_wait,
                                             settle_atom::value, std::string("settle"),
                                             std::move(pay.memo), std::move(pay.postings),
                                             std::move(batch), named ? op : std::string())
                             : self->request(st.links.store, 2 * st.links.record_wait,
                                             commit_atom::value, std::move(batch));
  const bool through_ledger = metered(st);
  std::move(written).then([=](caf::ok_atom) { committed(); },
                          [=](caf::error& e) {
                            const auto why = self->system().render(e);
                            if (!outcome_unknown(e)) return not_committed(why);
                            if (named)
                              return ask_booked(self, op, [=](bool booked) {
                                booked ? committed() : not_committed(why);
                              });
                            // Through the keeper, read once it has answered everything sent to it
                            // before (the settlement's commit is then in the store's queue, ahead
                            // of the read).
                            if (through_ledger)
                              return ask_booked(self, op, [=](bool) { read_back(why); });
                            read_back(why);
                          });
  if (!last) try_advance(self);
}

// Applies the current round once its results are in (all of them, or a quorum past the
// deadline) and the round before it is confirmed: outliers are refused first, then the
// robust mean of the rest goes through the outer optimiser, and the next round starts at
// once while this one's sampled results are still being verified.
void try_advance(job_actor* self) {
  auto& st = self->state;
  const auto& spec = st.job.spec;
  if (st.finished || st.unconfirmed) return;
  const auto quorum = static_cast<size_t>(quorum_results(spec));
  const bool ready = st.results.size() == static_cast<size_t>(spec.workers) ||
                     (st.closing && !st.results.empty() && st.results.size() >= quorum);
  if (!ready) return;
  std::vector<round_result*> order;
  for (auto& [shard, r] : st.results) order.push_back(&r);
  // The updates are read a block of coordinates at a time, from the form they came in: a
  // large model's are never all decoded at once.
  screen_bounds bounds;
  bounds.norm_bound = spec.norm_bound;
  bounds.min_cosine = spec.min_cosine;
  round_screen screen(order.size());
  update_blocks blocks(st.job.theta.size(), order.size());
  for (size_t begin = 0; begin < st.job.theta.size(); begin += update_blocks::size)
    screen.add(blocks.read(order, begin));
  const auto screened = screen.verdicts(bounds);
  if (spdlog::should_log(spdlog::level::debug)) {
    std::vector<double> norms, cosines;
    for (const auto& v : screened) {
      norms.push_back(v.norm);
      cosines.push_back(v.cosine);
    }
    spdlog::debug(
        "job {}: round {}: update norms [{:.4g}, {:.4g}], cosines with the others' median "
        "[{:.4f}, {:.4f}]",
        st.job.id, st.job.status.round + 1, *std::min_element(norms.begin(), norms.end()),
        *std::max_element(norms.begin(), norms.end()),
        *std::min_element(cosines.begin(), cosines.end()),
        *std::max_element(cosines.begin(), cosines.end()));
  }
  // No flag without proof: a result that does not look like the others is re-computed on a
  // core-tier worker, and only a re-computation that disagrees with it flags its node. An
  // outlier stays out of the mean (it is credited if the re-computation reproduces it);
  // one that merely stands out is used while it is checked, and the round rolled back should
  // the check fail. Core-tier results are the platform's own: never re-computed, always used.
  for (size_t i = 0; i < screened.size(); ++i) {
    auto& r = *order[i];
    const auto& v = screened[i];
    r.excluded = false;  // a round collected again after a rollback is screened anew
    r.stood_out = false;
    if (v.verdict == screen_verdict::typical) continue;
    if (!r.counted_screened) st.job.status.screened_results += 1;
    r.counted_screened = true;
    if (r.slot.tier == static_cast<uint8_t>(node_tier::core)) {
      spdlog::info("job {}: the core-tier result of {} for round {} is atypical ({}); used as is",
                   st.job.id, r.slot.node_name, st.job.status.round + 1, v.why);
      continue;
    }
    if (r.check == check_state::verified) continue;  // proven already (sampled and re-computed)
    r.stood_out = true;
    // Sampled, and found unverifiable before it was screened (--unverified accept): it will
    // never be reproduced, so it is left out as an outlier is, never used or paid.
    if (r.check == check_state::unverified) {
      r.excluded = true;
      spdlog::info(
          "job {}: the result of {} for round {} {}: {}; it cannot be re-computed, so it is "
          "left out of the mean",
          st.job.id, r.slot.node_name, st.job.status.round + 1,
          v.verdict == screen_verdict::outlier ? "is an outlier" : "stands out", v.why);
      continue;
    }
    r.excluded = v.verdict == screen_verdict::outlier;
    spdlog::info("job {}: the result of {} for round {} {}: {}; re-computing it", st.job.id,
                 r.slot.node_name, st.job.status.round + 1,
                 r.excluded ? "is an outlier, left out of the mean" : "stands out", v.why);
    if (r.check == check_state::clear || r.check == check_state::deciding) {
      r.check = check_state::verifying;
      verify(self, r.assignment_id);
    }
  }
  // The mean is taken over the results that are not left out (all of them, should every one
  // be: the round's median cannot be an outlier, so that takes a round of fewer than 3).
  std::vector<round_result*> used;
  std::vector<double> used_norms;
  for (size_t i = 0; i < order.size(); ++i)
    if (!order[i]->excluded) {
      used.push_back(order[i]);
      used_norms.push_back(screened[i].norm);
    }
  if (used.empty()) {
    // Used, so not left out: marked so, they were used in the mean and then neither paid nor
    // counted by a roll-back when one of their nodes was caught.
    used = order;
    for (auto* r : used) r->excluded = false;
    for (const auto& v : screened) used_norms.push_back(v.norm);
  }
  if (st.closing)
    spdlog::warn("job {}: round {} past its deadline; closing it with {} of {} results", st.job.id,
                 st.job.status.round + 1, st.results.size(), spec.workers);
  for (auto& [id, a] : st.pending) {
    self->send(a.slot.worker, abort_atom::value, id);
    self->send(st.links.market, release_atom::value, a.slot.worker);
  }
  st.pending.clear();
  st.unassigned.clear();

  unconfirmed_round u;
  u.index = st.job.status.round;
  // What a rollback would restore, and the parameters a re-computation starts from, are kept
  // only while some result of the round may still be re-computed: a round of results already
  // clear (the core tier's, or not sampled) or verified can never be rolled back, and copying
  // a large model's theta and momentum every round would double the core's memory.
  const bool may_roll_back = std::any_of(st.results.begin(), st.results.end(), [](const auto& x) {
    return x.second.check == check_state::deciding || x.second.check == check_state::verifying;
  });
  if (may_roll_back) {
    u.theta_before = st.job.theta;
    u.momentum_before = st.job.momentum;
    u.params = st.round_params;
  }
  u.train_loss_before = st.job.status.train_loss;
  u.nodes_before = st.job.status.nodes;
  const double mu = spec.outer_momentum, lr = spec.outer_lr;
  // Nesterov momentum on the averaged pseudo-gradient (DiLoCo's outer optimiser):
  //   m = mu * m + g;  theta -= lr * (g + mu * m)
  // The mean is taken a block of coordinates at a time (each coordinate's is independent of
  // the others once the clipping scales are known), so it never exists whole in doubles.
  const auto scales = robust_mean_scales(used_norms, spec.clip);
  std::vector<double> mean;
  for (size_t begin = 0; begin < st.job.theta.size(); begin += update_blocks::size) {
    const size_t len = std::min(update_blocks::size, st.job.theta.size() - begin);
    robust_mean_block(blocks.read(used, begin), scales, spec.trim, 0, len, mean);
    if (st.job.momentum.empty()) {  // outer momentum 0: theta -= lr * g
      for (size_t k = 0; k < len; ++k)
        st.job.theta[begin + k] = static_cast<float>(st.job.theta[begin + k] - lr * mean[k]);
      continue;
    }
    for (size_t k = 0; k < len; ++k) {
      const size_t i = begin + k;
      double g = mean[k];
      double m = mu * st.job.momentum[i] + g;
      st.job.momentum[i] = static_cast<float>(m);
      st.job.theta[i] = static_cast<float>(st.job.theta[i] - lr * (g + mu * m));
    }
  }
  auto& s = st.job.status;
  // The round's training loss is the median of what the nodes report, of the results used:
  // a loss is a node's claim, and one node's 1e300 (or 0) would make the mean what it says.
  // Its nodes are those of the results used too: an outlier left out trained nothing of it.
  std::vector<double> losses;
  std::set<std::string> nodes;
  for (const auto* r : used) {
    losses.push_back(r->loss);
    nodes.insert(r->slot.node_id);
  }
  s.round += 1;
  s.train_loss = median_of(losses);
  s.nodes = static_cast<int64_t>(nodes.size());
  u.results = std::move(st.results);
  st.results.clear();
  // A round that cannot be rolled back needs its updates no more (nothing will re-aggregate
  // or re-compute them): a large model's would otherwise stay until the round is written.
  if (!may_roll_back)
    for (auto& [shard, r] : u.results) {
      r.update.clear();
      std::vector<float>().swap(r.sketch);
    }
  core_metrics::round_duration().observe(
      std::chrono::duration<double>(clock_type::now() - st.round_started).count());
  st.unconfirmed = std::move(u);
  // The next round goes out before this one is confirmed, evaluated and written, so that
  // workers compute while verification runs and the store writes.
  if (s.round < s.rounds) {
    start_round(self);
  } else {
    if (!may_roll_back)
      st.round_params.reset();  // the last round's: nothing will be computed from them again
    // No round opens to watch the job while its last one waits for verification: watched on
    // (its deadline, the word of what it waits for) until it ends or rolls back.
    self->delayed_send(self, std::chrono::milliseconds(250), tick_atom::value,
                       static_cast<uint64_t>(s.round));
  }
  // While the market is asked for the next round's workers, confirming (an evaluation, the
  // checkpoint's encoding) waits for its answer, which confirms it (dispatch): done here,
  // it would hold the assignments back by as long.
  if (!st.waiting_for_workers) try_confirm(self);
}

void on_result(job_actor* self, uint64_t id, assignment_result& r) {
  if (const int crash = self->state.links.crash_at_round;
      crash > 0 && self->state.job.status.round + 1 == crash)
    throw std::runtime_error("test aid: --crash-job-at-round " + std::to_string(crash));
  auto& st = self->state;
  auto it = st.pending.find(id);
  if (it == st.pending.end()) {
    // The assignment was reassigned or its round closed: drop the late copy, counted.
    st.job.status.late_results += 1;
    return;
  }
  const auto node = it->second.slot.node_name;
  // The signature first: a result must come from the key of the node that was given the
  // assignment, over the assignment id and the update it carries.
  if (!verify_signature(it->second.slot.public_key, result_message(r.assignment_id, r.update),
                        r.signature)) {
    caught(self, node, "its result is not signed by its node key");
    return;
  }
  if (r.assignment_id != id) {
    caught(self, node,
           "its result names assignment " + std::to_string(r.assignment_id) +
               ", which it was not given");
    return;
  }
  auto update = decode_packed_update(r.update, st.job.theta.size());
  // Every number a node reports is checked: a non-finite or negative compute time would
  // reach the bill (a NaN converted to micro-credits is undefined). Every loss head
  // (softmax_xent, next_token_xent, mse) gives a loss of 0 or more, so a negative one was made
  // up. A large one is not bounded: an honest run that diverges slowly reports large losses.
  const char* bad_figure = !std::isfinite(r.loss) ? "non-finite loss"
                           : r.loss < 0.0         ? "negative loss"
                           : !std::isfinite(r.compute_s) || r.compute_s < 0.0
                               ? "compute_s not a finite, non-negative number"
                           : r.samples < 0 ? "negative samples"
                                           : nullptr;
  if (!update || bad_figure != nullptr) {
    caught(self, node,
           "its result is malformed: " +
               (update ? std::string(bad_figure) : update.error().message()));
    return;
  }
  auto slot = it->second.slot;
  auto shard = it->second.shard;
  auto work = std::move(it->second.work);
  const auto winner_started = it->second.started;
  if (auto u = st.unsuited.find(slot.node_id); u != st.unsuited.end())
    u->second.backoff.succeeded();
  // The time the core saw the assignment take: a node is never paid for more.
  const double wall_s =
      std::chrono::duration<double>(clock_type::now() - it->second.started).count();
  st.durations.push_back(wall_s);
  st.pending.erase(it);
  st.copies[shard] -= 1;
  // The first valid result of a shard wins; its other copies are cancelled, and their
  // results, should they still come, are dropped as late.
  for (auto other = st.pending.begin(); other != st.pending.end();) {
    if (other->second.shard != shard) {
      ++other;
      continue;
    }
    self->send(other->second.slot.worker, abort_atom::value, other->first);
    self->send(st.links.market, release_atom::value, other->second.slot.worker);
    if (other->second.started < winner_started) measure_lost_race(self, other->second);
    st.copies[shard] -= 1;
    other = st.pending.erase(other);
  }
  // Answered: the market ends the node's run of failures (a plain release would not).
  self->send(st.links.market, release_atom::value, slot.worker, false);
  st.job.status.bytes_received += r.update.size();
  core_metrics::assignments("accepted").inc();  // its bytes counted by the session they came by
  spdlog::debug(
      "job {}: accepted assignment {:016x} (round {}, shard {}) from {}: {:.3f} s of "
      "compute, {} bytes",
      st.job.id, id, st.job.status.round + 1, shard, slot.node_name, r.compute_s, r.update.size());
  round_result result{id, slot, std::move(work), std::move(*update), r.loss, r.compute_s, wall_s};
  const bool trusted = slot.tier == static_cast<uint8_t>(node_tier::core);
  result.check = trusted ? check_state::clear : check_state::deciding;
  // An update nearly the same as one of the node's last ones is a replay (honest updates of
  // different rounds are far apart): it is re-computed whatever the node's reputation. A
  // core-tier node's results are trusted, so theirs are not sketched (a pass over the update).
  bool replay = false;
  // The round's results of other keys that this one nearly repeats. Honest results of one
  // round come from different shards and seeds, and are far apart (their cosines with the
  // median of the others are 0.8 in a first round, under 0.35 from the fourth: a pair's are
  // lower); a copy of another key's result, signed with the copier's key, sits on the round's
  // median and looks typical, so it was used, credited and paid whenever it was not sampled.
  // Both are re-computed: the original reproduces, the copy does not.
  std::vector<uint64_t> copied;
  if (!trusted) {
    std::vector<float> sketch(4096, 0.0f);
    update_blocks one(st.job.theta.size(), 1);
    std::vector<round_result*> just{&result};
    for (size_t begin = 0; begin < st.job.theta.size(); begin += update_blocks::size)
      update_sketch_add(one.read(just, begin)[0], begin, sketch);
    for (const auto& [other_shard, other] : st.results)
      if (!other.sketch.empty() && other.slot.public_key != slot.public_key &&
          cosine(sketch, other.sketch) > replay_cosine)
        copied.push_back(other.assignment_id);
    result.sketch = sketch;
    if (!st.last_sketches)
      st.last_sketches.emplace(4 * static_cast<size_t>(st.job.spec.workers) + 64);
    replay = st.last_sketches->repeats(slot.public_key, std::move(sketch));
  }
  st.results[shard] = std::move(result);
  if (replay || !copied.empty()) {
    if (replay)
      spdlog::info(
          "job {}: the result of {} for round {} repeats one of its last ones; re-computing it",
          st.job.id, slot.node_name, st.job.status.round + 1);
    else
      spdlog::info(
          "job {}: the result of {} for round {} is nearly the same as {} other result(s) of "
          "the round, from other node keys; re-computing them",
          st.job.id, slot.node_name, st.job.status.round + 1, copied.size());
    st.results[shard].check = check_state::verifying;
    verify(self, id);
    for (uint64_t other : copied) {
      auto* o = find_result(st, other);
      if (o == nullptr || (o->check != check_state::deciding && o->check != check_state::clear))
        continue;  // being re-computed, or settled already
      o->check = check_state::verifying;
      verify(self, other);
    }
  } else if (!trusted) {
    self->request(st.links.reputation, std::chrono::seconds(30), sample_atom::value, slot.node_name)
        .then(
            [=](bool sampled) {
              auto* r = find_result(self->state, id);
              if (r == nullptr || r->check != check_state::deciding) return;
              r->check = sampled ? check_state::verifying : check_state::clear;
              if (sampled) {
                verify(self, id);
              } else {
                try_confirm(self);
                try_advance(self);
              }
            },
            [=](caf::error&) {
              // No answer: re-compute it, the safe choice.
              auto* r = find_result(self->state, id);
              if (r == nullptr || r->check != check_state::deciding) return;
              r->check = check_state::verifying;
              verify(self, id);
            });
  }
  try_advance(self);
  dispatch(self);
}

void send_assignment(job_actor* self, const worker_slot& slot, int64_t shard) {
  auto& st = self->state;
  const auto& spec = st.job.spec;
  assignment a;
  a.id = fresh_assignment_id();
  a.job_id = st.job.id;
  a.round = static_cast<uint64_t>(st.job.status.round);
  a.workload = spec.workload;
  a.model = spec.model;
  a.shard = st.data->shards[static_cast<size_t>(shard)].digest;
  // Round r hands out shards (r * workers + k) mod n (shards_of_round): this place's shard
  // next round is `workers` further on.
  const auto shards = static_cast<int64_t>(st.data->shards.size());
  const int64_t next = (shard + spec.workers) % shards;
  if (st.job.status.round + 1 < st.job.status.rounds && next != shard)
    a.next_shard = st.data->shards[static_cast<size_t>(next)].digest;
  a.seed = mix_seed(spec.seed, a.round, static_cast<uint64_t>(shard));
  a.answer_within_s = spec.deadline_s;
  a.local_steps = spec.local_steps;
  a.batch_size = spec.batch_size;
  a.lr = static_cast<float>(inner_lr_at(spec, st.job.status.round));
  a.weight_decay = static_cast<float>(spec.weight_decay);
  a.plain_sgd = spec.inner == inner_optimizer::sgd;
  a.compression = static_cast<uint8_t>(spec.compression);
  a.precision = static_cast<uint8_t>(spec.precision);
  st.pending[a.id] = {shard, slot, clock_type::now(), a};
  if (!st.first_sent) st.first_sent = clock_type::now();
  a.params_ref = st.round_params;
  const auto params_bytes = st.round_params->bytes.size();
  st.job.status.bytes_sent += params_bytes;
  core_metrics::assignments("sent").inc();
  // Payload bytes are counted by the node's session, where they cross the network (inline, or
  // chunk by chunk as served): counted here too, a chunked payload counted twice, and one that
  // stayed in this process (an in-process node's) once for nothing.
  st.copies[shard] += 1;
  if (st.monitored.insert(slot.worker.address()).second) self->monitor(slot.worker);
  uint64_t id = a.id;
  spdlog::debug("job {}: assignment {:016x} (round {}, shard {}) to {}", st.job.id, a.id,
                a.round + 1, shard, slot.node_name);
  auto deadline = std::chrono::milliseconds(static_cast<int64_t>(spec.deadline_s * 1000));
  auto worker = caf::actor_cast<caf::strong_actor_ptr>(slot.worker);
  self->request(slot.worker, deadline, assign_atom::value, std::move(a))
      .then(
          [=](assignment_result& r) {
            // A response is matched by its message id, which a peer can forge: one that does
            // not come from the worker given the assignment is nobody's result, and must not
            // be held against the node that was given it. The work goes to another worker.
            if (self->current_sender() != worker) {
              spdlog::warn(
                  "job {}: a result for assignment {:016x} came from an actor that was "
                  "not given it; ignored",
                  self->state.job.id, id);
              fail_assignment(self, id, "answered by another actor");
              return;
            }
            on_result(self, id, r);
          },
          [=](caf::error& e) { assignment_failed(self, id, e); });
}

// The nodes (by id) that compute a copy of each shard out now.
std::map<int64_t, std::set<std::string>> copies_by_shard(const job_actor_state& st) {
  std::map<int64_t, std::set<std::string>> out;
  for (const auto& [id, a] : st.pending) out[a.shard].insert(a.slot.node_id);
  return out;
}

// The nodes that compute a copy of every shard queued: none of their slots may take any of
// them, so the acquire leaves them out. Nodes offer a slot per worker, and a backup of a
// straggler's shard went to the cheapest free slot, often another of the straggling node's:
// it ran as slowly there (the same machine, busy or slow), and, the shard counted as backed
// up, the round got no other copy.
std::vector<std::string> nodes_with_every_copy(
    const job_actor_state& st, const std::map<int64_t, std::set<std::string>>& copies) {
  std::vector<std::string> out;
  if (st.unassigned.empty()) return out;
  const auto first = copies.find(st.unassigned.front());
  if (first == copies.end()) return out;
  for (const auto& node : first->second)
    if (std::all_of(st.unassigned.begin(), st.unassigned.end(), [&](int64_t shard) {
          const auto c = copies.find(shard);
          return c != copies.end() && c->second.count(node) != 0;
        }))
      out.push_back(node);
  return out;
}

// Whether a node that did not say the round diverged computes a copy of a shard queued. The
// acquire leaves such a node out for holding the copy (nodes_with_every_copy), and the market
// counts it as left out, not busy: read as "no node is left but those that said it diverged",
// a core-tier node's report ended the job while a straggler's backup was queued and the
// straggler was still computing the shard.
bool copy_out_elsewhere(const job_actor_state& st) {
  return std::any_of(st.pending.begin(), st.pending.end(), [&](const auto& p) {
    const auto& a = p.second;
    return st.diverged_nodes.count(a.slot.node_id) == 0 &&
           std::find(st.unassigned.begin(), st.unassigned.end(), a.shard) != st.unassigned.end();
  });
}

void dispatch(job_actor* self) {
  auto& st = self->state;
  // A backup queued for a shard that has been answered since is not needed.
  std::erase_if(st.unassigned, [&](int64_t shard) { return st.results.count(shard) != 0; });
  if (st.finished || st.unassigned.empty() || st.waiting_for_workers || st.holding || st.paused)
    return;
  st.waiting_for_workers = true;
  auto wanted = static_cast<int64_t>(st.unassigned.size());
  auto avoided = avoided_nodes(st);
  // Whether a node that said this round diverged is among those left out.
  const bool avoids_diverged = std::any_of(avoided.begin(), avoided.end(), [&](const auto& node) {
    return st.diverged_nodes.count(node) != 0;
  });
  const auto with_copies = nodes_with_every_copy(st, copies_by_shard(st));
  for (const auto& node : with_copies)
    if (std::find(avoided.begin(), avoided.end(), node) == avoided.end()) avoided.push_back(node);
  const bool avoids_copies = !with_copies.empty();
  self->request(st.links.market, std::chrono::seconds(10), acquire_atom::value, st.job.id,
                market_workload(st.job.spec.workload, st.job.spec.model), wanted,
                static_cast<uint8_t>(st.job.spec.tier), st.job.spec.max_price,
                st.job.spec.min_reputation, std::move(avoided))
      .then(
          [=](acquire_reply& reply) {
            auto& st = self->state;
            auto& slots = reply.slots;
            st.waiting_for_workers = false;
            if (st.finished) {
              for (auto& s : slots) self->send(st.links.market, release_atom::value, s.worker);
              return;
            }
            // Asked for the round before (a straggler's backup), answered after the next
            // round's escrow hold went out, or after the job paused for one: the slots go
            // back. They got the next round's work at once, before its escrow was held (or
            // while the job said it was paused), and a round so collected was paid from none.
            // The hold's answer, or the top-up, dispatches again.
            if (st.holding || st.paused) {
              for (auto& s : slots) self->send(st.links.market, release_atom::value, s.worker);
              return;
            }
            // A backup queued for a shard that has been answered since is not needed.
            std::erase_if(st.unassigned,
                          [&](int64_t shard) { return st.results.count(shard) != 0; });
            auto copies = copies_by_shard(st);
            for (auto& s : slots) {
              // The first shard queued of which the slot's node computes no copy yet: a
              // backup on the node it backs up runs no faster there. Where the node has a copy
              // of every shard queued, the slot goes back, and the next acquire leaves the
              // node out.
              const auto next =
                  st.caught.count(s.node_name) != 0
                      ? st.unassigned.end()
                      : std::find_if(st.unassigned.begin(), st.unassigned.end(),
                                     [&](int64_t shard) {
                                       const auto c = copies.find(shard);
                                       return c == copies.end() || c->second.count(s.node_id) == 0;
                                     });
              if (next == st.unassigned.end()) {
                self->send(st.links.market, release_atom::value, s.worker);
                continue;
              }
              const int64_t shard = *next;
              st.unassigned.erase(next);
              copies[shard].insert(s.node_id);
              send_assignment(self, s, shard);
            }
            std::string detail;
            if (!st.unassigned.empty()) {
              detail = "waiting for workers: " + std::to_string(st.unassigned.size()) +
                       " assignment(s) of round " + std::to_string(st.job.status.round + 1) +
                       " have none (tier " + to_string(st.job.spec.tier) +
                       "): " + std::to_string(reply.busy) + " worker(s) busy, " +
                       std::to_string(reply.wrong_tier) + " of another tier, " +
                       std::to_string(reply.too_expensive) + " over max_price, " +
                       std::to_string(reply.low_reputation) + " below min_reputation";
              if (reply.avoided > 0 && !st.unsuited.empty()) {
                // The node left out most recently, as an example of why.
                const job_actor_state::unsuited_node* last = nullptr;
                for (const auto& [node, unsuited] : st.unsuited)
                  if (last == nullptr || unsuited.backoff.until() > last->backoff.until())
                    last = &unsuited;
                detail += ", " + std::to_string(reply.avoided) +
                          " left out for a while: this job's work " + last->failure;
                if (avoids_copies) detail += ", or their node computes the shard already";
              } else if (reply.avoided > 0 && avoids_copies) {
                detail += ", " + std::to_string(reply.avoided) +
                          " left out: their node computes the shard already";
              }
              self->delayed_send(self, std::chrono::milliseconds(250), tick_atom::value);
              // No node that could take the work is busy, and those the job left out include
              // nodes that said the round diverged: none is left to compute it but them (a node
              // left out for computing a copy of the work is still computing it).
              if (reply.slots.empty() && reply.busy == 0 && reply.avoided > 0 && avoids_diverged &&
                  !copy_out_elsewhere(st))
                decide_divergence(self);
              if (st.finished) return;
            }
            detail = with_divergence_wait(st, std::move(detail));
            if (detail != st.job.status.detail) {
              st.job.status.detail = detail;
              publish(self);
            }
            // The round before, held back until this round's assignments are out (try_advance).
            try_confirm(self);
          },
          [=](caf::error& e) {
            auto& st = self->state;
            st.waiting_for_workers = false;
            // Answered late, the acquire still made its slots busy, held by this job: they are
            // given back, all but those of the assignments out.
            std::vector<caf::actor> kept;
            for (const auto& [id, a] : st.pending) kept.push_back(a.slot.worker);
            self->send(st.links.market, release_atom::value, std::move(kept));
            try_confirm(self);
            spdlog::warn("job {}: market did not answer: {}", self->state.job.id,
                         self->system().render(e));
            self->delayed_send(self, std::chrono::milliseconds(500), tick_atom::value);
          });
}

void start_round(job_actor* self) {
  auto& st = self->state;
  // The last round's parameters go before this round's are encoded, unless a rollback may
  // still need them (the unconfirmed round holds them then): a large model's would otherwise
  // be in memory twice.
  st.round_params.reset();
  auto params = std::make_shared<shared_params>();
  // Raw: a node in another process gets them packed (shared_params::wire_bytes).
  params->bytes = encode_vector(st.job.theta);
  // Named once per round here, not by each node's session: hashing a large model's
  // parameters takes about a second per gigabyte.
  if (params->bytes.size() > st.links.payload_chunk_bytes) {
    params->chunk_bytes = st.links.payload_chunk_bytes;
    params->chunks = chunk_digests(params->bytes, params->chunk_bytes);
  }
  st.round_params = std::move(params);
  st.results.clear();
  open_round(self);
  for (int64_t shard : shards_of_round(st, st.job.status.round)) st.unassigned.push_back(shard);
  hold_round(self);
}

// Runs four times a second during a round: backup copies for stragglers, and closing a
// round that is past its deadline with a quorum of results.
void watch_round(job_actor* self) {
  auto& st = self->state;
  const auto& spec = st.job.spec;
  auto now = clock_type::now();
  const auto answered = static_cast<int64_t>(st.results.size());
  const double out_for =
      st.first_sent ? std::chrono::duration<double>(now - *st.first_sent).count() : 0.0;
  // The deadline is the user's, in wall-clock time since the submit: counted as the time a
  // job actor ran, a job that waited while its core was down (restarted nightly, say) never
  // reached it, holding its round's escrow. Records older than submitted_unix count the
  // running time, as before.
  const double age_s =
      st.job.status.submitted_unix > 0
          ? std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
                    .count() -
                static_cast<double>(st.job.status.submitted_unix)
          : st.elapsed_before + std::chrono::duration<double>(now - st.resumed_at).count();
  if (spec.deadline_h > 0.0 && age_s > spec.deadline_h * 3600.0) {
    finish(self, job_state::failed, "its deadline of " + format_g(spec.deadline_h) + " h passed");
    return;
  }
  const int64_t quorum = quorum_results(spec);
  if (!st.closing && out_for > spec.deadline_s && answered >= quorum && answered < spec.workers) {
    st.closing = true;
    try_advance(self);
    return;
  }
  const bool all_in = st.job.status.round >= spec.rounds;  // the last round is collected
  if (st.unconfirmed && (answered == spec.workers || all_in)) {
    auto waiting = unsettled(st.unconfirmed->results);
    std::string detail =
        (all_in ? std::string("every round is in")
                : "round " + std::to_string(st.job.status.round + 1) + " is in") +
        "; waiting for " + std::to_string(waiting) + " verification(s) of round " +
        std::to_string(st.unconfirmed->index + 1) + " on core-tier workers" +
        (st.verifier_missing.empty() ? std::string()
                                     : " (waiting for a verifier: " + st.verifier_missing + ")");
    detail = with_divergence_wait(st, std::move(detail));
    if (detail != st.job.status.detail) {
      st.job.status.detail = detail;
      publish(self);
    }
  }
  if (spec.backup_after <= 0 || st.durations.empty()) return;
  std::vector<double> d = st.durations;
  std::nth_element(d.begin(), d.begin() + d.size() / 2, d.end());
  double limit = spec.backup_after * d[d.size() / 2];
  bool queued = false;
  for (const auto& [id, a] : st.pending) {
    if (st.results.count(a.shard) || st.backed_up.count(a.shard)) continue;
    if (std::chrono::duration<double>(now - a.started).count() <= limit) continue;
    spdlog::info("job {}: shard {} on {} is slow ({:.1f} s, median {:.1f} s); backing it up",
                 st.job.id, a.shard, a.slot.node_name,
                 std::chrono::duration<double>(now - a.started).count(), d[d.size() / 2]);
    st.backed_up.insert(a.shard);
    st.unassigned.push_back(a.shard);
    queued = true;
  }
  if (queued) dispatch(self);
}

// The job's first round, once its stale escrow is back; or, for a job started only to end
// (`job_start::end_with`), its end.
void begin(job_actor* self) {
  auto& st = self->state;
  if (!st.job.end_with.empty()) {
    finish(self, st.job.end_state, st.job.end_with);
    return;
  }
  // Every round committed, the job not yet recorded done (its actor died between the last
  // round's commit and its end record): it is done. Started, it trained and billed a round
  // past the last, and never ended.
  if (st.job.status.round >= st.job.status.rounds) {
    spdlog::info("job {}: its last round is committed; it is done", st.job.id);
    finish(self, job_state::done, "");
    return;
  }
  start_round(self);
}

// Returns escrow left by an interrupted run (a crash between a hold and its round's commit)
// to the account, then begins. A ledger that cannot be asked (a core starting, whose keeper
// reads the whole chain first; a store that fails for a while) is asked again, later and
// later: the resumed job failed for good, and the escrow it found stayed held.
void return_stale_escrow(job_actor* self) {
  auto& st = self->state;
  auto again = [=](const std::string& why) {
    auto& st = self->state;
    st.escrow_tries += 1;
    const auto wait = std::chrono::seconds(std::min(60, 2 << std::min(st.escrow_tries - 1, 5)));
    const auto waiting = "waiting for the ledger to return the escrow of an interrupted run (" +
                         why + "); asking again in " + std::to_string(wait.count()) + " s";
    spdlog::warn("job {}: {}", st.job.id, waiting);
    // An ended job's status says how it ended, as does a failed one started only to end; one
    // started only to end that has not ended yet still says why it ends.
    if (!st.finished && !is_terminal(st.job.status.state)) {
      st.job.status.detail = st.job.end_with.empty() ? waiting : st.job.end_with + "; " + waiting;
      publish(self);
    }
    self->delayed_send(self, wait, tick_atom::value, open_atom::value);
  };
  auto go = [=] {
    auto& st = self->state;
    st.holding = false;
    st.stale_escrow = false;
    if (!st.finished) {
      st.job.status.detail.clear();
      begin(self);
    } else {  // ended meanwhile (cancelled): its end waited for this
      record_end(self);
    }
  };
  self->request(st.links.ledger, std::chrono::seconds(60), open_atom::value, escrow_of(st), true)
      .then(
          [=](caf::ok_atom) {
            self->request(self->state.links.ledger, std::chrono::seconds(60), account_atom::value,
                          escrow_of(self->state))
                .then(
                    [=](account_info& info) {
                      auto& st = self->state;
                      st.job.status.credits_held = 0;
                      if (info.balance <= 0) return go();
                      std::vector<posting> back{{info.id, -info.balance},
                                                {st.job.spec.account, info.balance}};
                      const auto op = ledger_op(st, "stale", st.job.status.round);
                      self->request(st.links.ledger, st.links.ledger_wait, transfer_atom::value,
                                    std::string("release"),
                                    st.job.id + " resumed: escrow of an interrupted round returned",
                                    std::move(back), op)
                          .then([=](uint64_t) { go(); },
                                [=](caf::error& e) {
                                  const auto why = "cannot return it: " + from_caf(e).message();
                                  if (!outcome_unknown(e)) return again(why);
                                  ask_booked(self, op,
                                             [=](bool booked) { booked ? go() : again(why); });
                                });
                    },
                    [=](caf::error& e) { again("cannot read it: " + from_caf(e).message()); });
          },
          [=](caf::error& e) { again("cannot open it: " + from_caf(e).message()); });
}

// A paused job (for its budget or its account) runs again, holding its round's escrow first.
void resume_paused(job_actor* self) {
  auto& st = self->state;
  st.paused = false;
  st.paused_for_budget = false;
  st.paused_for_account = false;
  st.job.status.state = job_state::running;
  st.job.status.detail.clear();
  publish(self);
  hold_round(self);
}

// A job that stops without ending (its supervisor went down, or it threw) tells the
// workers of its assignments to stop: the market frees their slots as the job goes down, and
// the next job's work, queued behind the dead one's, missed its deadline, its honest node
// left out of that job and cooled down for it.
void abort_pending(job_actor* self) {
  auto& st = self->state;
  for (const auto& [id, a] : st.pending) self->send(a.slot.worker, abort_atom::value, id);
  st.pending.clear();
}

caf::behavior job_behavior(job_actor* self, job_start start, job_links links) {
  auto& st = self->state;
  st.job = std::move(start);
  st.links = std::move(links);
  // EPOCH.RUN: the ledger refuses an older epoch's operations once a job supervisor that
  // replaced the one that started this actor has fenced them off.
  st.run_id = fmt::format("{:x}.{:016x}", st.links.run_epoch, fresh_assignment_id());
  // The last committed checkpoint, decoded here on the job's own thread. Its step is the
  // job's round: a record written alone (a top-up's) while a round's record and checkpoint
  // were being committed can land after them and say the round before, and resuming from
  // the record's round would train, and pay for, a committed round again. A checkpoint that
  // cannot be used ends the job, failed, at its recorded round: starting over would train
  // (and bill) every round again.
  const bool wants_momentum = st.job.spec.outer_momentum != 0.0;
  std::string unusable;
  if (!st.job.checkpoint.empty()) {
    if (auto c = decode_checkpoint(st.job.checkpoint)) {
      st.job.theta = floats_of(c->find("theta"));
      st.job.momentum = floats_of(c->find("outer_momentum"));
      const auto step = static_cast<int64_t>(c->step);
      if (step != st.job.status.round) {
        if (st.job.from == job_start::origin::resumed)
          spdlog::warn(
              "job {}: its record says round {}, its checkpoint round {}: resuming "
              "from the checkpoint's",
              st.job.id, st.job.status.round, step);
        st.job.status.round = step;
        trim_history(st.job.status.history, step);
      }
      if (st.job.theta.empty())
        unusable = "its checkpoint holds no parameters";
      else if (st.job.momentum.empty() && wants_momentum)
        unusable = "its checkpoint holds no outer momentum";
      else if (!st.job.momentum.empty() && st.job.theta.size() != st.job.momentum.size())
        unusable = "its checkpoint's parameters and outer momentum differ in size";
    } else {
      unusable = "its checkpoint is damaged (" + c.error().message() + ")";
    }
    st.job.checkpoint = {};
  } else if (st.job.status.round > 0) {
    unusable = "its checkpoint of round " + std::to_string(st.job.status.round) + " is missing";
  }
  if (!unusable.empty() && st.job.end_with.empty()) {
    spdlog::error("job {}: {}: it cannot resume", st.job.id, unusable);
    st.job.end_with = unusable + ": the job cannot resume from it";
  }
  // A job started only to end trains nothing: it keeps its recorded round, and needs
  // neither its parameters nor its data (which may be what could not be read).
  const bool only_to_end = !st.job.end_with.empty();
  if (only_to_end) {
    std::vector<float>().swap(st.job.theta);
    std::vector<float>().swap(st.job.momentum);
  }
  if (!wants_momentum) std::vector<float>().swap(st.job.momentum);
  if (st.job.from == job_start::origin::resumed)
    spdlog::info("resuming job {} from round {}", st.job.id, st.job.status.round);
  else if (st.job.from == job_start::origin::restarted)
    spdlog::warn("restarting job {} from round {}", st.job.id, st.job.status.round);
  st.elapsed_before = st.job.status.elapsed_s;
  st.resumed_at = clock_type::now();
  st.durable = committed_figures::of(st.job.status);

  // A model on a built-in data set loads it through its workload; on a user's data set, the
  // catalog has it from the store (the job supervisor registered it).
  const auto& spec = st.job.spec;
  // A job started only to end makes no workload: its data is not needed.
  if (!only_to_end) {
    const bool builtin_data = kernels::is_builtin_data_set(spec.data_set);
    auto w = kernels::find_workload(spec.workload, spec.model,
                                    builtin_data ? spec.data_set : std::string());
    expected<std::shared_ptr<const served_data>> data =
        !w ? expected<std::shared_ptr<const served_data>>(w.error())
        : spec.model.empty() || builtin_data
            ? st.links.catalog->get(**w)
            : st.links.catalog->user_set(st.job.status.owner, spec.data_set, **w);
    // Submitted (and checked) under a smaller --shard-samples than this core's, a job on a
    // built-in set has more workers than this core's cut has shards: it gets a cut of its
    // own, as fine as its workers need. It failed for good at its resume, and a restart with
    // the first setting did not bring it back.
    const bool cut_here = spec.model.empty() || builtin_data;
    if (data && cut_here && spec.workers > static_cast<int64_t>((*data)->shards.size())) {
      spdlog::warn(
          "job {}: its {} workers need as many shards, and this core's --shard-samples "
          "cuts its data into {}: cut into {} for it",
          st.job.id, spec.workers, (*data)->shards.size(), spec.workers);
      data = st.links.catalog->get(**w, spec.workers);
    }
    if (data) {
      if (auto fits = check_workers_fit(spec.workers, (*data)->shards.size()); !fits)
        data = fits.error();  // a round could never fill: the job fails now rather than hang
    }
    if (!data) {
      // It ends, failed, as a job started only to end: first the escrow an interrupted run
      // left goes back (a resumed job whose data set was removed while it ran held some).
      st.job.end_with = data.error().message();
      std::vector<float>().swap(st.job.theta);
      std::vector<float>().swap(st.job.momentum);
    } else {
      st.workload = std::move(*w);
      st.data = std::move(*data);
      const int64_t tested = evaluation_samples(st.workload->forward_flops(), st.data->test.size());
      st.tested = evenly_spaced_rows(st.data->test, tested);
      st.job.status.tested_samples = tested;
      st.job.status.test_samples = st.data->test.size();
      if (tested < st.data->test.size())
        spdlog::info(
            "job {}: each evaluation takes {} of the {} test samples (its model's "
            "forward passes over all would pass the core's budget of {:.0e} FLOPs)",
            st.job.id, tested, st.data->test.size(), core_evaluation_flops);
      // A checkpoint of another size (its workload changed shape since) cannot be trained on:
      // honest nodes' updates, sized by the workload, would not decode against it, and they
      // would be flagged for it. The job ends, failed, as from a damaged checkpoint.
      if (!st.job.theta.empty() &&
          static_cast<int64_t>(st.job.theta.size()) != st.workload->parameter_count()) {
        st.job.end_with = "its checkpoint holds " + std::to_string(st.job.theta.size()) +
                          " parameters, its model " +
                          std::to_string(st.workload->parameter_count()) +
                          ": the job cannot resume from it";
        spdlog::error("job {}: {}", st.job.id, st.job.end_with);
        std::vector<float>().swap(st.job.theta);
        std::vector<float>().swap(st.job.momentum);
      } else if (st.job.theta.empty()) {
        st.job.theta.resize(static_cast<size_t>(st.workload->parameter_count()));
        st.workload->init_parameters(st.job.spec.seed, st.job.theta);
        if (wants_momentum) st.job.momentum.assign(st.job.theta.size(), 0.0f);
      }
    }
  }
  // A job started only to end is not shown running: one the supervisor failed (it kept
  // stopping) went failed, running, failed, and a cancel in between was taken. One that
  // fails here says why at once: it may wait a while for an interrupted run's escrow first.
  if (st.job.end_with.empty()) {
    st.job.status.state = job_state::running;
    st.job.status.detail.clear();
    publish(self);
  } else if (st.job.end_state == job_state::failed && !is_terminal(st.job.status.state)) {
    st.job.status.detail = st.job.end_with;
    publish(self);
  }

  // An error sent to the job outside a request (a node's actor refusing an abort it does
  // not understand) says nothing about the job: without this handler CAF would stop it.
  self->set_error_handler([=](caf::error& e) {
    spdlog::debug("job {}: ignored an error message: {}", self->state.job.id,
                  self->system().render(e));
  });
  self->set_default_handler(caf::drop);
  self->set_exception_handler([=](caf::scheduled_actor*, std::exception_ptr&) -> caf::error {
    spdlog::error("job {}: stopped by an exception; its supervisor resumes it", self->state.job.id);
    abort_pending(self);
    return caf::sec::runtime_error;
  });
  // A job stops with its supervisor (a restarted one resumes it from the store); a link
  // would instead take the supervisor down with any job that is killed.
  self->monitor(st.links.supervisor);
  self->set_down_handler([=](const caf::down_msg& down) {
    auto& st = self->state;
    if (down.source == st.links.supervisor.address()) {
      abort_pending(self);
      self->quit(down.reason);
      return;
    }
    st.monitored.erase(down.source);
    std::vector<uint64_t> lost;
    for (const auto& [id, a] : st.pending)
      if (a.slot.worker.address() == down.source) lost.push_back(id);
    for (uint64_t id : lost) fail_assignment(self, id, "worker lost");
  });
  if (metered(st)) {
    // Escrow left by an interrupted run (a crash between a hold and its round's commit) goes
    // back to the account before the job holds anew.
    st.job.status.budget = std::max(st.job.status.budget, st.job.spec.budget);
    st.job.status.account = st.job.spec.account;
    st.holding = true;
    st.stale_escrow = true;
    return_stale_escrow(self);
  } else {
    begin(self);
  }
  return {
      [=](tick_atom) { dispatch(self); },
      // A node caught in another job (from the job supervisor): its work here is discarded.
      [=](bar_atom, const std::string& node, const std::string& why) {
        auto& st = self->state;
        if (self->current_sender() != caf::actor_cast<caf::strong_actor_ptr>(st.links.supervisor))
          return;
        if (st.finished || st.caught.count(node) != 0) return;
        spdlog::warn("job {}: node {} was caught in another job ({}); its work here is discarded",
                     st.job.id, node, why);
        discard_work_of(self, node, "caught in another job: " + why);
      },
      [=](booked_atom, const std::string& op) {
        if (self->state.asking.count(op) != 0) ask_booked(self, op);
      },
      [=](topup_atom, int64_t amount) -> caf::result<caf::ok_atom> {
        auto& st = self->state;
        if (self->current_sender() != caf::actor_cast<caf::strong_actor_ptr>(st.links.supervisor))
          return to_caf(error(errc::invalid_argument, "only the job supervisor tops a job up"));
        if (st.finished)
          return to_caf(error(errc::invalid_argument, "job " + st.job.id + " has ended"));
        // A budget is at most what a spec may ask (1e12 credits): top-ups past it would
        // overflow it, and a negative budget pauses the job for good. Checked again as the
        // record is written (another top-up may have been written meanwhile).
        auto past_cap = [=] {
          auto& st = self->state;
          return amount > max_amount_micro - st.job.status.budget
                     ? to_caf(error(errc::invalid_argument,
                                    "a top-up of " + format_credits(amount) + " would take job " +
                                        st.job.id + "'s budget of " +
                                        format_credits(st.job.status.budget) +
                                        " past 1e12 credits"))
                     : caf::error{};
        };
        if (amount < 0)
          return to_caf(error(errc::invalid_argument, "a top-up must be 0 credits or more"));
        if (amount == 0) {
          // Paused because its account could not hold a round's escrow, the job needs no more
          // budget, only the credits its account has been given since: 0 resumes it. A job
          // whose budget is at the cap could otherwise never resume, every larger top-up
          // passing the cap.
          if (!st.paused_for_account)
            return to_caf(error(errc::invalid_argument,
                                "a top-up of 0 only resumes a job paused because its account "
                                "could not hold a round's escrow, and job " +
                                    st.job.id + " is not: top it up by more than 0 credits"));
          spdlog::info("job {}: resumed by a top-up of 0", st.job.id);
          resume_paused(self);
          return caf::ok_atom::value;
        }
        if (auto refused = past_cap()) return refused;
        // The budget is raised as its record is written, and lowered again if the write
        // fails: raised at once, a top-up whose write failed or came too late for the
        // caller's wait stayed in memory (and in the next round's record), and the caller,
        // told it failed, topped up again: twice the budget asked for.
        auto rp = self->make_response_promise<caf::ok_atom>();
        auto write = [=]() mutable {
          auto& st = self->state;
          if (st.finished) {
            rp.deliver(to_caf(error(errc::invalid_argument,
                                    "job " + st.job.id + " ended before its top-up was recorded")));
            return;
          }
          if (auto refused = past_cap()) {
            rp.deliver(refused);
            return;
          }
          st.job.status.budget += amount;
          store_batch batch;
          batch.keys.push_back(job_record_key(st.job.id));
          auto recorded = st.job.status;
          st.durable.show_in(recorded);
          batch.values.push_back(encode_job_record(st.job.spec_text, recorded));
          auto recorded_ok = [=]() mutable {
            auto& st = self->state;
            spdlog::info("job {}: budget topped up by {} to {} credits", st.job.id,
                         format_credits(amount), format_credits(st.job.status.budget));
            if (st.paused && !st.finished) {
              resume_paused(self);
            } else {
              publish(self);
            }
            rp.deliver(caf::ok_atom::value);
          };
          auto not_recorded = [=](const std::string& why) mutable {
            auto& st = self->state;
            st.job.status.budget -= amount;
            rp.deliver(to_caf(
                error(errc::store_error, "the top-up of job " + st.job.id + " was not recorded (" +
                                             why + "); its budget stays " +
                                             format_credits(st.job.status.budget) + " credits")));
          };
          const int64_t written_budget = recorded.budget;
          // Read back after a failure: the budget in memory must be the one the store holds.
          auto budget_written = [=](bool found, const std::vector<uint8_t>& value) {
            if (!found) return false;
            auto stored = decode_job_record(value);
            return stored && stored->second.budget == written_budget;
          };
          commit_checked(
              self, st.links.store, st.links.record_wait, std::move(batch),
              read_back(job_record_key(st.job.id), std::chrono::minutes(5), budget_written),
              recorded_ok, [=](caf::error& e, caf::error& read) mutable {
                auto why = self->system().render(e);
                if (read) why += "; reading it back: " + self->system().render(read);
                not_recorded(why);
              });
        };
        if (st.commits_open.empty()) {
          write();
        } else {
          // Written once the rounds' commits sent before it are answered, so that none of
          // theirs (encoded with the budget before) lands after it; given up if that takes
          // longer than the caller waits.
          const uint64_t number = ++st.topups;
          auto give_up = [=]() mutable {
            rp.deliver(to_caf(error(errc::unavailable,
                                    "job " + self->state.job.id +
                                        "'s rounds are being committed slowly: the top-up was not "
                                        "recorded; top up again")));
          };
          st.budget_writes.push_back({st.commits_sent, number, write, give_up});
          self->delayed_send(self, topup_wait, topup_atom::value, tick_atom::value, number);
        }
        return rp;
      },
      [=](topup_atom, tick_atom, uint64_t number) {
        auto& st = self->state;
        if (self->current_sender() != self->ctrl()) return;
        auto it = std::find_if(st.budget_writes.begin(), st.budget_writes.end(),
                               [&](const auto& w) { return w.number == number; });
        if (it == st.budget_writes.end()) return;  // written meanwhile
        auto give_up = std::move(it->give_up);
        st.budget_writes.erase(it);
        give_up();
      },
      [=](update_atom, const std::string& role, caf::actor& replacement) {
        // The core restarted a sibling; in-flight requests to the old one fail and retry. Only
        // the job supervisor says so: a handle named here is trusted with the job's state.
        if (self->current_sender() !=
            caf::actor_cast<caf::strong_actor_ptr>(self->state.links.supervisor))
          return;
        if (role == "store") self->state.links.store = std::move(replacement);
        if (role == "market") {
          // A new market takes every slot for free: it hears which workers run this job's
          // assignments, or it hands them to other jobs meanwhile.
          auto& st = self->state;
          st.links.market = std::move(replacement);
          std::vector<caf::actor> held;
          for (const auto& [id, a] : st.pending) held.push_back(a.slot.worker);
          if (!held.empty()) self->send(st.links.market, acquire_atom::value, std::move(held));
        }
        if (role == "reputation") self->state.links.reputation = std::move(replacement);
        if (role == "verifier") {
          auto& st = self->state;
          st.links.verifier = std::move(replacement);
          st.verifier_generation += 1;
          std::vector<uint64_t> checking;
          for (auto* results : {&st.results, st.unconfirmed ? &st.unconfirmed->results : nullptr})
            if (results != nullptr)
              for (const auto& [shard, r] : *results)
                if (r.check == check_state::verifying) checking.push_back(r.assignment_id);
          if (!checking.empty())
            spdlog::warn("job {}: the verifier restarted: {} re-computation(s) asked again",
                         st.job.id, checking.size());
          for (uint64_t id : checking) verify(self, id);
          if (st.divergence_checking && !st.finished)
            check_divergence(self, st.divergence_work, st.divergence_said);
        }
        if (role == "ledger") self->state.links.ledger = std::move(replacement);
        dispatch(self);
      },
      // A result's re-computation asked again (verify). From this actor alone: a node that knows
      // the job's address would otherwise have the verifier re-run any result at will.
      [=](verify_atom, uint64_t assignment_id) {
        if (self->current_sender() != self->ctrl()) return;
        auto* r = find_result(self->state, assignment_id);
        if (r == nullptr || !r->reask_due || self->state.finished) return;
        verify(self, assignment_id);
      },
      // The divergence check of `round`, asked again after the core tier had no worker free.
      [=](verify_atom, int64_t round, uint64_t generation) {
        auto& st = self->state;
        if (self->current_sender() != self->ctrl() || st.finished || !st.divergence_checking ||
            st.job.status.round != round || generation != st.verifier_generation)
          return;
        check_divergence(self, st.divergence_work, st.divergence_said);
      },
      [=](tick_atom, uint64_t round) {
        auto& st = self->state;
        if (st.finished || round != static_cast<uint64_t>(st.job.status.round)) return;
        watch_round(self);
        self->delayed_send(self, std::chrono::milliseconds(250), tick_atom::value, round);
      },
      // A rejection the reputation tracker did not take, told again (report_rejection).
      [=](reject_atom, const std::string& node, const std::string& why, int attempt) {
        if (self->current_sender() != self->ctrl()) return;
        self->state.rejections_untold -= 1;  // the one the failed telling kept for this
        report_rejection(self, node, why, attempt);
        if (self->state.rejections_untold == 0 && self->state.ended_and_recorded) self->quit();
      },
      [=](tick_atom, open_atom) {
        if (self->current_sender() == self->ctrl() && self->state.stale_escrow)
          return_stale_escrow(self);
      },
      [=](tick_atom, transfer_atom) {
        if (self->current_sender() != self->ctrl()) return;
        auto again = std::exchange(self->state.hold_again, {});
        if (again && !self->state.finished) again();  // an ended job holds nothing more
      },
      [=](tick_atom, stop_atom) {
        if (self->current_sender() == self->ctrl() && self->state.finished) record_end(self);
      },
      [=](withdraw_atom, const std::string& node_id) {
        auto& st = self->state;
        std::vector<uint64_t> lost;
        for (const auto& [id, a] : st.pending)
          if (a.slot.node_id == node_id) lost.push_back(id);
        for (uint64_t id : lost) fail_assignment(self, id, "its node was withdrawn");
      },
      [=](cancel_atom) -> caf::result<caf::ok_atom> {
        // Workers learn this actor's address from the assignments it sends them; only the
        // job supervisor (acting for the job's owner) may end the job.
        if (self->current_sender() !=
            caf::actor_cast<caf::strong_actor_ptr>(self->state.links.supervisor))
          return to_caf(error(errc::invalid_argument, "only the job supervisor cancels a job"));
        auto& st = self->state;
        // Started only to fail (its checkpoint or data set cannot be used), it may still wait
        // for an interrupted run's escrow: it fails now, and the canceller is told why.
        // Recorded "cancelled by its owner", its end lost the reason it could not go on.
        if (!st.job.end_with.empty() && st.job.end_state == job_state::failed)
          finish(self, job_state::failed, st.job.end_with);
        // Ended otherwise (done, failed), its end perhaps still being written: not cancelled,
        // and not said to be (its owner was told "cancelled" of a job that ended done).
        if (st.finished && st.job.status.state != job_state::cancelled)
          return to_caf(already_ended(st));
        if (st.ended_and_recorded) return caf::ok_atom::value;
        // Its last round's commit on its way (try_confirm showed it done), it is not taken
        // until that commit is answered: a job that then ends done was recorded "cancelled by
        // its owner". Only a commit that fails lets the cancel end it.
        if (!st.finished && st.job.status.state == job_state::done) {
          auto rp = self->make_response_promise<caf::ok_atom>();
          st.cancels_at_last_commit.push_back(rp);
          return rp;
        }
        // Ending already, it may still wait for a round's commit, its hold or an interrupted
        // run's escrow before its end is written: acknowledged at once, a second cancel said
        // "cancelled" of a job that a core stopped meanwhile resumed.
        auto rp = self->make_response_promise<caf::ok_atom>();
        st.end_waiters.push_back(rp);
        // A job started only to end cancelled (it waited for its checkpoint or data sets)
        // keeps the words it was started with.
        const bool started_to_cancel =
            !st.job.end_with.empty() && st.job.end_state == job_state::cancelled;
        finish(self, job_state::cancelled,
               started_to_cancel ? st.job.end_with : "cancelled by its owner");
        return rp;
      },
      // As it is published: a round not committed yet is not shown, nor its bill.
      [=](status_atom) -> job_status { return shown_status(self); },
  };
}

}  // namespace

caf::actor spawn_job(caf::actor_system& sys, job_start start, job_links links) {
  return sys.spawn<caf::detached>(job_behavior, std::move(start), std::move(links));
}

}  // namespace gflex
