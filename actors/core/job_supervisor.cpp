#include "job_supervisor.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <tuple>

#include <toml++/toml.h>

#include "core_metrics.hpp"
#include "data_catalog.hpp"
#include "gflex/kernels/model_spec.hpp"
#include "gflex/kernels/workload.hpp"
#include "gflex/runtime/checkpoint.hpp"
#include "gflex/runtime/digest.hpp"
#include "gflex/runtime/printable_text.hpp"
#include "gflex/runtime/toml_nesting.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "job.hpp"
#include "link_loss.hpp"
#include "messages.hpp"
#include "restart_budget.hpp"
#include "spec_runs.hpp"
#include "store_write.hpp"
#include "user_data.hpp"

namespace gflex {

job_memory_budget default_job_memory_budget() {
  job_memory_budget out;
  const long pages = sysconf(_SC_PHYS_PAGES), page_bytes = sysconf(_SC_PAGE_SIZE);
  if (pages > 0 && page_bytes > 0)
    out.core = static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_bytes) / 2;
  return out;
}

uint64_t job_core_memory_bytes(int64_t parameters, const job_spec& spec) {
  const auto n = static_cast<uint64_t>(std::max<int64_t>(parameters, 0));
  const uint64_t blocks = (n + default_update_block_size - 1) / default_update_block_size;
  const uint64_t update = spec.compression == compression::fp32 ? 4 * n : n + 4 * blocks;
  return 3 * 4 * n + 2 * static_cast<uint64_t>(std::max<int64_t>(spec.workers, 0)) * update;
}

uint64_t job_core_memory_bytes(const kernels::workload& w, const job_spec& spec) {
  const int64_t parameters = w.parameter_count();
  return job_core_memory_bytes(parameters, spec) +
         4 * static_cast<uint64_t>(std::max<int64_t>(parameters, 0)) + w.evaluation_bytes();
}

