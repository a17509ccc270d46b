/// Every backend operation against a plain double-precision reference on random inputs.
/// The CPU backend always runs; the CUDA backend runs where a device is present and the
/// test says it was skipped where not.

#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "gflex/kernels/backend.hpp"
#include "gflex/kernels/devices.hpp"
#include "gflex/runtime/rng.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "skip_case.hpp"

using namespace gflex;
using namespace gflex::kernels;

namespace {

std::vector<float> random_vector(size_t n, uint64_t seed, double scale = 1.0) {
  rng r(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(r.normal() * scale);
  return v;
}

// A host vector mirrored in backend memory.
struct buffer {
  backend& b;
  tensor t;
  buffer(backend& be, const std::vector<float>& host) : b(be) {
    t = b.allocate({static_cast<int64_t>(host.size())}, dtype::f32);
    b.upload(host.data(), t.raw(), host.size() * sizeof(float));
  }
  float* ptr() { return t.data<float>(); }
  std::vector<float> read() {
    std::vector<float> out(static_cast<size_t>(t.numel()));
    b.download(t.raw(), out.data(), out.size() * sizeof(float));
    return out;
  }
};

void check_close(const std::vector<float>& got, const std::vector<double>& want, double rel,
                 double abs) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    double tol = abs + rel * std::fabs(want[i]);
    if (std::fabs(got[i] - want[i]) > tol) {
      FAIL_CHECK("element " << i << ": got " << got[i] << ", want " << want[i]);
      return;
    }
  }
}

std::vector<std::unique_ptr<backend>> backends_under_test() {
  std::vector<std::unique_ptr<backend>> out;
  out.push_back(make_cpu_backend(0));
  if (cuda_device_count() > 0) {
    auto cuda = make_cuda_backend(0);
    REQUIRE_MESSAGE(cuda.has_value(), cuda.error().message());
    out.push_back(std::move(*cuda));
  } else {
    std::string why = cuda_compiled() ? "no CUDA device on this machine" : "not compiled in";
    MESSAGE("CUDA backend skipped: " << why);
  }
  return out;
}

// A gemm's operands, stored as it reads them (A [m,k] or, transposed, [k,m]; likewise B), with
// leading dimensions padded past the logical widths to catch code that confuses ld with the
// width, and its result computed in double.
struct gemm_case {
  bool ta, tb;
  int64_t m, n, k, lda, ldb, ldc;
  float alpha, beta;
  std::vector<float> a, b, c;
  std::vector<double> want;

  gemm_case(bool ta_, bool tb_, int64_t m_, int64_t n_, int64_t k_, float alpha_, float beta_,
            int64_t pad, uint64_t seed)
      : ta(ta_), tb(tb_), m(m_), n(n_), k(k_), alpha(alpha_), beta(beta_) {
    const int64_t a_rows = ta ? k : m, a_cols = ta ? m : k, b_rows = tb ? n : k,
                  b_cols = tb ? k : n;
    lda = a_cols + pad;
    ldb = b_cols + pad + 2;
    ldc = n + pad;
    a = random_vector(static_cast<size_t>(a_rows * lda), seed);
    b = random_vector(static_cast<size_t>(b_rows * ldb), seed + 1);
    c = random_vector(static_cast<size_t>(m * ldc), seed + 2);
    want.assign(c.begin(), c.end());
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0.0;
        for (int64_t p = 0; p < k; ++p) {
          double av = ta ? a[p * lda + i] : a[i * lda + p];
          double bv = tb ? b[j * ldb + p] : b[p * ldb + j];
          acc += av * bv;
        }
        want[i * ldc + j] = alpha * acc + beta * c[i * ldc + j];
      }
  }

  /// C after `be`'s gemm.
  std::vector<float> run(backend& be) const {
    buffer da(be, a), db(be, b), dc(be, c);
    be.gemm(ta, tb, m, n, k, alpha, da.ptr(), lda, db.ptr(), ldb, beta, dc.ptr(), ldc);
    return dc.read();
  }
};

void check_gemm(backend& b, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                float beta) {
  const gemm_case g(ta, tb, m, n, k, alpha, beta, 3, 11);
  // float accumulation over k terms of unit-variance products: error grows like sqrt(k).
  check_close(g.run(b), g.want, 1e-4, 1e-5 * std::sqrt(static_cast<double>(k)) * 4);
}

// Direct convolution in double: y[n,oh,ow,k] = sum over r,s,c of
// x[n,oh*stride+r-ph,ow*stride+s-pw,c] * w[k,r,s,c], and its two adjoints, for checking all three
// convolution operations.
struct conv_reference {
  conv2d_geometry g;
  int64_t x_at(int64_t n, int64_t h, int64_t w, int64_t c) const {
    return ((n * g.height + h) * g.width + w) * g.in_channels + c;
  }
  int64_t w_at(int64_t k, int64_t r, int64_t s, int64_t c) const {
    return ((k * g.kernel_h + r) * g.kernel_w + s) * g.in_channels + c;
  }
  int64_t y_at(int64_t n, int64_t h, int64_t w, int64_t k) const {
    return ((n * g.out_height() + h) * g.out_width() + w) * g.out_channels + k;
  }
  // Calls f(x index, w index, y index) for every term of the convolution.
  template <class F>
  void each_term(F&& f) const {
    for (int64_t n = 0; n < g.batch; ++n)
      for (int64_t oh = 0; oh < g.out_height(); ++oh)
        for (int64_t ow = 0; ow < g.out_width(); ++ow)
          for (int64_t k = 0; k < g.out_channels; ++k)
            for (int64_t r = 0; r < g.kernel_h; ++r)
              for (int64_t s = 0; s < g.kernel_w; ++s) {
                int64_t ih = oh * g.stride + r - g.pad_h, iw = ow * g.stride + s - g.pad_w;
                if (ih < 0 || ih >= g.height || iw < 0 || iw >= g.width) continue;
                for (int64_t c = 0; c < g.in_channels; ++c)
                  f(x_at(n, ih, iw, c), w_at(k, r, s, c), y_at(n, oh, ow, k));
              }
  }
};

