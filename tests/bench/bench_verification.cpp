/// @file
/// gflex_bench_verification: what adaptive verification costs and what it catches, for a
/// population of community nodes of which a fraction cheat on a fraction of their results.
///
/// Two parts, in one run:
/// 1. Real updates. A fashion-mlp job is trained round by round (8 honest nodes, 30 inner
///    AdamW steps each, the job's outer Nesterov step), and in every round a ninth node's
///    honest update is altered by each --misbehave mode (the node's own code,
///    misbehaviour.hpp); its update of the round before is taken to be honest, as it is for a
///    node that misbehaves on a few of its results. The job's checks (robust_aggregation.hpp) are
///    run on the round with that result: the share each mode has refused outright (an outlier: no
///    compute spent), flagged for re-computation (it stands out), or neither; and how often an
///    honest ninth result stands out (the re-computations honest nodes cost beyond sampling).
/// 2. A population. Those measured rates drive the core's reputation code (reputation.hpp:
///    score, streak, adaptive sampling) over a population of community nodes of which a share
///    cheat on a share of their results: how many cheaters are caught by round 30 and later,
///    how many bad results get applied first, and what verification costs (re-computed
///    results over accepted ones) early and at steady state.
/// Honest results always match their re-computation in part 2; that they do on real
/// processes within the tolerance is measured by tests/integration/trust.sh.
///
/// Usage: gflex_bench_verification [nodes=1000] [rounds=300] [cheaters=0.1] [rate=0.05]

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <algorithm>
#include <cstring>
#include <map>
#include <numeric>

#include "gflex/kernels/backend.hpp"
#include "gflex/kernels/workload.hpp"
#include "gflex/runtime/rng.hpp"
#include "misbehaviour.hpp"
#include "reputation.hpp"
#include "robust_aggregation.hpp"

using namespace gflex;

