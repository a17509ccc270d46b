#pragma once
/// @file
/// How the programs report a failed step: the error's message on stderr (through the log),
/// and the exit code the caller returns (1: a failed run, 2: bad usage or input, 3: a node
/// the core refused).

#include <spdlog/spdlog.h>

#include "gflex/runtime/error.hpp"

namespace gflex::app {

inline int fail(const error& e, int code = 1) {
  spdlog::error("{}", e.message());
  return code;
}

/// A core's refusal: 2 where the request itself was wrong (an unknown job or data set, a spec
/// the core refuses: the same request fails again), 1 otherwise (a lost link, a store error:
/// trying again may serve). All were 1, and a script that retried on 1 sent a spec that could
/// never be taken again and again.
inline int fail_answer(const error& e) {
  switch (e.code()) {
    case errc::invalid_argument:
    case errc::unknown_workload:
    case errc::shape_mismatch:
    case errc::non_finite:
    case errc::bad_format:
      return fail(e, 2);
    default:
      return fail(e, 1);
  }
}

}  // namespace gflex::app
