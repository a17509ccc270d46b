#pragma once
/// @file
/// Whether a parsed job spec can ever run, as far as the spec and its model tell: the checks
/// the core makes at submit that need neither the submitter nor the core's state. A pipeline's
/// train stage makes them before any stage starts: found only at submit, a spec the core
/// refused cost the whole upstream's run and a data set upload.

#include "gflex/kernels/workload.hpp"
#include "gflex/runtime/error.hpp"
#include "gflex/runtime/job_spec.hpp"

namespace gflex {

/// errc::invalid_argument, its message starting "job spec: ", where `spec` asks a reputation
/// no node can score, or a batch whose values pass what the kernels take for its model `w`.
expected<void> check_spec_runs(const job_spec& spec, const kernels::workload& w);

}  // namespace gflex
