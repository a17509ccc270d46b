#pragma once
/// @file
/// A job's durable record (schemas/job.capnp: its spec text and last status) and the LMDB
/// keys of its record and checkpoint; free of CAF.

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "gflex/job_status.hpp"
#include "gflex/runtime/error.hpp"
#include "gflex/runtime/job_spec.hpp"

namespace gflex {

/// LMDB keys of a job's record and checkpoint.
std::string job_record_key(const std::string& job_id);
std::string job_checkpoint_key(const std::string& job_id);

/// Encodes/decodes a job record (schemas/job.capnp).
std::vector<uint8_t> encode_job_record(const std::string& spec_text, const job_status& s);
expected<std::pair<std::string, job_status>> decode_job_record(std::span<const uint8_t> bytes);

/// A client's submission id checked as the client and the core check it (1 to 64 of
/// [A-Za-z0-9_-]): invalid_argument, naming the form, for any other.
expected<void> check_submission_id(const std::string& id);

/// Whether job `a` was submitted before job `b`: ids are "job-N", N counting up, and compared
/// as text job-10 came before job-9 (lists of jobs put the newest in the middle).
bool submitted_before(const std::string& a, const std::string& b);

/// Fills in what a stored status leaves to its spec (name, workload, rounds, account).
void fill_from_spec(job_status& s, const job_spec& spec);

}  // namespace gflex
