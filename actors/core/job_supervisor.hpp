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
/// - (submit_atom, spec_toml) -> job id: validates the spec (errors name the key), records
///   the job and starts it.
/// - (status_atom, job_id) -> job_status;  (jobs_atom) -> vector<job_status>
/// - (cancel_atom, job_id) -> ok_atom
/// - (fetch_atom, job_id, offset) -> model_part: the checkpoint of the last committed round,
///   its parameters named by the workload's layout, in parts of one payload chunk. Offset 0
///   makes the export (on a detached thread) unless the one kept is of the current round;
///   later offsets read the kept one, which the parts' `step` identifies.

#include <caf/fwd.hpp>

#include <cstdint>
#include <memory>

namespace gflex {

class data_catalog;

struct job_links;

/// `links` names the core's store, market, reputation tracker and verifier (its supervisor
/// field is set to the new actor) and the data catalog, handed to every job.
caf::actor spawn_job_supervisor(caf::actor_system& sys, job_links links);

}  // namespace gflex
