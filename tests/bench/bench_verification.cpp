/// @file
/// gflex_bench_verification: what adaptive verification costs and what it catches, for a
/// population of community nodes of which a fraction cheat on a fraction of their results.
///
/// It drives the core's own reputation code (actors/src/reputation.hpp: the beta score, the
/// streak, the sampling probability) round by round; what it models is only which results
/// are bad and whether a check sees them:
/// - "visible" cheats (sign flips, noise, laziness, large scaling) are refused by the
///   immediate checks on every result, at no compute cost (robust_aggregation.hpp; the unit
///   tests and tests/integration/trust.sh show they are);
/// - "subtle" cheats (scaling within the norm bound, stale updates) pass the immediate checks
///   and are caught only when the result is re-computed, which costs one assignment.
/// Honest results always match their re-computation here; that they do on real backends
/// (within the tolerance) is measured by tests/integration/trust.sh.
///
/// Usage: gflex_bench_verification [nodes=1000] [rounds=300] [cheaters=0.1] [rate=0.05]
/// Prints a Markdown table, one row per (cheat kind, results per node per round, floor).

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "gflex/runtime/rng.hpp"
#include "reputation.hpp"

using namespace gflex;

namespace {

struct scenario {
  bool subtle = true;
  int results_per_round = 1;
  double floor = 0.05;
};

struct outcome {
  double caught_by_30 = 0.0;      // of all cheaters
  double caught_of_active = 0.0;  // of cheaters that cheated at least once by round 30
  double caught_by_end = 0.0;
  double overhead_first_30 = 0.0;  // re-computations / accepted results, rounds 1-30
  double overhead_steady = 0.0;    // the same over the last third of the rounds
  int honest_flagged = 0;
  double bad_applied_per_cheater = 0.0;  // bad results that got through, per cheater
};

outcome simulate(const scenario& sc, int nodes, int rounds, double cheater_share, double rate,
                 uint64_t seed) {
  reputation_policy policy;
  policy.floor = sc.floor;
  rng draw(seed);
  const int cheaters = static_cast<int>(cheater_share * nodes + 0.5);
  std::vector<reputation> rep(static_cast<size_t>(nodes));
  std::vector<int> first_cheat(static_cast<size_t>(nodes), -1),
      caught_at(static_cast<size_t>(nodes), -1);
  long long checks_30 = 0, accepted_30 = 0, checks_steady = 0, accepted_steady = 0, bad_applied = 0;
  const int steady_from = rounds - rounds / 3;
  for (int round = 0; round < rounds; ++round) {
    for (int i = 0; i < nodes; ++i) {
      auto& r = rep[static_cast<size_t>(i)];
      if (r.flagged) continue;  // barred: no more work
      const bool cheater = i < cheaters;
      for (int k = 0; k < sc.results_per_round && !r.flagged; ++k) {
        const bool bad = cheater && draw.uniform() < rate;
        if (bad && first_cheat[static_cast<size_t>(i)] < 0)
          first_cheat[static_cast<size_t>(i)] = round;
        if (bad && !sc.subtle) {  // the immediate checks refuse it
          r.on_rejected(policy, "immediate check");
          caught_at[static_cast<size_t>(i)] = round;
          break;
        }
        const double p = r.verify_probability(policy);
        const bool sampled = p >= 1.0 || draw.uniform() < p;
        if (sampled && round < 30) checks_30 += 1;
        if (sampled && round >= steady_from) checks_steady += 1;
        if (sampled && bad) {
          r.on_rejected(policy, "re-computation differs");
          caught_at[static_cast<size_t>(i)] = round;
          break;
        }
        if (bad) bad_applied += 1;
        r.on_validated(policy, sampled, 1.0);
        if (round < 30) accepted_30 += 1;
        if (round >= steady_from) accepted_steady += 1;
      }
    }
  }
  outcome o;
  int by_30 = 0, by_end = 0, active = 0, active_caught = 0;
  for (int i = 0; i < nodes; ++i) {
    const bool cheater = i < cheaters;
    const int at = caught_at[static_cast<size_t>(i)];
    if (!cheater) {
      o.honest_flagged += rep[static_cast<size_t>(i)].flagged ? 1 : 0;
      continue;
    }
    by_30 += (at >= 0 && at < 30) ? 1 : 0;
    by_end += at >= 0 ? 1 : 0;
    const int first = first_cheat[static_cast<size_t>(i)];
    if (first >= 0 && first < 30) {
      active += 1;
      active_caught += (at >= 0 && at < 30) ? 1 : 0;
    }
  }
  o.caught_by_30 = cheaters ? static_cast<double>(by_30) / cheaters : 0.0;
  o.caught_by_end = cheaters ? static_cast<double>(by_end) / cheaters : 0.0;
  o.caught_of_active = active ? static_cast<double>(active_caught) / active : 0.0;
  o.overhead_first_30 = accepted_30 ? static_cast<double>(checks_30) / accepted_30 : 0.0;
  o.overhead_steady = accepted_steady ? static_cast<double>(checks_steady) / accepted_steady : 0.0;
  o.bad_applied_per_cheater = cheaters ? static_cast<double>(bad_applied) / cheaters : 0.0;
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const int nodes = argc > 1 ? std::atoi(argv[1]) : 1000;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 300;
  const double cheaters = argc > 3 ? std::atof(argv[3]) : 0.1;
  const double rate = argc > 4 ? std::atof(argv[4]) : 0.05;
  if (nodes < 10 || rounds < 60 || !(cheaters > 0 && cheaters < 1) || !(rate > 0 && rate <= 1)) {
    std::fprintf(stderr, "usage: %s [nodes>=10] [rounds>=60] [cheaters in (0,1)] [rate in (0,1]]\n",
                 argv[0]);
    return 2;
  }
  const uint64_t seed = 20261125;
  std::printf(
      "%d nodes, %.0f%% cheaters misbehaving on %.0f%% of their results, %d rounds, "
      "seed %llu; trust_after %lld, decay %.2f\n\n",
      nodes, cheaters * 100, rate * 100, rounds, static_cast<unsigned long long>(seed),
      static_cast<long long>(reputation_policy{}.trust_after), reputation_policy{}.decay);
  std::printf(
      "| cheats | results/node/round | floor | caught by round 30 | of those that "
      "cheated by 30 | caught by round %d | bad results applied per cheater | "
      "verification overhead, rounds 1-30 | at steady state | honest flagged |\n",
      rounds);
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  for (bool subtle : {false, true})
    for (int per_round : {1, 8})
      for (double floor : {0.02, 0.05, 0.1}) {
        if (!subtle && floor != 0.05) continue;  // the floor does not matter to them
        auto o = simulate({subtle, per_round, floor}, nodes, rounds, cheaters, rate, seed);
        std::printf("| %s | %d | %.2f | %.1f%% | %.1f%% | %.1f%% | %.2f | %.1f%% | %.1f%% | %d |\n",
                    subtle ? "subtle (re-computation only)" : "visible (immediate checks)",
                    per_round, floor, 100 * o.caught_by_30, 100 * o.caught_of_active,
                    100 * o.caught_by_end, o.bad_applied_per_cheater, 100 * o.overhead_first_30,
                    100 * o.overhead_steady, o.honest_flagged);
      }
  return 0;
}
