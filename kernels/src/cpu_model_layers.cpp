/// @file
/// CPU loops of the model-graph layers (see cpu_model_layers.hpp). Reductions accumulate in
/// double so that results depend little on the order, and never on the thread count: rows
/// split across threads, each row summed by one thread.

#include "cpu_model_layers.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace gflex::kernels::cpu {

namespace {

// As in cpu_backend.cpp: the elementwise loops are compiled for AVX-512, AVX2+FMA and
// baseline x86-64, and the loader picks the best the machine has.
#define GFLEX_VECTOR_CLONES [[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]

constexpr float k_gelu_c = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float k_gelu_a = 0.044715f;

/// tanh as a rational function (the minimax approximation Eigen uses), within 4e-7 of the
/// true value and never past +-1: unlike libm's tanhf it vectorises, and GELU spends most of its
/// time here.
inline float fast_tanh(float x) {
  constexpr float clamp = 7.90531110763549805f;
  x = std::min(std::max(x, -clamp), clamp);
  const float x2 = x * x;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 - 8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  // Near the clamp, fused multiply-adds (a build's choice) can round the quotient just past
  // +-1: 1 - t^2 then turns negative and a saturated unit's gradient points the wrong way.
  return std::min(std::max(p * x / q, -1.0f), 1.0f);
}

int64_t pooled(int64_t extent, int64_t window, int64_t stride) {
  return (extent - window) / stride + 1;
}

}  // namespace

void pool2d_forward(bool max, const float* x, int64_t n0, int64_t n1, int64_t height, int64_t width,
                    int64_t channels, int64_t window, int64_t stride, float* y, int32_t* argmax) {
  const int64_t oh_n = pooled(height, window, stride), ow_n = pooled(width, window, stride);
  const int64_t in_sample = height * width * channels, out_sample = oh_n * ow_n * channels;
  const float inv_area = 1.0f / static_cast<float>(window * window);
  std::vector<double> sums(static_cast<size_t>(channels));
  for (int64_t n = n0; n < n1; ++n) {
    const float* in = x + n * in_sample;
    for (int64_t oh = 0; oh < oh_n; ++oh)
      for (int64_t ow = 0; ow < ow_n; ++ow) {
        const int64_t out = n * out_sample + (oh * ow_n + ow) * channels;
        if (max) {
          // Channels innermost, so each window position is one vectorised compare-and-select
          // over the channels; the window's first input wins ties.
          float* __restrict best = y + out;
          int32_t* __restrict at = argmax + out;
          for (int64_t r = 0; r < window; ++r)
            for (int64_t s = 0; s < window; ++s) {
              const int64_t off = ((oh * stride + r) * width + ow * stride + s) * channels;
              const float* px = in + off;
              if (r + s == 0) {
                for (int64_t c = 0; c < channels; ++c)
                  best[c] = px[c], at[c] = static_cast<int32_t>(off + c);
                continue;
              }
              for (int64_t c = 0; c < channels; ++c) {  // selects, not branches: vectorises
                const bool larger = px[c] > best[c];
                at[c] = larger ? static_cast<int32_t>(off + c) : at[c];
                best[c] = larger ? px[c] : best[c];
              }
            }
        } else {
          std::fill(sums.begin(), sums.end(), 0.0);
          for (int64_t r = 0; r < window; ++r)
            for (int64_t s = 0; s < window; ++s) {
              const float* px = in + ((oh * stride + r) * width + ow * stride + s) * channels;
              for (int64_t c = 0; c < channels; ++c) sums[static_cast<size_t>(c)] += px[c];
            }
          for (int64_t c = 0; c < channels; ++c)
            y[out + c] = static_cast<float>(sums[static_cast<size_t>(c)]) * inv_area;
        }
      }
  }
}

