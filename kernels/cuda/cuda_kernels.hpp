#pragma once
/// @file
/// The host-side launchers of the CUDA backend's own kernels (everything that is not cuBLAS or
/// cuDNN), defined beside the kernels in cuda_kernels.cu. Plain C++ without kernel
/// declarations, so that the backend calls functions and never configures a launch itself.
/// Private to the CUDA backend.
///
/// Every launcher enqueues its kernel on `launch.stream`, with the grid the kernel's
/// documentation calls for and at most `launch.max_blocks` blocks, then checks the launch
/// (GFLEX_CUDA_CHECK_LAUNCH): a bad configuration, or an earlier asynchronous fault, throws
/// compute_error. The parameters after `launch` (and after the variant selector, where the
/// kernel is a template) are the kernel's own, in the kernel's order; cuda_kernels.cu says what
/// each kernel computes.

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "gflex/kernels/backend.hpp"

namespace gflex::kernels::detail {

/// Threads per block of every kernel: a multiple of the warp size that lets 8 blocks (2048
/// threads) be resident per SM on sm_80/sm_90 at full occupancy.
inline constexpr int k_block = 256;

/// Where a kernel runs and how wide its grid may be.
struct launch_config {
  cudaStream_t stream = nullptr;
  /// One full-occupancy wave of k_block-thread blocks on the device (SMs x resident blocks
  /// per SM): more blocks only add scheduling, fewer leave SMs idle.
  int max_blocks = 1;
};

void launch_fill(launch_config launch, float* x, int64_t n, float value);

void launch_axpby(launch_config launch, int64_t n, float a, const float* x, float b, float* y);

/// dst[r * cols + c] = src[r * ld + c] rounded to the nearest bf16 (ties to even): a GEMM
/// operand packed for cuBLAS's bf16 inputs.
void launch_to_bf16(launch_config launch, const float* src, int64_t rows, int64_t cols, int64_t ld,
                    __nv_bfloat16* dst);

/// For gemm (count == 1, stride_c unused) and gemm_strided_batched with k == 0.
void launch_scale_matrix(launch_config launch, float* c, int64_t rows, int64_t cols, int64_t ldc,
                         int64_t stride_c, int64_t count, float beta);

/// bias_relu_kernel<relu>.
void launch_bias_relu(launch_config launch, bool relu, float* y, const float* bias, int64_t rows,
                      int64_t cols);

void launch_relu_backward(launch_config launch, float* dy, const float* y, int64_t n);

/// out[c] = the sum over rows of x[r, c], deterministic for a given device and shape. A tall
/// matrix is summed in chunks of rows on many blocks, with one partial per chunk and column in
/// `scratch` (room for `scratch_count` doubles; null: one block per 32 columns, as before).
void launch_column_sum(launch_config launch, const float* x, int64_t rows, int64_t cols, float* out,
                       double* scratch = nullptr, int64_t scratch_count = 0);

void launch_softmax_xent(launch_config launch, const float* logits, const int32_t* labels,
                         int64_t rows, int64_t classes, float grad_scale, float* dlogits,
                         float* stats);

void launch_adamw(launch_config launch, float* param, const float* grad, float* m, float* v,
                  int64_t n, float lr, float beta1, float beta2, float eps, float weight_decay,
                  float bias_correction1, float bias_correction2);

/// reduce_partial_kernel<square>. Returns the number of blocks, which is the number of
/// partials written and so the `count` of launch_reduce_final; `partial` must hold
/// launch.max_blocks of them.
unsigned launch_reduce_partial(launch_config launch, bool square, const float* x, int64_t n,
                               double* partial);

void launch_reduce_final(launch_config launch, const double* partial, int count, double* out);

void launch_max_pool2_forward(launch_config launch, const float* x, int64_t height, int64_t width,
                              int64_t channels, int64_t out_h, int64_t out_w, int64_t n, float* y,
                              int32_t* argmax);

void launch_max_pool2_backward(launch_config launch, const float* dy, const int32_t* argmax,
                               int64_t sample_in, int64_t sample_out, int64_t n, float* dx);

/// quantize_int8_kernel<residual != nullptr> (error feedback where there is a residual).
void launch_quantize_int8(launch_config launch, const float* x, float* residual, int64_t n,
                          int64_t block, int64_t blocks, int8_t* q, float* scales);

void launch_dequantize_int8(launch_config launch, const int8_t* q, const float* scales, int64_t n,
                            int64_t block, float* out);

/// pool2d_forward_kernel<max>; average pooling passes the kernel no argmax.
void launch_pool2d_forward(launch_config launch, bool max, const float* x, int64_t height,
                           int64_t width, int64_t channels, int64_t window, int64_t stride,
                           int64_t out_h, int64_t out_w, int64_t n, float* y, int32_t* argmax);

/// pool2d_backward_kernel<max>; average pooling passes the kernel no argmax.
void launch_pool2d_backward(launch_config launch, bool max, const float* dy, const int32_t* argmax,
                            int64_t height, int64_t width, int64_t channels, int64_t window,
                            int64_t stride, int64_t out_h, int64_t out_w, int64_t n, float* dx);

/// activation_forward_kernel<f>; errc::invalid_argument, with nothing launched, for an
/// activation without a kernel.
void launch_activation_forward(launch_config launch, activation f, const float* x, float* y,
                               int64_t n);

/// activation_backward_kernel<f>; errc::invalid_argument, with nothing launched, for an
/// activation without a kernel.
void launch_activation_backward(launch_config launch, activation f, const float* x, const float* dy,
                                float* dx, int64_t n);

/// bias_activation_kernel<f>; errc::invalid_argument, with nothing launched, for an
/// activation without a kernel.
void launch_bias_activation(launch_config launch, activation f, float* x, const float* bias,
                            int64_t rows, int64_t cols, float* y);

void launch_multiply(launch_config launch, int64_t n, const float* a, const float* b, float* out);
void launch_add(launch_config launch, int64_t n, const float* a, const float* b, float* out);

void launch_dropout_mask(launch_config launch, int64_t n, float rate, float keep, uint64_t seed,
                         float* mask);

/// norm_forward_kernel<rms>; RMS norm passes the kernel no beta.
void launch_norm_forward(launch_config launch, bool rms, const float* x, const float* gamma,
                         const float* beta, int64_t rows, int64_t cols, float eps, float* y,
                         float* mean_out, float* rstd_out);

/// norm_backward_dx_kernel<rms>; RMS norm passes the kernel no mean.
void launch_norm_backward_dx(launch_config launch, bool rms, const float* x, const float* gamma,
                             const float* dy, const float* mean, const float* rstd, int64_t rows,
                             int64_t cols, float* dx, bool accumulate);

/// norm_param_grad_kernel<rms>; RMS norm passes the kernel no mean and no dbeta. A tall
/// matrix is summed in chunks of rows, as launch_column_sum does, with two partials per chunk
/// and column in `scratch` (room for `scratch_count` doubles).
void launch_norm_param_grad(launch_config launch, bool rms, const float* x, const float* dy,
                            const float* mean, const float* rstd, int64_t rows, int64_t cols,
                            float* dgamma, float* dbeta, double* scratch = nullptr,
                            int64_t scratch_count = 0);

void launch_embedding_forward(launch_config launch, const int32_t* ids, const float* table,
                              int64_t rows, int64_t dim, float* y);

/// Bytes of workspace launch_embedding_backward needs for `rows` ids of `dim` values. Enqueues
/// nothing. Throws compute_error (errc::invalid_argument) past 2^31 - 1 rows.
size_t embedding_backward_workspace(int64_t rows, int64_t dim);

/// dtable (zeroed before) gets, for each id, the sum of its rows of dy in row order within
/// pieces of 32 rows and then piece by piece: the rows are sorted by id with a stable radix
/// sort (CUB) rather than scattered with float atomics, so the gradient is the same bits run
/// to run. `workspace` holds embedding_backward_workspace(rows, dim) bytes (256-aligned).
void launch_embedding_backward(launch_config launch, const int32_t* ids, const float* dy,
                               int64_t rows, int64_t dim, int64_t vocab, float* dtable,
                               void* workspace, size_t workspace_bytes);

void launch_causal_softmax(launch_config launch, float* s, int64_t rows, int64_t t, float scale);

void launch_softmax_backward(launch_config launch, const float* p, float* dp, int64_t rows,
                             int64_t cols, float scale);

void launch_mse_onehot(launch_config launch, const float* y, const int32_t* labels, int64_t rows,
                       int64_t cols, float grad_scale, float* dy, float* stats);

}  // namespace gflex::kernels::detail
