#pragma once
/// @file
/// The market's matching rule, free of CAF: which free slots a round's assignments go to.
/// A slot is eligible when its tier fits the job's policy, its price is within the job's
/// max_price and its node's reputation reaches the job's min_reputation. Eligible slots are
/// taken cheapest first by cost per unit of work, price over calibrated throughput; hybrid
/// jobs take community slots first and core-tier slots for the rest. Offers whose costs are
/// within `equal_cost_band` of the cheapest left count as equal (calibrated throughputs of
/// identical machines differ by measurement noise); offers of price 0, which all cost 0, count
/// as equal within that band of the fastest free one left. Among equal offers the node that has
/// been given the least work goes first, so every eligible node gets its turn. A number of
/// slots can be reserved for newcomers (nodes with little history), so that they earn and
/// get tested. A bid may also give a slot to a node on its claim alone where the market
/// prices it below that claim until it is measured (exploration): otherwise a fast node that
/// asks more per hour than the measured ones never gets the work that would measure it. The
/// counts of slots left out say why a job waits.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gflex/runtime/job_spec.hpp"

namespace gflex {

/// A slot as the matcher sees it.
struct slot_offer {
  uint8_t tier = 0;          ///< gflex::node_tier.
  int64_t price = 0;         ///< Micro-credits per device-hour.
  double throughput = 0.0;   ///< Calibrated samples per second (fashion-mlp); > 0.
  double reputation = 0.5;   ///< The node's score.
  bool available = true;     ///< Free, not cooling down.
  int64_t served = 0;        ///< Assignments its node has been given: its history.
  std::string_view node_id;  ///< Its node, as slot_bid::avoided names nodes.
  /// Where its node has not been measured on the job's workload: the throughput it claims
  /// (above `throughput` where the market caps it). 0 where it has been.
  double claimed = 0.0;
};

/// What a job asks for.
struct slot_bid {
  trust_tier policy = trust_tier::hybrid;
  int64_t max_price = -1;  ///< Micro-credits per device-hour; negative: any.
  double min_reputation = 0.0;
  /// Of the slots wanted, how many go to newcomers first (community slots whose node has
  /// been served fewer than `newcomer_served` assignments) where there are such slots.
  size_t reserve_new = 0;
  int64_t newcomer_served = 5;
  double equal_cost_band = 0.25;  ///< Costs within this fraction of each other are equal.
  /// Nodes the job's work does not fit (they ran out of memory on its model): their slots
  /// would only fail again.
  std::vector<std::string> avoided;
  /// Of the slots wanted, how many may go on a claim alone (exploration): to slots whose
  /// node, if its claim (slot_offer::claimed) holds, is cheaper per unit of work than every
  /// slot the bid would take by price, the lowest cost by claim first; community slots first
  /// where there are such, as for the rest.
  size_t explore = 0;
};

struct match_result {
  std::vector<size_t> chosen;  ///< Indices into the offers, in the order taken.
  int64_t busy = 0;            ///< Eligible but not available.
  int64_t wrong_tier = 0;
  int64_t too_expensive = 0;
  int64_t low_reputation = 0;
  int64_t avoided = 0;  ///< Would fit but for slot_bid::avoided.
  size_t explored = 0;  ///< How many of the first chosen went on a claim (slot_bid::explore).
};

/// What the market knows of a node's speed: the throughput it claims (calibrated, in
/// fashion-mlp samples per second) and, once it has answered assignments of the job's
/// workload, the rate the core measured (samples of the workload per second of the time its
/// node session saw the work take: from the last parameter chunk served, or the assignment
/// sent with its parameters inline, to the answer; never a figure the node reports).
struct speed_evidence {
  double claimed = 0.0;
  std::optional<double> measured;
};

/// The throughputs the market prices nodes by, never a claim alone. Measured rates are in
/// the workload's units; the (lower) median over measured nodes of claimed / measured
/// converts them to calibration units (an honest majority, or half, calibrates it), once at
/// least two nodes are measured: one node's ratio is its own, and would price it at its
/// claim. A measured node is priced by min(claimed, measured x that factor); a node not
/// measured yet by its claim, but never above the fastest measured node. Until two are
/// measured, every node is priced by its claim but never above the (lower) median claim.
/// Non-finite or negative figures count as 0 (a measured one: nothing done).
std::vector<double> priced_throughputs(std::span<const speed_evidence> nodes);

/// Why a bid would not take a slot even when it is free: its tier is not the policy's, its
/// price is over max_price, its node's score is below min_reputation (the core tier's
/// never is), or the bid avoids its node; `fits` when none of these.
enum class bid_misfit : uint8_t { fits, wrong_tier, too_expensive, low_reputation, avoided };
bid_misfit misfit_of(const slot_offer& o, const slot_bid& bid) noexcept;

/// Whether the bid would take the slot when it is free.
inline bool fits_bid(const slot_offer& o, const slot_bid& bid) noexcept {
  return misfit_of(o, bid) == bid_misfit::fits;
}

/// Cost per unit of work: price over throughput (a slot without a throughput costs most).
double unit_cost(const slot_offer& o) noexcept;

/// Up to `wanted` slots for `bid`; O(n log n). Among equal offers those of the least served
/// node go first, then index order starting at `rotate` (mod n).
match_result match_slots(std::span<const slot_offer> offers, const slot_bid& bid, size_t wanted,
                         size_t rotate = 0);

}  // namespace gflex
