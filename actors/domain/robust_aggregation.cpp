#include "robust_aggregation.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <thread>
#include <utility>

#include "gflex/runtime/check.hpp"

namespace gflex {

namespace {

double median_of(std::vector<double> v) {
  auto mid = v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2);
  std::nth_element(v.begin(), mid, v.end());
  if (v.size() % 2 == 1) return *mid;
  double upper = *mid;
  double lower = *std::max_element(v.begin(), mid);
  return 0.5 * (lower + upper);
}

std::vector<double> norms_of(const std::vector<std::span<const float>>& updates) {
  std::vector<double> norms(updates.size());
  for (size_t i = 0; i < updates.size(); ++i) norms[i] = l2_norm(updates[i]);
  return norms;
}

std::string format(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", x);
  return buf;
}

}  // namespace

double l2_norm(std::span<const float> x) noexcept {
  double s = 0.0;
  for (float v : x) s += static_cast<double>(v) * v;
  return std::sqrt(s);
}

double relative_distance(std::span<const float> claimed, std::span<const float> reference) {
  GFLEX_CHECK(claimed.size() == reference.size(), "relative_distance: sizes differ");
  double diff = 0.0, ref = 0.0;
  for (size_t i = 0; i < claimed.size(); ++i) {
    double d = static_cast<double>(claimed[i]) - reference[i];
    diff += d * d;
    ref += static_cast<double>(reference[i]) * reference[i];
  }
  if (ref == 0.0) return diff == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
  return std::sqrt(diff / ref);
}

std::vector<double> agreement(const std::vector<std::span<const float>>& updates) {
  const size_t n = updates.size();
  std::vector<double> out(n, 0.0);
  if (n < 2) return out;
  const size_t dim = updates[0].size();
  std::vector<double> norms(n), sum(dim, 0.0);
  for (size_t i = 0; i < n; ++i) {
    norms[i] = l2_norm(updates[i]);
    if (norms[i] == 0.0) continue;
    double inv = 1.0 / norms[i];
    for (size_t k = 0; k < dim; ++k) sum[k] += updates[i][k] * inv;
  }
  for (size_t i = 0; i < n; ++i) {
    if (norms[i] == 0.0) continue;
    double inv = 1.0 / norms[i], dot = 0.0, others = 0.0;
    for (size_t k = 0; k < dim; ++k) {
      double u = updates[i][k] * inv;
      double o = sum[k] - u;
      dot += u * o;
      others += o * o;
    }
    out[i] = others > 0.0 ? dot / std::sqrt(others) : 0.0;
  }
  return out;
}

double effective_dimension(std::span<const float> x) noexcept {
  double s2 = 0.0, s4 = 0.0;
  for (float v : x) {
    const double q = static_cast<double>(v) * v;
    s2 += q;
    s4 += q * q;
  }
  return s4 > 0.0 ? s2 * s2 / s4 : 0.0;
}

round_screen::round_screen(size_t updates)
    : n_(updates),
      norm_sq_(updates, 0.0),
      fourth_(updates, 0.0),
      dot_(updates, 0.0),
      ref_sq_(updates, 0.0) {}

void round_screen::add(const std::vector<std::span<const float>>& block) {
  GFLEX_CHECK(block.size() == n_, "round_screen: a block of the wrong number of updates");
  const size_t dim = n_ == 0 ? 0 : block[0].size();
  for (const auto& b : block) GFLEX_CHECK(b.size() == dim, "round_screen: block sizes differ");
  for (size_t i = 0; i < n_; ++i)
    for (float v : block[i]) {
      const double q = static_cast<double>(v) * v;
      norm_sq_[i] += q;
      fourth_[i] += q * q;
    }
  if (n_ < 3) return;
  // Each result against the coordinate-wise median of the others: a median that includes
  // the result itself leans towards it (its own noise), and a sign flipper among nearly
  // orthogonal honest updates would then seem to agree with it. (value, index) pairs order a
  // column totally; the j-th smallest of the others is the column's j-th if the result ranks
  // above it, else the (j+1)-th. So only the column's order statistics h - 1, h and h + 1 are
  // ever read: found by selection, O(n) a coordinate where a sort took O(n log n) (a round of
  // 1,000 results spent most of its screening sorting).
  using ranked = std::pair<float, uint32_t>;
  struct order_statistics {
    ranked below, mid, above;  // the column's h - 1, h and h + 1
  };
  const size_t m = n_ - 1, h = m / 2;  // the others: m values, median at h (and h - 1 if even)
  std::vector<order_statistics> stats(dim);
  // The selections are independent coordinate by coordinate, so they run on several threads;
  // the sums below stay in one coordinate order, so the figures do not depend on how many.
  auto select = [&](size_t from, size_t to) {
    std::vector<ranked> column(n_);
    for (size_t k = from; k < to; ++k) {
      for (size_t i = 0; i < n_; ++i) column[i] = {block[i][k], static_cast<uint32_t>(i)};
      const auto mid_it = column.begin() + static_cast<std::ptrdiff_t>(h);
      std::nth_element(column.begin(), mid_it, column.end());
      stats[k] = {*std::max_element(column.begin(), mid_it),              // h >= 1: n >= 3
                  *mid_it, *std::min_element(mid_it + 1, column.end())};  // h + 1 <= m
    }
  };
  // About 64k selections of a value each per thread at the least: below that a thread's
  // start costs more than it saves.
  const size_t threads = std::clamp<size_t>(
      std::min<size_t>(std::thread::hardware_concurrency(), (n_ * dim) >> 16), 1, 8);
  {
    std::vector<std::jthread> helpers;
    const size_t share = (dim + threads - 1) / threads;
    for (size_t t = 1; t < threads; ++t)
      helpers.emplace_back(select, std::min(dim, t * share), std::min(dim, (t + 1) * share));
    select(0, std::min(dim, share));
  }
  for (size_t i = 0; i < n_; ++i) {
    double dot = dot_[i], ref_sq = ref_sq_[i];
    for (size_t k = 0; k < dim; ++k) {
      const auto& s = stats[k];
      const ranked own{block[i][k], static_cast<uint32_t>(i)};
      const float nth_h = s.mid < own ? s.mid.first : s.above.first;
      const double med =
          m % 2 == 1
              ? nth_h
              : 0.5 * (static_cast<double>(s.below < own ? s.below.first : s.mid.first) + nth_h);
      dot += med * block[i][k];
      ref_sq += med * med;
    }
    dot_[i] = dot;
    ref_sq_[i] = ref_sq;
  }
}

