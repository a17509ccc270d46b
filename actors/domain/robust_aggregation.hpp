#pragma once
/// @file
/// The statistics a job uses to judge and combine a round's pseudo-gradients: norms and
/// cosine similarities for the immediate checks, the relative distance for verification,
/// and a robust mean (norm clipping, optionally a coordinate-wise trimmed mean) that bounds
/// what a result slipping past the checks can do. Free of CAF.

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace gflex {

double l2_norm(std::span<const float> x) noexcept;

/// The median (the mean of the middle two for an even count, finite whenever they are); 0 for
/// none.
double median_of(std::vector<double> values);

/// |claimed - reference| / |reference| (L2). 0 when both are zero, infinity when only the
/// reference is; sizes must match (a caller bug otherwise).
double relative_distance(std::span<const float> claimed, std::span<const float> reference);

/// For each update, the cosine similarity of its direction with the sum of the other
/// updates' directions (each scaled to unit length, so that no single one dominates). A zero
/// update, or one with no others to compare with, gets 0.
std::vector<double> agreement(const std::vector<std::span<const float>>& updates);

/// How a result compares with the rest of its round.
enum class screen_verdict : uint8_t {
  typical,     ///< like the others
  stands_out,  ///< further from the others than honest results usually are: re-computed
  outlier,     ///< far off (norm or direction): re-computed, and left out of the mean
};

/// The bounds of `screen_round`: hard ones from the job's spec, and how many robust spreads
/// away from the round's median a result may lie before it stands out.
struct screen_bounds {
  double norm_bound = 4.0;  ///< Outlier: norm over this times the median norm, or under it.
  /// Outlier: a cosine with the reference below this and atypically low (<= -1: off).
  double min_cosine = 0.0;
  /// Stands out: this many robust spreads from the round's median. Medians and MADs of
  /// rounds of a few results are noisy: 4 keeps honest results that stand out to a few
  /// percent (measured in tests/bench/trust_matrix.py), and still takes a 1.5 times scaled
  /// update for one (log 1.5 = 0.41 > 4 x 0.05).
  double spreads = 4.0;
  /// The smallest log-norm spread used, whatever the round shows: a round of three nearly
  /// equal results would otherwise make the smallest difference stand out. (The cosine's
  /// spread is never taken below 1/sqrt(effective dimension), how far unrelated directions
  /// wander.)
  double min_norm_spread = 0.05;
};

/// One result's figures and verdict.
struct screened_result {
  screen_verdict verdict = screen_verdict::typical;
  double norm = 0.0;
  double cosine = 0.0;  ///< With the coordinate-wise median of the round's other results.
  std::string why;      ///< For a verdict other than typical.
};

/// Compares every result of a round with a reference that a minority cannot move: the
/// coordinate-wise median of the round's other results. A result's norm (on a log scale) and its
/// cosine with the reference are set against the round's own medians and median absolute
/// deviations, so the bounds follow the spread that honest results show at that point of
/// training (late in training honest updates are nearly orthogonal, and their cosines with
/// the reference fall; so does the bound). A verdict is never proof of cheating: the job
/// re-computes what does not look typical before it flags anyone. With fewer than 3 results
/// there is nothing to compare and every result is typical.
std::vector<screened_result> screen_round(const std::vector<std::span<const float>>& updates,
                                          const screen_bounds& bounds);

/// screen_round a block of coordinates at a time, for updates too large to hold decoded
/// together: add() the same coordinates of every update (in the round's order), block after
/// block from the first coordinate to the last, then verdicts(). The figures are exactly
/// screen_round's (the sums run in the same order).
class round_screen {
 public:
  explicit round_screen(size_t updates);
  void add(const std::vector<std::span<const float>>& block);
  std::vector<screened_result> verdicts(const screen_bounds& bounds) const;
  /// Each update's L2 norm over what was added.
  std::vector<double> norms() const;

 private:
  size_t n_;
  std::vector<double> norm_sq_, fourth_, dot_, ref_sq_;
};

/// The participation ratio (sum x^2)^2 / sum x^4: how many coordinates carry an update's
/// weight (n for a vector of equal magnitudes, 1 for a single non-zero). The cosine of two
/// unrelated updates wanders by about 1/sqrt of it, far more than 1/sqrt(size) when a few
/// coordinates carry most of the weight, as in real pseudo-gradients.
double effective_dimension(std::span<const float> x) noexcept;

/// A count sketch of an update (each value added, with a pseudo-random sign, to one of
/// `buckets` pseudo-random buckets; the same for every update of the same size): the cosine
/// of two sketches estimates the cosine of the updates to about 1/sqrt(buckets), in O(n).
/// A job keeps each node's last one to notice a replayed update.
std::vector<float> update_sketch(std::span<const float> update, size_t buckets = 4096);
/// update_sketch a block at a time: adds values [begin, begin + block.size()) of an update to
/// `sketch` (made with the bucket count wanted, zero-filled).
void update_sketch_add(std::span<const float> block, size_t begin, std::vector<float>& sketch);

/// Cosine similarity of two vectors of the same size (0 if either is zero).
double cosine(std::span<const float> a, std::span<const float> b);

/// A node's update whose sketch has a cosine above this with one of the node's previous ones
/// (the last `replay_memory`) is taken for a replay and re-computed: honest updates of
/// different rounds and shards are far apart (about 0.24 between successive ones), so an
/// honest node pays at most a re-computation that matches.
inline constexpr double replay_cosine = 0.95;
inline constexpr size_t replay_memory = 16;

/// A count sketch kept for cosines only, in one byte a bucket (4 KiB for the job's 4,096, a
/// quarter of its floats): each value's sign and its magnitude on a logarithmic scale, 10
/// steps an octave below the sketch's largest magnitude (values under 2^-12.65 of it are kept
/// as 0). No scale is kept: a cosine does not depend on one. Linear steps (int8 with a scale)
/// would bound each value's error by a fraction of the largest only: a sketch whose weight
/// sits in a few buckets would lose its other buckets, and its cosines, to rounding (by up to
/// a quarter of its norm). Logarithmic steps bound each value's error by a fraction of itself.
///
/// The bound. A kept value is off by at most delta = 2^(1/20) - 1 = 0.0353 of itself, and each
/// of the n - 1 values below the largest, M, that is kept as 0 by less than t M, with t =
/// 2^-12.65 = 1.56e-4; the sketch's norm is at least M. So the decoded sketch b' of a sketch
/// b is off by at most eps ||b||, eps^2 = (delta^2 + (n - 1) t^2) / (1 + (n - 1) t^2): eps =
/// 0.0366 for n = 4,096 (`max_error`). The angle between b and b' is then at most asin(eps) =
/// 2.1 degrees, and so is the change in the angle between b and any vector, whose cosine
/// therefore moves by at most 0.037 anywhere. At replay_cosine (18.2 degrees): a true cosine
/// above 0.961 is always read above 0.95, and one below 0.937 never is; a replay (cosine 1) is
/// read above sqrt(1 - eps^2) = 0.9993, and honest results (0.24 between a node's successive
/// ones, under 0.8 within a round) stay far below.
class compact_sketch {
 public:
  /// How far a sketch of 4,096 buckets may be from the one kept, as a fraction of its norm.
  static constexpr double max_error = 0.0367;

  /// Keeps `sketch`. One with a non-finite value is kept as zeros: in floats its cosines are
  /// NaN (never above a bound); kept, they are 0.
  explicit compact_sketch(std::span<const float> sketch);
  /// Cosine similarity of `other` with the sketch kept, in double (0 if either is zero); sizes
  /// must match (a caller bug otherwise).
  double cosine_with(std::span<const float> other) const;
  size_t size() const { return code_.size(); }
  /// The bytes it holds outside itself.
  size_t heap_bytes() const { return code_.capacity(); }

 private:
  std::vector<int8_t> code_;  // sign and 127 + 10 log2(|value| / largest); 0 for 0
};

/// Each node key's last `replay_memory` update sketches, by key (one key joins under several
/// names, and replayed its updates in turn under each), for at most `keys` keys: past them,
/// the key heard from longest ago is forgotten. Unbounded, a job kept 256 KiB for every key
/// that ever sent it a result, for its whole life (a churning pool of 500 keys: 125 MiB).
/// Sketches are kept as compact_sketch, about 65 KiB a key: 50 jobs of 59 workers (300 keys
/// each) hold 0.9 GiB of them, where floats, 256 KiB a key, would take 3.7 GiB.
class replay_sketches {
 public:
  explicit replay_sketches(size_t keys) : keys_(keys < 1 ? 1 : keys) {}
  /// Whether `sketch` repeats one of `key`'s last ones (a cosine above replay_cosine, read
  /// within compact_sketch::max_error); it is kept either way, as the key's newest.
  bool repeats(const std::vector<uint8_t>& key, std::vector<float> sketch);
  size_t keys() const { return by_key_.size(); }
  /// About how many bytes the sketches and their keys hold (the allocator's own overhead left
  /// out).
  size_t bytes() const;

 private:
  struct kept {
    std::vector<compact_sketch> last;  // oldest first
    uint64_t heard = 0;                // when, in calls of repeats()
  };
  size_t keys_;
  uint64_t calls_ = 0;
  std::map<std::vector<uint8_t>, kept> by_key_;
};

/// The robust mean of a round's updates into `out` (resized to their length): each update is
/// first scaled down to at most `clip` times the median norm (the lower of the middle two of an
/// even count; clip 0: no clipping), then the
/// mean is taken per coordinate with `trim` of the values dropped at each end (trim 0: plain
/// mean; at least one value is always kept). All updates must have the same length.
void robust_mean(const std::vector<std::span<const float>>& updates, double clip, double trim,
                 std::vector<double>& out);

/// robust_mean in two steps, so that a large model's mean is taken a block of coordinates at
/// a time: the clipping scale of each update (1 where it is not clipped), then the mean of
/// coordinates [begin, begin + len) into `out` (len values). Together they give exactly
/// robust_mean's values.
std::vector<double> robust_mean_scales(const std::vector<std::span<const float>>& updates,
                                       double clip);
/// robust_mean_scales from the updates' L2 norms, when the updates are read a block at a time.
std::vector<double> robust_mean_scales(const std::vector<double>& norms, double clip);
void robust_mean_block(const std::vector<std::span<const float>>& updates,
                       const std::vector<double>& scale, double trim, size_t begin, size_t len,
                       std::vector<double>& out);

}  // namespace gflex
