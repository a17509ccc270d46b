#pragma once
/// @file
/// The job actor: owns one training job's parameters, outer optimiser and rounds.
///
/// Each round it asks the market for `workers` slots, sends each an assignment (the round's
/// parameters, a shard, a seed), checks each result (it must answer an assignment of this
/// round, decode to the right size, hold finite values), screens the round's results against
/// the median of the others (what looks odd is re-computed by the verifier, never flagged
/// on sight), averages the pseudo-gradients,
/// applies Nesterov momentum, evaluates on the test split, and commits the round (record and
/// checkpoint in one LMDB transaction) before starting the next. A failed or lost assignment
/// goes back into the round's queue at once. Every change of state is pushed to the job
/// supervisor as (progress_atom, job_status).
///
/// Protocol: (cancel_atom) -> ok_atom: ends the job as cancelled. (status_atom) -> job_status.

#include <caf/actor.hpp>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "gflex/job_status.hpp"
#include "gflex/runtime/job_spec.hpp"
#include "job_record.hpp"

namespace gflex {

class data_catalog;

/// Where a job starts: a new job has round 0 and empty parameters (initialised from the
/// seed); a resumed one carries its last committed round.
struct job_start {
  std::string id;
  std::string spec_text;
  job_spec spec;
  job_status status;
  std::vector<float> theta;
  /// The outer optimiser's momentum, one per parameter; empty when the spec's outer
  /// momentum is 0 (plain averaging needs none, and a large model's would double the core's
  /// state and checkpoint).
  std::vector<float> momentum;
  /// The last committed checkpoint, still encoded: the job decodes it on its own thread
  /// (theta and momentum from it; when restarted, the round too), so that the supervisor
  /// never decodes parameters on CAF's scheduler. Unusable bytes start the job from round 0.
  std::vector<uint8_t> checkpoint;
  /// How the job starts: submitted now, resumed by a starting core from its record, or
  /// restarted after its actor died.
  enum class origin : uint8_t { submitted, resumed, restarted } from = origin::submitted;
  /// When set, the job starts only to end, failed with this detail: the escrow an interrupted
  /// round left goes back to the account and the record is written, and nothing is trained
  /// (a job whose actor kept stopping).
  std::string end_with;
  /// The state it ends in then: failed, or cancelled (a job cancelled while its checkpoint or
  /// data set could not be read). Such a job keeps its recorded round and needs neither.
  job_state end_state = job_state::failed;
};

struct job_links {
  caf::actor store;
  caf::actor market;
  caf::actor supervisor;
  std::shared_ptr<data_catalog> catalog;
  caf::actor reputation;          ///< the reputation tracker: sampling, credits, rejections
  caf::actor verifier;            ///< re-computes sampled results on core-tier workers
  caf::actor ledger;              ///< escrow and payments of metered jobs
  double fee = 0.1;               ///< the platform's share of a payment
  double cloud_price = 3.06;      ///< credits per device-hour in a public cloud, for comparison
  int max_jobs_per_account = 16;  ///< unfinished jobs one account may have
  /// Shard bytes one account's data sets may hold together, those uploading included.
  uint64_t max_data_bytes_per_account = uint64_t{4} << 30;
  bool accept_unverified = false;  ///< with no core-tier worker: use sampled results unverified
  /// Parameters larger than this are cut into chunks of it, once per round (shared_params).
  uint64_t payload_chunk_bytes = 8ull << 20;
  int crash_at_round = 0;  ///< test aid: throw while this round (1-based) is open; 0: never
  /// How long the ledger may take to answer a hold or a settlement before the job asks it
  /// whether the operation was booked (a test aid shortens it).
  std::chrono::milliseconds ledger_wait{60000};
  /// How long a job waits before it asks the verifier again for a result's re-computation
  /// that it refused (it held all it may) or found no core-tier worker for; doubled with each
  /// such answer in a row for that result, up to 60 times this (a test aid shortens it).
  std::chrono::milliseconds verify_retry{5000};
  /// How long the store may take to answer a job's record (a submitted job's, a top-up's)
  /// before it is read back (a test aid shortens it); a data set's commit, four times that.
  std::chrono::milliseconds record_wait{30000};
  /// How long an upload of a data set waits for its next part before it is dropped (a client
  /// gives a part up after 120 s).
  std::chrono::milliseconds upload_idle{std::chrono::minutes(10)};
  /// The job supervisor replaces one that died: its jobs' rounds may still wait in the ledger
  /// keeper's queue, to be written before their records and checkpoints are read.
  bool after_restart = false;
  /// Names the runs of the job actors this job supervisor starts (job_run_id): the ledger
  /// refuses the operations of an earlier epoch's runs once fenced (ledger_keeper.hpp). Set
  /// by the job supervisor at its start, later than any before it in the process.
  uint64_t run_epoch = 0;
};

/// Spawns a job actor on its own thread (evaluation and encoding block).
caf::actor spawn_job(caf::actor_system& sys, job_start start, job_links links);

}  // namespace gflex
