/// @file
/// The CUDA backend: cuBLAS for gemm, cuDNN for convolutions, own kernels for everything else.
///
/// Design:
/// - One non-blocking stream per backend, and one cuBLAS handle (and, from the first
///   convolution, one cuDNN handle) bound to it. Every operation is enqueued on that stream, so
///   operations run in the order they were called and only `download`, `synchronize`, `sum`
///   and `sum_squares` wait. Non-blocking, because the legacy default stream would serialise us
///   with every other library in the process.
/// - cudaSetDevice(ordinal) at the start of every public operation: the current device is per
///   host thread, and the actor layer may call a backend from a different thread than the one
///   that built it (one thread at a time, but not always the same one). The call is cheap.
/// - Memory comes from the device's stream-ordered pool (cudaMallocAsync) where the device
///   supports it, so a training step's temporaries cost no device synchronisation. A tensor's
///   deleter frees on the backend's stream; the stream is shared with the deleters so that a
///   tensor may outlive the backend that allocated it (stream_owner, cuda_stream.hpp). Every
///   device allocation (tensors, the cuDNN workspace, scratch) is first reserved against the
///   process-wide per-device budget of set_cuda_memory_limit (cuda_memory.hpp), so a node's
///   owner can cap what jobs take.
/// - `upload` stages through a small ring of pinned host buffers (cuda_staging.hpp): the
///   caller's memory is copied into a slot and the DMA runs from there, so the call returns
///   before the transfer is done and the caller may reuse its buffer at once. A slot is reused
///   only after the event recorded behind its last copy has fired.
/// - The kernels are private to cuda_kernels.cu, which gives the backend a launcher for each.
///   Elementwise kernels use grid-stride loops with 256 threads per block and at most one
///   full-occupancy wave of blocks (SMs x resident blocks per SM): more blocks only add
///   scheduling, fewer leave SMs idle. 64-bit indices throughout; tensors may exceed 2^31.
/// - Reductions are two-pass (per-block partials in a fixed order, then one block) rather
///   than atomics, so `sum`, `sum_squares` and `column_sum` are deterministic run to run.
///   Only softmax_xent's and mse_onehot's statistics (their interface adds into `stats`) use
///   float atomics; embedding_backward sorts the ids (a stable radix sort) and sums each id's
///   rows in order, and pool2d_backward and norm_backward gather, so they are deterministic
///   too.
///   cuDNN algorithms are chosen deterministic where one fits (backward-filter and
///   backward-data algorithms that accumulate with atomics are skipped while another exists;
///   cudnn_planning.hpp).
/// - Precision: FP32 (the default) is exact, CUBLAS_DEFAULT_MATH and CUDNN_FMA_MATH, so
///   results match the CPU backend to FP32 rounding. TF32 and BF16 are opted into per backend
///   (set_precision) and only change how GEMMs and convolutions round their products.

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>

#include "cuda_attention.hpp"
#include "cuda_check.hpp"
#include "cuda_kernels.hpp"
#include "cuda_memory.hpp"
#include "cuda_staging.hpp"
#include "cuda_stream.hpp"
#include "cudnn_planning.hpp"
#include "gflex/kernels/backend.hpp"
#include "gflex/kernels/devices.hpp"

namespace gflex::kernels::detail {

namespace {

/// cuBLAS's workspace: what NVIDIA's cuBLAS documentation recommends for Hopper (4 MiB
/// suffices on older GPUs).
constexpr size_t k_blas_workspace = size_t{32} << 20;

class cuda_backend final : public backend {
 public:
  explicit cuda_backend(int ordinal) : ordinal_(ordinal) {
    try {
      init();
    } catch (...) {
      // The destructor does not run for a half-built object; release what init() made.
      release();
      throw;
    }
  }

  ~cuda_backend() override { release(); }

  cuda_backend(const cuda_backend&) = delete;
  cuda_backend& operator=(const cuda_backend&) = delete;

  device where() const override { return device{device_kind::cuda, ordinal_}; }

  std::string describe() const override { return description_; }

  void* native_stream() const noexcept override {
    return streams_ ? static_cast<void*>(streams_->stream()) : nullptr;
  }

  // -- memory ---------------------------------------------------------------------------------

  tensor allocate(shape_t shape, dtype type) override {
    // Past the value bound: out of memory, as the CPU backend says (not a failed device).
    auto numel = checked_numel(shape);
    if (!numel)
      throw compute_error(error(errc::device_error, "allocating " + to_string(shape) +
                                                        ": out of device memory (" +
                                                        numel.error().message() + ")"));
    const size_t bytes = static_cast<size_t>(*numel) * size_of(type);
    if (bytes == 0) return tensor::adopt(std::move(shape), type, where(), nullptr);
    refuse_while_recording("allocate");
    activate();
    const std::string what = "allocating " + std::to_string(bytes) + " bytes for " +
                             gflex::to_string(shape) + " " + to_string(type) +
                             " on cuda:" + std::to_string(ordinal_);
    void* memory = allocate_device(bytes, what);
    std::shared_ptr<stream_owner> owner = streams_;
    return tensor::adopt(
        std::move(shape), type, where(),
        std::shared_ptr<void>(memory, [owner, bytes](void* p) noexcept { owner->free(p, bytes); }));
  }

  void upload(const void* src, void* dst, size_t count) override {
    if (count == 0) return;
    refuse_while_recording("upload");
    activate();
    staging_.upload(stream(), src, dst, count);
  }

  void download(const void* src, void* dst, size_t count) override {
    if (count == 0) return;
    refuse_while_recording("download");
    activate();
    GFLEX_CUDA_CHECK(cudaMemcpyAsync(dst, src, count, cudaMemcpyDeviceToHost, stream()));
    GFLEX_CUDA_CHECK(cudaStreamSynchronize(stream()));
  }

  void synchronize() override {
    refuse_while_recording("synchronize");
    activate();
    GFLEX_CUDA_CHECK(cudaStreamSynchronize(stream()));
  }

  void fill(float* x, int64_t n, float value) override {
    if (n <= 0) return;
    activate();
    launch_fill(kernel_launch(), x, n, value);
  }

  // -- dense algebra --------------------------------------------------------------------------