void pool2d_backward(bool max, const float* dy, const int32_t* argmax, int64_t n0, int64_t n1,
                     int64_t height, int64_t width, int64_t channels, int64_t window,
                     int64_t stride, float* dx) {
  const int64_t oh_n = pooled(height, window, stride), ow_n = pooled(width, window, stride);
  const int64_t in_sample = height * width * channels, out_sample = oh_n * ow_n * channels;
  const float inv_area = 1.0f / static_cast<float>(window * window);
  for (int64_t n = n0; n < n1; ++n) {
    float* d = dx + n * in_sample;
    std::fill(d, d + in_sample, 0.0f);
    const float* g = dy + n * out_sample;
    if (max) {
      for (int64_t i = 0; i < out_sample; ++i) d[argmax[n * out_sample + i]] += g[i];
      continue;
    }
    for (int64_t oh = 0; oh < oh_n; ++oh)
      for (int64_t ow = 0; ow < ow_n; ++ow) {
        const float* go = g + (oh * ow_n + ow) * channels;
        for (int64_t r = 0; r < window; ++r)
          for (int64_t s = 0; s < window; ++s) {
            float* px = d + ((oh * stride + r) * width + ow * stride + s) * channels;
            for (int64_t c = 0; c < channels; ++c) px[c] += go[c] * inv_area;
          }
      }
  }
}

GFLEX_VECTOR_CLONES
void activation_forward(activation f, const float* x, float* y, int64_t i0, int64_t i1) {
  switch (f) {
    case activation::relu:
      for (int64_t i = i0; i < i1; ++i) y[i] = std::max(x[i], 0.0f);
      break;
    case activation::tanh:
      for (int64_t i = i0; i < i1; ++i) y[i] = fast_tanh(x[i]);
      break;
    case activation::gelu:
      for (int64_t i = i0; i < i1; ++i) {
        const float v = x[i];
        y[i] = 0.5f * v * (1.0f + fast_tanh(k_gelu_c * (v + k_gelu_a * v * v * v)));
      }
      break;
  }
}

GFLEX_VECTOR_CLONES
void activation_backward(activation f, const float* x, const float* dy, float* dx, int64_t i0,
                         int64_t i1) {
  switch (f) {
    case activation::relu:
      for (int64_t i = i0; i < i1; ++i) dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;
      break;
    case activation::tanh:
      for (int64_t i = i0; i < i1; ++i) {
        const float t = fast_tanh(x[i]);
        dx[i] = dy[i] * (1.0f - t * t);
      }
      break;
    case activation::gelu:
      for (int64_t i = i0; i < i1; ++i) {
        // Past |x| = 10, t is +-1 in float and the gradient 1 or 0; clamped, x * x cannot
        // overflow into (1 - t^2) * inf = NaN.
        const float v = std::clamp(x[i], -10.0f, 10.0f);
        const float t = fast_tanh(k_gelu_c * (v + k_gelu_a * v * v * v));
        const float dt = (1.0f - t * t) * k_gelu_c * (1.0f + 3.0f * k_gelu_a * v * v);
        dx[i] = dy[i] * (0.5f * (1.0f + t) + 0.5f * v * dt);
      }
      break;
  }
}

void dropout_mask(int64_t i0, int64_t i1, float rate, uint64_t seed, float* mask) {
  const float keep = 1.0f / (1.0f - rate);
  for (int64_t i = i0; i < i1; ++i)
    mask[i] = dropout_uniform(seed, static_cast<uint64_t>(i)) < rate ? 0.0f : keep;
}

void norm_forward(bool rms, const float* x, const float* gamma, const float* beta, int64_t r0,
                  int64_t r1, int64_t cols, float eps, float* y, float* mean, float* rstd) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* in = x + r * cols;
    float* out = y + r * cols;
    double mu = 0.0;
    if (!rms) {
      for (int64_t c = 0; c < cols; ++c) mu += in[c];
      mu /= static_cast<double>(cols);
    }
    double var = 0.0;
    for (int64_t c = 0; c < cols; ++c) var += (in[c] - mu) * (in[c] - mu);
    var /= static_cast<double>(cols);
    const float m = static_cast<float>(mu), s = static_cast<float>(1.0 / std::sqrt(var + eps));
    mean[r] = m;
    rstd[r] = s;
    for (int64_t c = 0; c < cols; ++c)
      out[c] = (in[c] - m) * s * gamma[c] + (beta != nullptr ? beta[c] : 0.0f);
  }
}

