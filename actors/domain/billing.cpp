#include "billing.hpp"

#include <algorithm>
#include <cmath>
#include <map>

namespace gflex {

payment payment_for(const billed_result& r, double deadline_s, double fee_share) {
  payment p;
  if (!std::isfinite(r.compute_s) || !std::isfinite(r.wall_s)) return p;
  const double measured = std::min(r.compute_s, r.wall_s);
  if (measured <= 0.0) return p;
  p.paid_s = std::min(measured, deadline_s);
  if (r.price <= 0) return p;
  p.cost = static_cast<int64_t>(static_cast<double>(r.price) * p.paid_s / 3600.0);
  p.fee = static_cast<int64_t>(static_cast<double>(p.cost) * fee_share);
  return p;
}

settlement settle_round(const std::string& job_id, int64_t index, int64_t hold,
                        const std::string& account, const std::string& escrow,
                        const std::vector<billed_result>& results, double deadline_s,
                        double fee_share) {
  settlement out;
  out.hold = hold;
  std::map<std::string, int64_t> to_nodes;
  int64_t fees = 0;
  for (const auto& r : results) {
    const auto p = payment_for(r, deadline_s, fee_share);
    to_nodes["node/" + r.node_name] += p.cost - p.fee;
    fees += p.fee;
    out.paid += p.cost;
    out.hours += p.paid_s / 3600.0;
  }
  if (out.paid > hold) {
    to_nodes.clear();
    fees = 0;
    out.paid = 0;
    out.hours = 0.0;
  }
  if (hold > 0) out.postings.push_back({escrow, -hold});
  for (const auto& [node, amount] : to_nodes)
    if (amount > 0) out.postings.push_back({node, amount});
  if (fees > 0) out.postings.push_back({ledger_book::platform, fees});
  if (hold - out.paid > 0) out.postings.push_back({account, hold - out.paid});
  out.memo = job_id + " round " + std::to_string(index + 1) + ": " +
             std::to_string(results.size()) + " assignment(s) paid";
  return out;
}

}  // namespace gflex