void check_conv(backend& b, const conv2d_geometry& g) {
  CAPTURE(g.batch);
  CAPTURE(g.height);
  CAPTURE(g.in_channels);
  CAPTURE(g.kernel_h);
  CAPTURE(g.pad_h);
  CAPTURE(g.stride);
  REQUIRE(g.valid());
  conv_reference ref{g};
  const int64_t nx = g.batch * g.height * g.width * g.in_channels;
  const int64_t nw = g.out_channels * g.patch();
  const int64_t ny = g.batch * g.out_height() * g.out_width() * g.out_channels;
  auto x = random_vector(nx, 41), w = random_vector(nw, 42), dy = random_vector(ny, 43);
  std::vector<double> y(ny, 0.0), dx(nx, 0.0), dw(nw, 0.0);
  ref.each_term([&](int64_t xi, int64_t wi, int64_t yi) {
    y[yi] += double{x[xi]} * w[wi];
    dx[xi] += double{dy[yi]} * w[wi];
    dw[wi] += double{dy[yi]} * x[xi];
  });
  // Outputs are overwritten: start them at garbage.
  buffer bx(b, x), bw(b, w), bdy(b, dy), by(b, std::vector<float>(ny, 7.0f)),
      bdx(b, std::vector<float>(nx, 7.0f)), bdw(b, std::vector<float>(nw, 7.0f));
  b.conv2d_forward(g, bx.ptr(), bw.ptr(), by.ptr());
  b.conv2d_backward_data(g, bdy.ptr(), bw.ptr(), bdx.ptr());
  b.conv2d_backward_filter(g, bx.ptr(), bdy.ptr(), bdw.ptr());
  // Sums of unit-variance products: absolute error grows like the square root of the terms.
  const double terms_y = static_cast<double>(g.patch());
  const double terms_w = static_cast<double>(g.batch * g.out_height() * g.out_width());
  check_close(by.read(), y, 1e-4, 2e-5 * std::sqrt(terms_y));
  check_close(bdx.read(), dx, 1e-4, 2e-5 * std::sqrt(terms_y));
  check_close(bdw.read(), dw, 1e-4, 2e-5 * std::sqrt(terms_w));
}

// Causal multi-head attention in double over qkv [batch, t, 3d]: ctx [batch, t, d], each
// row's log-sum-exp of its scaled scores [batch, heads, t], and dqkv from dctx.
struct attention_reference {
  int64_t batch, t, d, heads;
  float scale;
  std::vector<double> ctx, lse, dqkv;

  void run(const std::vector<float>& qkv, const std::vector<float>& dctx) {
    const int64_t dh = d / heads, ld = 3 * d;
    ctx.assign(static_cast<size_t>(batch * t * d), 0.0);
    lse.assign(static_cast<size_t>(batch * heads * t), 0.0);
    dqkv.assign(static_cast<size_t>(batch * t * ld), 0.0);
    std::vector<double> p(static_cast<size_t>(t)), dp(static_cast<size_t>(t));
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t h = 0; h < heads; ++h) {
        auto q = [&](int64_t i, int64_t c) { return double{qkv[(b * t + i) * ld + h * dh + c]}; };
        auto k = [&](int64_t j, int64_t c) {
          return double{qkv[(b * t + j) * ld + d + h * dh + c]};
        };
        auto v = [&](int64_t j, int64_t c) {
          return double{qkv[(b * t + j) * ld + 2 * d + h * dh + c]};
        };
        for (int64_t i = 0; i < t; ++i) {
          double top = -1e300;
          for (int64_t j = 0; j <= i; ++j) {
            double s = 0.0;
            for (int64_t c = 0; c < dh; ++c) s += q(i, c) * k(j, c);
            p[j] = s * scale;
            top = std::max(top, p[j]);
          }
          double sum = 0.0;
          for (int64_t j = 0; j <= i; ++j) sum += (p[j] = std::exp(p[j] - top));
          for (int64_t j = 0; j <= i; ++j) p[j] /= sum;
          lse[(b * heads + h) * t + i] = top + std::log(sum);
          const int64_t out = (b * t + i) * d + h * dh;
          for (int64_t c = 0; c < dh; ++c) {
            double acc = 0.0;
            for (int64_t j = 0; j <= i; ++j) acc += p[j] * v(j, c);
            ctx[out + c] = acc;
          }
          // Backward: dV += p dO; dp = dO V^T; ds = p (dp - sum(p dp)); dQ, dK from ds * scale.
          double dot = 0.0;
          for (int64_t j = 0; j <= i; ++j) {
            dp[j] = 0.0;
            for (int64_t c = 0; c < dh; ++c) dp[j] += dctx[out + c] * v(j, c);
            dot += p[j] * dp[j];
          }
          for (int64_t j = 0; j <= i; ++j) {
            const double ds = p[j] * (dp[j] - dot) * scale;
            for (int64_t c = 0; c < dh; ++c) {
              dqkv[(b * t + i) * ld + h * dh + c] += ds * k(j, c);
              dqkv[(b * t + j) * ld + d + h * dh + c] += ds * q(i, c);
              dqkv[(b * t + j) * ld + 2 * d + h * dh + c] += p[j] * dctx[out + c];
            }
          }
        }
      }
  }
};

}  // namespace

