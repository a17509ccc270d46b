#pragma once
/// @file
/// A backend that passes every operation to another through one hook, dispatch(): a
/// benchmark times each kind of operation there, a test records them there. Operations are
/// handed over as closures holding copies of their arguments, so a subclass may keep one
/// and run it later.

#include <functional>
#include <string>
#include <utility>

#include "gflex/kernels/backend.hpp"

namespace gflex::kernels::testing {

class forwarding_backend : public backend {
 public:
  explicit forwarding_backend(backend& inner) : inner_(inner) {}

  device where() const override { return inner_.where(); }
  std::string describe() const override { return inner_.describe(); }
  void* native_stream() const noexcept override { return inner_.native_stream(); }
  tensor allocate(shape_t s, dtype t) override { return inner_.allocate(std::move(s), t); }
  void upload(const void* s, void* d, size_t n) override {
    dispatch("upload", [=, this] { inner_.upload(s, d, n); });
  }
  void download(const void* s, void* d, size_t n) override {
    dispatch("download", [=, this] { inner_.download(s, d, n); });
  }
  void synchronize() override { inner_.synchronize(); }
  void set_precision(math_precision p) override { inner_.set_precision(p); }
  math_precision precision() const override { return inner_.precision(); }
  bool fused_attention(int64_t head_dim) const override { return inner_.fused_attention(head_dim); }
  double sum(const float* x, int64_t n) override { return inner_.sum(x, n); }
  double sum_squares(const float* x, int64_t n) override { return inner_.sum_squares(x, n); }

