#include "status_json.hpp"

#include <cmath>

#include "gflex/runtime/credits.hpp"

namespace gflex::app {

nlohmann::json to_json(const job_status& s) {
  nlohmann::json j = {{"job_id", s.job_id},
                      {"name", s.name},
                      {"workload", s.workload},
                      {"owner", s.owner},
                      {"state", to_string(s.state)},
                      {"detail", s.detail},
                      {"round", s.round},
                      {"rounds", s.rounds},
                      {"test_accuracy", s.test_accuracy},
                      {"tested_round", tested_round(s)},
                      {"tested_samples", s.tested_samples},
                      {"test_samples", s.test_samples},
                      {"train_loss", s.train_loss},
                      {"test_loss", s.test_loss},
                      {"test_bits", s.test_loss / std::log(2.0)},
                      {"nodes", s.nodes},
                      {"bytes_sent", s.bytes_sent},
                      {"bytes_received", s.bytes_received},
                      {"wall_s", s.elapsed_s},
                      {"eta_s", s.eta_s},
                      {"late_results", s.late_results},
                      {"rejected_results", s.rejected_results},
                      {"verified_results", s.verified_results},
                      {"rollbacks", s.rollbacks},
                      {"screened_results", s.screened_results},
                      {"unverified_results", s.unverified_results},
                      {"compute_s", s.compute_s},
                      {"recompute_s", s.recompute_s},
                      {"account", s.account},
                      {"budget", format_credits(s.budget)},
                      {"credits_spent", format_credits(s.credits_spent)},
                      {"credits_held", format_credits(s.credits_held)},
                      {"device_hours", s.device_hours},
                      {"cloud_cost", format_credits(s.cloud_cost)},
                      {"cost_ratio", s.cloud_cost > 0 ? static_cast<double>(s.credits_spent) /
                                                            static_cast<double>(s.cloud_cost)
                                                      : 0.0}};
  // Not evaluated yet (queued, or ended before its first test): no figures, not zeros, which
  // read as a model that learnt nothing, or as 0 bits per byte (perfect), as `gflex train`
  // says with `evaluated: false`.
  const bool evaluated = tested_round(s) > 0;
  j["evaluated"] = evaluated;
  if (!evaluated)
    for (const char* figure : {"test_accuracy", "test_loss", "test_bits"}) j[figure] = nullptr;
  if (!s.history.empty()) {
    auto points = nlohmann::json::array();
    for (const auto& p : s.history)
      points.push_back({{"round", p.round},
                        {"train_loss", p.train_loss},
                        {"test_loss", p.test_loss},
                        {"test_accuracy", p.test_accuracy},
                        {"evaluated", p.evaluated},
                        {"wall_s", p.elapsed_s}});
    j["history"] = std::move(points);
  }
  return j;
}

nlohmann::json to_json(const std::vector<node_status>& nodes) {
  // Each node's share of the work done: its validated results over all nodes' listed.
  uint64_t total = 0;
  for (const auto& n : nodes) total += n.validated;
  auto list = nlohmann::json::array();
  for (const auto& n : nodes) {
    auto gpus = nlohmann::json::array();
    for (const auto& g : n.gpus)
      gpus.push_back({{"ordinal", g.ordinal},
                      {"name", g.name},
                      {"cc", g.compute_capability},
                      {"memory_bytes", g.memory_bytes},
                      {"memory_limit", g.memory_limit},
                      {"sm_count", g.sm_count},
                      {"gemm_tflops", g.gemm_tflops},
                      {"h2d_gbps", g.h2d_gbps}});
    list.push_back(
        {{"node_id", n.node_id},
         {"name", n.name},
         {"device", n.device},
         {"gpus", gpus},
         {"workers", n.workers},
         {"last_seen_s", n.last_seen_s},
         {"tier", to_string(n.tier)},
         {"score", n.score},
         {"streak", n.streak},
         {"validated", n.validated},
         {"verified", n.verified},
         {"rejected", n.rejected},
         {"flagged", n.flagged},
         {"credited_s", n.credited_s},
         {"earned", format_credits(n.earned)},
         {"work_share",
          total > 0 ? static_cast<double>(n.validated) / static_cast<double>(total) : 0.0},
         {"dropped_messages", n.dropped},
         {"last_rejection", n.last_rejection}});
  }
  return list;
}

nlohmann::json to_json(const account_info& a) {
  return {{"id", a.id},
          {"balance", format_credits(a.balance)},
          {"balance_micro", a.balance},
          {"recent", a.recent}};
}

nlohmann::json to_json(const ledger_report& r) {
  nlohmann::json j{{"ok", r.ok},
                   {"problem", r.problem},
                   {"entries", r.entries},
                   {"accounts", r.accounts},
                   {"issued", format_credits(r.issued)},
                   {"in_escrow", format_credits(r.in_escrow)},
                   {"stale_escrow", r.stale_escrow},
                   {"settled_rounds", nlohmann::json::object()}};
  for (size_t i = 0; i < r.settled_jobs.size() && i < r.settled_rounds.size(); ++i)
    j["settled_rounds"][r.settled_jobs[i]] = r.settled_rounds[i];
  return j;
}

std::string json_text(const nlohmann::json& j, int indent) {
  return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace gflex::app
