#pragma once
/// @file
/// What a metered job pays for a round, free of CAF: the price of each applied result and
/// the balanced ledger transaction that settles the round's escrow. The job actor books the
/// transaction with the round's record (ledger_keeper, settle), and puts the hold back when
/// that commit fails, so that a failed commit leaves nothing stuck in escrow.

#include <cstdint>
#include <string>
#include <vector>

#include "ledger_book.hpp"

namespace gflex {

/// One applied result, as billing sees it.
struct billed_result {
  std::string node_name;
  int64_t price = 0;       ///< Micro-credits per device-hour its node asks.
  double compute_s = 0.0;  ///< What the node reports (its session caps it at what it measured).
  double wall_s = 0.0;     ///< From sending the assignment to its answer, as the job saw it.
};

struct payment {
  int64_t cost = 0;  ///< What the job pays for the result.
  int64_t fee = 0;   ///< Of which the platform keeps this.
  double paid_s = 0.0;
};

/// The price of one result: its node's price for the time it took, the smaller of what the
/// node reports and what the core measured, never more than the round's deadline and never
/// a non-finite or negative time (such a result pays nothing); the platform keeps
/// `fee_share` of it.
payment payment_for(const billed_result& r, double deadline_s, double fee_share);

/// The transaction that settles one round.
struct settlement {
  std::vector<posting> postings;  ///< Balanced: escrow out, nodes, platform, remainder back.
  int64_t hold = 0;               ///< What the round's escrow held.
  int64_t paid = 0;               ///< What the results cost (the nodes' pay and the fees).
  double hours = 0.0;             ///< Device-hours paid for.
  std::string memo;
};

/// Settles round `index` (0-based) of job `job_id`: the escrow account gives up `hold`, each
/// node's payout account (node/NAME) gets its pay less the fee, the platform the fees, and
/// `account` what is left. A round that would cost more than its hold pays nothing and
/// returns the hold (it cannot happen when prices are within max_price and times within
/// the deadline).
settlement settle_round(const std::string& job_id, int64_t index, int64_t hold,
                        const std::string& account, const std::string& escrow,
                        const std::vector<billed_result>& results, double deadline_s,
                        double fee_share);

}  // namespace gflex
