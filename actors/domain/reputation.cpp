#include "reputation.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "json_fields.hpp"

namespace gflex {

double reputation_policy::highest_score() const noexcept {
  if (decay >= 1.0) return 1.0;
  const double good = 1.0 / (1.0 - decay);
  return (good + 1.0) / (good + 2.0);
}

double reputation::score() const noexcept {
  return (good + 1.0) / (good + bad + 2.0);
}

double reputation::verify_probability(const reputation_policy& policy) const noexcept {
  if (tier == node_tier::core) return 0.0;
  if (streak < policy.trust_after) return 1.0;
  return std::clamp(1.0 / static_cast<double>(std::max<int64_t>(streak, 1)), policy.floor, 1.0);
}

void reputation::on_validated(const reputation_policy& policy, result_check check, double compute_s,
                              int64_t paid) {
  // A result used unverified is no evidence either way: it raises neither the streak nor the
  // score (which min_reputation reads), or a node could earn its way past that bound with
  // work nobody checked.
  if (check != result_check::unverified) {
    good = good * policy.decay + 1.0;
    bad *= policy.decay;
    streak += 1;
  }
  validated += 1;
  if (check == result_check::verified) verified += 1;
  if (std::isfinite(compute_s) && compute_s > 0.0) credited_s += compute_s;
  if (paid > 0) earned += paid;
}

void reputation::on_rejected(const reputation_policy& policy, std::string reason) {
  good = 0.0;
  bad = bad * policy.decay + 1.0;
  streak = 0;
  rejected += 1;
  flagged = true;
  last_rejection = std::move(reason);
}

node_status status_of(const std::string& name, const reputation& r) {
  node_status s;
  s.name = name;
  s.tier = r.tier;
  s.score = r.score();
  s.streak = r.streak;
  s.validated = r.validated;
  s.verified = r.verified;
  s.rejected = r.rejected;
  s.flagged = r.flagged;
  s.credited_s = r.credited_s;
  s.earned = r.earned;
  s.last_rejection = r.last_rejection;
  return s;
}

std::string encode_reputation(const reputation& r) {
  nlohmann::json j = {{"name", r.name},
                      {"tier", to_string(r.tier)},
                      {"good", r.good},
                      {"bad", r.bad},
                      {"streak", r.streak},
                      {"validated", r.validated},
                      {"verified", r.verified},
                      {"rejected", r.rejected},
                      {"flagged", r.flagged},
                      {"credited_s", r.credited_s},
                      {"earned", r.earned},
                      {"last_rejection", r.last_rejection},
                      {"public_key", r.public_key}};
  return j.dump();
}

expected<reputation> decode_reputation(std::string_view text) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return error(errc::malformed_message, "reputation record is not a JSON object");
  try {
    reputation r;
    r.name = j.at("name").get<std::string>();
    auto tier = parse_node_tier(j.at("tier").get<std::string>());
    if (!tier)
      return error(errc::malformed_message, "reputation record: " + tier.error().message());
    r.tier = *tier;
    r.good = j.at("good").get<double>();
    r.bad = j.at("bad").get<double>();
    r.streak = static_cast<int64_t>(integer_at<uint64_t>(j, "streak"));
    r.validated = integer_at<uint64_t>(j, "validated");
    r.verified = integer_at<uint64_t>(j, "verified");
    r.rejected = integer_at<uint64_t>(j, "rejected");
    r.flagged = j.at("flagged").get<bool>();
    r.credited_s = j.at("credited_s").get<double>();
    r.last_rejection = j.at("last_rejection").get<std::string>();
    if (j.contains("public_key")) r.public_key = j.at("public_key").get<std::string>();
    // Records written before earnings were kept have none.
    if (j.contains("earned")) r.earned = static_cast<int64_t>(integer_at<uint64_t>(j, "earned"));
    if (r.name.empty() || !(r.good >= 0.0) || !(r.bad >= 0.0) || r.streak < 0 ||
        !std::isfinite(r.good) || !std::isfinite(r.bad) || !(r.credited_s >= 0.0))
      return error(errc::malformed_message, "reputation record has out-of-range values");
    return r;
  } catch (const std::exception& e) {  // nlohmann's errors and integer_at's
    return error(errc::malformed_message, std::string("reputation record: ") + e.what());
  }
}

}  // namespace gflex
