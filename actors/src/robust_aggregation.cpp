#include "robust_aggregation.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

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

double noise_agreement_bound(size_t dim) noexcept {
  return dim == 0 ? 0.0 : 5.0 / std::sqrt(static_cast<double>(dim));
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

std::vector<outlier> find_outliers(const std::vector<std::span<const float>>& updates,
                                   double norm_bound, double min_cosine) {
  std::vector<outlier> out;
  const size_t n = updates.size();
  if (n < 3) return out;
  const auto norms = norms_of(updates);
  const double median = median_of(norms);
  std::vector<bool> kept(n, true);
  for (size_t i = 0; i < n; ++i) {
    if (norms[i] > norm_bound * median || norms[i] * norm_bound < median) {
      out.push_back({i, "update norm " + format(norms[i]) + " is outside [" +
                            format(median / norm_bound) + ", " + format(median * norm_bound) +
                            "] (the round's median " + format(median) + " within a factor " +
                            format(norm_bound) + ")"});
      kept[i] = false;
    }
  }
  if (min_cosine <= -1.0) return out;
  std::vector<size_t> rest;
  for (size_t i = 0; i < n; ++i)
    if (kept[i] && norms[i] > 0.0) rest.push_back(i);
  if (rest.size() < 3) return out;
  std::vector<std::span<const float>> kept_updates;
  for (size_t i : rest) kept_updates.push_back(updates[i]);
  auto cosines = agreement(kept_updates);
  // A random direction in `dim` dimensions has a cosine of about N(0, 1/dim) with any fixed
  // one: an update must agree with the others clearly more than noise does.
  const double chance = noise_agreement_bound(updates[rest[0]].size());
  const double threshold = std::max(min_cosine, chance);
  for (size_t j = 0; j < rest.size(); ++j)
    if (cosines[j] < threshold)
      out.push_back({rest[j], "update direction has cosine similarity " + format(cosines[j]) +
                                  " with the round's other results, below " + format(threshold) +
                                  (threshold == chance ? " (what noise reaches)" : "")});
  std::sort(out.begin(), out.end(),
            [](const outlier& a, const outlier& b) { return a.index < b.index; });
  return out;
}

std::vector<size_t> find_suspicious(const std::vector<std::span<const float>>& updates) {
  constexpr double norm_ratio = 1.15, agreement_ratio = 0.5;
  std::vector<size_t> out;
  const size_t n = updates.size();
  if (n < 3) return out;
  const auto norms = norms_of(updates);
  const double median_norm = median_of(norms);
  const auto cosines = agreement(updates);
  const double median_agreement = median_of(cosines);
  for (size_t i = 0; i < n; ++i) {
    bool odd_norm = norms[i] > norm_ratio * median_norm || norms[i] * norm_ratio < median_norm;
    bool odd_direction = median_agreement > 0.0 && cosines[i] < agreement_ratio * median_agreement;
    if (odd_norm || odd_direction) out.push_back(i);
  }
  return out;
}

std::vector<float> update_sketch(std::span<const float> update, size_t buckets) {
  std::vector<float> out(buckets, 0.0f);
  for (size_t i = 0; i < update.size(); ++i) {
    uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ULL;  // SplitMix64 of the index
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    out[z % buckets] += (z >> 63) != 0 ? update[i] : -update[i];
  }
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

void robust_mean(const std::vector<std::span<const float>>& updates, double clip, double trim,
                 std::vector<double>& out) {
  GFLEX_CHECK(!updates.empty(), "robust_mean: no updates");
  const size_t n = updates.size(), dim = updates[0].size();
  for (const auto& u : updates) GFLEX_CHECK(u.size() == dim, "robust_mean: sizes differ");
  std::vector<double> scale(n, 1.0);
  if (clip > 0.0) {
    const auto norms = norms_of(updates);
    const double limit = clip * median_of(norms);
    for (size_t i = 0; i < n; ++i)
      if (norms[i] > limit) scale[i] = limit / norms[i];
  }
  out.assign(dim, 0.0);
  auto drop = static_cast<size_t>(std::floor(trim * static_cast<double>(n)));
  if (2 * drop >= n) drop = (n - 1) / 2;
  if (drop == 0) {
    for (size_t i = 0; i < n; ++i)
      for (size_t k = 0; k < dim; ++k) out[k] += updates[i][k] * scale[i];
    for (auto& v : out) v /= static_cast<double>(n);
    return;
  }
  std::vector<double> column(n);
  const double kept = static_cast<double>(n - 2 * drop);
  for (size_t k = 0; k < dim; ++k) {
    for (size_t i = 0; i < n; ++i) column[i] = updates[i][k] * scale[i];
    std::sort(column.begin(), column.end());
    double s = 0.0;
    for (size_t i = drop; i < n - drop; ++i) s += column[i];
    out[k] = s / kept;
  }
}

}  // namespace gflex
