#include "robust_aggregation.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <limits>
#include <numeric>
#include <thread>
#include <utility>

#include "gflex/runtime/check.hpp"

namespace gflex {

double median_of(std::vector<double> v) {
  if (v.empty()) return 0.0;
  auto mid = v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2);
  std::nth_element(v.begin(), mid, v.end());
  if (v.size() % 2 == 1) return *mid;
  double upper = *mid;
  double lower = *std::max_element(v.begin(), mid);
  // Not 0.5 * (lower + upper): the sum of two finite values near DBL_MAX is infinite (a node
  // reporting a loss of 1.7e308 twice made the round's loss inf), and halving each first
  // rounds two equal subnormals down. std::midpoint neither overflows nor loses them.
  return std::midpoint(lower, upper);
}

namespace {

std::vector<double> norms_of(const std::vector<std::span<const float>>& updates) {
  std::vector<double> norms(updates.size());
  for (size_t i = 0; i < updates.size(); ++i) norms[i] = l2_norm(updates[i]);
  return norms;
}

// A (value, index) pair as one integer that orders as the pair does: the float's bits made
// to order as the floats do (negatives flipped whole, positives' sign bit set; -0 taken as
// +0, equal as floats), then the index. One integer comparison instead of two, and no branch.
uint64_t order_key(float value, size_t index) noexcept {
  const uint32_t bits = std::bit_cast<uint32_t>(value + 0.0f);  // -0 + 0 is +0
  const uint32_t ordered = (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
  return (uint64_t{ordered} << 32) | static_cast<uint32_t>(index);
}

float value_of(uint64_t key) noexcept {
  const auto ordered = static_cast<uint32_t>(key >> 32);
  return std::bit_cast<float>((ordered & 0x80000000u) != 0 ? ordered & 0x7fffffffu : ~ordered);
}

// A column's order statistics h - 1, h and h + 1 (as order keys).
struct around_median {
  uint64_t below = 0, mid = 0, above = 0;
};

// The order statistics h - 1, h and h + 1 of n distinct keys (n >= 3, 1 <= h <= n - 2), by
// quickselect. Each pass splits the range around the median of three of its keys into
// `scratch` without branching on the comparison (a column's order is as good as random, and
// std::nth_element's mispredicted branches took most of its time), and the two buffers swap
// roles; ranges of 32 keys or fewer are sorted. h - 1 and h + 1 are read from the final range,
// or from the last part split off below (above) it: every key in it is below (above) that
// range, and above (below) every part split off before.
around_median select_around(uint64_t* keys, size_t n, size_t h, uint64_t* scratch) {
  uint64_t* a = keys;
  uint64_t* b = scratch;
  size_t lo = 0, hi = n;
  const uint64_t* below_part = nullptr;
  const uint64_t* above_part = nullptr;
  size_t below_from = 0, below_to = 0, above_from = 0, above_to = 0;
  while (hi - lo > 32) {
    const size_t len = hi - lo;
    const uint64_t x = a[lo + len / 4], y = a[lo + len / 2], z = a[lo + 3 * len / 4];
    const uint64_t pivot = std::max(std::min(x, y), std::min(std::max(x, y), z));
    // Keys below the pivot go up from b[lo], the others down from b[hi - 1].
    size_t less = 0, rest = 0;
    uint64_t* low = b + lo;
    uint64_t* high = b + hi - 1;
    for (size_t i = lo; i < hi; ++i) {
      const uint64_t v = a[i];
      const bool is_less = v < pivot;
      low[less] = v;
      *(high - rest) = v;
      less += is_less;
      rest += !is_less;
    }
    std::swap(a, b);
    // The keys are distinct and the pivot is the median of three of them, so at least one key
    // is below it and two are not: the range shrinks every pass.
    if (less == 0) break;
    if (h < lo + less) {
      above_part = a, above_from = lo + less, above_to = hi;
      hi = lo + less;
    } else {
      below_part = a, below_from = lo, below_to = lo + less;
      lo += less;
    }
  }
  std::sort(a + lo, a + hi);
  around_median out;
  out.mid = a[h];
  if (h > lo) {
    out.below = a[h - 1];
  } else {
    for (size_t i = below_from; i < below_to; ++i) out.below = std::max(out.below, below_part[i]);
  }
  if (h + 1 < hi) {
    out.above = a[h + 1];
  } else {
    out.above = ~uint64_t{0};
    for (size_t i = above_from; i < above_to; ++i) out.above = std::min(out.above, above_part[i]);
  }
  return out;
}

// f(from, to) over [0, count) cut into `threads` ranges, the first on the calling thread.
template <typename F>
void split_over_threads(size_t count, size_t threads, F&& f) {
  std::vector<std::jthread> helpers;
  const size_t share = (count + threads - 1) / threads;
  for (size_t t = 1; t < threads; ++t)
    helpers.emplace_back(f, std::min(count, t * share), std::min(count, (t + 1) * share));
  f(0, std::min(count, share));
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
  // About 64k values per thread at the least: below that a thread's start costs more than it
  // saves. Every sum runs in coordinate order whatever the threads, so the figures do not
  // depend on how many there are.
  const size_t threads = std::clamp<size_t>(
      std::min<size_t>(std::thread::hardware_concurrency(), (n_ * dim) >> 16), 1, 8);
  auto add_norms = [&](size_t i, size_t k) {
    const double q = static_cast<double>(block[i][k]) * block[i][k];
    norm_sq_[i] += q;
    fourth_[i] += q * q;
  };
  if (n_ < 3) {
    for (size_t i = 0; i < n_; ++i)
      for (size_t k = 0; k < dim; ++k) add_norms(i, k);
    return;
  }
  // Each result against the coordinate-wise median of the others: a median that includes
  // the result itself leans towards it (its own noise), and a sign flipper among nearly
  // orthogonal honest updates would then seem to agree with it. (value, index) pairs order a
  // column totally; the j-th smallest of the others is the column's j-th if the result ranks
  // above it, else the (j+1)-th. So only the column's order statistics h - 1, h and h + 1 are
  // ever read: found by selection, O(n) a coordinate where a sort took O(n log n) (a round of
  // 1,000 results spent most of its screening sorting).
  const size_t m = n_ - 1, h = m / 2;  // the others: m values, median at h (and h - 1 if even)
  struct column_medians {
    uint64_t below_key, mid_key;  // order statistics h - 1 and h, as order keys
    float below, mid, above;      // h - 1, h and h + 1
  };
  std::vector<column_medians> stats(dim);
  // The selections are independent coordinate by coordinate: each thread reads a tile of
  // coordinates from every result (four cache lines of each row) into columns of order keys, then
  // selects in each column.
  split_over_threads(dim, threads, [&](size_t from, size_t to) {
    constexpr size_t tile = 64;  // four cache lines of each row
    std::vector<uint64_t> columns(tile * n_), scratch(n_);
    for (size_t k0 = from; k0 < to; k0 += tile) {
      const size_t len = std::min(tile, to - k0);
      for (size_t i = 0; i < n_; ++i) {
        const float* row = block[i].data() + k0;
        // The row's next tile is read next time round: ask for it now, so that its cache
        // lines arrive while this tile is selected (rows lie far apart: no prefetcher sees it).
        if (k0 + tile < to)
          for (size_t line = 0; line < tile; line += 16) __builtin_prefetch(row + tile + line);
        for (size_t t = 0; t < len; ++t) columns[t * n_ + i] = order_key(row[t], i);
      }
      for (size_t t = 0; t < len; ++t) {
        const auto s = select_around(columns.data() + t * n_, n_, h, scratch.data());
        stats[k0 + t] = {s.below, s.mid, value_of(s.below), value_of(s.mid), value_of(s.above)};
      }
    }
  });
  // Each result's sums (its norms, and its products with its leave-one-out medians), in
  // coordinate order in one pass: the results are independent of each other, so they are
  // split over the threads.
  split_over_threads(n_, threads, [&](size_t from, size_t to) {
    for (size_t i = from; i < to; ++i) {
      double dot = dot_[i], ref_sq = ref_sq_[i], norm_sq = norm_sq_[i], fourth = fourth_[i];
      const float* row = block[i].data();
      for (size_t k = 0; k < dim; ++k) {
        const auto& s = stats[k];
        const float v = row[k];
        const uint64_t own = order_key(v, i);
        const float nth_h = s.mid_key < own ? s.mid : s.above;
        const double med =
            m % 2 == 1 ? nth_h
                       : 0.5 * (static_cast<double>(s.below_key < own ? s.below : s.mid) + nth_h);
        dot += med * v;
        ref_sq += med * med;
        const double q = static_cast<double>(v) * v;
        norm_sq += q;
        fourth += q * q;
      }
      dot_[i] = dot;
      ref_sq_[i] = ref_sq;
      norm_sq_[i] = norm_sq;
      fourth_[i] = fourth;
    }
  });
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
    // Against the median as the logs have it (zero read as the smallest norm): taken as it
    // is, a zero norm was below any bound of a median clamped to 1e-30, and a round of zero
    // updates (a frozen model) was all outliers, its median among them.
    const double norm = std::exp(log_norms[i]);
    if (norm > bounds.norm_bound * median_norm || norm * bounds.norm_bound < median_norm) {
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
    // The lower median: of an even count, the mean of the middle two let half the results
    // set the limit. Of two results, it was their mean, and at clip 2 it clipped nothing: a
    // node's update 1e6 times its partner's went into the mean whole.
    std::vector<double> sorted = norms;
    const auto middle = sorted.begin() + static_cast<std::ptrdiff_t>((n - 1) / 2);
    std::nth_element(sorted.begin(), middle, sorted.end());
    const double limit = clip * *middle;
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

namespace {

// compact_sketch's codes: 10 steps an octave, the largest magnitude at 127.
constexpr double steps_per_octave = 10.0;
constexpr int largest_code = 127;

// The value of each code (as a uint8_t), relative to the sketch's largest magnitude.
const std::array<double, 256>& code_values() {
  static const std::array<double, 256> values = [] {
    std::array<double, 256> v{};
    for (int k = 1; k <= largest_code; ++k) {
      const double magnitude = std::exp2((k - largest_code) / steps_per_octave);
      v[static_cast<uint8_t>(k)] = magnitude;
      v[static_cast<uint8_t>(-k)] = -magnitude;
    }
    return v;  // codes 0 and -128 (never made) are 0
  }();
  return values;
}

}  // namespace

compact_sketch::compact_sketch(std::span<const float> sketch) : code_(sketch.size(), 0) {
  double largest = 0.0;
  for (float v : sketch) {
    if (!std::isfinite(v)) return;  // kept as zeros
    largest = std::max(largest, std::abs(static_cast<double>(v)));
  }
  if (largest == 0.0) return;
  for (size_t i = 0; i < sketch.size(); ++i) {
    const double magnitude = std::abs(static_cast<double>(sketch[i]));
    if (magnitude == 0.0) continue;
    // Rounded on the logarithmic scale, so a value is off by at most 2^(1/20) - 1 of itself;
    // one that rounds below the first step is kept as 0 (off by under 2^-12.65 of the largest).
    const double code =
        std::round(largest_code + steps_per_octave * std::log2(magnitude / largest));
    if (code < 1.0) continue;
    const auto k = static_cast<int8_t>(code);
    code_[i] = sketch[i] < 0.0f ? static_cast<int8_t>(-k) : k;
  }
}

double compact_sketch::cosine_with(std::span<const float> other) const {
  GFLEX_CHECK(other.size() == code_.size(), "compact_sketch: sizes differ");
  const auto& value = code_values();
  double dot = 0.0, na = 0.0, nb = 0.0;
  for (size_t i = 0; i < code_.size(); ++i) {
    const double a = other[i];
    const double b = value[static_cast<uint8_t>(code_[i])];
    dot += a * b;
    na += a * a;
    nb += b * b;
  }
  return na > 0.0 && nb > 0.0 ? dot / std::sqrt(na * nb) : 0.0;
}

bool replay_sketches::repeats(const std::vector<uint8_t>& key, std::vector<float> sketch) {
  auto it = by_key_.find(key);
  if (it == by_key_.end()) {
    if (by_key_.size() >= keys_) {
      auto oldest = std::min_element(
          by_key_.begin(), by_key_.end(),
          [](const auto& a, const auto& b) { return a.second.heard < b.second.heard; });
      by_key_.erase(oldest);
    }
    it = by_key_.emplace(key, kept{}).first;
  }
  auto& k = it->second;
  k.heard = ++calls_;
  const bool seen = std::any_of(k.last.begin(), k.last.end(), [&](const compact_sketch& earlier) {
    return earlier.cosine_with(sketch) > replay_cosine;
  });
  // The oldest goes before the newest comes: the list never holds more than replay_memory,
  // so it never grows its capacity past that either.
  if (k.last.size() >= replay_memory) k.last.erase(k.last.begin());
  k.last.emplace_back(sketch);
  return seen;
}

size_t replay_sketches::bytes() const {
  // A std::map node holds its value and, in libstdc++, a colour and three links.
  constexpr size_t node = sizeof(decltype(by_key_)::value_type) + 4 * sizeof(void*);
  size_t total = sizeof(*this);
  for (const auto& [key, k] : by_key_) {
    total += node + key.capacity() + k.last.capacity() * sizeof(compact_sketch);
    for (const auto& s : k.last) total += s.heap_bytes();
  }
  return total;
}

}  // namespace gflex
