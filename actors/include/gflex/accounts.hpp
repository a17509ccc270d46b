#pragma once
/// @file
/// What clients see of the credit ledger. Plain structs, free of CAF.

#include <cstdint>
#include <string>
#include <vector>

namespace gflex {

/// One account: its balance and the latest entries that touched it.
struct account_info {
  std::string id;
  int64_t balance = 0;              ///< Micro-credits.
  std::vector<std::string> recent;  ///< Newest first: "seq time kind amount memo".
};

/// The result of checking the whole ledger (see verify_ledger).
struct ledger_report {
  bool ok = false;
  std::string problem;
  uint64_t entries = 0;
  uint64_t accounts = 0;
  int64_t issued = 0;         ///< Micro-credits that entered from outside.
  int64_t in_escrow = 0;      ///< Micro-credits held for running jobs.
  uint64_t stale_escrow = 0;  ///< Escrow accounts of ended jobs that still hold credits.
  /// Rounds settled (paid) per job: settled_jobs[i] had settled_rounds[i] rounds paid, each
  /// exactly once (a round settled twice fails the check).
  std::vector<std::string> settled_jobs;
  std::vector<uint64_t> settled_rounds;
};

}  // namespace gflex