void norm_backward_input(bool rms, const float* x, const float* gamma, const float* dy,
                         const float* mean, const float* rstd, int64_t r0, int64_t r1, int64_t cols,
                         float* dx, bool accumulate) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* in = x + r * cols;
    const float* g = dy + r * cols;
    float* out = dx + r * cols;
    const float m = mean[r], s = rstd[r];
    double sum_g = 0.0, sum_gx = 0.0;
    for (int64_t c = 0; c < cols; ++c) {
      const double gc = static_cast<double>(g[c]) * gamma[c];
      sum_g += gc;
      sum_gx += gc * ((in[c] - m) * s);
    }
    const double mean_g = rms ? 0.0 : sum_g / static_cast<double>(cols);
    const double mean_gx = sum_gx / static_cast<double>(cols);
    for (int64_t c = 0; c < cols; ++c) {
      const double xhat = (in[c] - m) * s;
      const auto v = static_cast<float>(s * (g[c] * gamma[c] - mean_g - xhat * mean_gx));
      out[c] = accumulate ? out[c] + v : v;
    }
  }
}

void norm_backward_params(bool rms, const float* x, const float* dy, const float* mean,
                          const float* rstd, int64_t rows, int64_t cols, int64_t c0, int64_t c1,
                          float* dgamma, float* dbeta) {
  std::vector<double> dg(static_cast<size_t>(c1 - c0), 0.0), db(dg.size(), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * cols;
    const float* g = dy + r * cols;
    const float m = mean[r], s = rstd[r];
    for (int64_t c = c0; c < c1; ++c) {
      dg[static_cast<size_t>(c - c0)] += static_cast<double>(g[c]) * ((in[c] - m) * s);
      db[static_cast<size_t>(c - c0)] += g[c];
    }
  }
  (void)rms;
  for (int64_t c = c0; c < c1; ++c) {
    dgamma[c] = static_cast<float>(dg[static_cast<size_t>(c - c0)]);
    if (dbeta != nullptr) dbeta[c] = static_cast<float>(db[static_cast<size_t>(c - c0)]);
  }
}

void causal_softmax_rows(float* s, int64_t r0, int64_t r1, int64_t t, float scale) {
  for (int64_t r = r0; r < r1; ++r) {
    float* row = s + r * t;
    const int64_t visible = r % t + 1;
    float max = -std::numeric_limits<float>::infinity();
    for (int64_t c = 0; c < visible; ++c) max = std::max(max, row[c] * scale);
    double denom = 0.0;
    for (int64_t c = 0; c < visible; ++c) {
      row[c] = std::exp(row[c] * scale - max);
      denom += row[c];
    }
    const float inv = static_cast<float>(1.0 / denom);
    for (int64_t c = 0; c < visible; ++c) row[c] *= inv;
    std::fill(row + visible, row + t, 0.0f);
  }
}

void softmax_backward_rows(const float* p, float* dp, int64_t r0, int64_t r1, int64_t cols,
                           float scale) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* pr = p + r * cols;
    float* g = dp + r * cols;
    double dot = 0.0;
    for (int64_t c = 0; c < cols; ++c) dot += static_cast<double>(pr[c]) * g[c];
    const float d = static_cast<float>(dot);
    for (int64_t c = 0; c < cols; ++c) g[c] = scale * pr[c] * (g[c] - d);
  }
}

namespace {

/// One (sample, head) pair's q, k and v rows: columns [h * dh, (h + 1) * dh) of the first,
/// second and third d columns of the sample's qkv rows.
struct head_view {
  const float* q;
  const float* k;
  const float* v;
  int64_t ld, dh;
  head_view(const float* qkv, int64_t pair, int64_t t, int64_t d, int64_t heads)
      : ld(3 * d), dh(d / heads) {
    const int64_t b = pair / heads, h = pair % heads;
    q = qkv + b * t * ld + h * dh;
    k = q + d;
    v = q + 2 * d;
  }
};

/// Eight running sums, so that the compiler keeps them in one vector register (a single
/// float sum is a chain it may not reorder).
float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  float lanes[8] = {};
  int64_t c = 0;
  for (; c + 8 <= n; c += 8)
    for (int k = 0; k < 8; ++k) lanes[k] += a[c + k] * b[c + k];
  float s = 0.0f;
  for (; c < n; ++c) s += a[c] * b[c];
  for (float v : lanes) s += v;
  return s;
}

