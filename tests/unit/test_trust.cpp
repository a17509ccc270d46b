#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "gflex/runtime/rng.hpp"
#include "misbehaviour.hpp"
#include "reputation.hpp"
#include "robust_aggregation.hpp"

using namespace gflex;

namespace {

std::vector<float> gaussian(size_t n, uint64_t seed) {
  rng r(seed);
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(r.normal());
  return v;
}

// Updates that share a direction and differ by noise, as honest pseudo-gradients of one
// round do: common * 1 + noise * sigma.
std::vector<std::vector<float>> honest_round(size_t n, size_t dim, double sigma, uint64_t seed) {
  auto common = gaussian(dim, seed);
  std::vector<std::vector<float>> out;
  for (size_t i = 0; i < n; ++i) {
    auto noise = gaussian(dim, seed + 1 + i);
    std::vector<float> u(dim);
    for (size_t k = 0; k < dim; ++k) u[k] = static_cast<float>(common[k] + sigma * noise[k]);
    out.push_back(std::move(u));
  }
  return out;
}

std::vector<std::span<const float>> spans(const std::vector<std::vector<float>>& v) {
  return {v.begin(), v.end()};
}

// A round screened the way a job reads it: `len` coordinates of every update at a time.
std::vector<screened_result> screened_in_blocks(const std::vector<std::vector<float>>& u,
                                                size_t len, round_screen& screen) {
  const size_t dim = u.front().size();
  for (size_t begin = 0; begin < dim; begin += len) {
    std::vector<std::span<const float>> block;
    for (const auto& x : u) block.emplace_back(x.data() + begin, std::min(len, dim - begin));
    screen.add(block);
  }
  return screen.verdicts({});
}

}  // namespace

TEST_SUITE("reputation") {
  TEST_CASE("a new identity is untrusted, then sampled about 1/streak down to the floor") {
    reputation_policy policy;
    reputation r;
    r.name = "n";
    CHECK(r.score() == doctest::Approx(0.5));
    for (int64_t i = 0; i < policy.trust_after; ++i) {
      CHECK(r.verify_probability(policy) == 1.0);
      r.on_validated(policy, result_check::verified, 1.0);
    }
    CHECK(r.streak == policy.trust_after);
    CHECK(r.verify_probability(policy) == doctest::Approx(1.0 / policy.trust_after));
    while (r.streak < 1000) r.on_validated(policy, result_check::cleared, 1.0);
    CHECK(r.verify_probability(policy) == policy.floor);
    CHECK(r.validated == 1000);
    CHECK(r.verified == static_cast<uint64_t>(policy.trust_after));
    CHECK(r.credited_s == doctest::Approx(1000.0));
    CHECK(r.score() > 0.95);  // decay keeps good below 1 / (1 - decay) = 50
    CHECK(r.score() < 1.0);
  }

  TEST_CASE("results used unverified never end a new identity's probation") {
    // With no core-tier worker free and --unverified accept, a new identity's sampled results
    // are used without a re-computation: they prove nothing of it.
    reputation_policy policy;
    reputation r;
    r.name = "newcomer";
    for (int i = 0; i < 3 * policy.trust_after; ++i)
      r.on_validated(policy, result_check::unverified, 1.0);
    CHECK(r.streak == 0);
    CHECK(r.score() == 0.5);  // nor raise the score min_reputation reads
    CHECK(r.verify_probability(policy) == 1.0);
    CHECK(r.validated == static_cast<uint64_t>(3 * policy.trust_after));
    CHECK(r.verified == 0);
    // Its first verified results do.
    for (int64_t i = 0; i < policy.trust_after; ++i)
      r.on_validated(policy, result_check::verified, 1.0);
    CHECK(r.verify_probability(policy) < 1.0);
  }

  TEST_CASE("a caught node loses streak and score, is flagged and checked every time") {
    reputation_policy policy;
    reputation r;
    r.name = "n";
    for (int i = 0; i < 100; ++i) r.on_validated(policy, result_check::cleared, 0.5);
    double credited = r.credited_s;
    r.on_rejected(policy, "signflip");
    CHECK(r.flagged);
    CHECK(r.streak == 0);
    CHECK(r.rejected == 1);
    CHECK(r.score() == doctest::Approx(1.0 / 3.0));
    CHECK(r.verify_probability(policy) == 1.0);
    CHECK(r.credited_s == credited);  // what was credited before stays; nothing is added
    CHECK(r.last_rejection == "signflip");
  }

  TEST_CASE("the core tier is never sampled") {
    reputation r;
    r.tier = node_tier::core;
    CHECK(r.verify_probability(reputation_policy{}) == 0.0);
  }

  TEST_CASE("records round-trip, and malformed ones are refused") {
    reputation r;
    r.name = "node-7";
    r.tier = node_tier::core;
    r.good = 3.5;
    r.bad = 1.25;
    r.streak = 4;
    r.validated = 9;
    r.verified = 2;
    r.rejected = 1;
    r.flagged = true;
    r.credited_s = 12.5;
    r.last_rejection = "why";
    auto back = decode_reputation(encode_reputation(r));
    REQUIRE_MESSAGE(back.has_value(), back.error().message());
    CHECK(back->name == r.name);
    CHECK(back->tier == r.tier);
    CHECK(back->good == r.good);
    CHECK(back->bad == r.bad);
    CHECK(back->streak == r.streak);
    CHECK(back->validated == r.validated);
    CHECK(back->verified == r.verified);
    CHECK(back->rejected == r.rejected);
    CHECK(back->flagged == r.flagged);
    CHECK(back->credited_s == r.credited_s);
    CHECK(back->last_rejection == r.last_rejection);
    for (std::string bad : {std::string("{"), std::string("[]"), std::string("{\"name\":\"x\"}"),
                            std::string(R"({"name":"x","tier":"gold","good":0,"bad":0,"streak":0,
                              "validated":0,"verified":0,"rejected":0,"flagged":false,
                              "credited_s":0,"last_rejection":""})"),
                            std::string(R"({"name":"x","tier":"core","good":-1,"bad":0,"streak":0,
                              "validated":0,"verified":0,"rejected":0,"flagged":false,
                              "credited_s":0,"last_rejection":""})")}) {
      auto d = decode_reputation(bad);
      REQUIRE_FALSE(d.has_value());
      CHECK(d.error().code() == errc::malformed_message);
    }
  }

  TEST_CASE("tiers parse by name only") {
    CHECK(parse_node_tier("core").value() == node_tier::core);
    CHECK(parse_node_tier("community").value() == node_tier::community);
    auto bad = parse_node_tier("gold");
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().message().find("\"gold\"") != std::string::npos);
  }
}

