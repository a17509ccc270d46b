#pragma once
/// @file
/// GFLEX_SKIP_CASE(why): ends the running test case as skipped, for a condition known only
/// at run time (a GPU test on a machine without one). doctest 2.4 skips only cases marked
/// before they run, and a case that returned early counted as passed. This prints
/// "[gflex] skipped: FILE:LINE: why" on stdout, which run_parallel.py counts as skipped, and
/// returns from the case.

#include <cstdio>
#include <string>

#define GFLEX_SKIP_CASE(why)                                                                   \
  do {                                                                                         \
    std::printf("[gflex] skipped: %s:%d: %s\n", __FILE__, __LINE__, std::string(why).c_str()); \
    std::fflush(stdout);                                                                       \
    return;                                                                                    \
  } while (false)
