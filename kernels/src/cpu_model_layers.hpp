#pragma once
/// @file
/// The CPU loops of the layers user-defined models add (pooling of any window, activations,
/// dropout, normalisation, embeddings, attention's softmax, mean squared error). Each works
/// on a range of rows so that the CPU backend can split a batch across its pool; the
/// backend's overrides document the contracts (backend.hpp).

#include <cstdint>

#include "gflex/kernels/backend.hpp"

namespace gflex::kernels::cpu {

/// Pooling of samples [n0, n1).
void pool2d_forward(bool max, const float* x, int64_t n0, int64_t n1, int64_t height, int64_t width,
                    int64_t channels, int64_t window, int64_t stride, float* y, int32_t* argmax);
void pool2d_backward(bool max, const float* dy, const int32_t* argmax, int64_t n0, int64_t n1,
                     int64_t height, int64_t width, int64_t channels, int64_t window,
                     int64_t stride, float* dx);

/// Elementwise over [i0, i1).
void activation_forward(activation f, const float* x, float* y, int64_t i0, int64_t i1);
void activation_backward(activation f, const float* x, const float* dy, float* dx, int64_t i0,
                         int64_t i1);
void dropout_mask(int64_t i0, int64_t i1, float rate, uint64_t seed, float* mask);

/// Rows [r0, r1) of a normalisation; the parameter gradients are column sums the caller
/// forms (norm_backward_params).
void norm_forward(bool rms, const float* x, const float* gamma, const float* beta, int64_t r0,
                  int64_t r1, int64_t cols, float eps, float* y, float* mean, float* rstd);
void norm_backward_input(bool rms, const float* x, const float* gamma, const float* dy,
                         const float* mean, const float* rstd, int64_t r0, int64_t r1, int64_t cols,
                         float* dx, bool accumulate);
/// Columns [c0, c1) of dgamma (and dbeta unless null), summed over all rows in order.
void norm_backward_params(bool rms, const float* x, const float* dy, const float* mean,
                          const float* rstd, int64_t rows, int64_t cols, int64_t c0, int64_t c1,
                          float* dgamma, float* dbeta);

/// Rows [r0, r1) of the `count * t` rows of causal score matrices.
void causal_softmax_rows(float* s, int64_t r0, int64_t r1, int64_t t, float scale);
void softmax_backward_rows(const float* p, float* dp, int64_t r0, int64_t r1, int64_t cols,
                           float scale);

/// Fused causal attention (backend::fused_attention_forward) for the (sample, head) pairs
/// [p0, p1) of batch * heads, row by row: each query row's scores, softmax and context in
/// one pass over its visible keys, without a [t, t] matrix.
void fused_attention_forward_pairs(const float* qkv, int64_t p0, int64_t p1, int64_t t, int64_t d,
                                   int64_t heads, float scale, float* ctx, float* lse);
/// Its backward for pairs [p0, p1): each pair writes only its own columns of dqkv, summing
/// in row order, so pairs may run on different threads and the result is the same.
void fused_attention_backward_pairs(const float* qkv, const float* lse, const float* dctx,
                                    int64_t p0, int64_t p1, int64_t t, int64_t d, int64_t heads,
                                    float scale, float* dqkv);

/// Mean squared error against one-hot labels over all rows (stats as softmax_xent).
void mse_onehot(const float* y, const int32_t* labels, int64_t rows, int64_t cols, float grad_scale,
                float* dy, float* stats);

/// The dropout hash: splitmix64 of (seed + i * golden), its top 24 bits as a uniform in
/// [0, 1). The CUDA backend computes the same, so both draw the same mask.
inline float dropout_uniform(uint64_t seed, uint64_t i) {
  uint64_t z = seed + i * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
}

}  // namespace gflex::kernels::cpu