TEST_SUITE("backend") {
  TEST_CASE("convolutions forward and backward against a direct double reference") {
    for (auto& b : backends_under_test()) {
      CAPTURE(b->describe());
      // The network's two layers, a rectangular kernel with uneven padding, an unpadded 1x1
      // (no patch matrix on the CPU), and one whose batch spans several im2col chunks.
      check_conv(*b, {3, 28, 28, 1, 8, 3, 3, 1, 1});
      check_conv(*b, {2, 14, 14, 8, 16, 3, 3, 1, 1});
      check_conv(*b, {2, 9, 7, 3, 5, 3, 2, 1, 0});
      check_conv(*b, {2, 5, 6, 4, 3, 1, 1, 0, 0});
      check_conv(*b, {9, 64, 64, 16, 8, 3, 3, 1, 1});
      // Strided: through the patch matrix (patches of 72 and 100 values, stride 2 and 3, the
      // last leaving input rows unread) and the direct path (a patch of 18).
      check_conv(*b, {2, 14, 14, 8, 16, 3, 3, 1, 1, 2});
      check_conv(*b, {2, 11, 10, 4, 6, 5, 5, 2, 2, 3});
      check_conv(*b, {2, 9, 7, 3, 5, 3, 2, 1, 0, 2});
    }
  }

  TEST_CASE("2x2 max pooling routes gradients to the window's winner") {
    for (auto& b : backends_under_test()) {
      CAPTURE(b->describe());
      const int64_t n = 3, h = 7, w = 6, c = 5;  // odd height: the last row is dropped
      const int64_t oh = h / 2, ow = w / 2, nx = n * h * w * c, ny = n * oh * ow * c;
      auto x = random_vector(nx, 51);
      // One window of equal values: the first in row-major window order must win.
      for (int64_t dh : {0, 1})
        for (int64_t dw : {0, 1}) x[((0 * h + 2 + dh) * w + 2 + dw) * c + 1] = 0.25f;
      auto dy = random_vector(ny, 52);
      std::vector<double> want_y(ny), want_dx(nx, 0.0);
      std::vector<int32_t> want_arg(ny);
      for (int64_t s = 0; s < n; ++s)
        for (int64_t i = 0; i < oh; ++i)
          for (int64_t j = 0; j < ow; ++j)
            for (int64_t k = 0; k < c; ++k) {
              int64_t best = -1;
              for (int64_t dh : {0, 1})
                for (int64_t dw : {0, 1}) {
                  int64_t at = ((2 * i + dh) * w + 2 * j + dw) * c + k;
                  if (best < 0 || x[s * h * w * c + at] > x[s * h * w * c + best]) best = at;
                }
              int64_t o = ((s * oh + i) * ow + j) * c + k;
              want_y[o] = x[s * h * w * c + best];
              want_arg[o] = static_cast<int32_t>(best);
              want_dx[s * h * w * c + best] = dy[o];
            }
      buffer bx(*b, x), by(*b, std::vector<float>(ny, 9.0f)), bdy(*b, dy),
          bdx(*b, std::vector<float>(nx, 9.0f));
      tensor arg = b->allocate({ny}, dtype::i32);
      b->max_pool2_forward(bx.ptr(), n, h, w, c, by.ptr(), arg.data<int32_t>());
      b->max_pool2_backward(bdy.ptr(), arg.data<int32_t>(), n, h, w, c, bdx.ptr());
      check_close(by.read(), want_y, 0, 0);
      check_close(bdx.read(), want_dx, 0, 0);
      std::vector<int32_t> got_arg(ny);
      b->download(arg.raw(), got_arg.data(), got_arg.size() * sizeof(int32_t));
      CHECK(got_arg == want_arg);
    }
  }

  TEST_CASE("int8 quantisation with error feedback matches the update codec") {
    for (auto& b : backends_under_test()) {
      CAPTURE(b->describe());
      const int64_t n = 1000, block = 256;  // a short last block
      auto x = random_vector(n, 61, 0.01);
      std::fill(x.begin() + 256, x.begin() + 512, 0.0f);  // a zero block: scale 0
      auto residual = random_vector(n, 62, 0.001);
      std::fill(residual.begin() + 256, residual.begin() + 512, 0.0f);
      // The codec's answer: encode with the same residual, decode.
      std::vector<float> codec_residual = residual;
      auto bytes = encode_update(x, compression::int8, &codec_residual, block);
      auto decoded = decode_update(bytes, n);
      REQUIRE(decoded.has_value());

      buffer bx(*b, x), bres(*b, residual), scales(*b, std::vector<float>(4, 0.0f)),
          out(*b, std::vector<float>(n, 5.0f));
      tensor q = b->allocate({n}, dtype::i8);
      b->quantize_int8(bx.ptr(), bres.ptr(), n, block, q.data<int8_t>(), scales.ptr());
      b->dequantize_int8(q.data<int8_t>(), scales.ptr(), n, block, out.ptr());
      check_close(out.read(), std::vector<double>(decoded->begin(), decoded->end()), 0, 0);
      check_close(bres.read(), std::vector<double>(codec_residual.begin(), codec_residual.end()), 0,
                  0);
      CHECK(scales.read()[1] == 0.0f);
    }
  }

  TEST_CASE("a matrix product past 32-bit sizes is an error, not a part of one") {
    // 2^31 rows (a batch of a long sequence): OpenBLAS takes int sizes, and computed a cut
    // product, leaving the rest of the output as it was. Refused before any memory is read.
    for (auto& b : backends_under_test()) {
      CAPTURE(b->describe());
      const int64_t rows = int64_t{1} << 31;
      // Not a device's failure: counted as one, a job's batch too large shut nodes down.
      errc code = errc::none;
      try {
        b->gemm(false, false, rows, 4, 4, 1.0f, nullptr, 4, nullptr, 4, 0.0f, nullptr, 4);
      } catch (const compute_error& e) {
        code = e.err().code();
      }
      CHECK(code == errc::invalid_argument);
    }
  }

  TEST_CASE("precision is a setting; reduced precision keeps gemm close") {
    for (auto& b : backends_under_test()) {
      CAPTURE(b->describe());
      CHECK(b->precision() == math_precision::fp32);
      for (auto p : {math_precision::tf32, math_precision::bf16}) {
        b->set_precision(p);
        CHECK(b->precision() == p);
        // bf16 keeps 8 bits of mantissa: relative error about 2^-8 per product.
        const int64_t m = 32, n = 24, k = 64;
        auto a = random_vector(m * k, 71), bm = random_vector(k * n, 72);
        std::vector<double> want(m * n, 0.0);
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < n; ++j)
            for (int64_t q = 0; q < k; ++q) want[i * n + j] += double{a[i * k + q]} * bm[q * n + j];
        buffer da(*b, a), db(*b, bm), dc(*b, std::vector<float>(m * n, 0.0f));
        b->gemm(false, false, m, n, k, 1.0f, da.ptr(), k, db.ptr(), n, 0.0f, dc.ptr(), n);
        check_close(dc.read(), want, 0, 0.1);
      }
      b->set_precision(math_precision::fp32);
    }
    CHECK(parse_math_precision("tf32").value() == math_precision::tf32);
    auto bad = parse_math_precision("fp8");
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().message().find("fp8") != std::string::npos);
  }

  TEST_CASE("bf16 GEMM operands (GFLEX_BF16_OPERANDS unset or 1): bf16 copies of its operands") {
    if (cuda_device_count() == 0)
      GFLEX_SKIP_CASE(cuda_compiled() ? "no CUDA device on this machine" : "CUDA not compiled in");
    struct restore_env {
      ~restore_env() { unsetenv("GFLEX_BF16_OPERANDS"); }
    } restore;
    unsetenv("GFLEX_BF16_OPERANDS");  // the default packs them
    auto packed = make_cuda_backend(0);
    setenv("GFLEX_BF16_OPERANDS", "0", 1);
    auto converted_by_cublas = make_cuda_backend(0);
    REQUIRE(packed.has_value());
    REQUIRE(converted_by_cublas.has_value());
    for (auto* b : {packed->get(), converted_by_cublas->get()})
      b->set_precision(math_precision::bf16);
    // Every transposition, leading dimensions padded past the logical widths (the packing must
    // read rows at ld and write them at the width), alpha and beta both in play.
    for (int t = 0; t < 4; ++t) {
      const bool ta = (t & 1) != 0, tb = (t & 2) != 0;
      CAPTURE(ta);
      CAPTURE(tb);
      const gemm_case g(ta, tb, 37, 29, 100, 0.5f, 0.25f, 3, 81);
      const auto first = g.run(**packed), second = g.run(**packed),
                 by_cublas = g.run(**converted_by_cublas);
      // bf16 operands keep 8 significant bits: about 2^-8 of each product, over k terms of
      // unit variance. A transposition or a leading dimension read wrongly is off by O(1).
      const double tolerance = 0.5 * std::pow(2.0, -8) * std::sqrt(static_cast<double>(g.k)) * 4;
      check_close(first, g.want, 0, tolerance);
      check_close(by_cublas, g.want, 0, tolerance);
      CHECK(first == second);  // the same bits run to run
      // The padding between rows of C is left as it was.
      for (int64_t i = 0; i < g.m; ++i)
        for (int64_t j = g.n; j < g.ldc; ++j) CHECK(first[i * g.ldc + j] == g.c[i * g.ldc + j]);
    }
  }

  TEST_CASE("gemm in every transposition against a double reference") {
    for (auto& b : backends_under_test()) {
      CAPTURE(b->describe());
      for (bool ta : {false, true})
        for (bool tb : {false, true}) {
          CAPTURE(ta);
          CAPTURE(tb);
          check_gemm(*b, ta, tb, 37, 29, 53, 1.0f, 0.0f);
          check_gemm(*b, ta, tb, 64, 128, 200, 0.5f, 1.0f);
          check_gemm(*b, ta, tb, 1, 10, 784, 1.0f, 0.0f);
        }
    }
  }

  TEST_CASE("axpby, bias_relu_forward, relu_backward and column_sum") {
    for (auto& b : backends_under_test()) {
      CAPTURE(b->describe());
      const int64_t rows = 33, cols = 70, n = rows * cols;
      auto x = random_vector(n, 1), y = random_vector(n, 2), bias = random_vector(cols, 3);

      buffer dx(*b, x), dy(*b, y);
      b->axpby(n, 0.7f, dx.ptr(), -1.5f, dy.ptr());
      std::vector<double> want(n);
      for (int64_t i = 0; i < n; ++i) want[i] = 0.7 * x[i] - 1.5 * y[i];
      check_close(dy.read(), want, 1e-6, 1e-6);

      for (bool relu : {false, true}) {
        buffer out(*b, y), db(*b, bias);
        b->bias_relu_forward(out.ptr(), db.ptr(), rows, cols, relu);
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < cols; ++c) {
            double v = double{y[r * cols + c]} + bias[c];
            want[r * cols + c] = relu ? std::max(v, 0.0) : v;
          }
        check_close(out.read(), want, 1e-6, 1e-6);
      }

      buffer grad(*b, x), act(*b, y);
      b->relu_backward(grad.ptr(), act.ptr(), n);
      for (int64_t i = 0; i < n; ++i) want[i] = y[i] > 0 ? x[i] : 0.0;
      check_close(grad.read(), want, 0, 0);

      buffer sums(*b, std::vector<float>(cols, 99.0f)), src(*b, x);
      b->column_sum(src.ptr(), rows, cols, sums.ptr());
      std::vector<double> col(cols, 0.0);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) col[c] += x[r * cols + c];
      check_close(sums.read(), col, 1e-5, 1e-5);
    }
  }

  TEST_CASE("an allocation past the value bound fails the computation, not the process") {
    // A hostile job spec's batch times its activations, or an attention's probabilities:
    // the worker catches compute_error and fails that assignment.
    for (auto& b : backends_under_test()) {
      CAPTURE(b->describe());
      CHECK_THROWS_AS(b->allocate({int64_t{1} << 21, int64_t{1} << 21}, dtype::f32), compute_error);
    }
  }

  TEST_CASE("ReLU keeps a NaN forward and passes no gradient through it, on every backend") {
    // A diverging model must show NaN in its loss whichever backend runs it: a ReLU that
    // turned NaN into 0 (fmaxf does) would hide it, and the CPU verifier would disagree with
    // the GPU node that ran it.
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const float inf = std::numeric_limits<float>::infinity();
    const std::vector<float> pre = {nan, -1.0f, 2.0f, -inf, inf, 0.0f, nan, 3.0f};
    const std::vector<float> zero_bias(4, 0.0f);
    for (auto& b : backends_under_test()) {
      CAPTURE(b->describe());
      buffer y(*b, pre), bias(*b, zero_bias), x(*b, pre), fused(*b, std::vector<float>(8, 9.0f));
      b->bias_relu_forward(y.ptr(), bias.ptr(), 2, 4, true);
      b->bias_activation_forward(activation::relu, x.ptr(), bias.ptr(), 2, 4, fused.ptr());
      for (const auto& got : {y.read(), fused.read()}) {
        CHECK(std::isnan(got[0]));
        CHECK(std::isnan(got[6]));
        CHECK(got[1] == 0.0f);
        CHECK(got[2] == 2.0f);
        CHECK(got[3] == 0.0f);
        CHECK(got[4] == inf);
        CHECK(got[5] == 0.0f);
        CHECK(got[7] == 3.0f);
      }
      buffer dy(*b, std::vector<float>(8, 1.0f)), act(*b, pre);
      b->relu_backward(dy.ptr(), act.ptr(), 8);
      CHECK(dy.read() == std::vector<float>{0, 0, 1, 0, 1, 0, 0, 1});
    }
  }

  TEST_CASE(
      "add, bias_activation_forward and norm_backward's accumulate: the separate passes' bits") {
    // Each fused pass against the operations it replaces in a model graph, bit for bit: a
    // model's results do not depend on which of the two ran.
    for (auto& b : backends_under_test()) {
      CAPTURE(b->describe());
      const int64_t rows = 37, cols = 70, n = rows * cols;
      auto x = random_vector(n, 31), y = random_vector(n, 32), bias = random_vector(cols, 33);

      buffer xa(*b, x), ya(*b, y), sum(*b, std::vector<float>(n, 7.0f)), copy(*b, x);
      b->add(n, xa.ptr(), ya.ptr(), sum.ptr());
      b->axpby(n, 1.0f, ya.ptr(), 1.0f, copy.ptr());
      const auto fused_sum = sum.read();
      CHECK(fused_sum == copy.read());
      std::vector<double> want(n);
      for (int64_t i = 0; i < n; ++i) want[i] = double{x[i]} + y[i];
      check_close(fused_sum, want, 1e-7, 0);
      b->add(n, sum.ptr(), ya.ptr(), sum.ptr());  // out may be an input
      for (int64_t i = 0; i < n; ++i) want[i] = double{fused_sum[i]} + y[i];
      check_close(sum.read(), want, 1e-7, 0);

      for (activation f : {activation::relu, activation::gelu, activation::tanh}) {
        CAPTURE(static_cast<int>(f));
        buffer pre(*b, x), out(*b, std::vector<float>(n, 7.0f)), db(*b, bias);
        b->bias_activation_forward(f, pre.ptr(), db.ptr(), rows, cols, out.ptr());
        buffer pre_apart(*b, x), out_apart(*b, std::vector<float>(n, 7.0f));
        b->bias_relu_forward(pre_apart.ptr(), db.ptr(), rows, cols, false);
        b->activation_forward(f, pre_apart.ptr(), out_apart.ptr(), n);
        const auto fused_pre = pre.read(), fused_out = out.read();
        CHECK(fused_pre == pre_apart.read());
        CHECK(fused_out == out_apart.read());
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < cols; ++c) {
            const double v = double{x[r * cols + c]} + bias[c];
            want[r * cols + c] =
                f == activation::relu ? std::max(v, 0.0)
                : f == activation::tanh
                    ? std::tanh(v)
                    : 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
          }
        check_close(fused_out, want, 1e-5, 1e-6);
      }

      auto gamma = random_vector(cols, 34), beta = random_vector(cols, 35);
      auto dy = random_vector(n, 36), held = random_vector(n, 37);
      for (bool rms : {false, true}) {
        CAPTURE(rms);
        buffer in(*b, x), g(*b, gamma), be(*b, beta), out(*b, y), dyb(*b, dy);
        buffer mean(*b, std::vector<float>(rows)), rstd(*b, std::vector<float>(rows));
        b->norm_forward(rms, in.ptr(), g.ptr(), rms ? nullptr : be.ptr(), rows, cols, 1e-5f,
                        out.ptr(), mean.ptr(), rstd.ptr());
        buffer dgamma(*b, std::vector<float>(cols)), dbeta(*b, std::vector<float>(cols));
        buffer apart(*b, std::vector<float>(n, 7.0f)), acc(*b, held), sum_apart(*b, held);
        b->norm_backward(rms, in.ptr(), g.ptr(), dyb.ptr(), mean.ptr(), rstd.ptr(), rows, cols,
                         apart.ptr(), dgamma.ptr(), rms ? nullptr : dbeta.ptr(), false);
        b->axpby(n, 1.0f, apart.ptr(), 1.0f, sum_apart.ptr());
        b->norm_backward(rms, in.ptr(), g.ptr(), dyb.ptr(), mean.ptr(), rstd.ptr(), rows, cols,
                         acc.ptr(), dgamma.ptr(), rms ? nullptr : dbeta.ptr(), true);
        const auto accumulated = acc.read(), alone = apart.read();
        CHECK(accumulated == sum_apart.read());
        for (int64_t i = 0; i < n; ++i) want[i] = double{held[i]} + alone[i];
        check_close(accumulated, want, 1e-6, 1e-7);
      }
    }
  }

  TEST_CASE("the CPU's convolutions give the same bits on any thread count") {
    // A node's --threads and its verifier's differ: the same assignment must give the same
    // bits, or an honest node's update is a distance away from its re-computation. The direct
    // filter gradient (a 3x3 first layer over one or three channels) summed its batch per
    // thread, so 1 and 3 threads added it in other orders.
    const std::vector<conv2d_geometry> geometries{
        {10, 6, 6, 1, 4, 3, 3, 1, 1},    // direct: a patch of 9
        {37, 12, 12, 3, 8, 3, 3, 1, 1},  // direct: a patch of 27, a batch not a multiple
        {5, 9, 9, 8, 6, 3, 3, 1, 1},     // through the patch matrix: a patch of 72
    };
    for (const auto& g : geometries) {
      CAPTURE(g.batch);
      CAPTURE(g.in_channels);
      const int64_t nx = g.batch * g.height * g.width * g.in_channels;
      const int64_t nw = g.out_channels * g.patch();
      const int64_t ny = g.batch * g.out_height() * g.out_width() * g.out_channels;
      auto x = random_vector(nx, 51), w = random_vector(nw, 52), dy = random_vector(ny, 53);
      std::vector<std::vector<float>> results;
      for (int threads : {1, 3, 4}) {
        CAPTURE(threads);
        auto b = make_cpu_backend(threads);
        std::vector<float> y(static_cast<size_t>(ny)), dx(static_cast<size_t>(nx)),
            dw(static_cast<size_t>(nw));
        b->conv2d_forward(g, x.data(), w.data(), y.data());
        b->conv2d_backward_data(g, dy.data(), w.data(), dx.data());
        b->conv2d_backward_filter(g, x.data(), dy.data(), dw.data());
        std::vector<float> all = y;
        all.insert(all.end(), dx.begin(), dx.end());
        all.insert(all.end(), dw.begin(), dw.end());
        results.push_back(std::move(all));
      }
      for (size_t i = 1; i < results.size(); ++i)
        CHECK(std::memcmp(results[0].data(), results[i].data(),
                          results[0].size() * sizeof(float)) == 0);
    }
  }

  TEST_CASE("column_sum of tall matrices: a convolution's bias gradient, a batch's bias") {
    // Tall enough that a GPU sums chunks of rows on many blocks, then the chunks' partials.
    for (auto& b : backends_under_test()) {
      CAPTURE(b->describe());
      // Not a structured binding: CAPTURE makes a lambda, and clang 14 refuses to capture one.
      for (const auto& shape : {std::pair<int64_t, int64_t>{25088, 32}, {4099, 70}, {1025, 1}}) {
        const int64_t rows = shape.first, cols = shape.second;
        CAPTURE(rows);
        CAPTURE(cols);
        auto x = random_vector(rows * cols, 17);
        buffer sums(*b, std::vector<float>(cols, 99.0f)), src(*b, x);
        b->column_sum(src.ptr(), rows, cols, sums.ptr());
        std::vector<double> col(cols, 0.0);
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < cols; ++c) col[c] += x[r * cols + c];
        check_close(sums.read(), col, 1e-4, 1e-5);
      }
    }
  }

  TEST_CASE("embedding_backward sums each id's rows, the same bits run to run") {
    // Byte-level text's shape: a fifth of the ids are one byte (a space), so its rows span
    // many of a GPU's pieces; ids 250 to 255 never occur and their rows must be zero.
    for (auto& b : backends_under_test()) {
      CAPTURE(b->describe());
      for (const auto& shape : {std::pair<int64_t, int64_t>{8192, 64}, {37, 3}}) {
        const int64_t rows = shape.first, dim = shape.second, vocab = 256;
        CAPTURE(rows);
        CAPTURE(dim);
        rng r(5);
        std::vector<int32_t> ids(static_cast<size_t>(rows));
        for (auto& id : ids)
          id = r.uniform() < 0.2 ? 32 : static_cast<int32_t>(r.uniform() * 250.0);
        auto dy = random_vector(rows * dim, 23);
        std::vector<double> want(static_cast<size_t>(vocab * dim), 0.0);
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t d = 0; d < dim; ++d) want[ids[i] * dim + d] += dy[i * dim + d];
        tensor device_ids = b->allocate({rows}, dtype::i32);
        b->upload(ids.data(), device_ids.raw(), ids.size() * sizeof(int32_t));
        buffer grad(*b, dy), table(*b, std::vector<float>(vocab * dim, 99.0f));
        b->embedding_backward(device_ids.data<int32_t>(), grad.ptr(), rows, dim, vocab,
                              table.ptr());
        const auto first = table.read();
        check_close(first, want, 1e-5, 1e-4);
        for (int64_t i = 250 * dim; i < vocab * dim; ++i) REQUIRE(first[i] == 0.0f);
        b->fill(table.ptr(), vocab * dim, 99.0f);
        b->embedding_backward(device_ids.data<int32_t>(), grad.ptr(), rows, dim, vocab,
                              table.ptr());
        const auto again = table.read();
        CHECK(std::memcmp(first.data(), again.data(), first.size() * sizeof(float)) == 0);
      }
    }
  }

  TEST_CASE("attention composed of strided GEMMs and the causal softmax, against the reference") {
    // What a graph model does without fused attention (graph_model.cpp), here at FP32: it
    // checks the reference the fused kernels are held to as much as the backend.
    const int64_t batch = 2, t = 37, d = 24, heads = 3, dh = d / heads;
    const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
    attention_reference ref{batch, t, d, heads, scale};
    auto qkv_host = random_vector(batch * t * 3 * d, 31);
    auto dctx_host = random_vector(batch * t * d, 32);
    ref.run(qkv_host, dctx_host);
    for (auto& b : backends_under_test()) {
      CAPTURE(b->describe());
      buffer qkv(*b, qkv_host), dctx(*b, dctx_host),
          probs(*b, std::vector<float>(batch * heads * t * t, 7.0f)),
          dprobs(*b, std::vector<float>(batch * heads * t * t, 7.0f)),
          ctx(*b, std::vector<float>(batch * t * d, 7.0f)),
          dqkv(*b, std::vector<float>(batch * t * 3 * d, 7.0f));
      float* q = qkv.ptr();
      for (int64_t h = 0; h < heads; ++h)
        b->gemm_strided_batched(false, true, t, t, dh, 1.0f, q + h * dh, 3 * d, t * 3 * d,
                                q + d + h * dh, 3 * d, t * 3 * d, 0.0f, probs.ptr() + h * t * t, t,
                                heads * t * t, batch);
      b->causal_softmax_forward(probs.ptr(), batch * heads, t, scale);
      for (int64_t h = 0; h < heads; ++h)
        b->gemm_strided_batched(false, false, t, dh, t, 1.0f, probs.ptr() + h * t * t, t,
                                heads * t * t, q + 2 * d + h * dh, 3 * d, t * 3 * d, 0.0f,
                                ctx.ptr() + h * dh, d, t * d, batch);
      check_close(ctx.read(), ref.ctx, 1e-4, 1e-5);
      for (int64_t h = 0; h < heads; ++h) {
        b->gemm_strided_batched(false, true, t, t, dh, 1.0f, dctx.ptr() + h * dh, d, t * d,
                                q + 2 * d + h * dh, 3 * d, t * 3 * d, 0.0f,
                                dprobs.ptr() + h * t * t, t, heads * t * t, batch);
        b->gemm_strided_batched(true, false, t, dh, t, 1.0f, probs.ptr() + h * t * t, t,
                                heads * t * t, dctx.ptr() + h * dh, d, t * d, 0.0f,
                                dqkv.ptr() + 2 * d + h * dh, 3 * d, t * 3 * d, batch);
      }
      b->softmax_backward(probs.ptr(), dprobs.ptr(), batch * heads * t, t, scale);
      for (int64_t h = 0; h < heads; ++h) {
        b->gemm_strided_batched(false, false, t, dh, t, 1.0f, dprobs.ptr() + h * t * t, t,
                                heads * t * t, q + d + h * dh, 3 * d, t * 3 * d, 0.0f,
                                dqkv.ptr() + h * dh, 3 * d, t * 3 * d, batch);
        b->gemm_strided_batched(true, false, t, dh, t, 1.0f, dprobs.ptr() + h * t * t, t,
                                heads * t * t, q + h * dh, 3 * d, t * 3 * d, 0.0f,
                                dqkv.ptr() + d + h * dh, 3 * d, t * 3 * d, batch);
      }
      check_close(dqkv.read(), ref.dqkv, 1e-4, 1e-5);
    }
  }

  TEST_CASE("fused attention against a double reference") {
    // Shapes: a context that is no multiple of the CUDA kernels' 64-row tiles, and each head
    // width they take (64, 32, 16). The CPU computes in FP32; the CUDA kernels in bf16, only
    // at that precision.
    struct shape {
      int64_t batch, t, d, heads;
    };
    for (auto& b : backends_under_test()) {
      CAPTURE(b->describe());
      const bool exact = b->where().kind == device_kind::host;
      // Heads that do not split the width evenly are refused, clearly, on every backend.
      CHECK_THROWS_WITH_AS(b->fused_attention_forward(nullptr, 1, 1, 64, 3, 1.0f, nullptr, nullptr),
                           doctest::Contains("has no fused attention for heads of 21 values"),
                           compute_error);
      b->set_precision(math_precision::fp32);
      CHECK(b->fused_attention(64) == exact);  // an FP32 job on a GPU stays exact: composed
      b->set_precision(math_precision::bf16);
      if (!b->fused_attention(64)) {
        MESSAGE("no fused attention on " << b->describe()
                                         << " (its blocks cannot take the kernels' shared "
                                            "memory): skipped");
        continue;
      }
      for (const shape& sh : {shape{2, 100, 128, 2}, shape{3, 64, 64, 2}, shape{1, 130, 48, 3}}) {
        CAPTURE(sh.t);
        CAPTURE(sh.d);
        CAPTURE(sh.heads);
        REQUIRE(b->fused_attention(sh.d / sh.heads));
        attention_reference ref{sh.batch, sh.t, sh.d, sh.heads,
                                1.0f / std::sqrt(static_cast<float>(sh.d / sh.heads))};
        auto qkv = random_vector(sh.batch * sh.t * 3 * sh.d, 31);
        auto dctx = random_vector(sh.batch * sh.t * sh.d, 32);
        ref.run(qkv, dctx);
        buffer bqkv(*b, qkv), bdctx(*b, dctx), ctx(*b, std::vector<float>(ref.ctx.size(), 7.0f)),
            lse(*b, std::vector<float>(ref.lse.size(), 7.0f)),
            dqkv(*b, std::vector<float>(ref.dqkv.size(), 7.0f));
        b->fused_attention_forward(bqkv.ptr(), sh.batch, sh.t, sh.d, sh.heads, ref.scale, ctx.ptr(),
                                   lse.ptr());
        b->fused_attention_backward(bqkv.ptr(), ctx.ptr(), lse.ptr(), bdctx.ptr(), sh.batch, sh.t,
                                    sh.d, sh.heads, ref.scale, dqkv.ptr());
        if (exact) {
          check_close(ctx.read(), ref.ctx, 1e-4, 1e-5);
          check_close(lse.read(), ref.lse, 1e-5, 1e-5);
          check_close(dqkv.read(), ref.dqkv, 1e-4, 1e-5);
        } else {
          // bf16 products (8 significant bits) over unit-variance values: about 1% of a
          // value's typical size.
          check_close(ctx.read(), ref.ctx, 2e-2, 2e-2);
          check_close(lse.read(), ref.lse, 1e-2, 3e-2);
          check_close(dqkv.read(), ref.dqkv, 3e-2, 3e-2);
        }
        // The same bits again: no atomics.
        const auto first = dqkv.read();
        b->fused_attention_backward(bqkv.ptr(), ctx.ptr(), lse.ptr(), bdctx.ptr(), sh.batch, sh.t,
                                    sh.d, sh.heads, ref.scale, dqkv.ptr());
        const auto again = dqkv.read();
        CHECK(std::memcmp(first.data(), again.data(), first.size() * sizeof(float)) == 0);
      }
    }
  }

  TEST_CASE("norm parameter gradients over tall matrices (a language model's batch x context)") {
    // Tall enough that a GPU sums chunks of rows on many blocks, then the chunks' partials.
    for (auto& b : backends_under_test()) {
      CAPTURE(b->describe());
      for (bool rms : {false, true}) {
        for (const auto& shape : {std::pair<int64_t, int64_t>{8192, 64}, {3001, 70}}) {
          const int64_t rows = shape.first, cols = shape.second;
          CAPTURE(rms);
          CAPTURE(rows);
          auto x = random_vector(rows * cols, 21), dy = random_vector(rows * cols, 22);
          auto gamma = random_vector(cols, 23), beta = random_vector(cols, 24);
          buffer dx_(*b, x), dyb(*b, dy), g(*b, gamma), be(*b, beta), y(*b, x);
          buffer mean(*b, std::vector<float>(rows)), rstd(*b, std::vector<float>(rows));
          buffer dx(*b, std::vector<float>(rows * cols)),
              dgamma(*b, std::vector<float>(cols, 9.0f)), dbeta(*b, std::vector<float>(cols, 9.0f));
          b->norm_forward(rms, dx_.ptr(), g.ptr(), rms ? nullptr : be.ptr(), rows, cols, 1e-5f,
                          y.ptr(), mean.ptr(), rstd.ptr());
          b->norm_backward(rms, dx_.ptr(), g.ptr(), dyb.ptr(), mean.ptr(), rstd.ptr(), rows, cols,
                           dx.ptr(), dgamma.ptr(), rms ? nullptr : dbeta.ptr(), false);
          const auto m = mean.read(), s = rstd.read();
          std::vector<double> want_gamma(cols, 0.0), want_beta(cols, 0.0);
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < cols; ++c) {
              const double xhat = (x[r * cols + c] - (rms ? 0.0 : m[r])) * s[r];
              want_gamma[c] += dy[r * cols + c] * xhat;
              want_beta[c] += dy[r * cols + c];
            }
          check_close(dgamma.read(), want_gamma, 1e-4, 1e-3);
          if (!rms) check_close(dbeta.read(), want_beta, 1e-4, 1e-3);
        }
      }
    }
  }

  TEST_CASE("norms and softmaxes over rows of every width against a double reference") {
    // A GPU holds rows of up to 1,024 columns in a warp's registers and takes a kernel of
    // another shape past that: widths on each side of each register count (4, 8, 16, 32
    // values a lane) and past the last, each against double arithmetic. In place, as a model
    // graph runs them (y = x for the norm, the softmaxes on their own buffers).
    for (auto& b : backends_under_test()) {
      CAPTURE(b->describe());
      for (int64_t cols : {1, 7, 128, 129, 300, 768, 1024, 1025, 1500}) {
        CAPTURE(cols);
        const int64_t rows = 41, n = rows * cols;
        auto x = random_vector(n, 51, 2.0), dy = random_vector(n, 52);
        auto gamma = random_vector(cols, 53), beta = random_vector(cols, 54);
        for (bool rms : {false, true}) {
          CAPTURE(rms);
          buffer y(*b, x), g(*b, gamma), be(*b, beta), dyb(*b, dy);
          buffer mean(*b, std::vector<float>(rows, 7.0f)), rstd(*b, std::vector<float>(rows, 7.0f));
          b->norm_forward(rms, y.ptr(), g.ptr(), rms ? nullptr : be.ptr(), rows, cols, 1e-5f,
                          y.ptr(), mean.ptr(), rstd.ptr());
          std::vector<double> want_y(n), want_dx(n), want_mean(rows), want_rstd(rows);
          for (int64_t r = 0; r < rows; ++r) {
            const float* xr = x.data() + r * cols;
            double m = 0.0, sq = 0.0;
            if (!rms) {
              for (int64_t c = 0; c < cols; ++c) m += xr[c];
              m /= static_cast<double>(cols);
            }
            for (int64_t c = 0; c < cols; ++c) sq += (xr[c] - m) * (xr[c] - m);
            const double s = 1.0 / std::sqrt(sq / static_cast<double>(cols) + 1e-5);
            want_mean[r] = m;
            want_rstd[r] = s;
            double sum_g = 0.0, sum_gx = 0.0;
            for (int64_t c = 0; c < cols; ++c) {
              const double xhat = (xr[c] - m) * s;
              want_y[r * cols + c] = xhat * gamma[c] + (rms ? 0.0 : beta[c]);
              const double gv = double{dy[r * cols + c]} * gamma[c];
              sum_g += gv;
              sum_gx += gv * xhat;
            }
            const double mean_g = rms ? 0.0 : sum_g / static_cast<double>(cols);
            for (int64_t c = 0; c < cols; ++c) {
              const double xhat = (xr[c] - m) * s;
              want_dx[r * cols + c] = s * (double{dy[r * cols + c]} * gamma[c] - mean_g -
                                           xhat * sum_gx / static_cast<double>(cols));
            }
          }
          check_close(y.read(), want_y, 1e-5, 1e-5);
          if (!rms) check_close(mean.read(), want_mean, 1e-6, 1e-6);
          check_close(rstd.read(), want_rstd, 1e-6, 0);
          // dx in place of dy, as a model graph may ask.
          buffer in(*b, x), dgamma(*b, std::vector<float>(cols)),
              dbeta(*b, std::vector<float>(cols));
          b->norm_backward(rms, in.ptr(), g.ptr(), dyb.ptr(), mean.ptr(), rstd.ptr(), rows, cols,
                           dyb.ptr(), dgamma.ptr(), rms ? nullptr : dbeta.ptr(), false);
          check_close(dyb.read(), want_dx, 1e-4, 1e-4);
        }
      }
      for (int64_t t : {1, 5, 32, 100, 129, 512, 1024, 1100}) {
        CAPTURE(t);
        const int64_t count = 3, rows = count * t, n = rows * t;
        const float scale = 0.125f;
        auto s_host = random_vector(n, 61, 4.0), dp_host = random_vector(n, 62);
        buffer s(*b, s_host), dp(*b, dp_host);
        b->causal_softmax_forward(s.ptr(), count, t, scale);
        std::vector<double> want_p(n, 0.0), want_dp(n, 0.0);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t visible = r % t + 1;
          double best = -INFINITY, total = 0.0, dot = 0.0;
          for (int64_t j = 0; j < visible; ++j)
            best = std::max(best, double{scale} * s_host[r * t + j]);
          for (int64_t j = 0; j < visible; ++j)
            total += std::exp(double{scale} * s_host[r * t + j] - best);
          for (int64_t j = 0; j < visible; ++j)
            want_p[r * t + j] = std::exp(double{scale} * s_host[r * t + j] - best) / total;
          for (int64_t j = 0; j < t; ++j) dot += want_p[r * t + j] * dp_host[r * t + j];
          for (int64_t j = 0; j < t; ++j)
            want_dp[r * t + j] = scale * want_p[r * t + j] * (dp_host[r * t + j] - dot);
        }
        const auto p = s.read();
        check_close(p, want_p, 1e-5, 1e-7);
        b->softmax_backward(s.ptr(), dp.ptr(), rows, t, scale);
        check_close(dp.read(), want_dp, 1e-4, 1e-6);
      }
    }
  }

  TEST_CASE("softmax cross-entropy: loss, accuracy and gradient") {
    for (auto& b : backends_under_test()) {
      CAPTURE(b->describe());
      const int64_t rows = 57, classes = 10;
      auto logits = random_vector(rows * classes, 5, 3.0);
      logits[3] = 80.0f;  // a large logit must not overflow the softmax
      std::vector<int32_t> labels(rows);
      rng r(6);
      for (auto& l : labels) l = static_cast<int32_t>(r.below(classes));

      double want_loss = 0.0;
      int correct = 0;
      std::vector<double> want_grad(rows * classes);
      const double scale = 1.0 / rows;
      for (int64_t i = 0; i < rows; ++i) {
        const float* z = &logits[i * classes];
        double max = z[0];
        int arg = 0;
        for (int c = 1; c < classes; ++c)
          if (z[c] > max) max = z[c], arg = c;
        double denom = 0.0;
        for (int c = 0; c < classes; ++c) denom += std::exp(z[c] - max);
        want_loss += std::log(denom) - (z[labels[i]] - max);
        correct += arg == labels[i];
        for (int c = 0; c < classes; ++c)
          want_grad[i * classes + c] =
              (std::exp(z[c] - max) / denom - (c == labels[i] ? 1.0 : 0.0)) * scale;
      }

      buffer dl(*b, logits), grad(*b, std::vector<float>(rows * classes, 0.0f)),
          stats(*b, {0.0f, 0.0f});
      tensor dlabels = b->allocate({rows}, dtype::i32);
      b->upload(labels.data(), dlabels.raw(), rows * sizeof(int32_t));
      b->softmax_xent(dl.ptr(), dlabels.data<int32_t>(), rows, classes, static_cast<float>(scale),
                      grad.ptr(), stats.ptr());
      check_close(grad.read(), want_grad, 1e-4, 1e-7);
      check_close(stats.read(), {want_loss, static_cast<double>(correct)}, 1e-5, 1e-4);

      // Without a gradient buffer only the statistics accumulate (on top of the previous).
      b->softmax_xent(dl.ptr(), dlabels.data<int32_t>(), rows, classes, 0.0f, nullptr, stats.ptr());
      check_close(stats.read(), {2 * want_loss, 2.0 * correct}, 1e-5, 1e-4);
    }
  }

  TEST_CASE("softmax cross-entropy of large logits: relative to the row's maximum") {
    // The CUDA kernel formed max + log(sum) in float: past logits of about 1e5 it rounded to
    // the maximum's precision, and logits [1e7, 1e7] gave a loss of 1 (not ln 2) and a
    // gradient of [-0.632, 0.368]; the CPU, exact, disagreed with its re-computation.
    for (auto& b : backends_under_test()) {
      CAPTURE(b->describe());
      buffer dl(*b, {1e7f, 1e7f, -3e6f, 3e6f + 1.0f}), grad(*b, std::vector<float>(4, 0.0f)),
          stats(*b, {0.0f, 0.0f});
      tensor labels = b->allocate({2}, dtype::i32);
      const std::vector<int32_t> host{0, 1};
      b->upload(host.data(), labels.raw(), 2 * sizeof(int32_t));
      b->softmax_xent(dl.ptr(), labels.data<int32_t>(), 2, 2, 1.0f, grad.ptr(), stats.ptr());
      // Row 2: logits 6e6 + 1 apart, its label the larger: no loss, no gradient.
      check_close(grad.read(), {-0.5, 0.5, 0.0, 0.0}, 1e-6, 1e-6);
      check_close(stats.read(), {std::log(2.0), 2.0}, 1e-6, 1e-6);
    }
  }

  TEST_CASE("adamw matches the reference update over several steps") {
    for (auto& b : backends_under_test()) {
      CAPTURE(b->describe());
      const int64_t n = 1000;
      auto p = random_vector(n, 21), m0 = std::vector<float>(n, 0.0f);
      adamw_config cfg{
          .lr = 0.01f, .beta1 = 0.9f, .beta2 = 0.99f, .eps = 1e-8f, .weight_decay = 0.1f};
      std::vector<double> rp(p.begin(), p.end()), rm(n, 0.0), rv(n, 0.0);
      buffer dp(*b, p), dm(*b, m0), dv(*b, m0);
      for (int64_t step = 1; step <= 3; ++step) {
        auto g = random_vector(n, 100 + step);
        buffer dg(*b, g);
        b->adamw(dp.ptr(), dg.ptr(), dm.ptr(), dv.ptr(), n, cfg, step);
        double bc1 = 1 - std::pow(0.9, step), bc2 = 1 - std::pow(0.99, step);
        for (int64_t i = 0; i < n; ++i) {
          rm[i] = 0.9 * rm[i] + 0.1 * g[i];
          rv[i] = 0.99 * rv[i] + 0.01 * double{g[i]} * g[i];
          rp[i] = rp[i] * (1 - 0.01 * 0.1) - 0.01 * (rm[i] / bc1) / (std::sqrt(rv[i] / bc2) + 1e-8);
        }
      }
      check_close(dp.read(), rp, 1e-5, 1e-6);
      check_close(dm.read(), rm, 1e-5, 1e-6);
      check_close(dv.read(), rv, 1e-5, 1e-7);
    }
  }

  TEST_CASE("sum, sum of squares and fill") {
    for (auto& b : backends_under_test()) {
      CAPTURE(b->describe());
      auto x = random_vector(100003, 31);
      double s = 0, s2 = 0;
      for (float v : x) s += v, s2 += double{v} * v;
      buffer dx(*b, x);
      CHECK(b->sum(dx.ptr(), static_cast<int64_t>(x.size())) == doctest::Approx(s).epsilon(1e-9));
      CHECK(b->sum_squares(dx.ptr(), static_cast<int64_t>(x.size())) ==
            doctest::Approx(s2).epsilon(1e-9));
      b->fill(dx.ptr(), 10, 4.0f);
      auto back = dx.read();
      CHECK(back[9] == 4.0f);
      CHECK(back[10] == x[10]);
    }
  }

  TEST_CASE("a backend that does not record refuses to, with a clear error") {
    // The CPU backend records nothing: asking it to is an error naming it, not a silent
    // recording of nothing (a graph model checks records() first and never asks).
    auto cpu = make_cpu_backend(1);
    CHECK_FALSE(cpu->records());
    CHECK(cpu->replays() == 0);
    try {
      cpu->begin_recording();
      FAIL("begin_recording on the CPU did not throw");
    } catch (const compute_error& e) {
      CHECK(std::string(e.what()).find("records no work") != std::string::npos);
    }
    CHECK(cpu->end_recording() == nullptr);
    struct foreign final : recorded_work {};
    CHECK_THROWS_AS(cpu->replay(foreign{}), compute_error);
    CHECK(cpu->replays() == 0);
  }

  TEST_CASE("make_backend rejects unknown names and missing devices") {
    auto bad = make_backend("tpu", 1);
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().code() == errc::invalid_argument);
    CHECK(bad.error().message().find("tpu") != std::string::npos);
    CHECK_FALSE(make_backend("cuda:x", 1).has_value());
    auto far = make_backend("cuda:999", 1);
    REQUIRE_FALSE(far.has_value());
    CHECK(far.error().code() == errc::no_device);
  }

  TEST_CASE("make_backend takes only the CUDA devices the kernels run on") {
    // "cuda" took device 0 whatever it was: a card older than the build's kernels failed at
    // its first launch, where the node's plan left it out saying why.
    if (!cuda_compiled()) GFLEX_SKIP_CASE("a build without CUDA (make_backend says so itself)");
    const auto usable = cuda_devices();
    if (!usable.empty()) {
      auto first = make_backend("cuda", 1);
      REQUIRE(first.has_value());
      CHECK((*first)->where().index == usable.front().ordinal);
      return;
    }
    auto none = make_backend("cuda", 1);
    REQUIRE_FALSE(none.has_value());
    CHECK(none.error().code() == errc::no_device);
    CHECK(none.error().message().starts_with("no usable CUDA device ("));
    auto named = make_backend("cuda:0", 1);
    REQUIRE_FALSE(named.has_value());
    CHECK(named.error().message().starts_with("cuda:0: there is no usable CUDA device 0"));
  }
}