  void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
            const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
            int64_t ldc) override {
    if (m <= 0 || n <= 0) return;
    activate();
    if (k <= 0) {
      // Nothing to multiply: C = beta * C. Done here so that cuBLAS never sees k == 0 with the
      // leading dimensions a caller may leave at 0 for an empty operand.
      launch_scale_matrix(kernel_launch(), c, m, n, ldc, 0, 1, beta);
      return;
    }
    for (int64_t extent : {m, n, k, lda, ldb, ldc}) {
      if (extent > INT_MAX)
        throw compute_error(gflex::error(
            errc::invalid_argument,
            "gemm extent " + std::to_string(extent) + " exceeds cuBLAS's 32-bit limit"));
    }
    // cuBLAS is column-major, and a row-major matrix is its transpose seen column-major. So
    // compute C^T = op(B)^T * op(A)^T: B first, A second, m and n swapped, the same flags.
    const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const auto mi = static_cast<int>(m);
    const auto ni = static_cast<int>(n);
    const auto ki = static_cast<int>(k);
    if (precision_ == math_precision::fp32) {
      GFLEX_CUBLAS_CHECK(cublasSgemm(blas_, op_b, op_a, ni, mi, ki, &alpha, b,
                                     static_cast<int>(ldb), a, static_cast<int>(lda), &beta, c,
                                     static_cast<int>(ldc)));
      return;
    }
    if (precision_ == math_precision::bf16 && bf16_operands_) {
      gemm_bf16_operands(op_a, op_b, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c,
                         ldc);
      return;
    }
    // FP32 in and out, products rounded as the precision allows, FP32 accumulation. The
    // compute type, not the handle's math mode, grants the down-conversion, so the handle
    // stays at CUBLAS_DEFAULT_MATH and FP32 calls above stay exact.
    const cublasComputeType_t compute = precision_ == math_precision::tf32
                                            ? CUBLAS_COMPUTE_32F_FAST_TF32
                                            : CUBLAS_COMPUTE_32F_FAST_16BF;
    GFLEX_CUBLAS_CHECK(cublasGemmEx(blas_, op_b, op_a, ni, mi, ki, &alpha, b, CUDA_R_32F,
                                    static_cast<int>(ldb), a, CUDA_R_32F, static_cast<int>(lda),
                                    &beta, c, CUDA_R_32F, static_cast<int>(ldc), compute,
                                    CUBLAS_GEMM_DEFAULT));
  }

