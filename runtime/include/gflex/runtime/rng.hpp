#pragma once
/// @file
/// A small deterministic random number generator. Unlike <random>'s distributions, its
/// output is specified here and so identical on every platform and standard library, which
/// makes an assignment recomputable bit for bit from its seed.

#include <cmath>
#include <cstdint>

namespace gflex {

/// SplitMix64 stream with uniform and normal helpers.
class rng {
 public:
  explicit rng(uint64_t seed) : state_(seed) {}

  /// Next 64 random bits.
  uint64_t next() noexcept {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }

  /// Uniform in [0, 1) with 53 random bits.
  double uniform() noexcept { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

  /// Uniform integer in [0, n); n must be positive. Lemire's multiply-shift, no modulo bias
  /// worth noting at the sizes used here (n < 2^32).
  uint64_t below(uint64_t n) noexcept {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(next()) * n) >> 64);
  }

  /// Standard normal (Box-Muller; one value per call for simplicity).
  double normal() noexcept {
    double u1 = uniform();
    double u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

  /// Derives an independent stream for a sub-task (a layer, a shard, an epoch).
  rng fork(uint64_t salt) noexcept { return rng(next() ^ (salt * 0xD1B54A32D192ED03ULL)); }

 private:
  uint64_t state_;
};

}  // namespace gflex