TEST_SUITE("robust_aggregation") {
  TEST_CASE("the median of an even count is finite whenever its middle two are") {
    // A node reporting a loss of 1.7e308 twice made the round's loss infinite: the middle
    // two were summed before they were halved.
    CHECK(median_of({1.7e308, 1.7e308}) == 1.7e308);
    const double max = std::numeric_limits<double>::max();
    CHECK(median_of({max, max, 1.0, max}) == max);
    CHECK(median_of({-max, max}) == 0.0);
    // Halved first, two equal subnormals rounded down to zero.
    const double tiny = std::numeric_limits<double>::denorm_min();
    CHECK(median_of({tiny, tiny}) == tiny);
    CHECK(median_of({1.0, 4.0, 2.0, 3.0}) == 2.5);
    CHECK(median_of({3.0, 1.0, 2.0}) == 2.0);
    CHECK(median_of({}) == 0.0);
  }

  TEST_CASE("relative distance") {
    std::vector<float> a{3.0f, 4.0f}, b{3.0f, 4.0f}, z{0.0f, 0.0f}, flipped{-3.0f, -4.0f};
    CHECK(relative_distance(a, b) == 0.0);
    CHECK(relative_distance(flipped, a) == doctest::Approx(2.0));
    CHECK(relative_distance(z, a) == doctest::Approx(1.0));
    CHECK(std::isinf(relative_distance(a, z)));
    CHECK(relative_distance(z, z) == 0.0);
  }

  // The verdicts of a round, as a map from index to verdict for the atypical ones.
  std::map<size_t, screen_verdict> atypical(const std::vector<std::vector<float>>& round,
                                            screen_bounds bounds = {}) {
    std::map<size_t, screen_verdict> out;
    auto r = screen_round(spans(round), bounds);
    for (size_t i = 0; i < r.size(); ++i)
      if (r[i].verdict != screen_verdict::typical) out[i] = r[i].verdict;
    return out;
  }

  TEST_CASE("honest rounds look typical, early and late in training") {
    // sigma 3: pairwise cosine about 0.1; sigma 12: about 0.007, as late in a fashion-mlp
    // job, where the fixed bound used before (agreement with the sum of the others above 0)
    // flagged every honest node in turn. An honest cosine with the median of the others
    // can be below 0 by chance there; the spread of the round decides, not a constant.
    for (double sigma : {0.5, 3.0, 12.0})
      for (size_t n : {3, 4, 7, 16})
        for (uint64_t seed : {1, 2, 3}) {
          CAPTURE(sigma);
          CAPTURE(n);
          CAPTURE(seed);
          auto round = honest_round(n, 50000, sigma, seed);
          CHECK(atypical(round).empty());
        }
  }

  TEST_CASE("a round of zero updates is typical, and a minority that moves stands apart") {
    // Norms were compared unclamped against a median clamped to 1e-30: 0 < 1e-30, so every
    // zero update of a round that moved nothing (a frozen model, a learning rate too small to
    // change a float) was an outlier, the round's median among them, and the job used them
    // all in its mean while it marked them left out (not paid, not rolled back).
    const std::vector<float> zero(1000, 0.0f);
    CHECK(atypical({zero, zero, zero}).empty());
    CHECK(atypical({zero, zero, zero, zero}).empty());
    std::vector<float> moved(1000, 0.01f);
    const auto apart = atypical({zero, zero, moved, zero});
    CHECK(apart.size() == 1);
    CHECK(apart.count(2) == 1);
  }

  TEST_CASE("sign flips, noise, scaling and laziness are outliers; a minority cannot hide") {
    // Late in training (sigma 12) honest updates agree by little more than unrelated
    // directions in 50,000 dimensions would: 200,000 (fashion-mlp has 235,000) leave room.
    const size_t dim = 200000;
    for (double sigma : {3.0, 12.0}) {
      // Eight honest results; the ninth, computed honestly too, is what the bad node alters
      // and sends in place of result 5.
      auto all = honest_round(9, dim, sigma, 11);
      auto own = all[8];
      all.pop_back();
      const auto& round = all;
      auto flipped = own;
      for (float& v : flipped) v = -v;
      auto noise = gaussian(dim, 99);
      double scale = l2_norm(own) / l2_norm(noise);
      for (float& v : noise) v = static_cast<float>(v * scale);
      auto big = own;
      for (float& v : big) v *= 10.0f;
      auto lazy = own;
      for (float& v : lazy) v *= 0.1f;
      struct bad_case {
        std::string name;
        std::vector<float> update;
        const char* why;
      };
      // Members, not a structured binding: clang 14 cannot capture a binding in CAPTURE.
      for (const auto& bad : std::vector<bad_case>{{"signflip", flipped, "cosine"},
                                                   {"scale:10", big, "norm"},
                                                   {"lazy", lazy, "norm"}}) {
        const auto& why = bad.why;
        CAPTURE(bad.name);
        CAPTURE(sigma);
        auto with_bad = round;
        with_bad[5] = bad.update;
        auto out = screen_round(spans(with_bad), {});
        CHECK(out[5].verdict == screen_verdict::outlier);
        CHECK(out[5].why.find(why) != std::string::npos);
        for (size_t i = 0; i < out.size(); ++i)
          if (i != 5) CHECK(out[i].verdict == screen_verdict::typical);
      }
      // Noise of the same norm points nowhere: it stands out where honest updates agree
      // (an outlier where it happens to point away from the median); where they hardly do,
      // it is as typical as they are and left to sampling.
      auto with_noise = round;
      with_noise[5] = noise;
      auto v = atypical(with_noise);
      if (sigma < 10.0) CHECK(v.size() == 1);
      for (const auto& [k, verdict] : v) CHECK(k == 5);
      // Three sign flippers of eight cannot move the median: all three are outliers while
      // honest updates agree clearly (late in training, when they hardly agree, they are
      // left to sampling: at least no honest result is taken for one).
      auto three = round;
      for (size_t k : {1, 4, 6})
        for (float& x : three[k]) x = -x;
      auto t = atypical(three);
      if (sigma < 10.0) CHECK(t.size() == 3);
      for (const auto& [k, verdict] : t) CHECK((k == 1 || k == 4 || k == 6));
      for (const auto& [k, verdict] : t) CHECK(verdict == screen_verdict::outlier);
    }
  }

  TEST_CASE("results that are within the hard bounds but stand out are re-computed") {
    const size_t dim = 50000;
    auto all = honest_round(9, dim, 3.0, 21);
    all.pop_back();
    auto scaled = all;
    for (float& v : scaled[2]) v *= 1.5f;
    CHECK(atypical(scaled) == std::map<size_t, screen_verdict>{{2, screen_verdict::stands_out}});
    auto replayed = all;
    replayed[4] = honest_round(1, dim, 3.0, 77)[0];  // another round's update: other direction
    auto r = atypical(replayed);  // an outlier where it points away from the others
    CHECK(r.size() == 1);
    CHECK(r.count(4) == 1);
  }

  TEST_CASE("too few results to compare, and the direction check turned off") {
    auto round = honest_round(2, 1000, 1.0, 5);
    for (float& v : round[1]) v = -v;
    CHECK(atypical(round).empty());
    auto three = honest_round(3, 1000, 0.5, 5);
    for (float& v : three[0]) v = -v;
    screen_bounds off;
    off.min_cosine = -1.0;
    CHECK(atypical(three, off) ==
          std::map<size_t, screen_verdict>{{0, screen_verdict::stands_out}});
    CHECK(atypical(three) == std::map<size_t, screen_verdict>{{0, screen_verdict::outlier}});
  }

  TEST_CASE("sketches tell a replayed update from a new one") {
    auto a = gaussian(100000, 1), b = gaussian(100000, 2);
    auto again = a;
    for (size_t i = 0; i < again.size(); i += 97) again[i] += 0.01f;  // int8-like noise
    CHECK(cosine(update_sketch(a), update_sketch(again)) > replay_cosine);
    CHECK(std::abs(cosine(update_sketch(a), update_sketch(b))) < 0.1);
    CHECK(update_sketch(a).size() == 4096);
    CHECK(cosine(update_sketch(std::vector<float>(10, 0.0f)),
                 update_sketch(std::vector<float>(10, 1.0f))) == 0.0);  // a zero update
  }

  TEST_CASE("replay memory: a key's last 16 updates, for a bounded number of keys") {
    std::vector<std::vector<float>> u;
    for (int i = 0; i < 20; ++i) u.push_back(update_sketch(gaussian(5000, 100 + i)));
    const std::vector<uint8_t> a{1}, b{2}, c{3};
    replay_sketches book(2);
    CHECK_FALSE(book.repeats(a, u[0]));
    CHECK(book.repeats(a, u[0]));        // sent again: a replay
    CHECK_FALSE(book.repeats(b, u[0]));  // another key's own memory
    // A third key: the one heard from longest ago (a) is forgotten, b is not.
    CHECK_FALSE(book.repeats(c, u[1]));
    CHECK(book.keys() == 2);
    CHECK(book.repeats(b, u[0]));
    CHECK_FALSE(book.repeats(a, u[0]));  // a's memory went with it
    // 16 of one key's updates are kept: the 17th back is forgotten.
    replay_sketches one(1);
    for (int i = 0; i < 17; ++i) CHECK_FALSE(one.repeats(a, u[static_cast<size_t>(i)]));
    CHECK_FALSE(one.repeats(a, u[0]));
    CHECK(one.repeats(a, u[16]));
    // Bounded however many keys come and go.
    replay_sketches many(8);
    for (uint8_t k = 0; k < 200; ++k) (void)many.repeats({k, 7}, u[k % 20]);
    CHECK(many.keys() == 8);
  }

  TEST_CASE("a key's 16 kept sketches take a byte a bucket") {
    // In floats they would take 256 KiB a key: 3.7 GiB on a core running 50 jobs of 300 keys.
    replay_sketches book(10);
    for (uint8_t key = 0; key < 10; ++key)
      for (uint64_t i = 0; i < 20; ++i)
        (void)book.repeats({key, 1}, update_sketch(gaussian(5000, 1000 * key + i)));
    REQUIRE(book.keys() == 10);
    const size_t sketches = 10 * replay_memory;
    CHECK(book.bytes() <= sketches * (4096 + 64));  // 4 KiB each, and 64 bytes for the rest
    CHECK(book.bytes() >= sketches * 4096);         // all of it counted
  }

  TEST_CASE(
      "a kept sketch's cosines are within its bound of the floats', however its weight lies") {
    const size_t n = 4096;
    rng r(77);
    auto sign = [&] { return r.normal() < 0.0 ? -1.0f : 1.0f; };
    std::vector<std::pair<std::string, std::vector<float>>> kept;
    kept.emplace_back("dense", update_sketch(gaussian(100000, 1)));
    {
      auto u = gaussian(100000, 2);  // 20 coordinates carry most of the weight
      for (float& v : u) v *= 1e-3f;
      for (size_t i = 0; i < 20; ++i) u[i * 4999] = 10.0f * sign();
      kept.emplace_back("a few buckets", update_sketch(u));
    }
    {
      auto u = gaussian(100000, 3);  // heavy tails: a normal over a normal
      auto d = gaussian(100000, 4);
      for (size_t i = 0; i < u.size(); ++i) u[i] /= std::max(std::abs(d[i]), 1e-3f);
      kept.emplace_back("heavy tails", update_sketch(u));
    }
    // One bucket and the rest: all just under where they are kept as 0; all at half a step of
    // int8 with a scale (which would lose a quarter of the norm to rounding); all nearly
    // halfway between two logarithmic steps, rounded up and down in turn (the largest error
    // rounding can make, and none of it a common scale that a cosine ignores).
    for (const std::string name : {"just kept as 0", "half a linear step", "between steps"}) {
      std::vector<float> b(n);
      b[0] = 1.0f;
      for (size_t i = 1; i < n; ++i) {
        const double step = static_cast<double>(i % 120) + (i % 2 == 0 ? 0.501 : 0.499);
        const double rest = name == "just kept as 0"       ? 1.55e-4
                            : name == "half a linear step" ? 0.5 / 127.0 - 1e-6
                                                           : std::exp2((step - 127.0) / 10.0);
        b[i] = sign() * static_cast<float>(rest);
      }
      kept.emplace_back(name, b);
    }
    for (const auto& shape : kept) {
      // No structured binding: doctest's CAPTURE takes it into a lambda, which clang refuses.
      const std::string& name = shape.first;
      const std::vector<float>& b = shape.second;
      CAPTURE(name);
      const compact_sketch c(b);
      REQUIRE(c.size() == n);
      CHECK(c.heap_bytes() == n);
      // The decoded sketch is within asin(max_error) of the sketch: the bound everything
      // else follows from.
      CHECK(c.cosine_with(b) >=
            std::sqrt(1.0 - compact_sketch::max_error * compact_sketch::max_error));
      // Vectors at chosen cosines from it: each read within max_error, and on the right side
      // of replay_cosine when the true one is outside [0.937, 0.961].
      std::vector<double> unit(n), other(n);
      const double norm = l2_norm(b);
      for (size_t i = 0; i < n; ++i) unit[i] = b[i] / norm;
      for (uint64_t trial = 0; trial < 4; ++trial) {
        auto g = gaussian(n, 500 + trial);
        double along = 0.0, rest_sq = 0.0;
        for (size_t i = 0; i < n; ++i) along += g[i] * unit[i];
        for (size_t i = 0; i < n; ++i) {
          other[i] = g[i] - along * unit[i];
          rest_sq += other[i] * other[i];
        }
        for (double target : {0.9615, 0.95, 0.9375, 0.8, 0.24, 0.0, -0.9}) {
          CAPTURE(target);
          std::vector<float> a(n);
          const double across = std::sqrt(1.0 - target * target) / std::sqrt(rest_sq);
          for (size_t i = 0; i < n; ++i)
            a[i] = static_cast<float>(target * unit[i] + across * other[i]);
          const double exact = cosine(a, b), read = c.cosine_with(a);
          REQUIRE(exact == doctest::Approx(target).epsilon(1e-5));
          CHECK(std::abs(read - exact) <= compact_sketch::max_error);
          if (exact > 0.961) CHECK(read > replay_cosine);
          if (exact < 0.937) CHECK(read < replay_cosine);
        }
      }
    }
    // Zero and non-finite sketches compare as 0, as they did in floats (0, or NaN: never a
    // replay).
    std::vector<float> zero(n, 0.0f), bad = update_sketch(gaussian(5000, 9));
    bad[7] = std::numeric_limits<float>::infinity();
    CHECK(compact_sketch(zero).cosine_with(kept[0].second) == 0.0);
    CHECK(compact_sketch(bad).cosine_with(bad) == 0.0);
  }

  TEST_CASE("a node's distinct results are not replays, even close ones; a replay is one") {
    // Updates with cosines of about 0.8 between them, far closer than a node's successive
    // honest ones (0.24).
    auto round = honest_round(20, 20000, 0.5, 31);
    std::vector<std::vector<float>> sketches;
    for (const auto& u : round) sketches.push_back(update_sketch(u));
    REQUIRE(cosine(sketches[0], sketches[1]) == doctest::Approx(0.8).epsilon(0.05));
    replay_sketches book(4);
    const std::vector<uint8_t> key{9};
    for (const auto& s : sketches) CHECK_FALSE(book.repeats(key, s));
    auto again = round[10];
    for (size_t i = 0; i < again.size(); i += 97) again[i] += 0.01f;  // int8-like noise
    CHECK(book.repeats(key, update_sketch(again)));
  }

  TEST_CASE("the robust mean clips large updates and trims per coordinate") {
    std::vector<std::vector<float>> u{{1.0f, 0.0f}, {1.0f, 0.0f}, {1.0f, 0.0f}, {100.0f, 0.0f}};
    std::vector<double> mean;
    robust_mean(spans(u), 0.0, 0.0, mean);
    CHECK(mean[0] == doctest::Approx(103.0 / 4.0));
    robust_mean(spans(u), 2.0, 0.0, mean);  // the big one is scaled to 2 x the median norm
    CHECK(mean[0] == doctest::Approx(5.0 / 4.0));
    robust_mean(spans(u), 0.0, 0.25, mean);  // one value dropped at each end
    CHECK(mean[0] == doctest::Approx(1.0));
    std::vector<std::vector<float>> one{{2.0f, 4.0f}};
    robust_mean(spans(one), 2.0, 0.4, mean);  // at least one value is kept
    CHECK(mean[0] == doctest::Approx(2.0));
    CHECK(mean[1] == doctest::Approx(4.0));
  }

  TEST_CASE("of two results, or half of an even count, a huge update is clipped") {
    // The median of two norms is their mean: at clip 2 the limit was their sum, and a node's
    // update 1e6 times its partner's went into the mean whole (a job of two workers, or a
    // round closed on a quorum of two, had no defence of magnitude but sampling).
    auto two = robust_mean_scales(std::vector<double>{1.0, 1e6}, 2.0);
    CHECK(two[0] == 1.0);
    CHECK(two[1] == doctest::Approx(2e-6));
    auto half = robust_mean_scales(std::vector<double>{1.0, 1.0, 1e6, 1e6}, 2.0);
    CHECK(half[0] == 1.0);
    CHECK(half[3] == doctest::Approx(2e-6));
    // Honest partners within clip of each other keep their updates whole.
    auto honest = robust_mean_scales(std::vector<double>{1.0, 1.7}, 2.0);
    CHECK(honest == std::vector<double>{1.0, 1.0});
  }

  TEST_CASE("the robust mean taken block by block is exactly the whole one") {
    std::vector<std::vector<float>> u(5, std::vector<float>(1000));
    for (size_t i = 0; i < u.size(); ++i)
      for (size_t k = 0; k < 1000; ++k)
        u[i][k] = std::sin(static_cast<float>(k * (i + 3))) * static_cast<float>(1 + 4 * (i == 2));
    for (auto [clip, trim] : {std::pair{0.0, 0.0}, std::pair{2.0, 0.0}, std::pair{2.0, 0.2}}) {
      std::vector<double> whole, part;
      robust_mean(spans(u), clip, trim, whole);
      const auto scales = robust_mean_scales(spans(u), clip);
      std::vector<double> joined;
      for (size_t begin = 0; begin < 1000; begin += 300) {
        robust_mean_block(spans(u), scales, trim, begin, std::min<size_t>(300, 1000 - begin), part);
        joined.insert(joined.end(), part.begin(), part.end());
      }
      CHECK(joined == whole);
      // The scales from the updates' norms (as a job that reads its updates by blocks has
      // them) are the same.
      std::vector<double> norms;
      for (const auto& x : u) norms.push_back(l2_norm(x));
      CHECK(robust_mean_scales(norms, clip) == scales);
    }
  }

  TEST_CASE("a round screened block by block gives exactly screen_round's figures and verdicts") {
    // Five results, one scaled up and one flipped, so that verdicts other than typical occur.
    std::vector<std::vector<float>> u(5, std::vector<float>(1000));
    for (size_t i = 0; i < u.size(); ++i)
      for (size_t k = 0; k < 1000; ++k)
        u[i][k] = std::sin(static_cast<float>(k) * 0.01f) +
                  0.3f * std::cos(static_cast<float>(k * (i + 2)));
    for (float& x : u[1]) x *= 6.0f;
    for (float& x : u[3]) x = -x;
    const auto whole = screen_round(spans(u), {});
    round_screen screen(u.size());
    const auto parts = screened_in_blocks(u, 333, screen);
    REQUIRE(parts.size() == whole.size());
    int atypical = 0;
    for (size_t i = 0; i < whole.size(); ++i) {
      CHECK(parts[i].norm == whole[i].norm);
      CHECK(parts[i].cosine == whole[i].cosine);
      CHECK(parts[i].verdict == whole[i].verdict);
      CHECK(parts[i].why == whole[i].why);
      CHECK(screen.norms()[i] == whole[i].norm);
      atypical += whole[i].verdict != screen_verdict::typical;
    }
    CHECK(atypical >= 2);  // the comparison covers verdicts, not only typical ones
  }

  TEST_CASE("a round large enough to screen on several threads gives one thread's figures") {
    // 40 results of 4,000 values are screened whole (the medians selected on up to 8 threads
    // where the machine has the cores) and in blocks of 300 values (small enough for one):
    // the figures must agree bit for bit, ties included.
    std::mt19937 rng(11);
    std::uniform_int_distribution<int> pick(-50, 50);
    std::vector<std::vector<float>> u(40, std::vector<float>(4000));
    for (auto& x : u)
      for (auto& v : x) v = static_cast<float>(pick(rng)) / 50.0f;
    const auto whole = screen_round(spans(u), {});
    round_screen screen(u.size());
    const auto parts = screened_in_blocks(u, 300, screen);
    REQUIRE(parts.size() == whole.size());
    for (size_t i = 0; i < whole.size(); ++i) {
      CAPTURE(i);
      CHECK(parts[i].cosine == whole[i].cosine);
      CHECK(parts[i].norm == whole[i].norm);
    }
  }

  TEST_CASE("each result is compared with the exact median of the others, ties included") {
    // The screen reads each result's leave-one-out median from three order statistics of the
    // column; here every median is taken the slow way, by sorting the others, and the
    // cosines must come out bit for bit the same. Values from a few levels make ties.
    // Rounds of more than 32 results take the selection through partition passes; zeros
    // come with both signs.
    std::mt19937 rng(7);
    for (size_t n : {3, 4, 5, 6, 9, 32, 33, 34, 100, 257}) {
      for (int levels : {3, 1000}) {
        std::uniform_int_distribution<int> pick(-levels, levels);
        std::vector<std::vector<float>> round(n, std::vector<float>(n > 64 ? 3 : 40));
        for (auto& u : round)
          for (auto& v : u) {
            v = static_cast<float>(pick(rng)) / static_cast<float>(levels);
            if (v == 0.0f && rng() % 2 == 0) v = -0.0f;
          }
        const auto screened = screen_round(spans(round), {});
        for (size_t i = 0; i < n; ++i) {
          double dot = 0.0, ref_sq = 0.0, norm_sq = 0.0;
          for (size_t k = 0; k < round[i].size(); ++k) {
            std::vector<float> others;
            for (size_t j = 0; j < n; ++j)
              if (j != i) others.push_back(round[j][k]);
            std::sort(others.begin(), others.end());
            const size_t m = others.size(), h = m / 2;
            const double med =
                m % 2 == 1 ? others[h] : 0.5 * (static_cast<double>(others[h - 1]) + others[h]);
            dot += med * round[i][k];
            ref_sq += med * med;
            norm_sq += static_cast<double>(round[i][k]) * round[i][k];
          }
          const double norm = std::sqrt(norm_sq);
          const double cosine =
              norm * std::sqrt(ref_sq) > 0.0 ? dot / (norm * std::sqrt(ref_sq)) : 0.0;
          CAPTURE(n);
          CAPTURE(levels);
          CAPTURE(i);
          CHECK(screened[i].cosine == cosine);
        }
      }
    }
  }

  TEST_CASE("an update sketched block by block is its whole sketch") {
    std::vector<float> u(10000);
    for (size_t k = 0; k < u.size(); ++k) u[k] = std::sin(static_cast<float>(k) * 0.37f);
    std::vector<float> parts(4096, 0.0f);
    for (size_t begin = 0; begin < u.size(); begin += 4000)
      update_sketch_add(
          std::span<const float>(u).subspan(begin, std::min<size_t>(4000, u.size() - begin)), begin,
          parts);
    CHECK(parts == update_sketch(u));
  }
}

