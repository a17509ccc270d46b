#pragma once
/// @file
/// The statistics a job uses to judge and combine a round's pseudo-gradients: norms and
/// cosine similarities for the immediate checks, the relative distance for verification,
/// and a robust mean (norm clipping, optionally a coordinate-wise trimmed mean) that bounds
/// what a result slipping past the checks can do. Free of CAF.

#include <cstddef>
#include <span>
#include <string>
#include <vector>

namespace gflex {

double l2_norm(std::span<const float> x) noexcept;

/// |claimed - reference| / |reference| (L2). 0 when both are zero, infinity when only the
/// reference is; sizes must match (a caller bug otherwise).
double relative_distance(std::span<const float> claimed, std::span<const float> reference);

/// For each update, the cosine similarity of its direction with the sum of the other
/// updates' directions (each scaled to unit length, so that no single one dominates). A zero
/// update, or one with no others to compare with, gets 0.
std::vector<double> agreement(const std::vector<std::span<const float>>& updates);

/// Five standard deviations of the cosine between a random direction and a fixed one in
/// `dim` dimensions, 5 / sqrt(dim): an update agreeing less than this with the others is
/// indistinguishable from noise.
double noise_agreement_bound(size_t dim) noexcept;

/// A result the immediate checks refuse, and why in words.
struct outlier {
  size_t index = 0;
  std::string why;
};

/// The results of one round that do not look like the others. Norms: a result whose norm is
/// over `norm_bound` times the median norm, or under the median over `norm_bound`, is an
/// outlier. Directions, among the rest: a result whose agreement (below) is under
/// max(min_cosine, noise_agreement_bound) is an outlier. With fewer than 3 results nothing can be
/// compared and none is an outlier; min_cosine <= -1 turns the direction check off. The bounds hold
/// while honest results are a majority of the round.
std::vector<outlier> find_outliers(const std::vector<std::span<const float>>& updates,
                                   double norm_bound, double min_cosine);

/// Results that pass the checks above but stand out enough to deserve a re-computation
/// whatever their node's reputation: a norm more than 15% away from the round's median, or
/// an agreement under half the round's median agreement. Honest results of one round are
/// much closer than that (their norms within a few percent), while a node scaling its
/// updates or replaying old ones is not. With fewer than 3 results, none.
std::vector<size_t> find_suspicious(const std::vector<std::span<const float>>& updates);

/// A count sketch of an update (each value added, with a pseudo-random sign, to one of
/// `buckets` pseudo-random buckets; the same for every update of the same size): the cosine
/// of two sketches estimates the cosine of the updates to about 1/sqrt(buckets), in O(n).
/// A job keeps each node's last one to notice a replayed update.
std::vector<float> update_sketch(std::span<const float> update, size_t buckets = 4096);

/// Cosine similarity of two vectors of the same size (0 if either is zero).
double cosine(std::span<const float> a, std::span<const float> b);

/// A node's update whose sketch has a cosine above this with the node's previous one is
/// taken for a replay and re-computed: honest updates of successive rounds are far apart.
inline constexpr double replay_cosine = 0.95;

/// The robust mean of a round's updates into `out` (resized to their length): each update is
/// first scaled down to at most `clip` times the median norm (clip 0: no clipping), then the
/// mean is taken per coordinate with `trim` of the values dropped at each end (trim 0: plain
/// mean; at least one value is always kept). All updates must have the same length.
void robust_mean(const std::vector<std::span<const float>>& updates, double clip, double trim,
                 std::vector<double>& out);

}  // namespace gflex