  /// gemm at bf16 from bf16 copies of its operands (unless GFLEX_BF16_OPERANDS=0): each packed into
  /// the workspace (half the bytes of the FP32 matrix, rounded to nearest even as cuBLAS's
  /// FAST_16BF mode rounds), multiplied as bf16 with FP32 accumulation into the FP32 result.
  /// One pass over each operand more, for a product on the bf16 tensor cores' own inputs
  /// rather than FP32 ones converted inside cuBLAS's kernel: which is faster is for a card
  /// to measure (`gflex devices --calibrate` gives both rates).
  void gemm_bf16_operands(cublasOperation_t op_a, cublasOperation_t op_b, bool trans_a,
                          bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                          const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                          float* c, int64_t ldc) {
    // As stored, row-major: A is m x k (k x m transposed), B is k x n (n x k transposed).
    const int64_t a_rows = trans_a ? k : m;
    const int64_t a_cols = trans_a ? m : k;
    const int64_t b_rows = trans_b ? n : k;
    const int64_t b_cols = trans_b ? k : n;
    const size_t a_bytes = sizeof(__nv_bfloat16) * static_cast<size_t>(a_rows * a_cols);
    const size_t b_offset = (a_bytes + 255) / 256 * 256;
    const size_t bytes = b_offset + sizeof(__nv_bfloat16) * static_cast<size_t>(b_rows * b_cols);
    auto* a16 = static_cast<__nv_bfloat16*>(ensure_workspace(bytes));
    auto* b16 = reinterpret_cast<__nv_bfloat16*>(reinterpret_cast<char*>(a16) + b_offset);
    launch_to_bf16(kernel_launch(), a, a_rows, a_cols, lda, a16);
    launch_to_bf16(kernel_launch(), b, b_rows, b_cols, ldb, b16);
    GFLEX_CUBLAS_CHECK(cublasGemmEx(
        blas_, op_b, op_a, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha,
        b16, CUDA_R_16BF, static_cast<int>(b_cols), a16, CUDA_R_16BF, static_cast<int>(a_cols),
        &beta, c, CUDA_R_32F, static_cast<int>(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }

  void axpby(int64_t n, float a, const float* x, float b, float* y) override {
    if (n <= 0) return;
    activate();
    launch_axpby(kernel_launch(), n, a, x, b, y);
  }

  // -- layers ---------------------------------------------------------------------------------

  void bias_relu_forward(float* y, const float* bias, int64_t rows, int64_t cols,
                         bool relu) override {
    if (rows <= 0 || cols <= 0) return;
    activate();
    launch_bias_relu(kernel_launch(), relu, y, bias, rows, cols);
  }

  void relu_backward(float* dy, const float* y, int64_t n) override {
    if (n <= 0) return;
    activate();
    launch_relu_backward(kernel_launch(), dy, y, n);
  }

  void column_sum(const float* x, int64_t rows, int64_t cols, float* out) override {
    // rows == 0 still runs: every column sums to 0.
    if (cols <= 0) return;
    activate();
    launch_column_sum(kernel_launch(), x, std::max<int64_t>(rows, 0), cols, out, reduce_buffer_,
                      reduce_capacity_);
  }

  void softmax_xent(const float* logits, const int32_t* labels, int64_t rows, int64_t classes,
                    float grad_scale, float* dlogits, float* stats) override {
    if (rows <= 0 || classes <= 0) return;
    activate();
    launch_softmax_xent(kernel_launch(), logits, labels, rows, classes, grad_scale, dlogits, stats);
  }

  // -- convolutional layers -----------------------------------------------------------------

  void conv2d_forward(const conv2d_geometry& g, const float* x, const float* w, float* y) override {
    activate();
    conv_plan& plan = plan_for(g);
    const conv_choice& choice = choose(plan, conv_pass::forward, g, x, w, y);
    void* workspace = ensure_workspace(choice.workspace);
    const float one = 1.0f;
    const float zero = 0.0f;  // y is overwritten
    GFLEX_CUDNN_CHECK(cudnnConvolutionForward(dnn_, &one, plan.x.get(), x, plan.w.get(), w,
                                              plan.conv[0].get(),
                                              static_cast<cudnnConvolutionFwdAlgo_t>(choice.algo),
                                              workspace, choice.workspace, &zero, plan.y.get(), y));
  }

  void conv2d_backward_data(const conv2d_geometry& g, const float* dy, const float* w,
                            float* dx) override {
    activate();
    conv_plan& plan = plan_for(g);
    const conv_choice& choice = choose(plan, conv_pass::backward_data, g, w, dy, dx);
    void* workspace = ensure_workspace(choice.workspace);
    const float one = 1.0f;
    const float zero = 0.0f;  // dx is overwritten
    GFLEX_CUDNN_CHECK(cudnnConvolutionBackwardData(
        dnn_, &one, plan.w.get(), w, plan.y.get(), dy, plan.conv[1].get(),
        static_cast<cudnnConvolutionBwdDataAlgo_t>(choice.algo), workspace, choice.workspace, &zero,
        plan.x.get(), dx));
  }

  void conv2d_backward_filter(const conv2d_geometry& g, const float* x, const float* dy,
                              float* dw) override {
    activate();
    conv_plan& plan = plan_for(g);
    const conv_choice& choice = choose(plan, conv_pass::backward_filter, g, x, dy, dw);
    void* workspace = ensure_workspace(choice.workspace);
    const float one = 1.0f;
    const float zero = 0.0f;  // dw is overwritten
    GFLEX_CUDNN_CHECK(cudnnConvolutionBackwardFilter(
        dnn_, &one, plan.x.get(), x, plan.y.get(), dy, plan.conv[2].get(),
        static_cast<cudnnConvolutionBwdFilterAlgo_t>(choice.algo), workspace, choice.workspace,
        &zero, plan.w.get(), dw));
  }

  void max_pool2_forward(const float* x, int64_t batch, int64_t height, int64_t width,
                         int64_t channels, float* y, int32_t* argmax) override {
    if (batch <= 0 || channels <= 0 || height < 2 || width < 2) return;  // no output
    check_pool_extents("max_pool2", height, width, channels);
    activate();
    const int64_t out_h = height / 2;
    const int64_t out_w = width / 2;
    const int64_t n = batch * out_h * out_w * channels;
    launch_max_pool2_forward(kernel_launch(), x, height, width, channels, out_h, out_w, n, y,
                             argmax);
  }

  void max_pool2_backward(const float* dy, const int32_t* argmax, int64_t batch, int64_t height,
                          int64_t width, int64_t channels, float* dx) override {
    if (batch <= 0 || channels <= 0 || height <= 0 || width <= 0) return;  // dx is empty
    check_pool_extents("max_pool2", height, width, channels);
    activate();
    const int64_t sample_in = height * width * channels;
    // Inputs no window covers (an odd last row or column) get zero, as do the losers.
    GFLEX_CUDA_CHECK(
        cudaMemsetAsync(dx, 0, static_cast<size_t>(batch * sample_in) * sizeof(float), stream()));
    const int64_t sample_out = (height / 2) * (width / 2) * channels;
    if (sample_out == 0) return;
    const int64_t n = batch * sample_out;
    launch_max_pool2_backward(kernel_launch(), dy, argmax, sample_in, sample_out, n, dx);
  }

  // -- layers of user-defined models (model_graph) -----------------------------------------

  void pool2d_forward(bool max, const float* x, int64_t batch, int64_t height, int64_t width,
                      int64_t channels, int64_t window, int64_t stride, float* y,
                      int32_t* argmax) override {
    check_pool_window(window, stride);
    if (batch <= 0 || channels <= 0 || height < window || width < window) return;  // no output
    if (max) check_pool_extents("pool2d", height, width, channels);
    activate();
    const int64_t out_h = (height - window) / stride + 1;
    const int64_t out_w = (width - window) / stride + 1;
    const int64_t n = batch * out_h * out_w * channels;
    launch_pool2d_forward(kernel_launch(), max, x, height, width, channels, window, stride, out_h,
                          out_w, n, y, argmax);
  }

  void pool2d_backward(bool max, const float* dy, const int32_t* argmax, int64_t batch,
                       int64_t height, int64_t width, int64_t channels, int64_t window,
                       int64_t stride, float* dx) override {
    check_pool_window(window, stride);
    if (batch <= 0 || channels <= 0 || height <= 0 || width <= 0) return;  // dx is empty
    if (max) check_pool_extents("pool2d", height, width, channels);
    activate();
    const int64_t n = batch * height * width * channels;
    if (height < window || width < window) {
      // No window fits: no output, and every input's gradient is zero.
      GFLEX_CUDA_CHECK(cudaMemsetAsync(dx, 0, static_cast<size_t>(n) * sizeof(float), stream()));
      return;
    }
    const int64_t out_h = (height - window) / stride + 1;
    const int64_t out_w = (width - window) / stride + 1;
    // A gather over the covering outputs writes every input (zero where nothing routes to it),
    // so dx needs no memset and overlapping windows need no atomics.
    launch_pool2d_backward(kernel_launch(), max, dy, argmax, height, width, channels, window,
                           stride, out_h, out_w, n, dx);
  }

  void activation_forward(activation f, const float* x, float* y, int64_t n) override {
    if (n <= 0) return;
    activate();
    launch_activation_forward(kernel_launch(), f, x, y, n);
  }

  void activation_backward(activation f, const float* x, const float* dy, float* dx,
                           int64_t n) override {
    if (n <= 0) return;
    activate();
    launch_activation_backward(kernel_launch(), f, x, dy, dx, n);
  }

  void bias_activation_forward(activation f, float* x, const float* bias, int64_t rows,
                               int64_t cols, float* y) override {
    if (rows <= 0 || cols <= 0) return;
    activate();
    launch_bias_activation(kernel_launch(), f, x, bias, rows, cols, y);
  }

  void multiply(int64_t n, const float* a, const float* b, float* out) override {
    if (n <= 0) return;
    activate();
    launch_multiply(kernel_launch(), n, a, b, out);
  }

  void add(int64_t n, const float* a, const float* b, float* out) override {
    if (n <= 0) return;
    activate();
    launch_add(kernel_launch(), n, a, b, out);
  }

  void dropout_mask(int64_t n, float rate, uint64_t seed, float* mask) override {
    if (n <= 0) return;
    activate();
    // Rounded once here, as the CPU backend's 1.0f / (1.0f - rate): the same float either way.
    const float keep = 1.0f / (1.0f - rate);
    launch_dropout_mask(kernel_launch(), n, rate, keep, seed, mask);
  }

  void norm_forward(bool rms, const float* x, const float* gamma, const float* beta, int64_t rows,
                    int64_t cols, float eps, float* y, float* mean, float* rstd) override {
    if (rows <= 0 || cols <= 0) return;
    activate();
    launch_norm_forward(kernel_launch(), rms, x, gamma, beta, rows, cols, eps, y, mean, rstd);
  }

  void norm_backward(bool rms, const float* x, const float* gamma, const float* dy,
                     const float* mean, const float* rstd, int64_t rows, int64_t cols, float* dx,
                     float* dgamma, float* dbeta, bool accumulate) override {
    if (cols <= 0) return;
    rows = std::max<int64_t>(rows, 0);  // no rows still overwrites dgamma and dbeta with zeros
    activate();
    // The parameter gradients first: they read dy and x, which dx may overwrite.
    launch_norm_param_grad(kernel_launch(), rms, x, dy, mean, rstd, rows, cols, dgamma, dbeta,
                           reduce_buffer_, reduce_capacity_);
    if (rows == 0) return;
    launch_norm_backward_dx(kernel_launch(), rms, x, gamma, dy, mean, rstd, rows, cols, dx,
                            accumulate);
  }

  void embedding_forward(const int32_t* ids, const float* table, int64_t rows, int64_t dim,
                         float* y) override {
    if (rows <= 0 || dim <= 0) return;
    activate();
    launch_embedding_forward(kernel_launch(), ids, table, rows, dim, y);
  }

  void embedding_backward(const int32_t* ids, const float* dy, int64_t rows, int64_t dim,
                          int64_t vocab, float* dtable) override {
    if (vocab <= 0 || dim <= 0) return;  // dtable is empty
    activate();
    GFLEX_CUDA_CHECK(
        cudaMemsetAsync(dtable, 0, static_cast<size_t>(vocab * dim) * sizeof(float), stream()));
    if (rows <= 0) return;
    // The sort's buffers share the cuDNN workspace: both are used only within one call on
    // this stream, and a language model's steps then allocate nothing after the first.
    const size_t bytes = embedding_backward_workspace(rows, dim);
    launch_embedding_backward(kernel_launch(), ids, dy, rows, dim, vocab, dtable,
                              ensure_workspace(bytes), bytes);
  }

  bool fused_attention(int64_t head_dim) const override {
    return precision_ == math_precision::bf16 &&
           flash_attention_supported(head_dim, shared_per_block_optin_);
  }

  void fused_attention_forward(const float* qkv, int64_t batch, int64_t t, int64_t d, int64_t heads,
                               float scale, float* ctx, float* lse) override {
    if (heads <= 0 || d % heads != 0 || !fused_attention(d / heads))
      return backend::fused_attention_forward(qkv, batch, t, d, heads, scale, ctx, lse);
    if (batch <= 0 || t <= 0) return;
    activate();
    flash_attention_forward(stream(), qkv, batch, t, d, heads, scale, ctx, lse);
  }

  void fused_attention_backward(const float* qkv, const float* ctx, const float* lse,
                                const float* dctx, int64_t batch, int64_t t, int64_t d,
                                int64_t heads, float scale, float* dqkv) override {
    if (heads <= 0 || d % heads != 0 || !fused_attention(d / heads))
      return backend::fused_attention_backward(qkv, ctx, lse, dctx, batch, t, d, heads, scale,
                                               dqkv);
    if (batch <= 0 || t <= 0) return;
    activate();
    // D, one value per row, in the shared workspace (used only within one call on the stream).
    void* dsum = ensure_workspace(flash_attention_backward_workspace(batch, t, heads));
    flash_attention_backward(stream(), qkv, ctx, lse, dctx, batch, t, d, heads, scale, dqkv, dsum);
  }

  void causal_softmax_forward(float* s, int64_t count, int64_t t, float scale) override {
    if (count <= 0 || t <= 0) return;
    activate();
    const int64_t rows = count * t;
    launch_causal_softmax(kernel_launch(), s, rows, t, scale);
  }

  void softmax_backward(const float* p, float* dp, int64_t rows, int64_t cols,
                        float scale) override {
    if (rows <= 0 || cols <= 0) return;
    activate();
    launch_softmax_backward(kernel_launch(), p, dp, rows, cols, scale);
  }

  void gemm_strided_batched(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                            float alpha, const float* a, int64_t lda, int64_t stride_a,
                            const float* b, int64_t ldb, int64_t stride_b, float beta, float* c,
                            int64_t ldc, int64_t stride_c, int64_t count) override {
    if (m <= 0 || n <= 0 || count <= 0) return;
    activate();
    if (k <= 0) {
      // C_i = beta * C_i, as gemm does for k == 0 (cuBLAS never sees the empty operands).
      launch_scale_matrix(kernel_launch(), c, m, n, ldc, stride_c, count, beta);
      return;
    }
    for (int64_t extent : {m, n, k, lda, ldb, ldc, count}) {
      if (extent > INT_MAX)
        throw compute_error(gflex::error(errc::invalid_argument,
                                         "gemm_strided_batched extent " + std::to_string(extent) +
                                             " exceeds cuBLAS's 32-bit limit"));
    }
    // Row-major as in gemm: C_i^T = op(B_i)^T * op(A_i)^T, B first, m and n swapped. The
    // strides are 64-bit in cuBLAS (long long).
    const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const auto mi = static_cast<int>(m);
    const auto ni = static_cast<int>(n);
    const auto ki = static_cast<int>(k);
    const auto batches = static_cast<int>(count);
    const auto sa = static_cast<long long>(stride_a);
    const auto sb = static_cast<long long>(stride_b);
    const auto sc = static_cast<long long>(stride_c);
    if (precision_ == math_precision::fp32) {
      GFLEX_CUBLAS_CHECK(cublasSgemmStridedBatched(
          blas_, op_b, op_a, ni, mi, ki, &alpha, b, static_cast<int>(ldb), sb, a,
          static_cast<int>(lda), sa, &beta, c, static_cast<int>(ldc), sc, batches));
      return;
    }
    // As in gemm: the compute type grants the down-conversion, the handle stays exact.
    const cublasComputeType_t compute = precision_ == math_precision::tf32
                                            ? CUBLAS_COMPUTE_32F_FAST_TF32
                                            : CUBLAS_COMPUTE_32F_FAST_16BF;
    GFLEX_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        blas_, op_b, op_a, ni, mi, ki, &alpha, b, CUDA_R_32F, static_cast<int>(ldb), sb, a,
        CUDA_R_32F, static_cast<int>(lda), sa, &beta, c, CUDA_R_32F, static_cast<int>(ldc), sc,
        batches, compute, CUBLAS_GEMM_DEFAULT));
  }

  void mse_onehot(const float* y, const int32_t* labels, int64_t rows, int64_t cols,
                  float grad_scale, float* dy, float* stats) override {
    if (rows <= 0 || cols <= 0) return;
    activate();
    launch_mse_onehot(kernel_launch(), y, labels, rows, cols, grad_scale, dy, stats);
  }

  void set_precision(math_precision p) override {
    if (p != math_precision::fp32 && p != math_precision::tf32 && p != math_precision::bf16)
      throw compute_error(gflex::error(errc::invalid_argument, "unknown math precision"));
    // Nothing to reconfigure: gemm picks its compute type per call from precision_, and conv
    // plans are keyed on the precision, so each precision gets its own algorithms.
    precision_ = p;
  }

  math_precision precision() const override { return precision_; }

  // -- update compression ---------------------------------------------------------------------

  void quantize_int8(const float* x, float* residual, int64_t n, int64_t block, int8_t* q,
                     float* scales) override {
    if (n <= 0) return;
    check_quant_block(block);
    activate();
    const int64_t blocks = (n + block - 1) / block;
    launch_quantize_int8(kernel_launch(), x, residual, n, block, blocks, q, scales);
  }

  void dequantize_int8(const int8_t* q, const float* scales, int64_t n, int64_t block,
                       float* out) override {
    if (n <= 0) return;
    check_quant_block(block);
    activate();
    launch_dequantize_int8(kernel_launch(), q, scales, n, block, out);
  }

  // -- optimisers -----------------------------------------------------------------------------

  void adamw(float* param, const float* grad, float* m, float* v, int64_t n,
             const adamw_config& config, int64_t step) override {
    if (n <= 0) return;
    activate();
    // Bias corrections in double on the host, as the CPU backend does, then rounded once.
    const double s = static_cast<double>(step);
    const auto bc1 = static_cast<float>(1.0 - std::pow(static_cast<double>(config.beta1), s));
    const auto bc2 = static_cast<float>(1.0 - std::pow(static_cast<double>(config.beta2), s));
    launch_adamw(kernel_launch(), param, grad, m, v, n, config.lr, config.beta1, config.beta2,
                 config.eps, config.weight_decay, bc1, bc2);
  }

  // -- recording (CUDA graphs) ----------------------------------------------------------------

  bool records() const override { return true; }

  void begin_recording() override {
    if (recording_) throw compute_error(gflex::error(errc::invalid_argument, "already recording"));
    activate();
    // Thread-local: another thread's backend (a second GPU's) goes on unhindered; this
    // thread's calls that may not be recorded fail instead of being recorded.
    GFLEX_CUDA_CHECK(cudaStreamBeginCapture(stream(), cudaStreamCaptureModeThreadLocal));
    recording_ = true;
    recording_failed_ = false;
  }

  std::unique_ptr<recorded_work> end_recording() override {
    if (!recording_) return nullptr;
    activate();  // first: a throw here leaves the capture to end on a later call
    recording_ = false;
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(stream(), &graph);
    // Tensors released while recording are freed now; work that may have used them is not
    // kept.
    const bool released = streams_->free_deferred() > 0;
    if (ended != cudaSuccess || graph == nullptr || recording_failed_ || released) {
      (void)cudaGetLastError();  // an invalidated capture: nothing ran, nothing is kept
      if (graph != nullptr) (void)cudaGraphDestroy(graph);
      return nullptr;
    }
    cudaGraphExec_t exec = nullptr;
    const cudaError_t status = cudaGraphInstantiate(&exec, graph, 0);
    (void)cudaGraphDestroy(graph);
    if (status != cudaSuccess) {
      (void)cudaGetLastError();
      return nullptr;
    }
    return std::make_unique<cuda_graph>(exec, ordinal_, this, recording_epoch_);
  }

  void replay(const recorded_work& work) override {
    const auto* graph = dynamic_cast<const cuda_graph*>(&work);
    if (graph == nullptr || graph->ordinal != ordinal_ || graph->owner != this)
      throw compute_error(
          gflex::error(errc::invalid_argument, "replaying work another backend recorded"));
    // The graph points into the workspace it was recorded with: once that was replaced, a
    // replay would read freed memory.
    if (graph->epoch != recording_epoch_)
      throw compute_error(gflex::error(
          errc::invalid_argument, "replaying work recorded before the workspace was replaced"));
    refuse_while_recording("replay");
    activate();
    GFLEX_CUDA_CHECK(cudaGraphLaunch(graph->exec, stream()));
    ++replays_;
  }

  uint64_t replays() const override { return replays_; }

  uint64_t recording_epoch() const override { return recording_epoch_; }

  // -- reductions (synchronising) -------------------------------------------------------------

  double sum(const float* x, int64_t n) override { return reduce<false>(x, n); }

  double sum_squares(const float* x, int64_t n) override { return reduce<true>(x, n); }

 private:
  void init() {
    GFLEX_CUDA_CHECK(cudaSetDevice(ordinal_));
    cudaDeviceProp prop{};
    GFLEX_CUDA_CHECK(cudaGetDeviceProperties(&prop, ordinal_));
    int pools = 0;
    GFLEX_CUDA_CHECK(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, ordinal_));
    if (pools != 0) {
      // The default release threshold (0) hands pool memory back to the driver at every
      // synchronisation, so each step would pay for fresh allocations; keep it cached. This
      // is a property of the device's default pool, shared by every backend on the device.
      cudaMemPool_t pool = nullptr;
      GFLEX_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, ordinal_));
      uint64_t threshold = UINT64_MAX;
      GFLEX_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
    }
    max_blocks_ =
        std::max(1, prop.multiProcessorCount * (prop.maxThreadsPerMultiProcessor / k_block));
    shared_per_block_optin_ = prop.sharedMemPerBlockOptin;