/// y += a * x over n values (y and x never overlap: different rows or column blocks).
void add_scaled(float* __restrict y, float a, const float* __restrict x, int64_t n) {
  for (int64_t c = 0; c < n; ++c) y[c] += a * x[c];
}

}  // namespace

void fused_attention_forward_pairs(const float* qkv, int64_t p0, int64_t p1, int64_t t, int64_t d,
                                   int64_t heads, float scale, float* ctx, float* lse) {
  std::vector<float> p(static_cast<size_t>(t));
  for (int64_t pair = p0; pair < p1; ++pair) {
    const head_view hv(qkv, pair, t, d, heads);
    const int64_t b = pair / heads, h = pair % heads, dh = hv.dh;
    for (int64_t i = 0; i < t; ++i) {
      float max = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j <= i; ++j) {
        p[j] = scale * dot(hv.q + i * hv.ld, hv.k + j * hv.ld, dh);
        max = std::max(max, p[j]);
      }
      double denom = 0.0;
      for (int64_t j = 0; j <= i; ++j) {
        p[j] = std::exp(p[j] - max);
        denom += p[j];
      }
      const float inv = static_cast<float>(1.0 / denom);
      float* out = ctx + (b * t + i) * d + h * dh;
      std::fill(out, out + dh, 0.0f);
      for (int64_t j = 0; j <= i; ++j) add_scaled(out, p[j] * inv, hv.v + j * hv.ld, dh);
      lse[pair * t + i] = max + static_cast<float>(std::log(denom));
    }
  }
}

void fused_attention_backward_pairs(const float* qkv, const float* lse, const float* dctx,
                                    int64_t p0, int64_t p1, int64_t t, int64_t d, int64_t heads,
                                    float scale, float* dqkv) {
  std::vector<float> p(static_cast<size_t>(t)), dp(static_cast<size_t>(t));
  for (int64_t pair = p0; pair < p1; ++pair) {
    const head_view hv(qkv, pair, t, d, heads);
    const int64_t b = pair / heads, h = pair % heads, dh = hv.dh, ld = hv.ld;
    float* dq = dqkv + b * t * ld + h * dh;
    float* dk = dq + d;
    float* dv = dq + 2 * d;
    for (int64_t i = 0; i < t; ++i) {
      std::fill(dq + i * ld, dq + i * ld + dh, 0.0f);
      std::fill(dk + i * ld, dk + i * ld + dh, 0.0f);
      std::fill(dv + i * ld, dv + i * ld + dh, 0.0f);
    }
    for (int64_t i = 0; i < t; ++i) {
      const float* qi = hv.q + i * ld;
      const float* doi = dctx + (b * t + i) * d + h * dh;
      // The probabilities again from the scores and the row's log-sum-exp; dp = dO V^T.
      double sum = 0.0;
      for (int64_t j = 0; j <= i; ++j) {
        p[j] = std::exp(scale * dot(qi, hv.k + j * ld, dh) - lse[pair * t + i]);
        dp[j] = dot(doi, hv.v + j * ld, dh);
        sum += static_cast<double>(p[j]) * dp[j];
      }
      const float mean = static_cast<float>(sum);
      for (int64_t j = 0; j <= i; ++j) {
        const float ds = scale * p[j] * (dp[j] - mean);
        add_scaled(dq + i * ld, ds, hv.k + j * ld, dh);
        add_scaled(dk + j * ld, ds, qi, dh);
        add_scaled(dv + j * ld, p[j], doi, dh);
      }
    }
  }
}

void mse_onehot(const float* y, const int32_t* labels, int64_t rows, int64_t cols, float grad_scale,
                float* dy, float* stats) {
  double loss = 0.0;
  int64_t correct = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = y + r * cols;
    int64_t arg = 0;
    for (int64_t c = 0; c < cols; ++c) {
      const float target = c == labels[r] ? 1.0f : 0.0f;
      const float diff = row[c] - target;
      loss += static_cast<double>(diff) * diff;
      if (row[c] > row[arg]) arg = c;
      if (dy != nullptr) dy[r * cols + c] = 2.0f * diff * grad_scale;
    }
    correct += arg == labels[r] ? 1 : 0;
  }
  stats[0] += static_cast<float>(loss);
  stats[1] += static_cast<float>(correct);
}

}  // namespace gflex::kernels::cpu