namespace {

/// How the checks treat one kind of result, measured on real updates.
struct check_rates {
  std::string mode;
  double outlier = 0.0;  // refused by the immediate checks
  double suspect = 0.0;  // passed them but stands out: re-computed whatever the reputation
  int samples = 0;
};

/// Trains fashion-mlp for `rounds` rounds and measures, per misbehaviour mode, how the job's
/// checks treat the altered result of a ninth node. The "honest" row is the false alarm rate.
std::vector<check_rates> measure_checks(int rounds, uint64_t seed) {
  auto w = kernels::find_workload("fashion-mlp");
  auto data = w ? (*w)->load_data() : expected<dataset_splits>(w.error());
  if (!data) {
    std::fprintf(stderr, "cannot load fashion-mlp: %s\n", data.error().message().c_str());
    std::exit(1);
  }
  const auto& train = data->train;
  const int64_t dim = train.feature_dim(), steps = 30, batch = 64;
  auto backend = kernels::make_cpu_backend(1);
  auto m = (*w)->instantiate(*backend, batch);
  if (!m) std::exit(1);
  auto& model = **m;
  const size_t n = static_cast<size_t>((*w)->parameter_count());
  std::vector<float> theta(n), momentum(n, 0.0f), end(n);
  (*w)->init_parameters(seed, theta);
  // One inner run of `run_steps` steps from theta on node `node`'s batches of this round.
  auto inner = [&](int node, int round, int64_t run_steps) {
    model.load_parameters(theta);
    model.reset_optimizer();
    model.optimizer() = kernels::adamw_config{};
    model.optimizer().lr = 1e-3f;
    rng r(seed * 1000003 + static_cast<uint64_t>(round) * 131 + static_cast<uint64_t>(node));
    std::vector<float> bx(static_cast<size_t>(batch * dim));
    std::vector<int32_t> by(static_cast<size_t>(batch));
    const int64_t shard = train.size() / 9, base = shard * node;
    for (int64_t s = 0; s < run_steps; ++s) {
      for (int64_t b = 0; b < batch; ++b) {
        int64_t row = base + static_cast<int64_t>(r.below(static_cast<uint64_t>(shard)));
        std::memcpy(&bx[static_cast<size_t>(b * dim)], train.features.data<float>() + row * dim,
                    sizeof(float) * static_cast<size_t>(dim));
        by[static_cast<size_t>(b)] = train.labels.data<int32_t>()[row];
      }
      model.train_step(bx.data(), by.data(), batch);
    }
    model.store_parameters(end);
    std::vector<float> delta(n);
    for (size_t i = 0; i < n; ++i) delta[i] = theta[i] - end[i];
    return delta;
  };
  const std::vector<std::string> modes{"honest",    "signflip",  "random", "lazy",
                                       "scale:1.5", "scale:1.2", "stale"};
  std::map<std::string, misbehaving_worker> cheats;
  for (const auto& mode : modes)
    if (mode != "honest")
      cheats.emplace(mode, misbehaving_worker(parse_misbehaviour(mode).value(), seed));
  std::vector<check_rates> rates;
  for (const auto& mode : modes) rates.push_back({mode});
  // Per mode, the sketch of what the ninth node sent the round before, for the job's replay
  // check. A cheater misbehaves on a few of its results, so what it sent before is taken to
  // be its honest update of that round.
  std::map<std::string, std::vector<float>> last_sent;
  double honest_max_repeat = 0.0;
  for (int round = 0; round < rounds; ++round) {
    std::vector<std::vector<float>> honest;
    for (int node = 0; node < 8; ++node) honest.push_back(inner(node, round, steps));
    auto own = inner(8, round, steps);
    for (auto& rate : rates) {
      std::vector<float> sent = own;
      if (rate.mode != "honest") {
        auto& cheat = cheats.at(rate.mode);
        cheat.decide();
        if (cheat.steps(steps) != steps) sent = inner(8, round, cheat.steps(steps));
        cheat.alter("job", sent);
      }
      // The bad result stands in the middle of the round, as it would.
      auto round_updates = honest;
      round_updates.insert(round_updates.begin() + 4, sent);
      std::vector<std::span<const float>> spans(round_updates.begin(), round_updates.end());
      bool outlier = false, suspect = false;
      for (const auto& o : find_outliers(spans, 4.0, 0.0)) outlier |= o.index == 4;
      if (!outlier)
        for (size_t i : find_suspicious(spans)) suspect |= i == 4;
      auto sketch = update_sketch(sent);
      auto& last = last_sent[rate.mode];
      if (!last.empty()) {
        double repeat = cosine(sketch, last);
        if (rate.mode == "honest") honest_max_repeat = std::max(honest_max_repeat, repeat);
        suspect |= !outlier && repeat > replay_cosine;
      }
      last = update_sketch(own);
      // The stale mode's first result is honest (nothing to replay yet): not counted.
      if (rate.mode == "stale" && round == 0) continue;
      rate.outlier += outlier ? 1 : 0;
      rate.suspect += suspect ? 1 : 0;
      rate.samples += 1;
    }
    // The job's step with the nine honest updates (clipped mean, Nesterov).
    honest.push_back(own);
    std::vector<std::span<const float>> spans(honest.begin(), honest.end());
    std::vector<double> mean;
    robust_mean(spans, 2.0, 0.0, mean);
    for (size_t i = 0; i < n; ++i) {
      double mom = 0.8 * momentum[i] + mean[i];
      momentum[i] = static_cast<float>(mom);
      theta[i] = static_cast<float>(theta[i] - 0.7 * (mean[i] + 0.8 * mom));
    }
  }
  for (auto& rate : rates) {
    rate.outlier /= rate.samples;
    rate.suspect /= rate.samples;
  }
  std::printf(
      "(an honest node's successive updates: sketch cosine at most %.3f; a replay is "
      "taken above %.2f)\n\n",
      honest_max_repeat, replay_cosine);
  return rates;
}

struct outcome {
  double caught_by_30 = 0.0;      // of all cheaters
  double caught_of_active = 0.0;  // of cheaters that cheated at least once by round 30
  double caught_by_end = 0.0;
  double overhead_first_30 = 0.0;  // re-computations / accepted results, rounds 1-30
  double overhead_steady = 0.0;    // the same over the last third of the rounds
  int honest_flagged = 0;
  double bad_applied_per_cheater = 0.0;  // bad results that got through, per cheater
};

outcome simulate(const check_rates& cheat, const check_rates& honest, int per_round, int nodes,
                 int rounds, double cheater_share, double rate, uint64_t seed) {
  reputation_policy policy;
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
      auto& first = first_cheat[static_cast<size_t>(i)];
      const bool cheater = i < cheaters;
      for (int k = 0; k < per_round && !r.flagged; ++k) {  // a flagged node gets no work
        const bool bad = cheater && draw.uniform() < rate;
        if (bad && first < 0) first = round;
        const auto& how = bad ? cheat : honest;
        if (draw.uniform() < how.outlier) {  // refused by the immediate checks
          r.on_rejected(policy, "outlier");
          caught_at[static_cast<size_t>(i)] = round;
          break;
        }
        // Part 1 counts "stands out" only among results that are not outliers.
        const double suspect = how.outlier < 1.0 ? how.suspect / (1.0 - how.outlier) : 0.0;
        const double p = r.verify_probability(policy);
        const bool sampled = p >= 1.0 || draw.uniform() < p || draw.uniform() < suspect;
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
    const int at = caught_at[static_cast<size_t>(i)];
    if (i >= cheaters) {
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
  const int train_rounds = 30;
  std::printf(
      "Part 1: the job's checks on real fashion-mlp updates (%d rounds, 8 honest "
      "results plus one altered, 30 AdamW steps of batch 64 each)\n\n",
      train_rounds);
  auto rates = measure_checks(train_rounds, seed);
  std::printf(
      "| result | refused outright (outlier) | re-computed as standing out | "
      "neither |\n|---|---|---|---|\n");
  for (const auto& r : rates)
    std::printf("| %s | %.1f%% | %.1f%% | %.1f%% |\n", r.mode.c_str(), 100 * r.outlier,
                100 * r.suspect, 100 * (1 - r.outlier - r.suspect));
  const check_rates& honest = rates[0];
  std::printf(
      "\nPart 2: %d community nodes, %.0f%% cheaters misbehaving on %.0f%% of their "
      "results, %d rounds, seed %llu; trust_after %lld, floor %.2f, decay %.2f\n\n",
      nodes, cheaters * 100, rate * 100, rounds, static_cast<unsigned long long>(seed),
      static_cast<long long>(reputation_policy{}.trust_after), reputation_policy{}.floor,
      reputation_policy{}.decay);
  std::printf(
      "| cheat | results/node/round | caught by round 30 | of those that cheated by "
      "then | caught by round %d | bad results applied per cheater | verification "
      "overhead, rounds 1-30 | at steady state | honest flagged |\n",
      rounds);
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  for (size_t m = 1; m < rates.size(); ++m)
    for (int per_round : {1, 8}) {
      auto o = simulate(rates[m], honest, per_round, nodes, rounds, cheaters, rate, seed + m);
      std::printf("| %s | %d | %.1f%% | %.1f%% | %.1f%% | %.2f | %.1f%% | %.1f%% | %d |\n",
                  rates[m].mode.c_str(), per_round, 100 * o.caught_by_30, 100 * o.caught_of_active,
                  100 * o.caught_by_end, o.bad_applied_per_cheater, 100 * o.overhead_first_30,
                  100 * o.overhead_steady, o.honest_flagged);
    }
  return 0;
}