    char gib[32];
    std::snprintf(gib, sizeof gib, "%.1f",
                  static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
    description_ = "cuda:" + std::to_string(ordinal_) + " " + prop.name + " (sm_" +
                   std::to_string(prop.major) + std::to_string(prop.minor) + ", " +
                   std::to_string(prop.multiProcessorCount) + " SMs, " + gib + " GiB)";

    streams_ = std::make_shared<stream_owner>(ordinal_, pools != 0);
    GFLEX_CUBLAS_CHECK(cublasCreate(&blas_));
    GFLEX_CUBLAS_CHECK(cublasSetStream(blas_, stream()));
    // Exact FP32: TF32 would make gemm disagree with the CPU backend in the 4th digit. The
    // other precisions are granted per call through cublasGemmEx's compute type.
    GFLEX_CUBLAS_CHECK(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH));
    staging_.init();
    // sum's max_blocks_ partials and its final sum; column_sum's and norm_backward's
    // partials, per chunk of rows and column (k_column_partials_per_block a block of a wave).
    // Allocated once, synchronously (no pool needed), but counted against the budget like
    // everything else on the device.
    reduce_capacity_ = static_cast<int64_t>(max_blocks_) * k_column_partials_per_block;
    reduce_buffer_ = static_cast<double*>(allocate_fixed(
        sizeof(double) *
            static_cast<size_t>(std::max<int64_t>(reduce_capacity_, int64_t{max_blocks_} + 1)),
        reduce_bytes_, "reduction scratch"));
    // cuBLAS's workspace from memory the budget counts (left to itself, cuBLAS takes its
    // own, which --gpu-memory-limit cannot see). 32 MiB is what cuBLAS asks for on Hopper; set
    // after cublasSetStream, which resets it.
    blas_workspace_ = allocate_fixed(k_blas_workspace, blas_workspace_bytes_, "cuBLAS workspace");
    GFLEX_CUBLAS_CHECK(cublasSetWorkspace(blas_, blas_workspace_, blas_workspace_bytes_));
  }

  /// `bytes` of device memory for the backend's lifetime, allocated synchronously (no pool
  /// needed) but counted against the budget like everything else on the device; `held` is set
  /// to what must be released with it. `what` names it in errors.
  void* allocate_fixed(size_t bytes, size_t& held, const char* what) {
    detail::reserve_device_memory(
        ordinal_, bytes,
        std::string("allocating ") + what + " on cuda:" + std::to_string(ordinal_));
    void* memory = nullptr;
    const cudaError_t status = cudaMalloc(&memory, bytes);
    if (status != cudaSuccess) {
      detail::release_device_memory(ordinal_, bytes);
      const std::string call = std::string("cudaMalloc(") + what + ")";
      detail::throw_cuda_error(status, call.c_str(), __FILE__, __LINE__);
    }
    held = bytes;
    return memory;
  }

  /// Frees what init() and later calls made, in reverse order; safe on a partly built backend.
  /// Never throws.
  void release() noexcept {
    device_guard guard(ordinal_);
    staging_.release();
    plans_.clear();
    if (dnn_ != nullptr) (void)cudnnDestroy(dnn_);
    dnn_ = nullptr;
    if (workspace_ != nullptr) streams_->free(workspace_, workspace_bytes_);
    workspace_ = nullptr;
    workspace_bytes_ = 0;
    if (reduce_buffer_ != nullptr) {
      if (cudaFree(reduce_buffer_) != cudaSuccess) (void)cudaGetLastError();
      detail::release_device_memory(ordinal_, reduce_bytes_);
    }
    reduce_buffer_ = nullptr;
    reduce_bytes_ = 0;
    if (blas_ != nullptr) (void)cublasDestroy(blas_);
    blas_ = nullptr;
    if (blas_workspace_ != nullptr) {
      if (cudaFree(blas_workspace_) != cudaSuccess) (void)cudaGetLastError();
      detail::release_device_memory(ordinal_, blas_workspace_bytes_);
    }
    blas_workspace_ = nullptr;
    blas_workspace_bytes_ = 0;
    streams_.reset();  // the stream itself lives on while a tensor from this backend does
  }

  /// Makes this backend's device current on the calling thread (it is per thread).
  void activate() const { GFLEX_CUDA_CHECK(cudaSetDevice(ordinal_)); }

  cudaStream_t stream() const noexcept { return streams_->stream(); }

  /// Where this backend's kernels run: its stream, at most one full-occupancy wave wide.
  launch_config kernel_launch() const noexcept { return launch_config{stream(), max_blocks_}; }

  /// `bytes` (> 0) of device memory, reserved against the device's budget first; `what` names
  /// the allocation in errors. Free with streams_->free(memory, bytes).
  void* allocate_device(size_t bytes, const std::string& what) {
    detail::reserve_device_memory(ordinal_, bytes, what);
    void* memory = nullptr;
    const cudaError_t status = streams_->pooled()
                                   ? cudaMallocAsync(&memory, bytes, streams_->stream())
                                   : cudaMalloc(&memory, bytes);
    if (status != cudaSuccess) {
      detail::release_device_memory(ordinal_, bytes);
      detail::throw_cuda_error(status, what.c_str(), __FILE__, __LINE__);
    }
    return memory;
  }

  /// The workspace, grown to at least `bytes` (null for 0). Growing frees the old one on
  /// the stream first, so the calls already enqueued keep theirs and the pool can reuse it.
  /// It grows to what every chosen algorithm and every other user (bf16 GEMM operands, the
  /// embedding gradient's sort, attention's scratch) has needed where that is more (and
  /// fits): once a model's first pass has run, the workspace stops growing, so its second
  /// pass can be recorded (a recording cannot allocate). `timing`: an algorithm search's
  /// request, which is not kept (choose gives back what only the timing needed).
  void* ensure_workspace(size_t bytes, bool timing = false) {
    if (!timing) kept_workspace_ = std::max(kept_workspace_, bytes);
    if (bytes <= workspace_bytes_) return workspace_;
    refuse_while_recording("growing the workspace");
    ++recording_epoch_;  // work recorded with the old workspace must not run again
    if (workspace_ != nullptr) streams_->free(workspace_, workspace_bytes_);
    workspace_ = nullptr;
    workspace_bytes_ = 0;
    auto grow = [&](size_t size) {
      workspace_ = allocate_device(size, "allocating a cuDNN workspace of " + std::to_string(size) +
                                             " bytes on cuda:" + std::to_string(ordinal_));
      workspace_bytes_ = size;
    };
    if (kept_workspace_ > bytes) {
      try {
        grow(kept_workspace_);
        return workspace_;
      } catch (const compute_error&) {
        // No room for every algorithm's: this call's need alone, below.
      }
    }
    grow(bytes);
    return workspace_;
  }

  /// The workspace an algorithm may ask for now: half of what the budget (or, without one,
  /// the device) has left, counting the current workspace as free since growing replaces it,
  /// and at most k_max_workspace. Half, because the layers after this one still allocate.
  size_t workspace_cap() const {
    uint64_t available = 0;
    const uint64_t limit = detail::device_memory_limit(ordinal_);
    if (limit != 0) {
      const uint64_t used = cuda_memory_in_use(ordinal_);
      available = used < limit ? limit - used : 0;
    } else {
      size_t free_bytes = 0;
      size_t total_bytes = 0;
      GFLEX_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
      available = free_bytes;
      if (streams_->pooled()) {
        // The pool keeps freed memory (release threshold UINT64_MAX, see init): the driver
        // counts it as used, but a workspace allocation would be served from it.
        cudaMemPool_t pool = nullptr;
        uint64_t reserved = 0;
        uint64_t used = 0;
        GFLEX_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, ordinal_));
        GFLEX_CUDA_CHECK(
            cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &reserved));
        GFLEX_CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used));
        if (reserved > used) available += reserved - used;
      }
    }
    available += workspace_bytes_;
    return static_cast<size_t>(std::min<uint64_t>(available / 2, k_max_workspace));
  }

  /// The cuDNN handle, made on first use: cudnnCreate loads cuDNN's kernels and takes device
  /// memory, which a workload without convolutions (the MLPs) should not pay for.
  void ensure_dnn() {
    if (dnn_ != nullptr) return;
    GFLEX_CUDNN_CHECK(cudnnCreate(&dnn_));
    GFLEX_CUDNN_CHECK(cudnnSetStream(dnn_, stream()));
  }

  /// The plan for `g` at the current precision, built on first use.
  conv_plan& plan_for(const conv2d_geometry& g) {
    if (!g.valid())
      throw compute_error(gflex::error(errc::invalid_argument,
                                       "invalid convolution geometry: " + describe_geometry(g)));
    const int64_t out_h = g.out_height();
    const int64_t out_w = g.out_width();
    for (int64_t extent : {g.batch, g.height, g.width, g.in_channels, g.out_channels, g.kernel_h,
                           g.kernel_w, g.pad_h, g.pad_w, g.stride, out_h, out_w}) {
      if (extent > INT_MAX)
        throw compute_error(
            gflex::error(errc::invalid_argument, "convolution extent " + std::to_string(extent) +
                                                     " exceeds cuDNN's 32-bit limit (" +
                                                     describe_geometry(g) + ")"));
    }
    // A tensor's elements too (its batch stride): cuDNN refuses a descriptor past them.
    for (double elements : {static_cast<double>(g.batch) * g.height * g.width * g.in_channels,
                            static_cast<double>(g.batch) * out_h * out_w * g.out_channels}) {
      if (elements > INT_MAX)
        throw compute_error(gflex::error(errc::invalid_argument,
                                         "a convolution tensor of " + std::to_string(elements) +
                                             " values exceeds cuDNN's 32-bit limit (" +
                                             describe_geometry(g) + ")"));
    }
    conv_key key;
    key.extents = {g.batch,    g.height,   g.width, g.in_channels, g.out_channels,
                   g.kernel_h, g.kernel_w, g.pad_h, g.pad_w,       g.stride};
    key.precision = precision_;
    if (auto found = plans_.find(key); found != plans_.end()) return *found->second;

    // A new plan creates cuDNN's handle and descriptors, which a capture may not hold.
    refuse_while_recording("planning a new convolution");
    ensure_dnn();
    auto plan = std::make_unique<conv_plan>();
    plan->key = key;
    const auto n = static_cast<int>(g.batch);
    const auto c = static_cast<int>(g.in_channels);
    const auto k = static_cast<int>(g.out_channels);
    GFLEX_CUDNN_CHECK(cudnnCreateTensorDescriptor(plan->x.out()));
    GFLEX_CUDNN_CHECK(cudnnSetTensor4dDescriptor(plan->x.get(), CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT,
                                                 n, c, static_cast<int>(g.height),
                                                 static_cast<int>(g.width)));
    GFLEX_CUDNN_CHECK(cudnnCreateTensorDescriptor(plan->y.out()));
    GFLEX_CUDNN_CHECK(cudnnSetTensor4dDescriptor(plan->y.get(), CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT,
                                                 n, k, static_cast<int>(out_h),
                                                 static_cast<int>(out_w)));
    // NHWC filter format is KRSC in memory: [out_channels, kernel_h, kernel_w, in_channels].
    GFLEX_CUDNN_CHECK(cudnnCreateFilterDescriptor(plan->w.out()));
    GFLEX_CUDNN_CHECK(cudnnSetFilter4dDescriptor(plan->w.get(), CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC,
                                                 k, c, static_cast<int>(g.kernel_h),
                                                 static_cast<int>(g.kernel_w)));
    for (convolution_descriptor& conv : plan->conv) {
      GFLEX_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(conv.out()));
      // Cross-correlation (no filter flip), as every framework's "convolution" and the CPU
      // backend compute; the same stride in both directions, no dilation; FP32 accumulation.
      const auto stride = static_cast<int>(g.stride);
      GFLEX_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(
          conv.get(), static_cast<int>(g.pad_h), static_cast<int>(g.pad_w), stride, stride, 1, 1,
          CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    }
    // cuDNN's idea of the output must be ours, or y's descriptor would lie about its memory.
    int dn = 0;
    int dk = 0;
    int dh = 0;
    int dw = 0;
    GFLEX_CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(plan->conv[0].get(), plan->x.get(),
                                                            plan->w.get(), &dn, &dk, &dh, &dw));
    if (dn != n || dk != k || dh != out_h || dw != out_w)
      // The geometry's, every time on any device: not a device failure.
      throw compute_error(gflex::error(
          errc::shape_mismatch, "cuDNN computes a " + std::to_string(dn) + "x" +
                                    std::to_string(dh) + "x" + std::to_string(dw) + "x" +
                                    std::to_string(dk) + " output for " + describe_geometry(g)));
    return *plans_.emplace(key, std::move(plan)).first->second;
  }

  /// The algorithm of `pass` in `plan`, chosen on first use by timing the candidates on the
  /// pass's own buffers (see pick_algorithm): `a` and `b` are its inputs (x and w forward, w
  /// and dy backward-data, x and dy backward-filter), `out` its output, which the timing
  /// overwrites as the pass itself is about to.
  const conv_choice& choose(conv_plan& plan, conv_pass pass, const conv2d_geometry& g,
                            const void* a, const void* b, void* out) {
    conv_choice& choice = plan.choice[static_cast<size_t>(pass)];
    if (choice.chosen) return choice;
    refuse_while_recording("choosing a convolution algorithm");  // it times the candidates
    cudnnConvolutionDescriptor_t conv = plan.conv[static_cast<size_t>(pass)].get();
    const size_t cap = workspace_cap();
    // Another backend on this device chose already: the same algorithm, the same bits.
    auto adopt = [&](const conv_choice& other) {
      GFLEX_CUDNN_CHECK(cudnnSetConvolutionMathType(conv, other.math));
      choice = other;
      kept_workspace_ = std::max(kept_workspace_, choice.workspace);
    };
    if (auto other = shared_choice(ordinal_, plan.key, pass); other && other->workspace <= cap) {
      adopt(*other);
      return choice;
    }
    int max_count = 0;
    // The workspace the timing may use; a device without room for it leaves the heuristics'
    // ranking in charge.
    auto room = [&](size_t bytes) -> void* {
      try {
        return ensure_workspace(bytes, /*timing=*/true);
      } catch (const compute_error&) {
        return nullptr;
      }
    };
    switch (pass) {
      case conv_pass::forward:
        GFLEX_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(dnn_, &max_count));
        choice = pick_algorithm<cudnnConvolutionFwdAlgoPerf_t>(
            conv, precision_, cap, max_count,
            [&](int requested, int* returned, cudnnConvolutionFwdAlgoPerf_t* perf) {
              return cudnnGetConvolutionForwardAlgorithm_v7(
                  dnn_, plan.x.get(), plan.w.get(), conv, plan.y.get(), requested, returned, perf);
            },
            [&](int requested, int* returned, cudnnConvolutionFwdAlgoPerf_t* perf, size_t bytes) {
              void* ws = room(bytes);
              if (ws == nullptr && bytes > 0) return CUDNN_STATUS_ALLOC_FAILED;
              return cudnnFindConvolutionForwardAlgorithmEx(dnn_, plan.x.get(), a, plan.w.get(), b,
                                                            conv, plan.y.get(), out, requested,
                                                            returned, perf, ws, bytes);
            },
            [&](int algo, size_t* bytes) {
              return cudnnGetConvolutionForwardWorkspaceSize(
                  dnn_, plan.x.get(), plan.w.get(), conv, plan.y.get(),
                  static_cast<cudnnConvolutionFwdAlgo_t>(algo), bytes);
            },
            pass, g);
        break;
      case conv_pass::backward_data:
        GFLEX_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(dnn_, &max_count));
        choice = pick_algorithm<cudnnConvolutionBwdDataAlgoPerf_t>(
            conv, precision_, cap, max_count,
            [&](int requested, int* returned, cudnnConvolutionBwdDataAlgoPerf_t* perf) {
              return cudnnGetConvolutionBackwardDataAlgorithm_v7(
                  dnn_, plan.w.get(), plan.y.get(), conv, plan.x.get(), requested, returned, perf);
            },
            [&](int requested, int* returned, cudnnConvolutionBwdDataAlgoPerf_t* perf,
                size_t bytes) {
              void* ws = room(bytes);
              if (ws == nullptr && bytes > 0) return CUDNN_STATUS_ALLOC_FAILED;
              return cudnnFindConvolutionBackwardDataAlgorithmEx(
                  dnn_, plan.w.get(), a, plan.y.get(), b, conv, plan.x.get(), out, requested,
                  returned, perf, ws, bytes);
            },
            [&](int algo, size_t* bytes) {
              return cudnnGetConvolutionBackwardDataWorkspaceSize(
                  dnn_, plan.w.get(), plan.y.get(), conv, plan.x.get(),
                  static_cast<cudnnConvolutionBwdDataAlgo_t>(algo), bytes);
            },
            pass, g);
        break;
      case conv_pass::backward_filter:
        GFLEX_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(dnn_, &max_count));
        choice = pick_algorithm<cudnnConvolutionBwdFilterAlgoPerf_t>(
            conv, precision_, cap, max_count,
            [&](int requested, int* returned, cudnnConvolutionBwdFilterAlgoPerf_t* perf) {
              return cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                  dnn_, plan.x.get(), plan.y.get(), conv, plan.w.get(), requested, returned, perf);
            },
            [&](int requested, int* returned, cudnnConvolutionBwdFilterAlgoPerf_t* perf,
                size_t bytes) {
              void* ws = room(bytes);
              if (ws == nullptr && bytes > 0) return CUDNN_STATUS_ALLOC_FAILED;
              return cudnnFindConvolutionBackwardFilterAlgorithmEx(
                  dnn_, plan.x.get(), a, plan.y.get(), b, conv, plan.w.get(), out, requested,
                  returned, perf, ws, bytes);
            },
            [&](int algo, size_t* bytes) {
              return cudnnGetConvolutionBackwardFilterWorkspaceSize(
                  dnn_, plan.x.get(), plan.y.get(), conv, plan.w.get(),
                  static_cast<cudnnConvolutionBwdFilterAlgo_t>(algo), bytes);
            },
            pass, g);
        break;
    }
    // Offered to the device's other backends; one that chose first while this one timed wins.
    if (const conv_choice kept = share_choice(ordinal_, plan.key, pass, choice);
        (kept.algo != choice.algo || kept.math != choice.math) && kept.workspace <= cap)
      adopt(kept);
    // The timing may have grown the workspace past what any chosen algorithm or other user
    // needs: that much goes back, and the next pass allocates what it asks for.
    kept_workspace_ = std::max(kept_workspace_, choice.workspace);
    if (workspace_bytes_ > kept_workspace_ && workspace_ != nullptr) {
      streams_->free(workspace_, workspace_bytes_);
      workspace_ = nullptr;
      workspace_bytes_ = 0;
      ++recording_epoch_;
    }
    return choice;
  }

  /// Max pooling records offsets within a sample as int32: a sample must have fewer than
  /// 2^31 values. `what` names the operation in the error.
  static void check_pool_extents(const char* what, int64_t height, int64_t width,
                                 int64_t channels) {
    const bool fits = height <= INT32_MAX && width <= INT32_MAX && channels <= INT32_MAX &&
                      height * width <= INT32_MAX && height * width * channels <= INT32_MAX;
    if (!fits)
      throw compute_error(gflex::error(
          errc::invalid_argument, std::string(what) + ": a sample of " + std::to_string(height) +
                                      "x" + std::to_string(width) + "x" + std::to_string(channels) +
                                      " values exceeds the int32 argmax"));
  }

  /// pool2d's window and stride must be positive.
  static void check_pool_window(int64_t window, int64_t stride) {
    if (window <= 0 || stride <= 0)
      throw compute_error(gflex::error(errc::invalid_argument,
                                       "pool2d: window " + std::to_string(window) + " and stride " +
                                           std::to_string(stride) + " must be positive"));
  }

  static void check_quant_block(int64_t block) {
    if (block <= 0)
      throw compute_error(gflex::error(
          errc::invalid_argument,
          "int8 quantisation block size " + std::to_string(block) + " is not positive"));
  }

  template <bool Square>
  double reduce(const float* x, int64_t n) {
    if (n <= 0) return 0.0;
    refuse_while_recording(Square ? "sum_squares" : "sum");
    activate();
    double* result = reduce_buffer_ + max_blocks_;
    const unsigned blocks = launch_reduce_partial(kernel_launch(), Square, x, n, reduce_buffer_);
    launch_reduce_final(kernel_launch(), reduce_buffer_, static_cast<int>(blocks), result);
    double host = 0.0;
    GFLEX_CUDA_CHECK(cudaMemcpyAsync(&host, result, sizeof host, cudaMemcpyDeviceToHost, stream()));
    GFLEX_CUDA_CHECK(cudaStreamSynchronize(stream()));
    return host;
  }

  /// A recorded CUDA graph, instantiated; destroyed with its device current.
  struct cuda_graph final : recorded_work {
    cuda_graph(cudaGraphExec_t e, int o, const void* b, uint64_t ep)
        : exec(e), ordinal(o), owner(b), epoch(ep) {}
    ~cuda_graph() override {
      device_guard guard(ordinal);
      if (cudaGraphExecDestroy(exec) != cudaSuccess) (void)cudaGetLastError();
    }
    cuda_graph(const cuda_graph&) = delete;
    cuda_graph& operator=(const cuda_graph&) = delete;
    cudaGraphExec_t exec;
    int ordinal;
    const void* owner;  ///< The backend that recorded it (its streams and workspaces).
    uint64_t epoch;     ///< Its recording_epoch() then.
  };

  /// A call that would wait, allocate or time while the stream records: refused with a clear
  /// error rather than left to invalidate the capture.
  void refuse_while_recording(const char* what) {
    if (!recording_) return;
    recording_failed_ = true;  // the capture holds part of the work at most: end_recording drops it
    throw compute_error(
        gflex::error(errc::invalid_argument, std::string(what) + " while recording a CUDA graph"));
  }

  int ordinal_;
  std::string description_;
  int max_blocks_ = 1;
  bool recording_ = false;
  bool recording_failed_ = false;  ///< A call was refused while recording.
  uint64_t recording_epoch_ = 0;
  uint64_t replays_ = 0;
  /// Shared memory a block may opt into (the flash-attention kernels' need is checked
  /// against it).
  size_t shared_per_block_optin_ = 0;
  math_precision precision_ = math_precision::fp32;
  /// A bf16 gemm multiplies bf16 copies of its operands unless GFLEX_BF16_OPERANDS=0 (an
  /// H200 measured the 86M language model's step at 87.0 ms so against 90.2 ms with cuBLAS's
  /// own conversion; docs/BENCHMARKS.md).
  bool bf16_operands_ = [] {
    const char* v = std::getenv("GFLEX_BF16_OPERANDS");
    return v == nullptr || std::string(v) != "0";
  }();
  std::shared_ptr<stream_owner> streams_;
  cublasHandle_t blas_ = nullptr;
  cudnnHandle_t dnn_ = nullptr;  ///< Made by the first convolution (ensure_dnn).
  /// Partials of column_sum and norm_backward per block of a full wave: 64 doubles (528 KiB on
  /// a 132-SM card).
  static constexpr int64_t k_column_partials_per_block = 64;
  double* reduce_buffer_ = nullptr;  ///< Device scratch for the reductions.
  int64_t reduce_capacity_ = 0;      ///< Column partials that fit in it.
  size_t reduce_bytes_ = 0;
  void* blas_workspace_ = nullptr;  ///< cuBLAS's workspace, counted against the budget.
  size_t blas_workspace_bytes_ = 0;
  void* workspace_ = nullptr;  ///< cuDNN workspace, shared by every plan (calls are ordered).
  size_t workspace_bytes_ = 0;
  /// The most workspace a chosen algorithm or any other user has needed (timing excluded).
  size_t kept_workspace_ = 0;
  std::map<conv_key, std::unique_ptr<conv_plan>> plans_;
  staging_ring staging_;
};

}  // namespace

}  // namespace gflex::kernels::detail

namespace gflex::kernels {

int cuda_device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    // No driver, an old driver, no device: all mean "no CUDA here". Clear the error so that
    // it cannot resurface from a later cudaGetLastError.
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

expected<std::unique_ptr<backend>> make_cuda_backend(int ordinal) {
  const int count = cuda_device_count();
  if (ordinal < 0 || ordinal >= count) {
    return gflex::error(errc::no_device, "no CUDA device cuda:" + std::to_string(ordinal) + " (" +
                                             std::to_string(count) +
                                             " usable CUDA device(s) found)");
  }
  try {
    std::unique_ptr<backend> result = std::make_unique<detail::cuda_backend>(ordinal);
    return expected<std::unique_ptr<backend>>(std::move(result));
  } catch (const compute_error& e) {
    return e.err();
  }
}

}  // namespace gflex::kernels
