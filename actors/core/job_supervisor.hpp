#pragma once
/// @file
/// The job supervisor: creates, lists, cancels and resumes jobs, one job actor each.
///
/// On start it reads every job record from the store and respawns the unfinished jobs from
/// their last committed checkpoint. It monitors every job actor: one that dies before its job
/// ended is restarted from its last committed checkpoint (one for one); a job that dies more
/// than 3 times in 60 s is marked failed instead. It keeps the latest status of every job (pushed
/// by the job actors as (progress_atom, job_status)), so status queries never wait on a busy job.
///
/// Protocol (from the core supervisor, on behalf of clients):
/// - (submit_atom, spec_toml) -> job id: validates the spec (errors name the key), checks
///   that the core's memory its model takes fits the job memory budget, records the job and
///   starts it. (submit_atom, spec_toml, submission) the same, with the id the client gave
///   the submission: asked again with it by the same owner, the job it made (kept in its
///   record), or the first's outcome while that is being made.
/// - (status_atom, job_id) -> job_status;  (jobs_atom) -> vector<job_status>
/// - (cancel_atom, job_id) -> ok_atom
/// - (fetch_atom, job_id, offset) -> model_part: the checkpoint of the last committed round,
///   its parameters named by the workload's layout, in parts of one payload chunk. Offset 0
///   makes the export (on a detached thread) unless the one kept is of the current round;
///   later offsets read the kept one, which the parts' `step` identifies. An export unused
///   for `export_idle` is dropped by a timer (up to about 1 GiB each, up to 4 kept); the bytes
///   the kept ones take are the gauge gflex_core_model_export_bytes.

#include <caf/fwd.hpp>

#include <chrono>
#include <cstdint>
#include <memory>

namespace gflex {

namespace kernels {
class workload;
}
class data_catalog;

struct job_links;
struct job_spec;

/// Bounds on the core's memory that the unfinished jobs' models take together
/// (job_core_memory_bytes of each), checked as a job is submitted: every job holds its
/// model's state in the core from its start to its end, and a restarted core resumes them
/// all, so that jobs past the machine's memory failed it again at every start.
struct job_memory_budget {
  uint64_t per_account = uint64_t{8} << 30;  ///< One account's jobs.
  uint64_t core = uint64_t{8} << 30;         ///< Every account's jobs.
};

/// 8 GiB per account, and half the machine's physical memory for the whole core (8 GiB
/// where the machine does not tell its memory).
job_memory_budget default_job_memory_budget();

/// The core's memory a job of a model of `parameters` takes, by its spec's workers and
/// [wire] compression: the parameters (4 bytes each) three times (theta, the outer momentum
/// or a rollback's copy of theta, and the round's encoded parameters), and the updates of
/// two rounds of `workers` results (an open round holds every result it takes, as it came,
/// and a round waiting for its verification keeps its own): 1 byte per parameter and a
/// 4-byte scale per block at int8, 4 bytes at fp32.
uint64_t job_core_memory_bytes(int64_t parameters, const job_spec& spec);

/// job_core_memory_bytes of a job of `w`, and what its evaluations on the core hold: a copy
/// of the parameters and a batch's working values (kernels::workload::evaluation_bytes). Each
/// job evaluates on its own thread, all of them at once: uncounted, an account's jobs of
/// small models with long contexts each held a GiB or two there, past the budget.
uint64_t job_core_memory_bytes(const kernels::workload& w, const job_spec& spec);

/// `links` names the core's store, market, reputation tracker and verifier (its supervisor
/// field is set to the new actor) and the data catalog, handed to every job; `budget` bounds
/// the core's memory the jobs take; a model export unused for `export_idle` is dropped (a
/// test aid shortens it).
caf::actor spawn_job_supervisor(caf::actor_system& sys, job_links links,
                                job_memory_budget budget = default_job_memory_budget(),
                                std::chrono::milliseconds export_idle = std::chrono::minutes(5));

}  // namespace gflex
