#pragma once
/// @file
/// What clients see of the credit ledger and of join tokens. Plain structs, free of CAF.

#include <cstdint>
#include <string>
#include <vector>

#include "gflex/job_status.hpp"

namespace gflex {

/// A join token as the core keeps it (never the token itself, only its digest).
struct join_token_record {
  std::string id;  ///< The first 12 hex digits of its digest: what operators name.
  node_tier tier = node_tier::community;
  int64_t created_unix = 0;
  int64_t expires_unix = 0;  ///< 0: never.
  bool revoked = false;
  uint64_t joins = 0;  ///< Hellos it admitted.
  /// How many node keys it admits (0: any number). A key that used it may use it again.
  uint64_t uses = 0;
  std::vector<std::string> keys;  ///< The node keys (hex) it is bound to, first use first.
  /// Why it admits no new keys (a node that joined with it was caught); empty: open. The
  /// keys bound to it may still come back with it, the caught one excepted (its key is
  /// banned).
  std::string closed;
};

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