  void fill(float* x, int64_t n, float v) override {
    dispatch("fill", [=, this] { inner_.fill(x, n, v); });
  }
  void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
            int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) override {
    dispatch("gemm",
             [=, this] { inner_.gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc); });
  }
  void axpby(int64_t n, float a, const float* x, float b, float* y) override {
    dispatch("axpby", [=, this] { inner_.axpby(n, a, x, b, y); });
  }
  void bias_relu_forward(float* y, const float* b, int64_t r, int64_t c, bool relu) override {
    dispatch("bias_relu_forward", [=, this] { inner_.bias_relu_forward(y, b, r, c, relu); });
  }
  void relu_backward(float* dy, const float* y, int64_t n) override {
    dispatch("relu_backward", [=, this] { inner_.relu_backward(dy, y, n); });
  }
  void column_sum(const float* x, int64_t r, int64_t c, float* out) override {
    dispatch("column_sum", [=, this] { inner_.column_sum(x, r, c, out); });
  }
  void softmax_xent(const float* l, const int32_t* y, int64_t r, int64_t c, float s, float* d,
                    float* st) override {
    dispatch("softmax_xent", [=, this] { inner_.softmax_xent(l, y, r, c, s, d, st); });
  }
  void adamw(float* p, const float* g, float* m, float* v, int64_t n, const adamw_config& c,
             int64_t step) override {
    dispatch("adamw", [=, this] { inner_.adamw(p, g, m, v, n, c, step); });
  }
  void conv2d_forward(const conv2d_geometry& g, const float* x, const float* w, float* y) override {
    dispatch("conv2d_forward", [=, this] { inner_.conv2d_forward(g, x, w, y); });
  }
  void conv2d_backward_data(const conv2d_geometry& g, const float* dy, const float* w,
                            float* dx) override {
    dispatch("conv2d_backward_data", [=, this] { inner_.conv2d_backward_data(g, dy, w, dx); });
  }
  void conv2d_backward_filter(const conv2d_geometry& g, const float* x, const float* dy,
                              float* dw) override {
    dispatch("conv2d_backward_filter", [=, this] { inner_.conv2d_backward_filter(g, x, dy, dw); });
  }
  void max_pool2_forward(const float* x, int64_t n, int64_t h, int64_t w, int64_t c, float* y,
                         int32_t* i) override {
    dispatch("max_pool2_forward", [=, this] { inner_.max_pool2_forward(x, n, h, w, c, y, i); });
  }
  void max_pool2_backward(const float* dy, const int32_t* i, int64_t n, int64_t h, int64_t w,
                          int64_t c, float* dx) override {
    dispatch("max_pool2_backward", [=, this] { inner_.max_pool2_backward(dy, i, n, h, w, c, dx); });
  }
  void pool2d_forward(bool max, const float* x, int64_t n, int64_t h, int64_t w, int64_t c,
                      int64_t win, int64_t stride, float* y, int32_t* i) override {
    dispatch("pool2d_forward",
             [=, this] { inner_.pool2d_forward(max, x, n, h, w, c, win, stride, y, i); });
  }
  void pool2d_backward(bool max, const float* dy, const int32_t* i, int64_t n, int64_t h, int64_t w,
                       int64_t c, int64_t win, int64_t stride, float* dx) override {
    dispatch("pool2d_backward",
             [=, this] { inner_.pool2d_backward(max, dy, i, n, h, w, c, win, stride, dx); });
  }
  void activation_forward(activation f, const float* x, float* y, int64_t n) override {
    dispatch("activation_forward", [=, this] { inner_.activation_forward(f, x, y, n); });
  }
  void activation_backward(activation f, const float* x, const float* dy, float* dx,
                           int64_t n) override {
    dispatch("activation_backward", [=, this] { inner_.activation_backward(f, x, dy, dx, n); });
  }
  void bias_activation_forward(activation f, float* x, const float* bias, int64_t rows,
                               int64_t cols, float* y) override {
    dispatch("bias_activation_forward",
             [=, this] { inner_.bias_activation_forward(f, x, bias, rows, cols, y); });
  }
  void multiply(int64_t n, const float* a, const float* b, float* out) override {
    dispatch("multiply", [=, this] { inner_.multiply(n, a, b, out); });
  }
  void add(int64_t n, const float* a, const float* b, float* out) override {
    dispatch("add", [=, this] { inner_.add(n, a, b, out); });
  }
  void dropout_mask(int64_t n, float rate, uint64_t seed, float* mask) override {
    dispatch("dropout_mask", [=, this] { inner_.dropout_mask(n, rate, seed, mask); });
  }
  void norm_forward(bool rms, const float* x, const float* g, const float* b, int64_t rows,
                    int64_t cols, float eps, float* y, float* mean, float* rstd) override {
    dispatch("norm_forward",
             [=, this] { inner_.norm_forward(rms, x, g, b, rows, cols, eps, y, mean, rstd); });
  }
  void norm_backward(bool rms, const float* x, const float* g, const float* dy, const float* mean,
                     const float* rstd, int64_t rows, int64_t cols, float* dx, float* dg, float* db,
                     bool accumulate) override {
    dispatch("norm_backward", [=, this] {
      inner_.norm_backward(rms, x, g, dy, mean, rstd, rows, cols, dx, dg, db, accumulate);
    });
  }
  void embedding_forward(const int32_t* ids, const float* table, int64_t rows, int64_t dim,
                         float* y) override {
    dispatch("embedding_forward",
             [=, this] { inner_.embedding_forward(ids, table, rows, dim, y); });
  }
  void embedding_backward(const int32_t* ids, const float* dy, int64_t rows, int64_t dim,
                          int64_t vocab, float* dt) override {
    dispatch("embedding_backward",
             [=, this] { inner_.embedding_backward(ids, dy, rows, dim, vocab, dt); });
  }
  void causal_softmax_forward(float* s, int64_t count, int64_t t, float scale) override {
    dispatch("causal_softmax_forward",
             [=, this] { inner_.causal_softmax_forward(s, count, t, scale); });
  }
  void softmax_backward(const float* p, float* dp, int64_t rows, int64_t cols,
                        float scale) override {
    dispatch("softmax_backward", [=, this] { inner_.softmax_backward(p, dp, rows, cols, scale); });
  }
  void fused_attention_forward(const float* qkv, int64_t batch, int64_t t, int64_t d, int64_t heads,
                               float scale, float* ctx, float* lse) override {
    dispatch("fused_attention_forward", [=, this] {
      inner_.fused_attention_forward(qkv, batch, t, d, heads, scale, ctx, lse);
    });
  }
  void fused_attention_backward(const float* qkv, const float* ctx, const float* lse,
                                const float* dctx, int64_t batch, int64_t t, int64_t d,
                                int64_t heads, float scale, float* dqkv) override {
    dispatch("fused_attention_backward", [=, this] {
      inner_.fused_attention_backward(qkv, ctx, lse, dctx, batch, t, d, heads, scale, dqkv);
    });
  }
  void gemm_strided_batched(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                            const float* a, int64_t lda, int64_t sa, const float* b, int64_t ldb,
                            int64_t sb, float beta, float* c, int64_t ldc, int64_t sc,
                            int64_t count) override {
    dispatch("gemm_strided_batched", [=, this] {
      inner_.gemm_strided_batched(ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta, c, ldc, sc,
                                  count);
    });
  }
  void mse_onehot(const float* y, const int32_t* labels, int64_t rows, int64_t cols, float scale,
                  float* dy, float* stats) override {
    dispatch("mse_onehot",
             [=, this] { inner_.mse_onehot(y, labels, rows, cols, scale, dy, stats); });
  }
  void quantize_int8(const float* x, float* r, int64_t n, int64_t b, int8_t* q, float* s) override {
    dispatch("quantize_int8", [=, this] { inner_.quantize_int8(x, r, n, b, q, s); });
  }
  void dequantize_int8(const int8_t* q, const float* s, int64_t n, int64_t b, float* o) override {
    dispatch("dequantize_int8", [=, this] { inner_.dequantize_int8(q, s, n, b, o); });
  }

 protected:
  /// Runs `call`, the operation `op`, or does what a subclass does with it instead.
  virtual void dispatch(const char* op, std::function<void()> call) {
    (void)op;
    call();
  }

  backend& inner_;
};

}  // namespace gflex::kernels::testing
