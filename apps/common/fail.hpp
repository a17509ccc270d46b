#pragma once
/// @file
/// How the programs report a failed step: the error's message on stderr (through the log),
/// and the exit code the caller returns (1: a failed run, 2: bad usage or input, 3: a node
/// the core refused).

#include <spdlog/spdlog.h>

#include <string>

#include "gflex/runtime/error.hpp"

namespace gflex::app {

inline int fail(const error& e, int code = 1) {
  spdlog::error("{}", e.message());
  return code;
}

/// Whether a permission_denied refusal passes with time: the replicated store also reports so
/// a core of several that lost its leadership (the next leader takes the request). Told apart
/// by its words: the core's fencing reads that code.
inline bool passes_later(const error& e) {
  const std::string& m = e.message();
  return m.find("does not lead") != std::string::npos ||
         m.find("no longer leads") != std::string::npos;
}

/// A core's refusal: 2 where the request itself was wrong (an unknown job or data set, a spec
/// the core refuses) or the key may not make it (none, an unknown one, another account's
/// account or bill, an operator's command): the same request fails again. 1 otherwise (a lost
/// link, a store error: trying again may serve). All were 1, and a script that retried on 1
/// sent a spec that could never be taken, or a key that could never pass, again and again.
inline int fail_answer(const error& e) {
  switch (e.code()) {
    case errc::invalid_argument:
    case errc::unknown_workload:
    case errc::shape_mismatch:
    case errc::non_finite:
    case errc::bad_format:
      return fail(e, 2);
    case errc::permission_denied:
      return fail(e, passes_later(e) ? 1 : 2);
    default:
      return fail(e, 1);
  }
}

}  // namespace gflex::app