namespace {

struct job_entry {
  caf::actor actor;
  job_status status;
  std::string spec_text;
  job_spec spec;
  restart_budget restarts;
  bool ending = false;  // started a last time only to record its failure (restart_job)
  /// Whether its end is in the store (read from there, or its actor said it wrote it): the
  /// escrow of a job shown ended is returned with its end record, and until that is written
  /// the ledger's audit does not count the job ended.
  bool end_recorded = false;
  /// The core's memory it takes (job_core_memory_bytes), planned once from its spec.
  std::optional<uint64_t> core_memory;
};

using data_set_id = std::pair<std::string, std::string>;  // owner, name

/// A fetch waiting for its job's model to be exported.
struct waiting_fetch {
  uint64_t offset = 0;
  caf::typed_response_promise<model_part> promise;
};

/// A job's model as handed out (the checkpoint's parameters named by the workload's layout),
/// made once by a detached builder and served in parts of one payload chunk.
struct model_export {
  int64_t step = 0;
  std::shared_ptr<const std::vector<uint8_t>> bytes;  // null while it is being made
  std::vector<waiting_fetch> waiting;
  std::chrono::steady_clock::time_point used;
};

/// Exports kept at once (each being made holds a checkpoint and its export: up to 2 GiB
/// each). A fetch that needs another while all are being made waits for one (at most
/// `max_waiting_exports` wait; more are refused). How long one stays unused before it goes is
/// the supervisor's `export_idle` (spawn_job_supervisor).
constexpr size_t max_exports = 4;
/// An export read within this long is being read: it does not make room for another (its
/// reader's next part would find it gone); a fetch that needs its place waits.
constexpr auto export_reading = std::chrono::seconds(10);
constexpr size_t max_waiting_exports = 256;
constexpr size_t max_waiting_exports_per_account = 64;  // one account cannot fill the queue

/// A fetch from the start of a job's model that waits for an export to be made.
struct queued_fetch {
  std::string who, id;
  caf::typed_response_promise<model_part> promise;
};

/// An upload and the mark of the last part it took: a timer set at each part drops the
/// upload if no other came by its end (a client stopped mid-way holds up to a gigabyte here,
/// and two such uploads would refuse every further push of the account). Marks are unique
/// across uploads: counted per upload, an upload given up on and started afresh had its
/// first attempt's timers drop it when they met the same count.
struct upload_in_progress {
  data_upload upload;
  uint64_t last_part_mark = 0;
};

struct job_supervisor_state {
  std::chrono::steady_clock::time_point mailbox_noted{};  // core_metrics::note_mailbox
  std::map<std::string, job_entry> jobs;
  /// Users' data sets: stored, and uploads in progress (in memory until their last part).
  std::map<data_set_id, data_set_info> data_sets;
  /// Stored sets that could not be loaded (a shard damaged or missing), with why: left out of
  /// the catalog, yet removable.
  std::map<data_set_id, std::pair<data_set_info, std::string>> damaged_sets;
  /// Stored sets a shard of which the store could not answer at the last load (a chunk no
  /// core reaches now), with why: read again every 5 s, and until then neither served nor
  /// deleted. The jobs on one wait; the other sets are served meanwhile.
  std::map<data_set_id, std::pair<data_set_info, std::string>> unloaded_sets;
  std::map<data_set_id, upload_in_progress> uploads;
  uint64_t upload_marks = 0;  ///< The last mark given to a part (upload_in_progress).
  /// Sets whose last part came and whose commit is under way: counted against their
  /// account's bounds, and neither pushed again, removed nor trained on until it ends.
  std::map<data_set_id, data_set_info> committing;
  user_data_limits data_limits;
  uint64_t next_id = 1;
  /// Whether the stored job records have been read (and `next_id` raised past theirs).
  /// Submits wait for it: one taken before would be given the id of a stored job.
  bool resumed = false;
  struct waiting_submit {
    std::string who, text, submission;
    caf::typed_response_promise<std::string> answer;
  };
  std::vector<waiting_submit> waiting_submits;  // answered once `resumed`
  /// The submits with a client's id (owner, id) being made, with the same submits asked
  /// again meanwhile: once the first is made, those are taken again (and find its job); once
  /// it is refused, they get its refusal.
  std::map<std::pair<std::string, std::string>, std::vector<waiting_submit>> submitting_ids;
  /// The submission ids (owner, id) whose record's write failed and whose read-back failed
  /// too: whether their job is stored is unknown until the records are read again (a
  /// restart, a failover), so a repeat is refused rather than made a second job.
  std::set<std::pair<std::string, std::string>> unknown_submissions;
  bool resuming = false;                      // the job records are being read
  std::set<std::string> awaiting_checkpoint;  // resumed jobs whose checkpoint read failed
  /// Jobs whose actor died and whose restart could not read what it waits for (the ledger
  /// keeper's barrier, the checkpoint), with what they restart to end with (empty: to train
  /// on): tried again every 5 s, as resumed ones are.
  std::map<std::string, std::string> awaiting_restart;
  /// Whether the stored data sets are in the catalog, every one (`data_sets_loaded`), or all
  /// but `unloaded_sets` (`data_sets_listed`). Until a job's set is (a read failed: tried
  /// again every 5 s), the job waits in `awaiting_data`, unstarted: it would otherwise find
  /// no data set and fail for good.
  bool data_sets_loaded = false;
  bool data_sets_listed = false;
  bool loading_data_sets = false;
  /// Sets removed while a load runs: its manifest scan may predate the removal, and its
  /// shard reads, answered after it, would register the removed set again.
  std::set<data_set_id> removed_while_loading;
  std::string data_sets_error;
  std::set<std::string> awaiting_data;
  /// Per account, submits accepted by the job limit whose record is not yet written (the
  /// ledger check and the store write are asynchronous): they count against the limit too,
  /// so that parallel submits cannot all pass it.
  std::map<std::string, int64_t> submitting;
  /// Per account, the core's memory those submits' jobs will take: counted against the job
  /// memory budget for the same reason.
  std::map<std::string, uint64_t> submitting_memory;
  job_memory_budget memory_budget;
  /// Per user data set, those submits: a set removed while one is recorded was gone under
  /// the job it started.
  std::map<data_set_id, int> submitting_on;
  /// Sets whose removal is under way: neither pushed, trained on nor removed again until it
  /// is known to be stored or not (a push answered meanwhile was dropped from the catalog
  /// by the removal's end, and a job accepted meanwhile trained on a set no longer stored).
  std::set<data_set_id> removing;
  /// Shards of data sets whose store commit is in flight (counted per digest): not yet in
  /// `data_sets`, yet not to be deleted as unreferenced.
  std::map<std::string, int> storing_chunks;
  std::map<std::string, model_export> exports;  // by job
  std::deque<queued_fetch> queued_exports;      // fetches waiting while max_exports are made
  std::chrono::milliseconds export_idle{std::chrono::minutes(5)};  // unused this long: dropped
  bool export_sweep_set = false;  // a (fetch_atom, tick_atom) timer is on its way
  job_links links;
  static inline const char* name = "job_supervisor";
};

using supervisor_actor = caf::stateful_actor<job_supervisor_state>;

/// The bytes the model exports kept take, every job supervisor's of the process: freed as
/// the last reference to an export's bytes goes.
const metrics::gauge& model_export_bytes() {
  static const auto g = metrics::gauge_of("gflex_core_model_export_bytes",
                                          "Bytes the model exports kept for gflex fetch take");
  return g;
}

// `bytes` as a kept export's, counted in model_export_bytes while they are held.
std::shared_ptr<const std::vector<uint8_t>> counted_export(std::vector<uint8_t> bytes) {
  const auto size = static_cast<double>(bytes.size());
  model_export_bytes().inc(size);
  return {new std::vector<uint8_t>(std::move(bytes)), [size](const std::vector<uint8_t>* b) {
            model_export_bytes().dec(size);
            delete b;
          }};
}

// Drops the exports made and unused for `export_idle`, and sets one timer ((fetch_atom,
// tick_atom)) for the next to go while any is kept. Swept only as a fetch came, an export
// (up to about 1 GiB) stayed in memory for as long as no one fetched again.
void sweep_exports(supervisor_actor* self) {
  auto& st = self->state;
  const auto now = std::chrono::steady_clock::now();
  std::optional<std::chrono::steady_clock::time_point> next;
  for (auto it = st.exports.begin(); it != st.exports.end();) {
    if (!it->second.bytes) {  // being made: swept once made
      ++it;
      continue;
    }
    const auto due = it->second.used + st.export_idle;
    if (due <= now) {
      it = st.exports.erase(it);
      continue;
    }
    if (!next || due < *next) next = due;
    ++it;
  }
  // A use only moves an export's due time later: the timer set stays the earliest, and is
  // set again from there (one at a time, however many fetches come).
  if (!next || st.export_sweep_set) return;
  st.export_sweep_set = true;
  self->delayed_send(self, std::chrono::ceil<std::chrono::milliseconds>(*next - now),
                     fetch_atom::value, tick_atom::value);
}

void deliver_part(caf::typed_response_promise<model_part>& rp, expected<model_part> part) {
  if (part)
    rp.deliver(std::move(*part));
  else
    rp.deliver(to_caf(part.error()));
}

// Part of an export from `offset`: at most one payload chunk.
expected<model_part> part_of(const model_export& ex, uint64_t offset, uint64_t chunk_bytes) {
  const auto& bytes = *ex.bytes;
  if (offset > bytes.size())
    return error(errc::invalid_argument, "offset " + std::to_string(offset) +
                                             " is past the model's " +
                                             std::to_string(bytes.size()) + " bytes");
  const uint64_t n = std::min<uint64_t>(chunk_bytes, bytes.size() - offset);
  model_part out;
  out.offset = offset;
  out.total = bytes.size();
  out.step = ex.step;
  out.bytes.assign(bytes.begin() + static_cast<std::ptrdiff_t>(offset),
                   bytes.begin() + static_cast<std::ptrdiff_t>(offset + n));
  return out;
}

// A one-shot actor (spawned detached) that reads a job's checkpoint and answers (fetch_atom)
// with the model as handed out (its parameters named and shaped by the workload's layout) and
// the checkpoint's step, then ends.
caf::behavior export_builder(caf::event_based_actor* self, caf::actor store, std::string id,
                             std::string workload_name, std::string model_text,
                             std::string data_set) {
  return {
      [=](fetch_atom) -> caf::result<std::vector<uint8_t>, int64_t> {
        auto rp = self->make_response_promise<std::vector<uint8_t>, int64_t>();
        self->request(store, std::chrono::seconds(60), read_atom::value, job_checkpoint_key(id))
            .then(
                [=](bool found, std::vector<uint8_t>& bytes) mutable {
                  self->quit();
                  if (!found) {
                    rp.deliver(to_caf(error(errc::invalid_argument,
                                            "job '" + id + "' has no committed round yet")));
                    return;
                  }
                  auto c = decode_checkpoint(bytes);
                  bytes = {};
                  auto w = kernels::find_workload(workload_name, model_text, "");
                  const tensor* theta = c ? c->find("theta") : nullptr;
                  if (c && !w) {  // the checkpoint is whole; its model does not plan here
                    rp.deliver(to_caf(error(
                        w.error().code(),
                        "job '" + id + "': its model does not plan: " + w.error().message())));
                    return;
                  }
                  if (!c || theta == nullptr || theta->numel() != (*w)->parameter_count()) {
                    rp.deliver(to_caf(error(errc::store_error,
                                            "job '" + id + "': stored checkpoint is damaged")));
                    return;
                  }
                  // Each layer is encoded from where it lies in the parameters: a large
                  // model's are not copied again on their way out.
                  checkpoint_view out;
                  out.workload = workload_name;
                  out.model = model_text;
                  out.data_set = data_set;
                  out.step = c->step;
                  const std::span<const float> all(theta->data<float>(),
                                                   static_cast<size_t>(theta->numel()));
                  for (const auto& block : (*w)->layout()) {
                    auto n = checked_numel(block.shape);
                    if (!n || block.offset < 0 || block.offset + *n > theta->numel()) {
                      rp.deliver(
                          to_caf(error(errc::store_error, "job '" + id +
                                                              "': its model's layout does not "
                                                              "fit its checkpoint")));
                      return;
                    }
                    out.vectors.push_back(
                        {block.name,
                         all.subspan(static_cast<size_t>(block.offset), static_cast<size_t>(*n))});
                    out.shapes.push_back(block.shape);
                  }
                  rp.deliver(encode_checkpoint(out), static_cast<int64_t>(out.step));
                },
                [=](caf::error& e) mutable {
                  self->quit();
                  rp.deliver(e);
                });
        return rp;
      },
  };
}

void fetch_model(supervisor_actor* self, const std::string& who, const std::string& id,
                 uint64_t offset, caf::typed_response_promise<model_part> rp);

// A builder ended: the fetches that waited longest are taken again while fewer than
// max_exports exports are being made.
void next_queued_export(supervisor_actor* self) {
  auto& st = self->state;
  auto being_made = [&] {
    return std::count_if(st.exports.begin(), st.exports.end(),
                         [](const auto& e) { return !e.second.bytes; });
  };
  // Each taken is served, joins an export being made, or starts one; at most those waiting
  // now are taken (one queued again is not taken twice).
  for (size_t n = st.queued_exports.size();
       n > 0 && being_made() < static_cast<std::ptrdiff_t>(max_exports); --n) {
    auto next = std::move(st.queued_exports.front());
    st.queued_exports.pop_front();
    fetch_model(self, next.who, next.id, 0, std::move(next.promise));
  }
}

// The core's memory the job of `entry` takes; 0 for one whose model no longer plans (it fails
// at its start, holding nothing).
uint64_t core_memory_of(job_entry& entry) {
  if (!entry.core_memory) {
    const bool builtin_data = kernels::is_builtin_data_set(entry.spec.data_set);
    auto w = kernels::find_workload(entry.spec.workload, entry.spec.model,
                                    builtin_data ? entry.spec.data_set : std::string());
    entry.core_memory = w ? job_core_memory_bytes(**w, entry.spec) : 0;
  }
  return *entry.core_memory;
}

std::string bytes_text(uint64_t bytes) {
  char gib[32];
  std::snprintf(gib, sizeof gib, "%.2f", static_cast<double>(bytes) / double(uint64_t{1} << 30));
  return std::to_string(bytes) + " bytes (" + gib + " GiB)";
}

// Why a job of `owner` whose model has `parameters` and takes `need` bytes of the core's
// memory does not fit the job memory budget, its account's or the core's, with the unfinished
// jobs and those being submitted; none where it fits.
std::optional<error> over_memory_budget(job_supervisor_state& st, const std::string& owner,
                                        const job_spec& spec, int64_t parameters, uint64_t need) {
  uint64_t mine = 0, all = 0;
  for (const auto& [who, bytes] : st.submitting_memory) {
    all += bytes;
    if (who == owner) mine += bytes;
  }
  for (auto& [id, entry] : st.jobs)
    if (!is_terminal(entry.status.state)) {
      const uint64_t bytes = core_memory_of(entry);
      all += bytes;
      if (entry.status.owner == owner) mine += bytes;
    }
  const auto& budget = st.memory_budget;
  const uint64_t mine_left = mine < budget.per_account ? budget.per_account - mine : 0;
  const uint64_t all_left = all < budget.core ? budget.core - all : 0;
  if (need <= mine_left && need <= all_left) return std::nullopt;
  const std::string whose = need > mine_left
                                ? owner + "'s unfinished jobs have " + bytes_text(mine_left) +
                                      " left of a budget of " + bytes_text(budget.per_account)
                                : "the core's unfinished jobs have " + bytes_text(all_left) +
                                      " left of a budget of " + bytes_text(budget.core);
  return error(errc::limit_exceeded,
               "job spec: its model's " + std::to_string(parameters) + " parameters need " +
                   bytes_text(need) + " of the core's memory (3 copies of the parameters, " +
                   "the updates of 2 rounds of " + std::to_string(spec.workers) + " workers at " +
                   (spec.compression == compression::fp32 ? "fp32" : "int8") +
                   ", and an evaluation's copy of the parameters and batch), but " + whose +
                   ": use a smaller model or fewer workers, or wait for a job to end");
}

error unknown_job(const std::string& id) {
  return error(errc::invalid_argument, "unknown job '" + id + "'");
}

// The answer to a request that names a job or lists them while the stored job records are
// still being read (a core starting, or one taking over from another, which first fences the
// ledger): every job is unknown until then. Answered "unknown job", `gflex status` failed as
// if the id were wrong and `gflex submit --wait` gave up on its job; said as an answer that
// did not come (link_loss.hpp), a client following a job asks again, as after a failover.
error records_unread() {
  return error(errc::unavailable,
               std::string(detail::no_answer) +
                   ": it is still reading its job records (it is starting, or taking over from "
                   "another core); ask again shortly");
}

// Whether `who` may see and change a job: its owner, or the operator. Others are told the
// job is unknown, so that job ids reveal nothing about other accounts.
bool may_touch(const std::string& who, const job_status& job) {
  return who == operator_principal || who == job.owner;
}

// The job `id` if `who` may touch it, else nullptr.
job_entry* find_for(supervisor_actor* self, const std::string& who, const std::string& id) {
  auto it = self->state.jobs.find(id);
  if (it == self->state.jobs.end() || !may_touch(who, it->second.status)) return nullptr;
  return &it->second;
}

void start_job(supervisor_actor* self, job_start start) {
  auto id = start.id;
  auto& entry = self->state.jobs[id];
  entry.status = start.status;
  entry.spec_text = start.spec_text;
  entry.spec = start.spec;
  entry.actor = spawn_job(self->system(), std::move(start), self->state.links);
  self->monitor(entry.actor);
}

// Starts the job `id` (its entry holds its spec and status) from its last committed
// checkpoint, none: round 0; `failed` is called when the checkpoint cannot be read.
void read_checkpoint(supervisor_actor* self, const std::string& id, job_start::origin from,
                     std::string end_with, std::function<void(const caf::error&)> failed);

// A restarted job's figures come from its record, written with its checkpoint: those the
// dead actor last reported could include a round not committed (or miss one that was), and
// its spending and budget were misjudged by that round. Then its checkpoint is read. A record
// that says the job ended ends it here, as a starting core's scan does: the actor died after
// its end was written (the last round's commit records it done) but before it took the
// answer. Started again, it found every round committed and wrote its end once more from the
// figures it last reported, a round behind: the last round's accuracy, curve and payment
// were lost from a record already right.
void read_record(supervisor_actor* self, const std::string& id, job_start::origin from,
                 std::string end_with, std::function<void(const caf::error&)> failed) {
  self->request(self->state.links.store, std::chrono::seconds(120), read_atom::value,
                job_record_key(id))
      .then(
          [=](bool found, std::vector<uint8_t>& bytes) {
            auto record = decode_job_record(bytes);
            if (found && record && is_terminal(record->second.state)) {
              auto& entry = self->state.jobs[id];
              auto status = std::move(record->second);
              fill_from_spec(status, entry.spec);
              spdlog::info("job {}: its end is recorded ({}); not restarted", id,
                           to_string(status.state));
              entry.status = std::move(status);
              entry.end_recorded = true;
              return;
            }
            if (found && record) {
              auto& entry = self->state.jobs[id];
              auto status = std::move(record->second);
              fill_from_spec(status, entry.spec);
              status.detail = entry.status.detail;
              // Started only to end, a job the supervisor failed stays failed: its record,
              // still saying running, showed it running again until its escrow was back,
              // and a cancel meanwhile recorded "cancelled by its owner".
              if (!end_with.empty() && is_terminal(entry.status.state))
                status.state = entry.status.state;
              entry.status = std::move(status);
            } else if (found && !record) {
              spdlog::error("store: job {}: {}", id, record.error().message());
            }
            read_checkpoint(self, id, from, end_with, failed);
          },
          [=](caf::error& e) { failed(e); });
}

void start_from_checkpoint(supervisor_actor* self, const std::string& id, job_start::origin from,
                           std::string end_with, std::function<void(const caf::error&)> failed) {
  if (from != job_start::origin::restarted)
    return read_checkpoint(self, id, from, std::move(end_with), std::move(failed));
  // A job whose actor died may have sent a round to be settled that still waits in the
  // ledger keeper's queue (its record and checkpoint go with its payments): they are read
  // once the keeper has answered what was sent to it before (it answers `booked` after
  // them), or the job would train, and pay for, that round again.
  const auto& ledger = self->state.links.ledger;
  if (!ledger) return read_record(self, id, from, std::move(end_with), std::move(failed));
  self->request(ledger, std::chrono::minutes(5), booked_atom::value,
                std::string("barrier before restarting ") + id)
      .then([=](uint64_t) { read_record(self, id, from, end_with, failed); },
            [=](caf::error& e) { failed(e); });
}

void read_checkpoint(supervisor_actor* self, const std::string& id, job_start::origin from,
                     std::string end_with, std::function<void(const caf::error&)> failed) {
  self->request(self->state.links.store, std::chrono::seconds(120), read_atom::value,
                job_checkpoint_key(id))
      .then(
          [=](bool found, std::vector<uint8_t>& bytes) {
            auto& entry = self->state.jobs[id];
            job_start start{id,   entry.spec_text, entry.spec, entry.status, {}, {}, {},
                            from, end_with};
            // A cancelled job whose actor died before its end was written ends cancelled.
            if (!end_with.empty() && entry.status.state == job_state::cancelled)
              start.end_state = job_state::cancelled;
            if (found) start.checkpoint = std::move(bytes);
            start_job(self, std::move(start));
          },
          [=](caf::error& e) { failed(e); });
}

// Restarts a job whose actor died from its last committed checkpoint (one for one); with
// `end_with`, only to end it as failed (its escrow returned, its record written).
void restart_job(supervisor_actor* self, const std::string& id, const std::string& end_with = {}) {
  start_from_checkpoint(self, id, job_start::origin::restarted, end_with, [=](const caf::error& e) {
    // Failed here, it stayed failed only in this core's memory: its record said running (a
    // restarted core resumed it) and its escrow stayed held.
    const auto why = self->system().render(e);
    spdlog::error("cannot restart job {} (trying again in 5 s): {}", id, why);
    auto& entry = self->state.jobs[id];
    if (end_with.empty())  // shown to its owner, who may cancel it meanwhile
      entry.status.detail = "restarting: " + why + " (trying again in 5 s)";
    self->state.awaiting_restart[id] = end_with;
    self->delayed_send(self, std::chrono::seconds(5), tick_atom::value);
  });
}

// Reads the records in the store and resumes every job that had not ended.
void resume_jobs(supervisor_actor* self);

// The shards of `gone` that no other stored data set (nor `kept`, nor a set being stored)
// names: their store keys are deleted with it.
std::vector<std::string> unreferenced_chunks(const job_supervisor_state& st,
                                             const data_set_info& gone, const data_set_id& id,
                                             const data_set_info* kept = nullptr) {
  std::set<std::string> named;
  auto name = [&](const data_set_info& i) {
    named.insert(i.train_shards.begin(), i.train_shards.end());
    named.insert(i.test_shards.begin(), i.test_shards.end());
  };
  for (const auto& [other, info] : st.data_sets)
    if (other != id) name(info);
  for (const auto* sets : {&st.damaged_sets, &st.unloaded_sets})
    for (const auto& [other, left_out] : *sets)
      if (other != id) name(left_out.first);
  if (kept != nullptr) name(*kept);
  for (const auto& [digest, n] : st.storing_chunks) named.insert(digest);
  std::set<std::string> out;
  for (const auto* shards : {&gone.train_shards, &gone.test_shards})
    for (const auto& d : *shards)
      if (named.count(d) == 0) out.insert(d);
  return {out.begin(), out.end()};
}

// A user's stored data set, loaded or left out as damaged; null when there is none.
const data_set_info* stored_set(const job_supervisor_state& st, const data_set_id& id) {
  if (auto it = st.data_sets.find(id); it != st.data_sets.end()) return &it->second;
  if (auto it = st.damaged_sets.find(id); it != st.damaged_sets.end()) return &it->second.first;
  if (auto it = st.unloaded_sets.find(id); it != st.unloaded_sets.end()) return &it->second.first;
  return nullptr;
}

// A refusal to remove or replace the data set `id` while jobs that have not ended train on
// it; none when none do. A running job holds its data in memory, but one restarted (its
// actor crashed, the core restarted or failed over) looks it up again: removed, it failed
// after rounds already paid for; replaced, it went on on other data.
std::optional<error> in_use(const job_supervisor_state& st, const data_set_id& id,
                            const char* action) {
  std::string users;
  for (const auto& [job_id, entry] : st.jobs)
    if (!is_terminal(entry.status.state) && entry.status.owner == id.first &&
        entry.spec.data_set == id.second)
      users += (users.empty() ? "" : ", ") + job_id;
  if (auto it = st.submitting_on.find(id); it != st.submitting_on.end())
    users += (users.empty() ? "" : ", ") + std::to_string(it->second) + " being submitted";
  if (users.empty()) return std::nullopt;
  return error(errc::invalid_argument, "data set '" + id.second + "' cannot be " + action +
                                           " while jobs train on it (" + users +
                                           "): cancel them or wait for their end");
}

// A refusal of a push, removal or job of a set whose commit is under way.
error being_stored(const data_set_id& id) {
  return error(errc::unavailable,
               "data set '" + id.second + "' is being stored: try again once its push has ended");
}

// The same of a set whose removal is under way.
error being_removed(const data_set_id& id) {
  return error(errc::unavailable, "data set '" + id.second +
                                      "' is being removed: try again once its removal has ended");
}

void resume_from_checkpoint(supervisor_actor* self, const std::string& id);

bool on_user_data(const job_spec& spec);

// Why a job of `owner` on `spec`'s data set waits for it to load; none when it need not (the
// set is loaded, or not a user's).
std::optional<std::string> data_set_wait(const job_supervisor_state& st, const std::string& owner,
                                         const job_spec& spec) {
  if (!on_user_data(spec)) return std::nullopt;
  if (!st.data_sets_listed)
    return "waiting for the stored data sets to load" +
           (st.data_sets_error.empty() ? std::string() : ": " + st.data_sets_error);
  if (auto it = st.unloaded_sets.find({owner, spec.data_set}); it != st.unloaded_sets.end())
    return "waiting for data set '" + spec.data_set + "' to load: " + it->second.second;
  return std::nullopt;
}

// Whether a push or removal of a data set can be judged: the stored sets and the stored
// jobs (which may train on them) are known.
bool data_known(const job_supervisor_state& st) {
  return st.data_sets_listed && st.resumed;
}

// Why a push or removal cannot be taken yet, as a passing loss: a client asks again.
error data_not_known(const job_supervisor_state& st) {
  return error(errc::unavailable,
               std::string(detail::no_answer) + ": it is still " +
                   (!st.data_sets_listed ? "loading its data sets" : "reading its job records") +
                   (st.data_sets_error.empty() ? std::string() : " (" + st.data_sets_error + ")") +
                   "; nothing was changed: try again shortly");
}

// The stored data sets are in the catalog, all or all but `unloaded_sets`: the jobs are
// resumed, or those that waited for a set now loaded.
void data_sets_loaded(supervisor_actor* self) {
  auto& st = self->state;
  st.loading_data_sets = false;
  st.data_sets_listed = true;
  st.data_sets_loaded = st.unloaded_sets.empty();
  st.data_sets_error.clear();
  if (!st.data_sets_loaded) {
    std::string names;
    for (const auto& [id, unloaded] : st.unloaded_sets)
      names += (names.empty() ? "" : ", ") + id.first + "/" + id.second;
    spdlog::error("data set(s) {} cannot be read now (trying again in 5 s): {}", names,
                  st.unloaded_sets.begin()->second.second);
    self->delayed_send(self, std::chrono::seconds(5), tick_atom::value);
  }
  if (!st.resumed) {
    if (!st.resuming) resume_jobs(self);
    return;
  }
  auto ids = std::move(st.awaiting_data);
  st.awaiting_data.clear();
  for (const auto& id : ids) {
    auto& entry = st.jobs[id];
    if (auto why = data_set_wait(st, entry.status.owner, entry.spec)) {
      entry.status.detail = *why;
      st.awaiting_data.insert(id);
    } else {
      resume_from_checkpoint(self, id);
    }
  }
}

// The data sets could not be read: the jobs that do not train on one are resumed, the others
// wait, and the read is tried again in 5 s.
void data_sets_not_loaded(supervisor_actor* self, const caf::error& e) {
  auto& st = self->state;
  st.loading_data_sets = false;
  st.data_sets_error = self->system().render(e);
  spdlog::error("cannot load data sets (trying again in 5 s): {}", st.data_sets_error);
  for (const auto& id : st.awaiting_data)
    if (auto why = data_set_wait(st, st.jobs[id].status.owner, st.jobs[id].spec))
      st.jobs[id].status.detail = *why;
  self->delayed_send(self, std::chrono::seconds(5), tick_atom::value);
  if (!st.resumed && !st.resuming) resume_jobs(self);
}

// Whether a store's failure to read a value says the store cannot answer now (CAF's
// errors: a timeout, the store down; an etcd or a chunk no core reaches), rather than that
// the value is damaged or gone.
bool store_cannot_answer(const caf::error& e) {
  return e.category() != error_category || static_cast<errc>(e.code()) == errc::unavailable;
}

// One load of the stored data sets: their manifests, and what the reads of their shards gave.
struct data_set_load {
  std::vector<std::pair<std::string, expected<data_set_info>>> manifests;  // by store key
  std::map<std::string, std::shared_ptr<const std::vector<uint8_t>>> chunks;
  std::map<std::string, std::string> unreadable;  // digest -> why (damaged or missing)
  std::map<std::string, std::string> unanswered;  // digest -> why the store cannot answer now
  size_t pending = 0;
};

// Whether a set the store lists is known already: loaded or left out by an earlier load (one
// that left others unloaded), or stored, replaced or removed since the listing was read.
bool known_apart_from_load(const job_supervisor_state& st, const data_set_id& id) {
  return st.data_sets.count(id) != 0 || st.damaged_sets.count(id) != 0 ||
         st.committing.count(id) != 0 || st.removing.count(id) != 0 ||
         st.removed_while_loading.count(id) != 0;
}

void delete_unnamed_shards(supervisor_actor* self, std::set<std::string> named);

// Every shard is read: the sets are registered with the catalog, each on its own (a damaged
// shard leaves its set out, and that set only), and the jobs resumed.
void data_sets_read(supervisor_actor* self, std::shared_ptr<data_set_load> load) {
  auto& st = self->state;
  std::set<std::string> named;
  st.unloaded_sets.clear();
  bool unreadable_manifest = false;
  for (auto& [key, info] : load->manifests) {
    if (!info) {
      // Known by its key, and removable: it was listed nowhere, `gflex data rm` said there
      // was no such set, and it was logged again at every start. The shards it names are
      // unknown, so none is deleted as unnamed while it is stored.
      spdlog::error("store: {}: {}", key, info.error().message());
      unreadable_manifest = true;
      if (auto id = data_set_of_key(key); id && !known_apart_from_load(st, *id)) {
        data_set_info unknown;
        unknown.owner = id->first;
        unknown.name = id->second;
        auto why = "its manifest cannot be read (" + info.error().message() + ")";
        st.links.catalog->note_damaged_set(unknown.owner, unknown.name, why);
        st.damaged_sets[*id] = {std::move(unknown), std::move(why)};
      }
      continue;
    }
    named.insert(info->train_shards.begin(), info->train_shards.end());
    named.insert(info->test_shards.begin(), info->test_shards.end());
    const data_set_id id{info->owner, info->name};
    if (known_apart_from_load(st, id)) continue;
    std::string damaged, unanswered;
    for (const auto* shards : {&info->test_shards, &info->train_shards})
      for (const auto& d : *shards) {
        if (auto it = load->unreadable.find(d); damaged.empty() && it != load->unreadable.end())
          damaged = "shard " + d.substr(0, 12) + ": " + it->second;
        if (auto it = load->unanswered.find(d); unanswered.empty() && it != load->unanswered.end())
          unanswered = "shard " + d.substr(0, 12) + ": " + it->second;
      }
    if (!unanswered.empty()) {
      // Neither served nor left out as damaged: read again in 5 s.
      st.unloaded_sets[id] = {*info, unanswered};
      continue;
    }
    auto ok = damaged.empty() ? st.links.catalog->put_user_set(*info, load->chunks, st.data_limits)
                              : expected<void>(error(errc::store_error, damaged));
    if (!ok) {
      // Left out, yet known: a job on it says why, and `gflex data rm` removes it.
      spdlog::error("store: data set {}/{} cannot be loaded: {}", info->owner, info->name,
                    ok.error().message());
      st.links.catalog->note_damaged_set(info->owner, info->name, ok.error().message());
      st.damaged_sets[id] = {*info, ok.error().message()};
      continue;
    }
    st.data_sets[id] = *info;
  }
  spdlog::info("{} data set(s) loaded{}", st.data_sets.size(),
               st.damaged_sets.empty()
                   ? std::string()
                   : ", " + std::to_string(st.damaged_sets.size()) + " left out");
  if (unreadable_manifest)
    spdlog::warn("store: no unnamed shard is deleted while a manifest cannot be read");
  else if (st.unloaded_sets.empty())
    delete_unnamed_shards(self, std::move(named));
  data_sets_loaded(self);
}

// Shards no stored manifest names (left by removals before they deleted theirs) are
// deleted; by their keys alone, so that no shard is read for it.
void delete_unnamed_shards(supervisor_actor* self, std::set<std::string> named) {
  self->request(self->state.links.store, std::chrono::seconds(120), keys_atom::value,
                std::string(data_chunk_prefix))
      .then(
          [=](std::vector<std::string>& keys) {
            auto& st = self->state;
            // Sets stored while this load ran (an upload does not wait for it) name theirs.
            auto also_named = named;
            for (const auto& [id, info] : st.data_sets) {
              also_named.insert(info.train_shards.begin(), info.train_shards.end());
              also_named.insert(info.test_shards.begin(), info.test_shards.end());
            }
            for (const auto& [digest, n] : st.storing_chunks) also_named.insert(digest);
            // In batches: a core of several commits each as one etcd transaction, whose
            // operations etcd bounds (--max-txn-ops): one batch of every orphan failed at
            // every start.
            constexpr size_t batch = 1000;
            std::vector<store_batch> orphans;
            size_t count = 0;
            const size_t prefix = std::string(data_chunk_prefix).size();
            for (const auto& key : keys)
              if (also_named.count(key.substr(prefix)) == 0) {
                if (count++ % batch == 0) orphans.emplace_back();
                orphans.back().keys.push_back(key);
                orphans.back().values.emplace_back();
              }
            if (orphans.empty()) return;
            spdlog::info("deleting {} data set shard(s) no data set names", count);
            for (auto& b : orphans)
              self->request(st.links.store, std::chrono::seconds(120), commit_atom::value,
                            std::move(b))
                  .then([](caf::ok_atom) {},
                        [=](caf::error& e) {  // tried again at the next start
                          spdlog::warn("cannot delete unnamed shards: {}",
                                       self->system().render(e));
                        });
          },
          [=](caf::error& e) {
            spdlog::warn("cannot list the data sets' shards: {}", self->system().render(e));
          });
}

// Registers every stored data set with the catalog, then resumes the jobs (which may train
// on them). A set whose manifest or shards are damaged is logged and left out; a store that
// cannot answer now is asked again in 5 s.
void load_data_sets(supervisor_actor* self) {
  auto store = self->state.links.store;
  self->state.loading_data_sets = true;
  // Removals before this scan are in it; only those after it are to be told apart.
  self->state.removed_while_loading.clear();
  self->request(store, std::chrono::seconds(120), scan_atom::value, std::string(data_set_prefix))
      .then(
          [=](std::vector<std::string>& keys, std::vector<std::vector<uint8_t>>& values) {
            if (keys.empty()) {
              self->state.unloaded_sets.clear();
              data_sets_loaded(self);
              return;
            }
            auto load = std::make_shared<data_set_load>();
            std::set<std::string> digests;
            for (size_t i = 0; i < keys.size(); ++i) {
              // A set removed by a core whose store kept removals as empty values: gone, not
              // a damaged set.
              if (values[i].empty()) continue;
              auto info = decode_data_set(values[i]);
              // Those an earlier load (or a push since) made known are not read again.
              if (info && !known_apart_from_load(self->state, {info->owner, info->name})) {
                digests.insert(info->train_shards.begin(), info->train_shards.end());
                digests.insert(info->test_shards.begin(), info->test_shards.end());
              }
              load->manifests.emplace_back(std::move(keys[i]), std::move(info));
            }
            // Each shard on its own: one that cannot be read fails its set, not every set.
            load->pending = digests.size();
            if (digests.empty()) return data_sets_read(self, load);
            auto one_done = [=] {
              if (--load->pending == 0) data_sets_read(self, load);
            };
            for (const auto& d : digests)
              self->request(store, std::chrono::seconds(300), read_atom::value, data_chunk_key(d))
                  .then(
                      [=](bool found, std::vector<uint8_t>& bytes) {
                        // The store keeps a shard of a few MiB in LMDB, which checks nothing:
                        // a byte flipped on disk still decoded, and was served to node after
                        // node, each refusing it as failing verification and blamed for it.
                        if (!found)
                          load->unreadable[d] = "missing";
                        else if (digest_hex(bytes) != d)
                          load->unreadable[d] = "its bytes do not match its digest";
                        else
                          load->chunks[d] =
                              std::make_shared<const std::vector<uint8_t>>(std::move(bytes));
                        one_done();
                      },
                      [=](caf::error& e) {
                        if (store_cannot_answer(e))
                          load->unanswered[d] = self->system().render(e);
                        else
                          load->unreadable[d] = from_caf(e).message();
                        one_done();
                      });
          },
          [=](caf::error& e) { data_sets_not_loaded(self, e); });
}

void jobs_resumed(supervisor_actor* self);

// Starts a stored job that had not ended from its last committed checkpoint (none: round
// 0). A failed read is tried again (tick_atom) rather than starting the job over.
void resume_from_checkpoint(supervisor_actor* self, const std::string& id) {
  start_from_checkpoint(self, id, job_start::origin::resumed, {}, [=](const caf::error& e) {
    const auto why = self->system().render(e);
    spdlog::error("cannot read job {}'s checkpoint (trying again in 5 s): {}", id, why);
    // Shown to its owner, who may cancel it meanwhile.
    self->state.jobs[id].status.detail = "waiting: its checkpoint cannot be read: " + why;
    self->state.awaiting_checkpoint.insert(id);
    self->delayed_send(self, std::chrono::seconds(5), tick_atom::value);
  });
}

// Whether a job trains on one of the stored users' data sets (the catalog has them once they
// are loaded).
bool on_user_data(const job_spec& spec) {
  return !spec.model.empty() && !kernels::is_builtin_data_set(spec.data_set);
}

void scan_job_records(supervisor_actor* self);

// The paying account ([market] account) of a stored spec that parse_job_spec no longer
// accepts, read leniently: only that key, whatever else the text holds. Empty when the text
// names none or cannot be read as TOML at all.
std::string recorded_account(const std::string& spec_text) {
  if (!check_toml_nesting(spec_text, "job spec")) return {};  // toml++ would recurse that deep
  try {
    const auto root = toml::parse(spec_text);
    return std::string(root["market"]["account"].value_or(std::string_view()));
  } catch (const toml::parse_error&) {
    return {};
  }
}

// A stored job whose spec this core no longer accepts (a stricter check since it was
// submitted). It is never run; left out, it was unknown to its owner and the escrow its
// interrupted round held stayed held for good (no actor returned it, and `ledger verify`
// counts only ended jobs). It is kept, failed, saying why, and one that had not ended is
// started only to end, as a job that kept stopping is: its escrow goes back to the paying
// account and its end is recorded (with its spec text as stored).
void keep_unaccepted_job(supervisor_actor* self, const std::string& spec_text, job_status status,
                         const error& why) {
  const auto id = status.job_id;
  auto& entry = self->state.jobs[id];
  entry.spec_text = spec_text;
  entry.spec.account = recorded_account(spec_text);
  entry.spec.budget = status.budget;
  entry.core_memory = 0;  // it holds nothing of the core's memory: it is never run
  status.account = entry.spec.account;
  if (is_terminal(status.state)) {
    spdlog::warn("store: job {} (ended) has a spec no longer accepted: {}", id, why.message());
    entry.status = std::move(status);
    entry.end_recorded = true;
    return;
  }
  status.state = job_state::failed;
  status.detail = "its spec is no longer accepted: " + why.message();
  spdlog::error("store: job {}: {}; ending it", id, status.detail);
  entry.ending = true;  // an actor that stops on the way is not started to train
  job_start start{
      id, spec_text, entry.spec, status, {}, {}, {}, job_start::origin::resumed, status.detail};
  start_job(self, std::move(start));
}

void resume_jobs(supervisor_actor* self) {
  self->state.resuming = true;
  // Replacing a supervisor that died, whose jobs' actors ended with it: a round one of them
  // sent to be settled may still wait in the ledger keeper's queue (its record and checkpoint
  // go with its payments). The records are read once the keeper has answered what was sent
  // to it before, or a job resumed a round behind, and trained and paid for it again. (A
  // starting core has nothing queued, and does not wait for its keeper's first read.)
  // The fence also refuses what the old jobs' actors send from now on: one busy evaluating a
  // round when its supervisor died settles it once done, and the records read here would be
  // a round behind it.
  const auto& ledger = self->state.links.ledger;
  if (!self->state.links.after_restart || !ledger) return scan_job_records(self);
  self->request(ledger, std::chrono::minutes(5), fence_atom::value, self->state.links.run_epoch)
      .then([=](caf::ok_atom) { scan_job_records(self); },
            [=](caf::error& e) {
              // Not resumed without the fence: a round still queued at a busy keeper landed
              // after the records were read, and was trained and paid for a second time.
              // (A keeper that died lost its queue; its replacement answers the next ask.)
              spdlog::error(
                  "job supervisor: the ledger keeper did not answer its fence ({}); the jobs "
                  "resume once it does (asking again in 5 s)",
                  self->system().render(e));
              self->state.resuming = false;
              self->delayed_send(self, std::chrono::seconds(5), tick_atom::value);
            });
}

void scan_job_records(supervisor_actor* self) {
  // The records only: a checkpoint (up to the largest model's parameters) is read for a job
  // that resumes, one request each, never for the ended ones.
  self->request(self->state.links.store, std::chrono::seconds(60), scan_atom::value,
                std::string("job/"), std::string("/record"))
      .then(
          [=](std::vector<std::string>& keys, std::vector<std::vector<uint8_t>>& values) {
            std::vector<std::pair<std::string, job_status>> records;
            for (size_t i = 0; i < keys.size(); ++i) {
              // The id is taken from the key, even of a record that cannot be read: a new job
              // given it would resume from (and its owner could fetch) that job's checkpoint.
              const std::string& key = keys[i];
              const auto dash = key.find('-'), slash = key.rfind('/');
              if (dash != std::string::npos && slash != std::string::npos && dash < slash)
                self->state.next_id = std::max<uint64_t>(
                    self->state.next_id,
                    std::strtoull(key.substr(dash + 1, slash - dash - 1).c_str(), nullptr, 10) + 1);
              auto r = decode_job_record(values[i]);
              if (!r) {
                spdlog::error("store: {}: {}", keys[i], r.error().message());
                continue;
              }
              records.push_back(std::move(*r));
            }
            for (auto& [spec_text, status] : records) {
              auto digits = status.job_id.substr(status.job_id.find('-') + 1);
              self->state.next_id = std::max<uint64_t>(
                  self->state.next_id, std::strtoull(digits.c_str(), nullptr, 10) + 1);
              auto spec = parse_job_spec(spec_text, status.job_id);
              if (!spec) {
                keep_unaccepted_job(self, spec_text, std::move(status), spec.error());
                continue;
              }
              fill_from_spec(status, *spec);
              // An ended job keeps its spec too: its model is exported from it (gflex fetch).
              auto& entry = self->state.jobs[status.job_id];
              entry.status = status;
              entry.spec_text = spec_text;
              entry.spec = *spec;
              entry.end_recorded = is_terminal(status.state);
              if (entry.end_recorded) continue;
              if (auto why = data_set_wait(self->state, status.owner, *spec)) {
                entry.status.detail = *why;
                self->state.awaiting_data.insert(status.job_id);
                continue;
              }
              resume_from_checkpoint(self, status.job_id);
            }
            jobs_resumed(self);
          },
          [=](caf::error& e) {
            // Without the records no id is known to be free: submits wait, and the read is
            // tried again.
            self->state.resuming = false;
            spdlog::error("cannot read the job records (trying again in 5 s): {}",
                          self->system().render(e));
            self->delayed_send(self, std::chrono::seconds(5), tick_atom::value);
          });
}

// The stored jobs are known: the submits that came meanwhile are taken now, in order.
void jobs_resumed(supervisor_actor* self) {
  auto& st = self->state;
  st.resumed = true;
  st.resuming = false;
  auto waiting = std::move(st.waiting_submits);
  st.waiting_submits.clear();
  for (auto& waiter : waiting) {
    auto rp = waiter.answer;
    // A submit without an id (an older client's) is asked again without one: the form with
    // one refuses an empty id.
    auto again =
        waiter.submission.empty()
            ? self->request(caf::actor_cast<caf::actor>(self), std::chrono::seconds(60),
                            submit_atom::value, waiter.who, waiter.text)
            : self->request(caf::actor_cast<caf::actor>(self), std::chrono::seconds(60),
                            submit_atom::value, waiter.who, waiter.text, waiter.submission);
    std::move(again).then([rp](std::string& id) mutable { rp.deliver(std::move(id)); },
                          [rp](caf::error& e) mutable { rp.deliver(std::move(e)); });
  }
}

// Answers a fetch of part of job `id`'s model from `offset`: from the export kept, once it
// is made, or (all kept exports being made) once a builder has ended.
void fetch_model(supervisor_actor* self, const std::string& who, const std::string& id,
                 uint64_t offset, caf::typed_response_promise<model_part> rp) {
  auto& st = self->state;
  auto* entry = find_for(self, who, id);
  if (entry == nullptr) {
    rp.deliver(to_caf(unknown_job(id)));
    return;
  }
  sweep_exports(self);
  const auto now = std::chrono::steady_clock::now();
  auto found = st.exports.find(id);
  if (found != st.exports.end() && found->second.bytes &&
      (offset > 0 || found->second.step == entry->status.round)) {
    found->second.used = now;
    auto part = part_of(found->second, offset, st.links.payload_chunk_bytes);
    deliver_part(rp, std::move(part));
    return;
  }
  if (offset > 0) {
    // client::fetch reads again from the start when told this.
    rp.deliver(to_caf(error(errc::unavailable,
                            "job '" + id + "': the model's export is gone; fetch from the start")));
    return;
  }
  if (found != st.exports.end() && !found->second.bytes) {
    found->second.waiting.push_back({offset, rp});  // being made
    return;
  }
  // Room is made by the export made and unused the longest; one being made or read stays.
  bool being_read = false;
  while (st.exports.size() >= max_exports) {
    auto oldest = st.exports.end();
    for (auto it = st.exports.begin(); it != st.exports.end(); ++it) {
      if (!it->second.bytes) continue;
      if (now - it->second.used < export_reading) {
        being_read = true;
        continue;
      }
      if (oldest == st.exports.end() || it->second.used < oldest->second.used) oldest = it;
    }
    if (oldest == st.exports.end()) break;  // all are being made or read
    st.exports.erase(oldest);
  }
  if (st.exports.size() >= max_exports) {
    // No builder may end to take it: it is taken again once the reading is over.
    if (being_read) self->delayed_send(self, export_reading, fetch_atom::value);
    // Every export kept is being made: this one waits for a builder to end.
    const auto mine = std::count_if(st.queued_exports.begin(), st.queued_exports.end(),
                                    [&](const queued_fetch& q) { return q.who == who; });
    if (st.queued_exports.size() >= max_waiting_exports ||
        static_cast<size_t>(mine) >= max_waiting_exports_per_account) {
      rp.deliver(to_caf(error(errc::limit_exceeded,
                              std::to_string(max_exports) + " model exports are being made and " +
                                  std::to_string(mine) + " of your fetches (" +
                                  std::to_string(st.queued_exports.size()) +
                                  " in all) wait for one; fetch again shortly")));
      return;
    }
    st.queued_exports.push_back({who, id, rp});
    return;
  }
  auto& ex = st.exports[id];
  ex = model_export{};
  ex.used = now;
  ex.waiting.push_back({offset, rp});
  // Decoding and encoding a large model takes seconds: not on the scheduler's threads.
  auto builder =
      self->spawn<caf::detached>(export_builder, st.links.store, id, entry->status.workload,
                                 entry->spec.model, entry->spec.data_set);
  self->request(builder, std::chrono::minutes(10), fetch_atom::value)
      .then(
          [=](std::vector<uint8_t>& bytes, int64_t step) {
            auto& st = self->state;
            auto it = st.exports.find(id);
            if (it == st.exports.end()) return;
            it->second.step = step;
            it->second.used = std::chrono::steady_clock::now();
            it->second.bytes = counted_export(std::move(bytes));
            auto waiting = std::move(it->second.waiting);
            it->second.waiting.clear();
            for (auto& w : waiting)
              deliver_part(w.promise, part_of(it->second, w.offset, st.links.payload_chunk_bytes));
            sweep_exports(self);  // its timer
            next_queued_export(self);
          },
          [=](caf::error& e) {
            auto& st = self->state;
            auto it = st.exports.find(id);
            if (it != st.exports.end()) {
              auto waiting = std::move(it->second.waiting);
              st.exports.erase(it);
              for (auto& w : waiting) w.promise.deliver(e);
            }
            next_queued_export(self);
          });
}

// Takes a submit of `who`. `submission`: the id the client gave it (empty: none), with which
// a submit asked again, its answer lost, is answered with the job it made.
caf::result<std::string> take_submit(supervisor_actor* self, const std::string& who,
                                     std::string text, std::string submission) {
  if (!submission.empty()) {
    if (auto ok = check_submission_id(submission); !ok) return to_caf(ok.error());
  }
  if (!self->state.resumed) {
    auto rp = self->make_response_promise<std::string>();
    self->state.waiting_submits.push_back({who, std::move(text), std::move(submission), rp});
    return rp;
  }
  auto spec = parse_job_spec(text, "job spec");
  if (!spec) return to_caf(spec.error());
  // An account bills its own jobs only; the operator may bill any account.
  if (who != operator_principal && !spec->account.empty() && spec->account != who)
    return to_caf(
        error(errc::permission_denied, "job spec: market.account: this API key belongs to " + who +
                                           ", which cannot bill " + spec->account));
  // An account's job is paid from its credits. One that named no paying account ran
  // unmetered on nodes that ask a price: they were never paid for verified work. Without
  // an account, an account's job may only take nodes that ask nothing.
  if (who != operator_principal && spec->account.empty() && spec->max_price != 0)
    return to_caf(
        error(errc::invalid_argument,
              "job spec: market.account: a job submitted with " + who +
                  "'s API key is paid from its credits: name it (account = \"" + who +
                  "\") with a budget and a max_price, or set max_price = 0 to run only on nodes "
                  "that ask nothing"));
  const std::string owner = who != operator_principal ? who
                            : !spec->account.empty()  ? spec->account
                                                      : std::string(operator_principal);
  // Asked again with the id the client gave it, its first answer lost (a busy core, a link
  // that dropped): answered with the job the first made, or once it is made or refused. Made
  // again, the owner ran and paid for two jobs.
  if (!submission.empty()) {
    if (self->state.unknown_submissions.count({owner, submission}) != 0)
      return to_caf(error(errc::io_error,
                          "submission id '" + submission +
                              "': the store failed its job's record and the read that checks "
                              "it, so whether the job was made is unknown until the core reads "
                              "its records again (a restart); list the jobs (gflex status) then"));
    for (const auto& [id, entry] : self->state.jobs)
      if (entry.status.owner == owner && entry.status.submission == submission) {
        if (entry.spec_text != text)
          return to_caf(
              error(errc::invalid_argument, "submission id '" + submission + "' made " + id +
                                                " from another spec; nothing was submitted"));
        return id;
      }
    if (auto it = self->state.submitting_ids.find({owner, submission});
        it != self->state.submitting_ids.end()) {
      auto rp = self->make_response_promise<std::string>();
      it->second.push_back({who, std::move(text), submission, rp});
      return rp;
    }
  }
  int64_t unfinished = self->state.submitting[owner];
  for (const auto& [id, entry] : self->state.jobs)
    if (entry.status.owner == owner && !is_terminal(entry.status.state)) ++unfinished;
  if (unfinished >= self->state.links.max_jobs_per_account)
    return to_caf(
        error(errc::limit_exceeded, owner + " already has " + std::to_string(unfinished) +
                                        " unfinished jobs, the most one account may have"));
  const bool builtin_data = kernels::is_builtin_data_set(spec->data_set);
  auto w = kernels::find_workload(spec->workload, spec->model,
                                  builtin_data ? spec->data_set : std::string());
  if (!w)
    return to_caf(error(w.error().code(), spec->model.empty()
                                              ? "job spec: job.workload: " + w.error().message()
                                              : "job spec: " + w.error().message()));
  // Refused here, before any node runs it (a pipeline's train stage checks the same).
  if (auto runs = check_spec_runs(*spec, **w); !runs) return to_caf(runs.error());
  // Every unfinished job holds its model's state in the core: unbounded, one account's
  // large models filled the core's memory, and the core restarted after the kill
  // resumed them all and was killed again.
  const int64_t parameters = (*w)->parameter_count();
  const uint64_t need = job_core_memory_bytes(**w, *spec);
  if (auto over = over_memory_budget(self->state, owner, *spec, parameters, need))
    return to_caf(*over);
  if (!spec->model.empty() && !builtin_data) {
    // The catalog serves a set from before its commit: a job started on it then
    // trained on data the store may never hold.
    if (self->state.committing.count({owner, spec->data_set}) != 0)
      return to_caf(
          error(errc::unavailable, "job spec: " + being_stored({owner, spec->data_set}).message()));
    if (self->state.removing.count({owner, spec->data_set}) != 0)
      return to_caf(error(errc::unavailable,
                          "job spec: " + being_removed({owner, spec->data_set}).message()));
    // Not yet read from the store: the catalog would call it unknown.
    if (!self->state.data_sets_listed)
      return to_caf(error(
          errc::unavailable,
          // A passing loss: the client asks again, with the same submission id.
          std::string(detail::no_answer) + ": it is still loading its stored data sets" +
              (self->state.data_sets_error.empty() ? std::string()
                                                   : " (" + self->state.data_sets_error + ")") +
              ": try again shortly"));
    if (auto it = self->state.unloaded_sets.find({owner, spec->data_set});
        it != self->state.unloaded_sets.end())
      return to_caf(error(errc::unavailable, "job spec: data.set: '" + spec->data_set +
                                                 "' cannot be read from the store now (" +
                                                 it->second.second + "): try again shortly"));
    auto data = self->state.links.catalog->user_set(owner, spec->data_set, **w);
    if (!data) return to_caf(error(data.error().code(), "job spec: " + data.error().message()));
    if (auto fits = check_workers_fit(spec->workers, (*data)->shards.size()); !fits)
      return to_caf(fits.error());
  }
  auto rp = self->make_response_promise<std::string>();
  self->state.submitting[owner] += 1;
  self->state.submitting_memory[owner] += need;
  const std::optional<data_set_id> user_set =
      !spec->model.empty() && !builtin_data
          ? std::optional<data_set_id>(data_set_id{owner, spec->data_set})
          : std::nullopt;
  if (user_set) self->state.submitting_on[*user_set] += 1;
  if (!submission.empty()) self->state.submitting_ids[{owner, submission}];
  // Called once on every way out of this submit, whatever its outcome.
  // The same submits asked meanwhile (the same owner and submission id), out of the way.
  auto repeats = [=] {
    std::vector<job_supervisor_state::waiting_submit> out;
    if (submission.empty()) return out;
    auto node = self->state.submitting_ids.extract({owner, submission});
    if (!node.empty()) out = std::move(node.mapped());
    return out;
  };
  auto submitted = [=] {
    auto& pending = self->state.submitting;
    if (auto it = pending.find(owner); it != pending.end() && --it->second <= 0) pending.erase(it);
    auto& memory = self->state.submitting_memory;
    if (auto it = memory.find(owner); it != memory.end() && (it->second -= need) == 0)
      memory.erase(it);
    if (!user_set) return;
    auto& on = self->state.submitting_on;
    if (auto it = on.find(*user_set); it != on.end() && --it->second <= 0) on.erase(it);
  };
  // Refuses this submit, and the same submits asked meanwhile with the same: a repeat taken
  // anew instead made a job its client may have given up on and submitted again itself.
  auto refuse = [=](caf::error e) mutable {
    submitted();
    for (auto& again : repeats())
      again.answer.deliver(
          again.text == text
              ? e
              : to_caf(error(errc::invalid_argument, "submission id '" + submission +
                                                         "' was given another spec; nothing was "
                                                         "submitted")));
    rp.deliver(std::move(e));
  };
  auto accept = [=](job_spec spec) mutable {
    auto& st = self->state;
    std::string id = "job-" + std::to_string(st.next_id++);
    while (st.jobs.count(id) != 0) id = "job-" + std::to_string(st.next_id++);
    job_status status;
    status.job_id = id;
    status.name = spec.name;
    status.workload = spec.workload;
    status.rounds = spec.rounds;
    status.state = job_state::queued;
    status.submitted_unix = std::chrono::duration_cast<std::chrono::seconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count();
    status.account = spec.account;
    status.budget = spec.budget;
    status.owner = owner;
    status.submission = submission;
    store_batch batch;
    batch.keys.push_back(job_record_key(id));
    batch.values.push_back(encode_job_record(text, status));
    auto recorded = [=]() mutable {
      submitted();
      // The same submits asked meanwhile are taken again behind this turn, which starts the
      // job: each is answered with it (or refused, its spec another).
      for (auto& again : repeats()) {
        auto answer = again.answer;
        self->request(caf::actor_cast<caf::actor>(self), std::chrono::seconds(60),
                      submit_atom::value, again.who, again.text, again.submission)
            .then([answer](std::string& made) mutable { answer.deliver(std::move(made)); },
                  [answer](caf::error& e) mutable { answer.deliver(std::move(e)); });
      }
      spdlog::info("job {} ({}) submitted: {} rounds of {} workers", id, status.name, status.rounds,
                   spec.workers);
      start_job(self,
                job_start{id, text, spec, status, {}, {}, {}, job_start::origin::submitted, {}});
      self->state.jobs[id].core_memory = need;
      rp.deliver(id);
    };
    // Read back after a failure: a record landed late was a job known only to the
    // store, run (and billed) after the next restart while its owner, told it failed,
    // submitted again.
    auto check = holds_value(job_record_key(id), std::chrono::minutes(5), batch.values[0]);
    commit_checked(self, st.links.store, st.links.record_wait, std::move(batch), std::move(check),
                   recorded, [=](caf::error& e, caf::error& read_error) mutable {
                     if (read_error && !submission.empty())
                       self->state.unknown_submissions.insert({owner, submission});
                     refuse(e);
                   });
  };
  // A metered job's account must exist, and hold one round's escrow, before anything
  // is recorded.
  auto funded = [=]() mutable {
    if (spec->account.empty()) return accept(*spec);
    self->request(self->state.links.ledger, std::chrono::seconds(30), account_atom::value,
                  spec->account)
        .then(
            [=](account_info& info) mutable {
              auto need = round_escrow(*spec);
              if (info.balance < need) {
                refuse(to_caf(error(errc::invalid_argument, "job spec: market.account: " + info.id +
                                                                " holds " +
                                                                format_credits(info.balance) +
                                                                " credits, less than one round's "
                                                                "escrow (" +
                                                                format_credits(need) + ")")));
                return;
              }
              accept(*spec);
            },
            [=](caf::error& e) mutable {
              refuse(to_caf(error(errc::invalid_argument,
                                  "job spec: market.account: " + from_caf(e).message())));
            });
  };
  if (user_set) {
    funded();
    return rp;
  }
  // A built-in set's shards are known once it is loaded: a job of more workers than
  // shards was accepted, then failed at its start. Loaded (seconds) off the
  // supervisor's thread; the job's start finds it in the catalog.
  std::shared_ptr<const kernels::workload> workload = std::move(*w);
  auto loader = self->spawn<caf::detached>(
      [catalog = self->state.links.catalog, workload](caf::event_based_actor* loader) {
        return caf::behavior{[=](caf::get_atom) -> caf::result<uint64_t> {
          loader->quit();
          auto data = catalog->get(*workload);
          if (!data) return to_caf(data.error());
          return static_cast<uint64_t>((*data)->shards.size());
        }};
      });
  self->request(loader, std::chrono::minutes(5), caf::get_atom::value)
      .then(
          [=](uint64_t shards) mutable {
            if (auto fits = check_workers_fit(spec->workers, shards); !fits) {
              refuse(to_caf(fits.error()));
              return;
            }
            funded();
          },
          [=](caf::error& e) mutable {
            refuse(
                to_caf(error(from_caf(e).code(), "job spec: data.set: " + from_caf(e).message())));
          });
  return rp;
}

caf::behavior job_supervisor_actor(supervisor_actor* self, job_links links,
                                   job_memory_budget budget,
                                   std::chrono::milliseconds export_idle) {
  self->state.links = std::move(links);
  self->state.memory_budget = budget;
  self->state.export_idle = export_idle;
  self->state.links.run_epoch =
      static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  self->state.links.supervisor = caf::actor_cast<caf::actor>(self);
  self->set_down_handler([=](const caf::down_msg& down) {
    for (auto& [id, entry] : self->state.jobs) {
      if (entry.actor.address() != down.source) continue;
      entry.actor = nullptr;
      if (!down.reason) return;
      if (is_terminal(entry.status.state)) {
        if (entry.end_recorded) return;
        // Shown ended (cancelled, failed, escalated), it died before its end was written: its
        // record says running and escrow still holds its rounds'. Left so, the escrow stayed
        // held until a core restarted and resumed the job. It is started again only to end
        // (a done one, to find its rounds committed), 5 s on: one that dies at once does not
        // spin. Within the job's restart budget: an actor that died the same way at every
        // start (short of memory for its checkpoint) was started every 5 s for ever, reading
        // its checkpoint each time; past it, the end is left to the core's next start, which
        // resumes the job from its record and returns what escrow holds.
        if (!entry.restarts.allow(std::chrono::steady_clock::now(), entry.status.round)) {
          spdlog::error(
              "job {} stopped before its end ({}) was recorded, and {} ({}): its record and "
              "escrow are left to the next start of this core",
              id, to_string(entry.status.state), entry.restarts.why_not(),
              self->system().render(down.reason));
          return;
        }
        spdlog::error(
            "job {} stopped before its end ({}) was recorded ({}); ending it again in 5 s", id,
            to_string(entry.status.state), self->system().render(down.reason));
        self->state.awaiting_restart[id] =
            entry.status.state == job_state::done ? std::string() : entry.status.detail;
        self->delayed_send(self, std::chrono::seconds(5), tick_atom::value);
        return;
      }
      // A job that died before it ended restarts from its last committed round, unless it
      // keeps dying: then it is failed (escalation) rather than restarted forever.
      std::string why = self->system().render(down.reason);
      if (entry.ending ||
          !entry.restarts.allow(std::chrono::steady_clock::now(), entry.status.round)) {
        spdlog::error("job {} {} ({}); failing it", id, entry.restarts.why_not(), why);
        entry.status.state = job_state::failed;
        entry.status.detail =
            "the job actor kept stopping (" + entry.restarts.why_not() + "): " + why;
        // Started once more only to end: its escrow goes back and its record says failed
        // (else a restarted core would resume it). If that fails too, it stays failed here.
        if (!entry.ending) {
          entry.ending = true;
          restart_job(self, std::string(id), entry.status.detail);
        }
        return;
      }
      spdlog::warn("job {} stopped ({})", id, why);
      restart_job(self, std::string(id));
      return;
    }
  });
  // The job records are read beside the data sets, not after them: a set's shards may take
  // minutes to read, and the jobs were unknown meanwhile. A job on a user's set waits for it.
  load_data_sets(self);
  resume_jobs(self);
  return {
      [=](update_atom, const std::string& role, caf::actor& replacement) {
        auto& st = self->state;
        if (role == "store") st.links.store = replacement;
        if (role == "market") st.links.market = replacement;
        if (role == "reputation") st.links.reputation = replacement;
        if (role == "verifier") st.links.verifier = replacement;
        if (role == "ledger") {
          // A new keeper fences nothing yet.
          st.links.ledger = replacement;
          self->request(replacement, std::chrono::minutes(5), fence_atom::value, st.links.run_epoch)
              .then([](caf::ok_atom) {}, [](caf::error&) {});
        }
        for (auto& [id, entry] : st.jobs)
          if (entry.actor) self->send(entry.actor, update_atom::value, role, replacement);
      },
      [=](progress_atom, job_status& s) {
        core_metrics::note_mailbox(self, "job_supervisor");
        auto it = self->state.jobs.find(s.job_id);
        if (it == self->state.jobs.end()) return;
        if (s.owner.empty()) s.owner = it->second.status.owner;
        it->second.status = std::move(s);
      },
      // A job's actor wrote its end (and returned its escrow with it).
      [=](progress_atom, stop_atom) {
        auto sender = caf::actor_cast<caf::actor>(self->current_sender());
        for (auto& [id, entry] : self->state.jobs)
          if (entry.actor && entry.actor == sender) entry.end_recorded = true;
      },
      // A job caught `node`: every other job discards the node's work not yet committed (a
      // caught cheat is paid nothing it has not been paid already).
      [=](reject_atom, const std::string& node, const std::string& why) {
        auto sender = caf::actor_cast<caf::actor>(self->current_sender());
        bool from_a_job = false;
        for (const auto& [id, entry] : self->state.jobs)
          from_a_job = from_a_job || (entry.actor && entry.actor == sender);
        if (!from_a_job) return;
        for (const auto& [id, entry] : self->state.jobs)
          if (entry.actor && entry.actor != sender)
            self->send(entry.actor, bar_atom::value, node, why);
      },
      [=](tick_atom) {  // reads that failed at start, tried again
        auto& st = self->state;
        if (!st.data_sets_loaded && !st.loading_data_sets) load_data_sets(self);
        if (!st.resumed && !st.resuming) resume_jobs(self);
        auto ids = std::move(st.awaiting_checkpoint);
        st.awaiting_checkpoint.clear();
        for (const auto& id : ids) resume_from_checkpoint(self, id);
        auto restarts = std::move(st.awaiting_restart);
        st.awaiting_restart.clear();
        for (const auto& [id, end_with] : restarts)
          if (!st.jobs[id].actor) restart_job(self, id, end_with);
      },
      [=](submit_atom, const std::string& who, std::string text) -> caf::result<std::string> {
        return take_submit(self, who, std::move(text), std::string());
      },
      [=](submit_atom, const std::string& who, std::string text,
          std::string submission) -> caf::result<std::string> {
        if (auto ok = check_submission_id(submission); !ok) return to_caf(ok.error());
        return take_submit(self, who, std::move(text), std::move(submission));
      },
      [=](topup_atom, const std::string& who, const std::string& id,
          int64_t amount) -> caf::result<caf::ok_atom> {
        // Not said as an answer that did not come: a client told so warns that the top-up may
        // have been made all the same.
        if (!self->state.resumed)
          return to_caf(error(errc::unavailable,
                              "job " + id +
                                  " cannot be topped up yet: the core is still reading its job "
                                  "records; nothing was changed: top it up again shortly"));
        auto* entry = find_for(self, who, id);
        if (entry == nullptr) return to_caf(unknown_job(id));
        if (is_terminal(entry->status.state))
          return to_caf(error(errc::invalid_argument, "job " + id + " has ended"));
        if (entry->spec.account.empty())
          return to_caf(error(errc::invalid_argument, "job " + id + " is unmetered (no account)"));
        // 0 resumes a job paused because its account could not hold a round's escrow (the
        // job refuses it otherwise): one whose budget is at the cap can be raised no further.
        if (amount < 0 || amount > max_amount_micro)
          return to_caf(error(errc::invalid_argument, "a top-up must be in [0, 1e12] credits"));
        // Not ended, with no actor: it waits for its checkpoint or data sets (a core that
        // started), or is being restarted. Told it had ended, its owner gave up on a job that
        // would resume.
        if (!entry->actor)
          return to_caf(
              error(errc::unavailable, "job " + id + " is being started: try again shortly"));
        auto rp = self->make_response_promise<caf::ok_atom>();
        // The job may wait 20 s for its rounds' commits, then record_wait for the record's
        // write, and read it back: a top-up not answered in time (60 s at record_wait's 30 s)
        // may still land. Told only "request timeout", its owner topped up again and paid twice.
        const auto answer_wait = 2 * self->state.links.record_wait;
        self->request(entry->actor, answer_wait, topup_atom::value, amount)
            .then([=](caf::ok_atom) mutable { rp.deliver(caf::ok_atom::value); },
                  [=](caf::error& e) mutable {
                    if (e != caf::sec::request_timeout) {
                      rp.deliver(e);
                      return;
                    }
                    rp.deliver(to_caf(
                        error(errc::unavailable,
                              "job " + id + " did not answer the top-up within " +
                                  std::to_string(
                                      std::chrono::duration_cast<std::chrono::seconds>(answer_wait)
                                          .count()) +
                                  " s; it may have been made all the same: see the job's budget "
                                  "(gflex status " +
                                  id + ") before topping it up again")));
                  });
        return rp;
      },
      [=](status_atom, const std::string& who, const std::string& id) -> caf::result<job_status> {
        if (!self->state.resumed) return to_caf(records_unread());
        auto* entry = find_for(self, who, id);
        if (entry == nullptr) return to_caf(unknown_job(id));
        return entry->status;
      },
      // The jobs whose end is recorded, for the ledger's audit (`gflex ledger verify`): an
      // ended job's escrow must be empty. One shown ended whose end record, with the release of
      // its escrow, is still on its way (or failing, written again) is not among them: counted,
      // its escrow was reported stale until the release landed.
      [=](ledger_atom) -> caf::result<std::vector<std::string>> {
        // Some ended jobs may not be known yet: their escrow would go unchecked.
        if (!self->state.resumed) return to_caf(records_unread());
        std::vector<std::string> out;
        for (const auto& [id, entry] : self->state.jobs)
          if (is_terminal(entry.status.state) && entry.end_recorded) out.push_back(id);
        return out;
      },
      [=](jobs_atom, const std::string& who) -> caf::result<std::vector<job_status>> {
        if (!self->state.resumed) return to_caf(records_unread());
        std::vector<job_status> out;
        for (const auto& [id, entry] : self->state.jobs)
          if (may_touch(who, entry.status)) out.push_back(list_entry(entry.status));
        // In the order they were submitted: the dashboard charts the newest.
        std::sort(out.begin(), out.end(), [](const job_status& a, const job_status& b) {
          return submitted_before(a.job_id, b.job_id);
        });
        return out;
      },
      // Users' data sets: an upload arrives shard by shard and is stored, manifest and
      // shards in one transaction, with its last part.
      [=](dpush_atom, const std::string& who, const std::string& name,
          data_part& part) -> caf::result<data_set_info> {
        auto& st = self->state;
        if (!valid_data_set_name(name))
          return to_caf(error(
              errc::invalid_argument,
              "data set name must be 1-64 of A-Z a-z 0-9 . _ -, got '" + name.substr(0, 80) + "'"));
        if (kernels::is_builtin_data_set(name))
          return to_caf(error(errc::invalid_argument,
                              "'" + name + "' names a built-in data set: choose another name"));
        const data_set_id id{who, name};
        if (part.index == 0) {
          st.uploads.erase(id);
          // Not yet read from the store as a core starts, a stored set, or a stored job
          // training on it, was unknown here: a push replaced the set under the job, which
          // then resumed on the new data, and the account's limits counted none of its sets.
          // Refused as a passing loss: the client asks again (client::push_data).
          if (!data_known(st)) return to_caf(data_not_known(st));
          if (stored_set(st, id) != nullptr || st.unloaded_sets.count(id) != 0)
            if (auto busy = in_use(st, id, "replaced")) return to_caf(*busy);
          if (part.count == 0 || part.count > st.data_limits.max_parts)
            return to_caf(error(errc::invalid_argument,
                                "a data set has 1 to " + std::to_string(st.data_limits.max_parts) +
                                    " parts, got " + std::to_string(part.count)));
          if (st.committing.count(id) != 0) return to_caf(being_stored(id));
          if (st.removing.count(id) != 0) return to_caf(being_removed(id));
          int64_t owned = 0, uploading = 0;
          for (const auto& [key, _] : st.data_sets) owned += key.first == who && key != id;
          for (const auto& [key, _] : st.committing)
            owned += key.first == who && key != id && st.data_sets.count(key) == 0;
          // A stored set that did not load is the account's all the same; an upload of a new
          // name will be one: counted only once stored, two uploads begun beside the 64th set
          // both became sets, 65 of them.
          for (const auto& [key, _] : st.unloaded_sets)
            owned += key.first == who && key != id && st.data_sets.count(key) == 0;
          for (const auto& [key, _] : st.uploads) {
            uploading += key.first == who;
            owned += key.first == who && key != id && st.data_sets.count(key) == 0 &&
                     st.committing.count(key) == 0 && st.unloaded_sets.count(key) == 0;
          }
          if (owned >= st.data_limits.max_sets_per_owner || uploading >= 2)
            return to_caf(
                error(errc::limit_exceeded, who + " has " + std::to_string(owned) +
                                                " data sets and " + std::to_string(uploading) +
                                                " uploads in progress: remove one first"));
          st.uploads.emplace(
              id, upload_in_progress{data_upload(who, name, part.count, st.data_limits)});
        }
        auto it = st.uploads.find(id);
        if (it == st.uploads.end())
          return to_caf(
              error(errc::invalid_argument,
                    "data set '" + name + "': no upload in progress (send part 0 first)"));
        auto& upload = it->second.upload;
        if (auto ok = upload.add(part); !ok) {
          st.uploads.erase(it);
          return to_caf(ok.error());
        }
        // Every set is in the core's memory: 64 sets of 1 GiB each were one account's to
        // upload, and the core's memory with them. A set being stored counts as the one it
        // replaces will not, and the test split as the core holds it (decoded).
        uint64_t held = 0;
        for (const auto& [key, info] : st.data_sets)
          if (key.first == who && key != id && st.committing.count(key) == 0)
            held += core_memory_bytes(info);
        for (const auto& [key, info] : st.committing)
          if (key.first == who && key != id) held += core_memory_bytes(info);
        for (const auto& [key, other] : st.uploads)
          if (key.first == who) held += core_memory_bytes(other.upload.info());
        if (held > st.links.max_data_bytes_per_account) {
          st.uploads.erase(it);
          return to_caf(error(errc::limit_exceeded,
                              "data set '" + name + "': " + who + "'s data sets would hold " +
                                  std::to_string(held) + " bytes, more than the " +
                                  std::to_string(st.links.max_data_bytes_per_account) +
                                  " its account may store: remove one first"));
        }
        if (!upload.complete()) {
          it->second.last_part_mark = ++st.upload_marks;
          self->delayed_send(self, st.links.upload_idle, expire_atom::value, who, name,
                             it->second.last_part_mark);
          // Without the digests so far: the answer to part k held k of them, and a push of
          // 4,096 parts was answered with about 600 MB (the last part's answer lists all).
          auto so_far = upload.info();
          so_far.train_shards.clear();
          so_far.test_shards.clear();
          return so_far;
        }
        auto info = upload.finish();
        if (!info) {
          st.uploads.erase(it);
          return to_caf(info.error());
        }
        // A job submitted on the set while its replacement was uploading.
        if (stored_set(st, id) != nullptr)
          if (auto busy = in_use(st, id, "replaced")) {
            st.uploads.erase(it);
            return to_caf(*busy);
          }
        auto chunks = upload.chunks();
        st.uploads.erase(it);
        // In memory first: a set the catalog refuses is never stored (a stored one is loaded
        // again at every start). The set it replaces is kept, to be put back if the new one
        // cannot be stored.
        auto previous = st.links.catalog->registered_user_set(who, name);
        if (auto ok = st.links.catalog->put_user_set(*info, chunks, st.data_limits); !ok)
          return to_caf(ok.error());
        store_batch batch;
        batch.keys.push_back(data_set_key(who, name));
        batch.values.push_back(encode_data_set(*info));
        for (const auto& [digest, bytes] : chunks) {
          batch.keys.push_back(data_chunk_key(digest));
          batch.values.push_back(*bytes);
          ++st.storing_chunks[digest];
        }
        // A set replaced (or one that could not be loaded): its shards the new one and no
        // other names go with it.
        if (const auto* old = stored_set(st, id))
          for (const auto& digest : unreferenced_chunks(st, *old, id, &*info)) {
            batch.keys.push_back(data_chunk_key(digest));
            batch.values.emplace_back();
          }
        auto stored = [=] {
          for (const auto& [digest, bytes] : chunks)
            if (auto it = self->state.storing_chunks.find(digest);
                it != self->state.storing_chunks.end() && --it->second == 0)
              self->state.storing_chunks.erase(it);
        };
        st.committing[id] = *info;
        auto rp = self->make_response_promise<data_set_info>();
        auto kept = [=]() mutable {
          stored();
          self->state.committing.erase(id);
          self->state.data_sets[id] = *info;
          self->state.damaged_sets.erase(id);
          self->state.unloaded_sets.erase(id);
          spdlog::info("data set {}/{} stored: {} training and {} test samples, {} bytes", who,
                       name, info->train_samples, info->test_samples, info->bytes);
          rp.deliver(*info);
        };
        auto not_kept = [=](const caf::error& e) mutable {
          stored();
          self->state.committing.erase(id);
          // Not stored: not served either; the set it was to replace is served again
          // (dropped too, it was listed but refused to every job until the core restarted).
          auto& catalog = *self->state.links.catalog;
          if (previous) {
            catalog.restore_user_set(*previous);
          } else {
            catalog.drop_user_set(who, name);
            // A damaged set it was to replace is still stored, and still listed as left out:
            // the catalog forgot its damage when it took the new set, and a job on it was
            // told there was no such set.
            if (auto it = self->state.damaged_sets.find(id); it != self->state.damaged_sets.end())
              catalog.note_damaged_set(who, name, it->second.second);
          }
          rp.deliver(e);
        };
        // Read back after a failure (a large set on a slow disk): a set landed late was in
        // the store but unknown (not listed, its name free for a push) until a restart.
        auto check =
            holds_value(data_set_key(who, name), std::chrono::minutes(10), batch.values.front());
        commit_checked(self, st.links.store, 4 * st.links.record_wait, std::move(batch),
                       std::move(check), kept,
                       [=](caf::error& e, caf::error&) mutable { not_kept(e); });
        return rp;
      },
      // An upload's timer: no part came since the one marked `mark` (an upload finished or
      // started afresh since is another, with marks of its own).
      [=](expire_atom, const std::string& who, const std::string& name, uint64_t mark) {
        if (self->current_sender() != self->ctrl()) return;
        auto& st = self->state;
        auto it = st.uploads.find({who, name});
        if (it == st.uploads.end() || it->second.last_part_mark != mark) return;
        spdlog::info("data set {}/{}: upload dropped after {} parts, none for {} ms", who, name,
                     it->second.upload.info().parts_received, st.links.upload_idle.count());
        st.uploads.erase(it);
      },
      [=](dlist_atom, const std::string& who) -> caf::result<std::vector<data_set_info>> {
        // Listed before the stored sets are read, an account's sets were said to be none:
        // `gflex data show` said "no data set" (exit 2, "fails again as sent"), and a script
        // uploaded again what the core holds. A passing loss: a client asks again.
        if (!self->state.data_sets_listed) return to_caf(data_not_known(self->state));
        std::vector<data_set_info> out;
        const auto& st = self->state;
        auto listed = [&](const data_set_id& key) {
          return who == operator_principal || key.first == who;
        };
        for (const auto& [key, info] : st.data_sets)
          if (listed(key)) out.push_back(info);
        for (const auto& [key, left_out] : st.damaged_sets)
          if (listed(key)) {
            out.push_back(left_out.first);
            out.back().unusable = "damaged (" + left_out.second + "); remove it and push again";
          }
        for (const auto& [key, left_out] : st.unloaded_sets)
          if (listed(key)) {
            out.push_back(left_out.first);
            out.back().unusable = "not loaded yet (" + left_out.second + "); read again every 5 s";
          }
        std::sort(out.begin(), out.end(), [](const data_set_info& a, const data_set_info& b) {
          return std::tie(a.owner, a.name) < std::tie(b.owner, b.name);
        });
        return out;
      },
      [=](drm_atom, const std::string& who, const std::string& name) -> caf::result<caf::ok_atom> {
        const data_set_id id{who, name};
        auto& st = self->state;
        // The stored jobs unread, one training on the set was not seen (in_use), and the set
        // it needs was deleted under it.
        if (!data_known(st)) return to_caf(data_not_known(st));
        if (st.committing.count(id) != 0) return to_caf(being_stored(id));
        if (st.removing.count(id) != 0) return to_caf(being_removed(id));
        // An upload of that name in progress goes too (a push given up on, whose parts the
        // core would otherwise hold until its timer ends).
        const bool was_uploading = st.uploads.erase(id) != 0;
        // A set that could not be loaded (a damaged shard) is removed as well.
        const data_set_info* known = stored_set(st, id);
        if (known == nullptr) {
          if (was_uploading) return caf::ok_atom::value;
          // The stored sets are decoded off this actor as a core starts: one not registered
          // yet is not "no data set" (nothing is changed; the owner tries again).
          if (st.loading_data_sets)
            return to_caf(error(errc::unavailable,
                                "the core is still loading its data sets; try again shortly"));
          return to_caf(error(errc::invalid_argument, who + " has no data set '" + name + "'"));
        }
        if (auto busy = in_use(st, id, "removed")) return to_caf(*busy);
        // The manifest goes, and the shards no other data set names (running jobs hold
        // their data in memory until they end).
        store_batch batch;
        batch.keys.push_back(data_set_key(who, name));
        batch.values.emplace_back();
        for (const auto& digest : unreferenced_chunks(st, *known, id)) {
          batch.keys.push_back(data_chunk_key(digest));
          batch.values.emplace_back();
        }
        st.removing.insert(id);
        auto rp = self->make_response_promise<caf::ok_atom>();
        // Read back after a failure: a removal landed late left the set listed and served
        // (a job accepted on it failed after the next restart, its rounds paid for).
        auto gone = [](bool found, const std::vector<uint8_t>&) { return !found; };
        commit_checked(
            self, st.links.store, st.links.record_wait, std::move(batch),
            read_back(data_set_key(who, name), std::chrono::minutes(5), gone),
            [=]() mutable {
              auto& st = self->state;
              st.removing.erase(id);
              st.data_sets.erase(id);
              st.damaged_sets.erase(id);
              st.unloaded_sets.erase(id);
              // A load under way may have listed it before: that load must not put it back.
              if (st.loading_data_sets) st.removed_while_loading.insert(id);
              st.links.catalog->drop_user_set(who, name);
              rp.deliver(caf::ok_atom::value);
            },
            [=](caf::error& e, caf::error&) mutable {
              self->state.removing.erase(id);
              rp.deliver(e);
            });
        return rp;
      },
      [=](cancel_atom, const std::string& who, const std::string& id) -> caf::result<caf::ok_atom> {
        if (!self->state.resumed) return to_caf(records_unread());
        auto* entry = find_for(self, who, id);
        if (entry == nullptr) return to_caf(unknown_job(id));
        if (is_terminal(entry->status.state))
          return to_caf(error(errc::invalid_argument, "job '" + id + "' has already ended (" +
                                                          to_string(entry->status.state) + ")"));
        auto& st = self->state;
        if (!entry->actor && (st.awaiting_checkpoint.erase(id) + st.awaiting_data.erase(id) +
                              st.awaiting_restart.erase(id)) > 0) {
          // Resumed by a starting core (or restarted), it waits for a read that fails (its
          // checkpoint, the data sets): it is started only to end, cancelled, from its record (its
          // escrow returned), without what could not be read.
          job_start start{id,
                          entry->spec_text,
                          entry->spec,
                          entry->status,
                          {},
                          {},
                          {},
                          job_start::origin::resumed,
                          "cancelled while it waited: " + entry->status.detail};
          start.end_state = job_state::cancelled;
          start_job(self, std::move(start));
          // Answered by that actor once the end is recorded, as a running job's cancel is: "ok"
          // at once was said of a job whose record still said running (its escrow not back,
          // its write failing), which a core stopped meanwhile resumed.
        }
        if (!entry->actor)
          return to_caf(error(errc::unavailable, "job '" + id + "' is being started (its " +
                                                     "checkpoint is read): try again shortly"));
        auto rp = self->make_response_promise<caf::ok_atom>();
        self->request(entry->actor, std::chrono::seconds(30), cancel_atom::value)
            .then([=](caf::ok_atom) mutable { rp.deliver(caf::ok_atom::value); },
                  [=](caf::error& e) mutable { rp.deliver(e); });
        return rp;
      },
      [=](fetch_atom, const std::string& who, const std::string& id,
          uint64_t offset) -> caf::result<model_part> {
        if (!self->state.resumed) return to_caf(records_unread());
        auto rp = self->make_response_promise<model_part>();
        fetch_model(self, who, id, offset, rp);
        return rp;
      },
      // Its own timer: exports being read may have made room for the fetches that wait.
      [=](fetch_atom) {
        if (self->current_sender() == self->ctrl()) next_queued_export(self);
      },
      // Its own timer: the exports unused for export_idle go.
      [=](fetch_atom, tick_atom) {
        if (self->current_sender() != self->ctrl()) return;
        self->state.export_sweep_set = false;
        sweep_exports(self);
      },
  };
}

}  // namespace

caf::actor spawn_job_supervisor(caf::actor_system& sys, job_links links, job_memory_budget budget,
                                std::chrono::milliseconds export_idle) {
  return sys.spawn(job_supervisor_actor, std::move(links), budget, export_idle);
}

}  // namespace gflex
