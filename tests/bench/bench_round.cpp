/// @file
/// gflex_bench_round: what closing a round costs a job on the core, by round size, against
/// one pass over the round's values in the same run.
///
/// A round of W results of P values (fp32 updates on the wire, as the shipped specs send
/// them): each result's signature checked and its update decoded as it comes (on_result),
/// then the round read a block at a time, screened (each result against the coordinate-wise
/// median of the others) and averaged with clipping (try_advance). The baseline is the least
/// any aggregation must do: read every value of the round once and sum it.
///
/// Usage: gflex_bench_round [P=7850] [W,...=10,100,1000] [repeats=5]

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "gflex/runtime/identity.hpp"
#include "gflex/runtime/rng.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "robust_aggregation.hpp"

using namespace gflex;
using clock_type = std::chrono::steady_clock;

namespace {

double ms_since(clock_type::time_point t) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct timings {
  double baseline = 0, signatures = 0, decode = 0, screen = 0, mean = 0;
};

// One round of `results` honest-looking updates (a common direction plus noise), timed.
timings round_of(size_t results, size_t dim, const node_identity& key, uint64_t seed) {
  rng r(seed);
  std::vector<float> common(dim);
  for (auto& v : common) v = static_cast<float>(r.normal()) * 0.01f;
  std::vector<std::vector<uint8_t>> wire, signatures;
  for (size_t i = 0; i < results; ++i) {
    std::vector<float> u(common);
    for (auto& v : u) v += static_cast<float>(r.normal()) * 0.01f;
    wire.push_back(encode_update(u, compression::fp32));
    signatures.push_back(key.sign(result_message(i, wire.back())));
  }
  timings t;
  // What on_result does for each result: the signature, then the decode.
  auto t0 = clock_type::now();
  for (size_t i = 0; i < results; ++i) {
    if (!verify_signature(key.public_key(), result_message(i, wire[i]), signatures[i])) {
      std::fprintf(stderr, "a signature did not verify\n");
      std::exit(1);
    }
  }
  t.signatures = ms_since(t0);
  t0 = clock_type::now();
  std::vector<packed_update> updates;
  for (size_t i = 0; i < results; ++i)
    updates.push_back(std::move(*decode_packed_update(wire[i], dim)));
  t.decode = ms_since(t0);
  // The baseline: every value read once (from the decoded updates) and summed.
  t0 = clock_type::now();
  std::vector<double> sum(dim, 0.0);
  std::vector<float> buf(dim);
  for (const auto& u : updates) {
    u.read(0, buf);
    for (size_t k = 0; k < dim; ++k) sum[k] += buf[k];
  }
  t.baseline = ms_since(t0);
  // try_advance: read into buffers, screen, then the clipped mean.
  t0 = clock_type::now();
  std::vector<std::vector<float>> buffers(results, std::vector<float>(dim));
  std::vector<std::span<const float>> block;
  for (size_t i = 0; i < results; ++i) {
    updates[i].read(0, buffers[i]);
    block.emplace_back(buffers[i]);
  }
  round_screen screen(results);
  screen.add(block);
  const auto verdicts = screen.verdicts(screen_bounds{});
  t.screen = ms_since(t0);
  t0 = clock_type::now();
  std::vector<double> norms;
  for (const auto& v : verdicts) norms.push_back(v.norm);
  std::vector<double> mean;
  robust_mean_block(block, robust_mean_scales(norms, 2.0), 0.0, 0, dim, mean);
  t.mean = ms_since(t0);
  if (std::abs(mean[0] - sum[0] / static_cast<double>(results)) > 1e-3) {
    std::fprintf(stderr, "the mean is off the plain sum: %g against %g\n", mean[0],
                 sum[0] / static_cast<double>(results));
    std::exit(1);
  }
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  const size_t dim = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 7850;
  std::vector<size_t> sizes{10, 100, 1000};
  if (argc > 2) {
    sizes.clear();
    std::stringstream in(argv[2]);
    for (std::string s; std::getline(in, s, ',');) sizes.push_back(std::stoull(s));
  }
  const int repeats = argc > 3 ? std::atoi(argv[3]) : 5;
  if (dim == 0 || sizes.empty() || repeats < 1) {
    std::fprintf(stderr, "usage: %s [P] [W,...] [repeats]\n", argv[0]);
    return 2;
  }
  const auto key = node_identity::generate();
  std::printf("round of W results of %zu fp32 values, median of %d\n\n", dim, repeats);
  std::printf(
      "| W | read once ms (baseline) | signatures ms | decode ms | screen ms | clipped mean ms | "
      "close (screen + mean) / baseline |\n|---:|---:|---:|---:|---:|---:|---:|\n");
  for (size_t w : sizes) {
    std::vector<double> base, signatures, decode, screen, mean;
    for (int k = 0; k < repeats; ++k) {
      const auto t = round_of(w, dim, key, 1000 * w + static_cast<uint64_t>(k));
      base.push_back(t.baseline);
      signatures.push_back(t.signatures);
      decode.push_back(t.decode);
      screen.push_back(t.screen);
      mean.push_back(t.mean);
    }
    std::printf("| %zu | %.2f | %.2f | %.2f | %.2f | %.2f | %.0fx |\n", w, median(base),
                median(signatures), median(decode), median(screen), median(mean),
                (median(screen) + median(mean)) / median(base));
  }
  return 0;
}