std::vector<double> round_screen::norms() const {
  std::vector<double> out(n_);
  for (size_t i = 0; i < n_; ++i) out[i] = std::sqrt(norm_sq_[i]);
  return out;
}

std::vector<screened_result> round_screen::verdicts(const screen_bounds& bounds) const {
  const size_t n = n_;
  std::vector<screened_result> out(n);
  for (size_t i = 0; i < n; ++i) out[i].norm = std::sqrt(norm_sq_[i]);
  if (n < 3) return out;
  std::vector<double> log_norms(n), cosines(n);
  for (size_t i = 0; i < n; ++i) {
    const double denominator = out[i].norm * std::sqrt(ref_sq_[i]);
    out[i].cosine = cosines[i] = denominator > 0.0 ? dot_[i] / denominator : 0.0;
    // A zero update has no direction and the smallest norm there is.
    log_norms[i] = std::log(std::max(out[i].norm, 1e-30));
  }
  auto mad = [](const std::vector<double>& v, double centre) {
    std::vector<double> d(v.size());
    for (size_t i = 0; i < v.size(); ++i) d[i] = std::abs(v[i] - centre);
    return median_of(std::move(d));
  };
  const double median_log_norm = median_of(log_norms);
  const double median_norm = std::exp(median_log_norm);
  const double median_cosine = median_of(cosines);
  // 1.4826 x MAD estimates a standard deviation for normally spread values.
  const double norm_spread =
      std::max(1.4826 * mad(log_norms, median_log_norm), bounds.min_norm_spread);
  // A cosine between directions in `dim` dimensions that are unrelated beyond a common part
  // wanders by about 1/sqrt(dim): no spread is taken to be smaller than that.
  // The cosine of unrelated directions wanders by about 1/sqrt(effective dimension); real
  // pseudo-gradients carry their weight in far fewer coordinates than they have.
  std::vector<double> dims(n);
  for (size_t i = 0; i < n; ++i)  // effective_dimension's, from the sums
    dims[i] = fourth_[i] > 0.0 ? norm_sq_[i] * norm_sq_[i] / fourth_[i] : 0.0;
  const double chance = 1.0 / std::sqrt(std::max(median_of(dims), 1.0));
  const double cosine_spread = std::max(1.4826 * mad(cosines, median_cosine), chance);
  for (size_t i = 0; i < n; ++i) {
    auto& r = out[i];
    if (r.norm > bounds.norm_bound * median_norm || r.norm * bounds.norm_bound < median_norm) {
      r.verdict = screen_verdict::outlier;
      r.why = "update norm " + format(r.norm) + " is outside [" +
              format(median_norm / bounds.norm_bound) + ", " +
              format(median_norm * bounds.norm_bound) + "] (the round's median " +
              format(median_norm) + " within a factor " + format(bounds.norm_bound) + ")";
    } else if (bounds.min_cosine > -1.0 && r.cosine < bounds.min_cosine &&
               median_cosine - r.cosine > bounds.spreads * cosine_spread) {
      // Below the bound and atypical for the round: late in training, with a small inner
      // learning rate, honest cosines scatter around 0 and the bound alone would take many
      // honest results out of the mean.
      r.verdict = screen_verdict::outlier;
      r.why = "update direction has cosine " + format(r.cosine) +
              " with the coordinate-wise median of the round's other results, below " +
              format(bounds.min_cosine);
    } else if (std::abs(log_norms[i] - median_log_norm) > bounds.spreads * norm_spread) {
      r.verdict = screen_verdict::stands_out;
      r.why = "update norm " + format(r.norm) + " is " +
              format(std::exp(std::abs(log_norms[i] - median_log_norm))) +
              " times off the round's median " + format(median_norm);
    } else if (median_cosine - r.cosine > bounds.spreads * cosine_spread) {
      r.verdict = screen_verdict::stands_out;
      r.why =
          "update direction has cosine " + format(r.cosine) +
          " with the coordinate-wise median of the round's other results, against a median of " +
          format(median_cosine) + " (spread " + format(cosine_spread) + ")";
    }
  }
  return out;
}