TEST_SUITE("misbehaviour") {
  TEST_CASE("modes parse, and bad ones say what is wrong") {
    CHECK(parse_misbehaviour("").value().kind == misbehaviour::mode::honest);
    CHECK(parse_misbehaviour("signflip").value().kind == misbehaviour::mode::signflip);
    auto scale = parse_misbehaviour("scale:2.5").value();
    CHECK(scale.kind == misbehaviour::mode::scale);
    CHECK(scale.factor == 2.5);
    auto some = parse_misbehaviour("sometimes:0.2:random").value();
    CHECK(some.kind == misbehaviour::mode::random);
    CHECK(some.probability == 0.2);
    for (const char* bad :
         {"evil", "scale:x", "scale:1", "scale:inf", "sometimes:2:random", "sometimes:0.5",
          "sometimes:0.5:sometimes:0.5:lazy", "sometimes:0:lazy"}) {
      CAPTURE(bad);
      auto r = parse_misbehaviour(bad);
      REQUIRE_FALSE(r.has_value());
      CHECK(r.error().code() == errc::invalid_argument);
      CHECK(r.error().message().find(bad) != std::string::npos);
    }
  }

  TEST_CASE("each mode alters the update as documented") {
    auto honest = gaussian(1000, 3);
    auto run = [&](const char* mode, const std::string& job = "j") {
      misbehaving_worker w(parse_misbehaviour(mode).value(), 1);
      CHECK(w.decide());
      auto d = honest;
      w.alter(job, d);
      return d;
    };
    auto flipped = run("signflip");
    CHECK(flipped[7] == -honest[7]);
    auto scaled = run("scale:3");
    CHECK(scaled[7] == doctest::Approx(3.0f * honest[7]));
    auto noise = run("random");
    CHECK(l2_norm(noise) == doctest::Approx(l2_norm(honest)).epsilon(1e-4));
    CHECK(std::abs(agreement({noise, honest})[0]) < 0.2);
    misbehaving_worker lazy(parse_misbehaviour("lazy").value(), 1);
    CHECK(lazy.decide());
    CHECK(lazy.steps(50) == 5);
    CHECK(lazy.steps(3) == 1);
    misbehaving_worker stale(parse_misbehaviour("stale").value(), 1);
    auto first = honest;
    stale.decide();
    stale.alter("j", first);
    CHECK(first == honest);  // nothing to replay yet
    auto second = gaussian(1000, 4);
    stale.decide();
    stale.alter("j", second);
    CHECK(second == honest);  // the previous update again
  }

  TEST_CASE("in:JOB misbehaves in that job only") {
    auto m = parse_misbehaviour("in:job-5:sometimes:0.5:signflip");
    REQUIRE(m.has_value());
    CHECK(m->only_job == "job-5");
    CHECK(m->probability == 0.5);
    misbehaving_worker w(parse_misbehaviour("in:job-5:signflip").value(), 1);
    CHECK_FALSE(w.decide("job-4"));
    auto d = gaussian(100, 3);
    const auto honest = d;
    w.alter("job-4", d);
    CHECK(d == honest);
    CHECK(w.decide("job-5"));
    w.alter("job-5", d);
    CHECK(d[7] == -honest[7]);
    for (const char* bad :
         {"in:job-5", "in::signflip", "in:job-5:honest", "in:a:in:b:signflip", "in:job-5:wobble"})
      CHECK_FALSE(parse_misbehaviour(bad).has_value());
  }

  TEST_CASE("sometimes misbehaves at about its rate, repeatably per seed") {
    auto count = [](uint64_t seed) {
      misbehaving_worker w(parse_misbehaviour("sometimes:0.2:signflip").value(), seed);
      int n = 0;
      for (int i = 0; i < 5000; ++i) n += w.decide() ? 1 : 0;
      return n;
    };
    CHECK(count(7) == count(7));
    CHECK(count(7) > 900);
    CHECK(count(7) < 1100);
    misbehaving_worker honest(misbehaviour{}, 1);
    CHECK_FALSE(honest.decide());
  }
}
