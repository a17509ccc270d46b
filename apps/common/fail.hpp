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

}  // namespace gflex::app