std::vector<screened_result> screen_round(const std::vector<std::span<const float>>& updates,
                                          const screen_bounds& bounds) {
  round_screen screen(updates.size());
  screen.add(updates);
  return screen.verdicts(bounds);
}

void update_sketch_add(std::span<const float> block, size_t begin, std::vector<float>& sketch) {
  const size_t buckets = sketch.size();
  GFLEX_CHECK(buckets > 0, "update_sketch_add: no buckets");
  for (size_t k = 0; k < block.size(); ++k) {
    uint64_t z = (begin + k + 1) * 0x9E3779B97F4A7C15ULL;  // SplitMix64 of the index
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    sketch[z % buckets] += (z >> 63) != 0 ? block[k] : -block[k];
  }
}

std::vector<float> update_sketch(std::span<const float> update, size_t buckets) {
  std::vector<float> out(buckets, 0.0f);
  update_sketch_add(update, 0, out);
  return out;
}

double cosine(std::span<const float> a, std::span<const float> b) {
  GFLEX_CHECK(a.size() == b.size(), "cosine: sizes differ");
  double dot = 0.0, na = 0.0, nb = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    dot += static_cast<double>(a[i]) * b[i];
    na += static_cast<double>(a[i]) * a[i];
    nb += static_cast<double>(b[i]) * b[i];
  }
  return na > 0.0 && nb > 0.0 ? dot / std::sqrt(na * nb) : 0.0;
}

std::vector<double> robust_mean_scales(const std::vector<std::span<const float>>& updates,
                                       double clip) {
  GFLEX_CHECK(!updates.empty(), "robust_mean: no updates");
  const size_t dim = updates[0].size();
  for (const auto& u : updates) GFLEX_CHECK(u.size() == dim, "robust_mean: sizes differ");
  return robust_mean_scales(clip > 0.0 ? norms_of(updates) : std::vector<double>(updates.size()),
                            clip);
}

std::vector<double> robust_mean_scales(const std::vector<double>& norms, double clip) {
  GFLEX_CHECK(!norms.empty(), "robust_mean: no updates");
  const size_t n = norms.size();
  std::vector<double> scale(n, 1.0);
  if (clip > 0.0) {
    const double limit = clip * median_of(norms);
    for (size_t i = 0; i < n; ++i)
      if (norms[i] > limit) scale[i] = limit / norms[i];
  }
  return scale;
}

void robust_mean_block(const std::vector<std::span<const float>>& updates,
                       const std::vector<double>& scale, double trim, size_t begin, size_t len,
                       std::vector<double>& out) {
  const size_t n = updates.size();
  GFLEX_CHECK(scale.size() == n, "robust_mean: one scale per update");
  out.assign(len, 0.0);
  auto drop = static_cast<size_t>(std::floor(trim * static_cast<double>(n)));
  if (2 * drop >= n) drop = (n - 1) / 2;
  if (drop == 0) {
    for (size_t i = 0; i < n; ++i) {
      const float* u = updates[i].data() + begin;
      for (size_t k = 0; k < len; ++k) out[k] += u[k] * scale[i];
    }
    for (auto& v : out) v /= static_cast<double>(n);
    return;
  }
  std::vector<double> column(n);
  const double kept = static_cast<double>(n - 2 * drop);
  for (size_t k = 0; k < len; ++k) {
    for (size_t i = 0; i < n; ++i) column[i] = updates[i][begin + k] * scale[i];
    std::sort(column.begin(), column.end());
    double s = 0.0;
    for (size_t i = drop; i < n - drop; ++i) s += column[i];
    out[k] = s / kept;
  }
}

void robust_mean(const std::vector<std::span<const float>>& updates, double clip, double trim,
                 std::vector<double>& out) {
  const auto scale = robust_mean_scales(updates, clip);
  robust_mean_block(updates, scale, trim, 0, updates[0].size(), out);
}

}  // namespace gflex
