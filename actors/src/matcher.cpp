#include "matcher.hpp"

#include <algorithm>
#include <limits>

#include "reputation.hpp"

namespace gflex {

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
    bool tier_ok =
        bid.policy == trust_tier::hybrid || (bid.policy == trust_tier::core) == (o.tier == core);
    if (!tier_ok) {
      out.wrong_tier += 1;
    } else if (bid.max_price >= 0 && o.price > bid.max_price) {
      out.too_expensive += 1;
    } else if (o.reputation < bid.min_reputation && o.tier != core) {
      out.low_reputation += 1;  // the core tier is the platform's own: always reputable
    } else if (!o.available) {
      out.busy += 1;
    } else {
      (o.tier == core ? core_pool : community_pool).push_back(i);
    }
  }
  const size_t n = std::max<size_t>(offers.size(), 1);
  auto cheaper = [&](size_t a, size_t b) {
    double ca = unit_cost(offers[a]), cb = unit_cost(offers[b]);
    return ca != cb ? ca < cb : (a + n - rotate % n) % n < (b + n - rotate % n) % n;
  };
  for (auto* pool : {&community_pool, &core_pool}) {
    size_t take = std::min(pool->size(), wanted - out.chosen.size());
    std::partial_sort(pool->begin(), pool->begin() + static_cast<std::ptrdiff_t>(take), pool->end(),
                      cheaper);
    out.chosen.insert(out.chosen.end(), pool->begin(),
                      pool->begin() + static_cast<std::ptrdiff_t>(take));
  }
  return out;
}

}  // namespace gflex
