#include "matcher.hpp"

#include <cmath>

#include <algorithm>
#include <limits>
#include <unordered_map>

#include "reputation.hpp"

namespace gflex {

std::vector<double> priced_throughputs(std::span<const speed_evidence> nodes) {
  auto sane = [](double x) { return std::isfinite(x) && x > 0.0 ? x : 0.0; };
  std::vector<double> factors, claims;
  for (const auto& n : nodes) {
    if (sane(n.claimed) > 0.0) claims.push_back(sane(n.claimed));
    if (n.measured && sane(*n.measured) > 0.0 && sane(n.claimed) > 0.0)
      factors.push_back(n.claimed / *n.measured);
  }
  // Lower medians: of two, the upper one was the liar's own, and it kept its claim whole.
  auto lower_median = [](std::vector<double> v) {
    const auto middle = v.begin() + static_cast<std::ptrdiff_t>((v.size() - 1) / 2);
    std::nth_element(v.begin(), middle, v.end());
    return *middle;
  };
  std::vector<double> out(nodes.size(), 0.0);
  if (factors.size() < 2) {
    // Too few measured to calibrate (every user model is a workload of its own at first):
    // claims, but none above the middle one, so that one node's 9e11 does not win every new
    // job's work. One measured node is no calibration: the factor would be its own ratio,
    // and priced it at its claim, above every node not measured yet, for every round.
    const double most = claims.empty() ? 0.0 : lower_median(claims);
    for (size_t i = 0; i < nodes.size(); ++i) {
      const bool did_nothing = nodes[i].measured && !(sane(*nodes[i].measured) > 0.0);
      out[i] = did_nothing ? 0.0 : std::min(sane(nodes[i].claimed), most);
    }
    return out;
  }
  const double factor = lower_median(factors);
  double fastest = 0.0;
  for (size_t i = 0; i < nodes.size(); ++i)
    if (nodes[i].measured) {
      out[i] = std::min(sane(nodes[i].claimed), sane(*nodes[i].measured) * factor);
      fastest = std::max(fastest, out[i]);
    }
  for (size_t i = 0; i < nodes.size(); ++i)
    if (!nodes[i].measured) out[i] = std::min(sane(nodes[i].claimed), fastest);
  return out;
}

bid_misfit misfit_of(const slot_offer& o, const slot_bid& bid) noexcept {
  const auto core = static_cast<uint8_t>(node_tier::core);
  if (bid.policy != trust_tier::hybrid && (bid.policy == trust_tier::core) != (o.tier == core))
    return bid_misfit::wrong_tier;
  if (bid.max_price >= 0 && o.price > bid.max_price) return bid_misfit::too_expensive;
  // The core tier is the platform's own: always reputable.
  if (o.reputation < bid.min_reputation && o.tier != core) return bid_misfit::low_reputation;
  if (std::find(bid.avoided.begin(), bid.avoided.end(), o.node_id) != bid.avoided.end())
    return bid_misfit::avoided;
  return bid_misfit::fits;
}

double unit_cost(const slot_offer& o) noexcept {
  if (!(o.throughput > 0.0)) return std::numeric_limits<double>::infinity();
  return static_cast<double>(o.price) / o.throughput;
}

match_result match_slots(std::span<const slot_offer> offers, const slot_bid& bid, size_t wanted,
                         size_t rotate) {
  match_result out;
  const auto core = static_cast<uint8_t>(node_tier::core);
  std::vector<size_t> community_pool, core_pool;
  for (size_t i = 0; i < offers.size(); ++i) {
    const auto& o = offers[i];
    switch (misfit_of(o, bid)) {
      case bid_misfit::wrong_tier:
        out.wrong_tier += 1;
        break;
      case bid_misfit::too_expensive:
        out.too_expensive += 1;
        break;
      case bid_misfit::low_reputation:
        out.low_reputation += 1;
        break;
      case bid_misfit::avoided:
        out.avoided += 1;
        break;
      case bid_misfit::fits:
        if (!o.available)
          out.busy += 1;
        else
          (o.tier == core ? core_pool : community_pool).push_back(i);
        break;
    }
  }
  const size_t n = std::max<size_t>(offers.size(), 1);
  auto rotated = [&](size_t i) { return (i + n - rotate % n) % n; };
  auto fairer = [&](size_t a, size_t b) {
    if (offers[a].served != offers[b].served) return offers[a].served < offers[b].served;
    return rotated(a) < rotated(b);
  };
  // Slots already chosen in this match, per node: a band's slots spread over its nodes.
  std::unordered_map<std::string_view, size_t> chosen_of;
  // Takes up to `count` of `pool` into the result: repeatedly the offers within the band of
  // the cheapest left, the least served of them first, one slot of each node before a second
  // of any. Every slot of a node shares its `served`, so by that alone a node of many slots
  // took a whole round's band: its results then made the median the round's screening judges
  // every other result by, and the round's reported loss.
  std::vector<size_t> turn(offers.size(), 0);
  // Within a band of equal cost, how much a slot's node does per second decides no more: but
  // offers of price 0 all cost 0 per unit of work, so by cost alone a slow node (or one with
  // many slow workers) took as much of a free job's work as one ten times as fast, and every
  // round waited for it. Free offers are banded by throughput instead: within the band of
  // the fastest free one left.
  auto cheaper = [&](size_t a, size_t b) {
    const double ca = unit_cost(offers[a]), cb = unit_cost(offers[b]);
    if (ca != cb) return ca < cb;
    return offers[a].throughput > offers[b].throughput;
  };
  auto in_band_of = [&](size_t first, size_t i) {
    const double cost = unit_cost(offers[first]);
    if (cost > 0.0) return unit_cost(offers[i]) <= cost * (1.0 + bid.equal_cost_band);
    return unit_cost(offers[i]) == 0.0 &&
           offers[i].throughput * (1.0 + bid.equal_cost_band) >= offers[first].throughput;
  };
  auto take = [&](std::vector<size_t>& pool, size_t count) {
    std::sort(pool.begin(), pool.end(), cheaper);
    chosen_of.clear();  // those explored, or taken as newcomers, count too
    for (size_t i : out.chosen) chosen_of[offers[i].node_id] += 1;
    size_t begin = 0;
    while (count > 0 && begin < pool.size()) {
      size_t end = begin;
      while (end < pool.size() && in_band_of(pool[begin], pool[end])) ++end;
      const auto first = pool.begin() + static_cast<std::ptrdiff_t>(begin);
      const auto last = pool.begin() + static_cast<std::ptrdiff_t>(end);
      std::sort(first, last, fairer);
      // A slot's turn: how many of its node's slots come before it (chosen, or fairer in the
      // band); fairer order within a turn.
      std::unordered_map<std::string_view, size_t> seen;
      for (auto it = first; it != last; ++it) {
        const auto node = offers[*it].node_id;
        turn[*it] = chosen_of[node] + seen[node]++;
      }
      std::stable_sort(first, last, [&](size_t a, size_t b) { return turn[a] < turn[b]; });
      const size_t k = std::min(count, end - begin);
      for (size_t i = begin; i < begin + k; ++i) chosen_of[offers[pool[i]].node_id] += 1;
      out.chosen.insert(out.chosen.end(), pool.begin() + static_cast<std::ptrdiff_t>(begin),
                        pool.begin() + static_cast<std::ptrdiff_t>(begin + k));
      count -= k;
      begin += k;  // (a band only partly taken leaves count at 0)
    }
    pool.erase(pool.begin(), pool.begin() + static_cast<std::ptrdiff_t>(begin));
  };
  // Exploration: a node not measured on the workload is priced below its claim (at most the
  // fastest measured node, priced_throughputs), and one asking more per hour than the measured
  // nodes then cost more per unit of work than they did, got work only when every other slot
  // was busy, and so was never measured: a GPU doing 30 times a CPU node's work at 3 times its
  // price sat idle while jobs paid ten times what they needed. The bid's exploratory slots go
  // to nodes that, if their claims hold, are the cheapest; the market bounds how many.
  if (bid.explore > 0 && wanted > 0) {
    auto& pool = community_pool.empty() ? core_pool : community_pool;
    double cheapest = std::numeric_limits<double>::infinity();
    for (size_t i : pool) cheapest = std::min(cheapest, unit_cost(offers[i]));
    auto claimed_cost = [&](size_t i) {
      return static_cast<double>(offers[i].price) / offers[i].claimed;
    };
    auto promising = std::stable_partition(pool.begin(), pool.end(), [&](size_t i) {
      return offers[i].claimed > offers[i].throughput && claimed_cost(i) < cheapest;
    });
    std::sort(pool.begin(), promising, [&](size_t a, size_t b) {
      if (claimed_cost(a) != claimed_cost(b)) return claimed_cost(a) < claimed_cost(b);
      return fairer(a, b);
    });
    const auto k = static_cast<std::ptrdiff_t>(
        std::min({bid.explore, wanted, static_cast<size_t>(promising - pool.begin())}));
    out.chosen.assign(pool.begin(), pool.begin() + k);
    out.explored = out.chosen.size();
    pool.erase(pool.begin(), pool.begin() + k);
  }
  // Newcomers first, for the reserved share: they earn and get tested.
  if (bid.reserve_new > 0) {
    std::vector<size_t> newcomers, rest;
    for (size_t i : community_pool)
      (offers[i].served < bid.newcomer_served ? newcomers : rest).push_back(i);
    take(newcomers, std::min(bid.reserve_new, wanted - out.chosen.size()));
    rest.insert(rest.end(), newcomers.begin(), newcomers.end());
    community_pool = std::move(rest);
  }
  for (auto* pool : {&community_pool, &core_pool}) take(*pool, wanted - out.chosen.size());
  return out;
}

}  // namespace gflex
