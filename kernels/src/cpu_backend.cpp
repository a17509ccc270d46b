/// @file
/// The CPU backend: GEMM on OpenBLAS, everything else as plain loops written so that the
/// compiler vectorises them (contiguous, no aliasing through restrict, no branches in the
/// inner loop). Batch-sized loops run on the calling thread; AdamW, which streams every
/// parameter and its three companions (16 bytes in, 12 out per parameter), is split across
/// the same number of threads as OpenBLAS uses.

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "gflex/kernels/backend.hpp"
#include "parallel_for.hpp"

namespace gflex::kernels {

namespace {

// The memory-bound loops are compiled for AVX-512, AVX2+FMA and baseline x86-64, and the
// loader picks the best the machine has: one binary for every volunteer's CPU.
#define GFLEX_VECTOR_CLONES [[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]

GFLEX_VECTOR_CLONES
void adamw_loop(float* __restrict param, const float* __restrict grad, float* __restrict m,
                float* __restrict v, int64_t n, float b1, float b2, float inv_bc1, float inv_bc2,
                float lr, float decay, float eps) {
  for (int64_t i = 0; i < n; ++i) {
    float g = grad[i];
    float mi = b1 * m[i] + (1.0f - b1) * g;
    float vi = b2 * v[i] + (1.0f - b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    param[i] = param[i] * decay - lr * (mi * inv_bc1) / (std::sqrt(vi * inv_bc2) + eps);
  }
}

GFLEX_VECTOR_CLONES
void bias_relu_loop(float* __restrict y, const float* __restrict bias, int64_t rows, int64_t cols,
                    bool relu) {
  for (int64_t r = 0; r < rows; ++r) {
    float* __restrict row = y + r * cols;
    if (relu) {
      for (int64_t c = 0; c < cols; ++c) row[c] = std::max(row[c] + bias[c], 0.0f);
    } else {
      for (int64_t c = 0; c < cols; ++c) row[c] += bias[c];
    }
  }
}

class cpu_backend final : public backend {
 public:
  explicit cpu_backend(int threads)
      : threads_(threads > 0 ? (openblas_set_num_threads(threads), threads)
                             : openblas_get_num_threads()),
        pool_(threads_) {}

  device where() const override { return device{}; }

  std::string describe() const override {
    return "cpu: OpenBLAS " + std::string(openblas_get_corename()) + ", " +
           std::to_string(threads_) + " threads";
  }

  tensor allocate(shape_t shape, dtype type) override {
    return tensor::empty(std::move(shape), type);
  }
  void upload(const void* src, void* dst, size_t count) override {
    if (count > 0 && src != dst) std::memcpy(dst, src, count);
  }
  void download(const void* src, void* dst, size_t count) override {
    if (count > 0 && src != dst) std::memcpy(dst, src, count);
  }
  void synchronize() override {}
  void fill(float* x, int64_t n, float value) override { std::fill(x, x + n, value); }

  void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
            const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
            int64_t ldc) override {
    if (m == 0 || n == 0) return;
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, static_cast<blasint>(m),
                static_cast<blasint>(n), static_cast<blasint>(k), alpha, a,
                static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c,
                static_cast<blasint>(ldc));
  }

  void axpby(int64_t n, float a, const float* __restrict x, float b, float* __restrict y) override {
    // As in BLAS, b == 0 overwrites y without reading it (y may be uninitialised).
    if (b == 0.0f) {
      for (int64_t i = 0; i < n; ++i) y[i] = a * x[i];
    } else {
      for (int64_t i = 0; i < n; ++i) y[i] = a * x[i] + b * y[i];
    }
  }

  void bias_relu_forward(float* y, const float* bias, int64_t rows, int64_t cols,
                         bool relu) override {
    bias_relu_loop(y, bias, rows, cols, relu);
  }

  void relu_backward(float* __restrict dy, const float* __restrict y, int64_t n) override {
    for (int64_t i = 0; i < n; ++i) dy[i] = y[i] > 0.0f ? dy[i] : 0.0f;
  }

  void column_sum(const float* __restrict x, int64_t rows, int64_t cols,
                  float* __restrict out) override {
    // Row by row so that every pass streams contiguous memory; float partial sums per column
    // are exact enough for batch-sized row counts (a few hundred terms).
    std::fill(out, out + cols, 0.0f);
    for (int64_t r = 0; r < rows; ++r) {
      const float* __restrict row = x + r * cols;
      for (int64_t c = 0; c < cols; ++c) out[c] += row[c];
    }
  }

  void softmax_xent(const float* logits, const int32_t* labels, int64_t rows, int64_t classes,
                    float grad_scale, float* dlogits, float* stats) override {
    double loss_sum = 0.0;
    int64_t correct = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const float* z = logits + r * classes;
      int64_t arg = 0;
      float max = z[0];
      for (int64_t c = 1; c < classes; ++c)
        if (z[c] > max) max = z[c], arg = c;
      double denom = 0.0;
      for (int64_t c = 0; c < classes; ++c) denom += std::exp(static_cast<double>(z[c] - max));
      double log_denom = std::log(denom);
      int32_t label = labels[r];
      loss_sum += log_denom - static_cast<double>(z[label] - max);
      correct += arg == label ? 1 : 0;
      if (dlogits != nullptr) {
        float* g = dlogits + r * classes;
        for (int64_t c = 0; c < classes; ++c) {
          double p = std::exp(static_cast<double>(z[c] - max) - log_denom);
          g[c] = static_cast<float>((p - (c == label ? 1.0 : 0.0)) * grad_scale);
        }
      }
    }
    stats[0] += static_cast<float>(loss_sum);
    stats[1] += static_cast<float>(correct);
  }

  void adamw(float* __restrict param, const float* __restrict grad, float* __restrict m,
             float* __restrict v, int64_t n, const adamw_config& cfg, int64_t step) override {
    const float b1 = cfg.beta1, b2 = cfg.beta2;
    const float inv_bc1 = static_cast<float>(1.0 / (1.0 - std::pow(double{cfg.beta1}, step)));
    const float inv_bc2 = static_cast<float>(1.0 / (1.0 - std::pow(double{cfg.beta2}, step)));
    const float decay = 1.0f - cfg.lr * cfg.weight_decay;
    pool_.run(n, 16, 1 << 15, [&](int64_t begin, int64_t end) {
      adamw_loop(param + begin, grad + begin, m + begin, v + begin, end - begin, b1, b2, inv_bc1,
                 inv_bc2, cfg.lr, decay, cfg.eps);
    });
  }

  double sum(const float* x, int64_t n) override {
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += x[i];
    return s;
  }

  double sum_squares(const float* x, int64_t n) override {
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
    return s;
  }

 private:
  int threads_;
  parallel_for pool_;
};

}  // namespace

std::unique_ptr<backend> make_cpu_backend(int threads) {
  return std::make_unique<cpu_backend>(threads);
}

}  // namespace gflex::kernels
