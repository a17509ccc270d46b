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
///   tensor may outlive the backend that allocated it. Every device allocation (tensors, the
///   cuDNN workspace, scratch) is first reserved against the process-wide per-device budget
///   of set_cuda_memory_limit (cuda_memory.hpp), so a node's owner can cap what jobs take.
/// - `upload` stages through a small ring of pinned host buffers: the caller's memory is
///   copied into a slot and the DMA runs from there, so the call returns before the transfer
///   is done and the caller may reuse its buffer at once. A slot is reused only after the
///   event recorded behind its last copy has fired.
/// - Elementwise kernels use grid-stride loops with 256 threads per block and at most one
///   full-occupancy wave of blocks (SMs x resident blocks per SM): more blocks only add
///   scheduling, fewer leave SMs idle. 64-bit indices throughout; tensors may exceed 2^31.
/// - Reductions are two-pass (per-block partials in a fixed order, then one block) rather
///   than atomics, so `sum`, `sum_squares` and `column_sum` are deterministic run to run.
///   Only softmax_xent's and mse_onehot's statistics (their interface adds into `stats`) and
///   embedding_backward's scatter of repeated ids use float atomics; pool2d_backward and
///   norm_backward gather instead, so they are deterministic too.
///   cuDNN algorithms are chosen deterministic where one fits (backward-filter and
///   backward-data algorithms that accumulate with atomics are skipped while another exists).
/// - Precision: FP32 (the default) is exact, CUBLAS_DEFAULT_MATH and CUDNN_FMA_MATH, so
///   results match the CPU backend to FP32 rounding. TF32 and BF16 are opted into per backend
///   (set_precision) and only change how GEMMs and convolutions round their products.

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <compare>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cuda_check.hpp"
#include "cuda_memory.hpp"
#include "gflex/kernels/backend.hpp"
#include "gflex/kernels/devices.hpp"

namespace gflex::kernels {

namespace {

/// Threads per block of every kernel: a multiple of the warp size that lets 8 blocks (2048
/// threads) be resident per SM on sm_80/sm_90 at full occupancy.
constexpr int k_block = 256;
constexpr int k_warp = 32;
constexpr int k_warps_per_block = k_block / k_warp;
constexpr unsigned k_full_mask = 0xffffffffu;

// -- kernels ----------------------------------------------------------------------------------

/// The first element index of this thread in a grid-stride loop.
__device__ inline int64_t grid_start() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

/// The stride of a grid-stride loop.
__device__ inline int64_t grid_stride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

/// The sum of `value` over the block, valid in thread 0. Every thread of the block must call
/// it; the block must have k_block threads.
__device__ inline double block_sum(double value) {
  __shared__ double warp_sums[k_warps_per_block];
  for (int offset = k_warp / 2; offset > 0; offset /= 2)
    value += __shfl_down_sync(k_full_mask, value, offset);
  const int lane = threadIdx.x % k_warp;
  const int warp = threadIdx.x / k_warp;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < k_warps_per_block ? warp_sums[lane] : 0.0;
    for (int offset = k_warp / 2; offset > 0; offset /= 2)
      value += __shfl_down_sync(k_full_mask, value, offset);
  }
  return value;
}

__global__ void fill_kernel(float* x, int64_t n, float value) {
  for (int64_t i = grid_start(); i < n; i += grid_stride()) x[i] = value;
}

/// y = a*x + b*y. With b == 0, y is not read (BLAS semantics): uninitialised or non-finite
/// values in y must not leak into the result.
__global__ void axpby_kernel(int64_t n, float a, const float* x, float b, float* y) {
  if (b == 0.0f) {
    for (int64_t i = grid_start(); i < n; i += grid_stride()) y[i] = a * x[i];
  } else {
    for (int64_t i = grid_start(); i < n; i += grid_stride()) y[i] = a * x[i] + b * y[i];
  }
}

/// C[r, c] *= beta for `count` m x n row-major blocks with leading dimension ldc, the b-th at
/// c + b * stride_c; beta == 0 writes zeros without reading C. This is gemm (and
/// gemm_strided_batched) with k == 0.
__global__ void scale_matrix_kernel(float* c, int64_t rows, int64_t cols, int64_t ldc,
                                    int64_t stride_c, int64_t count, float beta) {
  const int64_t per_matrix = rows * cols;
  const int64_t n = per_matrix * count;
  for (int64_t i = grid_start(); i < n; i += grid_stride()) {
    const int64_t b = i / per_matrix;
    const int64_t j = i % per_matrix;
    float& e = c[b * stride_c + (j / cols) * ldc + j % cols];
    e = beta == 0.0f ? 0.0f : beta * e;
  }
}

template <bool Relu>
__global__ void bias_relu_kernel(float* y, const float* bias, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = grid_start(); i < n; i += grid_stride()) {
    const float v = y[i] + bias[i % cols];
    y[i] = Relu ? fmaxf(v, 0.0f) : v;
  }
}

__global__ void relu_backward_kernel(float* dy, const float* y, int64_t n) {
  for (int64_t i = grid_start(); i < n; i += grid_stride())
    if (y[i] <= 0.0f) dy[i] = 0.0f;
}

/// Columns per column_sum tile (one per lane, so that a warp reads 32 consecutive floats of a
/// row: coalesced) and row groups per tile (the block's other dimension).
constexpr int k_tile_cols = k_warp;
constexpr int k_tile_rows = k_block / k_tile_cols;

/// out[c] = sum over r of x[r, c]. Block (32, 8): each thread sums every 8th row of one
/// column in double, then the 8 partials are added in a fixed order: deterministic.
__global__ void column_sum_kernel(const float* x, int64_t rows, int64_t cols, float* out) {
  __shared__ double partial[k_tile_rows][k_tile_cols];
  // The loop condition depends only on blockIdx, so the whole block agrees at __syncthreads.
  for (int64_t tile = blockIdx.x; tile * k_tile_cols < cols; tile += gridDim.x) {
    const int64_t c = tile * k_tile_cols + threadIdx.x;
    double acc = 0.0;
    if (c < cols)
      for (int64_t r = threadIdx.y; r < rows; r += k_tile_rows) acc += x[r * cols + c];
    partial[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
      double total = 0.0;
      for (int i = 0; i < k_tile_rows; ++i) total += partial[i][threadIdx.x];
      out[c] = static_cast<float>(total);
    }
    __syncthreads();  // partial is reused by the next tile
  }
}

/// Softmax cross-entropy, one warp per row (a row of a few hundred classes is a handful of
/// coalesced loads per lane). Per row: max and first arg-max, logsumexp = max +
/// log(sum exp(x - max)), loss = logsumexp - x[label]. Per-block totals go to `stats` with
/// one atomic each. `dlogits` may alias `logits`: each lane reads x[j] before writing d[j],
/// and x[label] is read before any lane writes.

// Adds one block's per-warp loss and accuracy sums to stats[0] and stats[1] (the loss
// kernels' shared epilogue): each warp's lane 0 leaves its sums in shared memory, thread 0
// adds them in warp order and makes one atomic add each.
__device__ void add_block_stats(double* block_loss, double* block_correct, int lane, int warp,
                                double loss_total, double correct_total, float* stats) {
  if (lane == 0) {
    block_loss[warp] = loss_total;
    block_correct[warp] = correct_total;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double loss = 0.0;
    double correct = 0.0;
    for (int w = 0; w < k_warps_per_block; ++w) {
      loss += block_loss[w];
      correct += block_correct[w];
    }
    atomicAdd(&stats[0], static_cast<float>(loss));
    atomicAdd(&stats[1], static_cast<float>(correct));
  }
}

__global__ void softmax_xent_kernel(const float* logits, const int32_t* labels, int64_t rows,
                                    int64_t classes, float grad_scale, float* dlogits,
                                    float* stats) {
  __shared__ double block_loss[k_warps_per_block];
  __shared__ double block_correct[k_warps_per_block];
  const int lane = threadIdx.x % k_warp;
  const int warp = threadIdx.x / k_warp;
  double loss_total = 0.0;
  double correct_total = 0.0;
  const int64_t warps_in_grid = static_cast<int64_t>(gridDim.x) * k_warps_per_block;
  // The loop bound depends only on the warp, so all 32 lanes take part in every shuffle.
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * k_warps_per_block + warp; row < rows;
       row += warps_in_grid) {
    const float* x = logits + row * classes;
    // Each lane scans its classes in increasing order with a strict '>', so it keeps its first
    // maximum; ties between lanes go to the smaller index below: first-max tie-breaking.
    float best = -INFINITY;
    int64_t best_index = INT64_MAX;
    for (int64_t j = lane; j < classes; j += k_warp) {
      const float v = x[j];
      if (v > best || best_index == INT64_MAX) {
        best = v;
        best_index = j;
      }
    }
    for (int offset = k_warp / 2; offset > 0; offset /= 2) {
      const float other = __shfl_xor_sync(k_full_mask, best, offset);
      const int64_t other_index = __shfl_xor_sync(k_full_mask, best_index, offset);
      if (other > best || (other == best && other_index < best_index)) {
        best = other;
        best_index = other_index;
      }
    }
    float sum_exp = 0.0f;
    for (int64_t j = lane; j < classes; j += k_warp) sum_exp += expf(x[j] - best);
    for (int offset = k_warp / 2; offset > 0; offset /= 2)
      sum_exp += __shfl_xor_sync(k_full_mask, sum_exp, offset);
    const float log_sum_exp = best + logf(sum_exp);

    const int32_t label = labels[row];
    const bool valid = label >= 0 && label < classes;
    // An out-of-range label is a caller bug; make it show as a NaN loss, not a stray read.
    const float label_logit = valid ? x[label] : NAN;
    __syncwarp();  // every lane has read x[label] before any lane may overwrite it below
    if (lane == 0) {
      loss_total += static_cast<double>(log_sum_exp - label_logit);
      correct_total += (valid && best_index == label) ? 1.0 : 0.0;
    }
    if (dlogits != nullptr) {
      float* d = dlogits + row * classes;
      for (int64_t j = lane; j < classes; j += k_warp) {
        const float p = expf(x[j] - log_sum_exp);
        d[j] = (p - (j == label ? 1.0f : 0.0f)) * grad_scale;
      }
    }
  }
  add_block_stats(block_loss, block_correct, lane, warp, loss_total, correct_total, stats);
}

/// One AdamW step, written in the same order of operations as the CPU backend.
__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v, int64_t n,
                             float lr, float beta1, float beta2, float eps, float weight_decay,
                             float bias_correction1, float bias_correction2) {
  for (int64_t i = grid_start(); i < n; i += grid_stride()) {
    const float g = grad[i];
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float p = param[i];
    param[i] = p - lr * weight_decay * p -
               lr * (mi / bias_correction1) / (sqrtf(vi / bias_correction2) + eps);
  }
}

/// First pass of sum / sum_squares: partial[blockIdx.x] = the block's share, in double
/// (the square of a float is exact in double).
template <bool Square>
__global__ void reduce_partial_kernel(const float* x, int64_t n, double* partial) {
  double acc = 0.0;
  for (int64_t i = grid_start(); i < n; i += grid_stride()) {
    const double value = x[i];
    acc += Square ? value * value : value;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

/// Second pass: *out = the sum of `count` partials, by one block.
__global__ void reduce_final_kernel(const double* partial, int count, double* out) {
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc);
  if (threadIdx.x == 0) *out = acc;
}

/// 2x2 max pooling with stride 2 over NHWC, one thread per output. The window is scanned in
/// row-major order (0,0), (0,1), (1,0), (1,1) with a strict '>', so the first of equal values
/// wins, as on the CPU. argmax is the winner's offset within its sample, (h*W + w)*C + c;
/// the caller has checked that a sample's offsets fit in int32. Consecutive threads take
/// consecutive channels, so both the loads and the stores are coalesced.
__global__ void max_pool2_forward_kernel(const float* x, int64_t height, int64_t width,
                                         int64_t channels, int64_t out_h, int64_t out_w, int64_t n,
                                         float* y, int32_t* argmax) {
  const int64_t sample_size = height * width * channels;
  for (int64_t i = grid_start(); i < n; i += grid_stride()) {
    const int64_t c = i % channels;
    int64_t rest = i / channels;
    const int64_t ow = rest % out_w;
    rest /= out_w;
    const int64_t oh = rest % out_h;
    const int64_t sample = rest / out_h;
    const float* xs = x + sample * sample_size;
    const int64_t top_left = ((2 * oh) * width + 2 * ow) * channels + c;
    const int64_t candidates[4] = {top_left, top_left + channels, top_left + width * channels,
                                   top_left + width * channels + channels};
    float best = xs[candidates[0]];
    int64_t best_offset = candidates[0];
    for (int k = 1; k < 4; ++k) {
      const float v = xs[candidates[k]];
      if (v > best) {
        best = v;
        best_offset = candidates[k];
      }
    }
    y[i] = best;
    argmax[i] = static_cast<int32_t>(best_offset);
  }
}

/// dx[sample, argmax] = dy, one thread per output; dx was zeroed before. The 2x2 stride-2
/// windows do not overlap, so no two outputs name the same input: a plain store suffices.
__global__ void max_pool2_backward_kernel(const float* dy, const int32_t* argmax, int64_t sample_in,
                                          int64_t sample_out, int64_t n, float* dx) {
  for (int64_t i = grid_start(); i < n; i += grid_stride())
    dx[(i / sample_out) * sample_in + argmax[i]] = dy[i];
}

/// Int8 quantisation with error feedback, one thread block per quantisation block (blocks of
/// up to 2^20 values: each thread loops). Pass 1 finds max|v| over the block (max is exact
/// and order-free, so the scale is deterministic); pass 2 writes q and the new residual.
/// Every step is written with explicit round-to-nearest intrinsics: the default contraction
/// of v - q*scale into an FMA (and --use_fast_math's division) would differ from the update
/// codec on the CPU in the last bit of the residual. Without `Feedback` there is no residual:
/// v = x.
template <bool Feedback>
__global__ void quantize_int8_kernel(const float* x, float* residual, int64_t n, int64_t block,
                                     int64_t blocks, int8_t* q, float* scales) {
  __shared__ float warp_max[k_warps_per_block];
  __shared__ float block_scale;
  const int lane = threadIdx.x % k_warp;
  const int warp = threadIdx.x / k_warp;
  // The loop bound depends only on blockIdx, so the whole block agrees at __syncthreads.
  for (int64_t b = blockIdx.x; b < blocks; b += gridDim.x) {
    const int64_t begin = b * block;
    const int64_t end = min(begin + block, n);
    float local_max = 0.0f;
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      const float v = Feedback ? __fadd_rn(x[i], residual[i]) : x[i];
      // fmaxf drops a NaN operand, as std::max(max_abs, |v|) does on the CPU.
      local_max = fmaxf(local_max, fabsf(v));
    }
    for (int offset = k_warp / 2; offset > 0; offset /= 2)
      local_max = fmaxf(local_max, __shfl_xor_sync(k_full_mask, local_max, offset));
    if (lane == 0) warp_max[warp] = local_max;
    __syncthreads();
    if (threadIdx.x == 0) {
      float m = 0.0f;
      for (int w = 0; w < k_warps_per_block; ++w) m = fmaxf(m, warp_max[w]);
      block_scale = __fdiv_rn(m, 127.0f);
      scales[b] = block_scale;
    }
    __syncthreads();
    const float scale = block_scale;
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      const float v = Feedback ? __fadd_rn(x[i], residual[i]) : x[i];
      if (scale == 0.0f) {
        // A zero block, or one so small that max/127 underflows: send zeros and keep the
        // values in the residual rather than lose them.
        q[i] = 0;
        if (Feedback) residual[i] = v;
      } else {
        // roundf rounds half away from zero, as std::round; the clamp catches v/scale landing
        // an ulp beyond 127.
        const float r = fminf(fmaxf(roundf(__fdiv_rn(v, scale)), -127.0f), 127.0f);
        const auto qi = static_cast<int8_t>(r);
        q[i] = qi;
        if (Feedback) residual[i] = __fsub_rn(v, __fmul_rn(static_cast<float>(qi), scale));
      }
    }
    __syncthreads();  // warp_max and block_scale are reused by the next block
  }
}

/// out[i] = q[i] * scales[i / block].
__global__ void dequantize_int8_kernel(const int8_t* q, const float* scales, int64_t n,
                                       int64_t block, float* out) {
  for (int64_t i = grid_start(); i < n; i += grid_stride())
    out[i] = __fmul_rn(static_cast<float>(q[i]), scales[i / block]);
}

// -- kernels of user-defined models (model_graph) ---------------------------------------------

/// The sum of `value` over a warp, in every lane. The butterfly adds the same two operands in
/// every pair of lanes, so all 32 lanes hold bitwise the same result.
__device__ inline double warp_sum(double value) {
  for (int offset = k_warp / 2; offset > 0; offset /= 2)
    value += __shfl_xor_sync(k_full_mask, value, offset);
  return value;
}

/// The maximum of `value` over a warp, in every lane (fmaxf drops NaN operands).
__device__ inline float warp_max(float value) {
  for (int offset = k_warp / 2; offset > 0; offset /= 2)
    value = fmaxf(value, __shfl_xor_sync(k_full_mask, value, offset));
  return value;
}

/// The sums of `a` and `b` over the block, returned to every thread, the per-warp partials
/// added in a fixed order (deterministic). Every thread of the block must call it; the block
/// must have k_block threads.
__device__ inline void block_sum2(double& a, double& b) {
  __shared__ double warp_a[k_warps_per_block];
  __shared__ double warp_b[k_warps_per_block];
  __shared__ double total_a;
  __shared__ double total_b;
  a = warp_sum(a);
  b = warp_sum(b);
  const int lane = threadIdx.x % k_warp;
  const int warp = threadIdx.x / k_warp;
  if (lane == 0) {
    warp_a[warp] = a;
    warp_b[warp] = b;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double sa = 0.0;
    double sb = 0.0;
    for (int w = 0; w < k_warps_per_block; ++w) {
      sa += warp_a[w];
      sb += warp_b[w];
    }
    total_a = sa;
    total_b = sb;
  }
  __syncthreads();
  a = total_a;
  b = total_b;
  __syncthreads();  // the shared partials and totals are reused by the next call
}

/// The sum of `value` over the block, returned to every thread (see block_sum2).
__device__ inline double block_allreduce_sum(double value) {
  double unused = 0.0;
  block_sum2(value, unused);
  return value;
}

/// General pooling over NHWC, one thread per output (consecutive threads take consecutive
/// channels: coalesced). The window is scanned in row-major order; max pooling keeps the
/// first of equal values (strict '>') and records its offset within the sample, (h*W + w)*C
/// + c (the caller has checked that it fits in int32); average pooling sums the window in
/// that order in double and multiplies by 1 / area, rounded as the CPU backend rounds it.
template <bool Max>
__global__ void pool2d_forward_kernel(const float* x, int64_t height, int64_t width,
                                      int64_t channels, int64_t window, int64_t stride,
                                      int64_t out_h, int64_t out_w, int64_t n, float* y,
                                      int32_t* argmax) {
  const int64_t sample_size = height * width * channels;
  const float inv_area = 1.0f / static_cast<float>(window * window);
  for (int64_t i = grid_start(); i < n; i += grid_stride()) {
    const int64_t c = i % channels;
    int64_t rest = i / channels;
    const int64_t ow = rest % out_w;
    rest /= out_w;
    const int64_t oh = rest % out_h;
    const int64_t sample = rest / out_h;
    const float* xs = x + sample * sample_size;
    const int64_t ih0 = oh * stride;
    const int64_t iw0 = ow * stride;
    if (Max) {
      int64_t best_offset = (ih0 * width + iw0) * channels + c;
      float best = xs[best_offset];
      for (int64_t r = 0; r < window; ++r)
        for (int64_t s = 0; s < window; ++s) {
          const int64_t offset = ((ih0 + r) * width + iw0 + s) * channels + c;
          const float v = xs[offset];
          if (v > best) {
            best = v;
            best_offset = offset;
          }
        }
      y[i] = best;
      argmax[i] = static_cast<int32_t>(best_offset);
    } else {
      double acc = 0.0;
      for (int64_t r = 0; r < window; ++r)
        for (int64_t s = 0; s < window; ++s)
          acc += xs[((ih0 + r) * width + iw0 + s) * channels + c];
      y[i] = static_cast<float>(acc) * inv_area;
    }
  }
}

/// The backward pass of pool2d_forward_kernel as a gather, one thread per input: each input
/// sums, over the outputs whose window covers it (in increasing oh, then ow), dy * (1 /
/// window^2) (average) or dy where the output's argmax names this input (max). Every input is
/// written (zero where nothing covers it or it never won), with no atomics: deterministic even
/// where windows overlap, and in the order in which the CPU backend's scatter adds, so the
/// result is the CPU's bit for bit.
template <bool Max>
__global__ void pool2d_backward_kernel(const float* dy, const int32_t* argmax, int64_t height,
                                       int64_t width, int64_t channels, int64_t window,
                                       int64_t stride, int64_t out_h, int64_t out_w, int64_t n,
                                       float* dx) {
  const float inv_area = 1.0f / static_cast<float>(window * window);
  for (int64_t i = grid_start(); i < n; i += grid_stride()) {
    const int64_t c = i % channels;
    int64_t rest = i / channels;
    const int64_t iw = rest % width;
    rest /= width;
    const int64_t ih = rest % height;
    const int64_t sample = rest / height;
    const int64_t offset = (ih * width + iw) * channels + c;
    // Output oh covers ih when oh*stride <= ih < oh*stride + window.
    const int64_t oh_begin = ih >= window ? (ih - window) / stride + 1 : 0;
    const int64_t oh_end = min(ih / stride + 1, out_h);
    const int64_t ow_begin = iw >= window ? (iw - window) / stride + 1 : 0;
    const int64_t ow_end = min(iw / stride + 1, out_w);
    float acc = 0.0f;
    for (int64_t oh = oh_begin; oh < oh_end; ++oh)
      for (int64_t ow = ow_begin; ow < ow_end; ++ow) {
        const int64_t o = ((sample * out_h + oh) * out_w + ow) * channels + c;
        if (Max) {
          if (argmax[o] == offset) acc += dy[o];
        } else {
          // Explicit rounding: an FMA contraction would differ from the CPU's multiply-add.
          acc = __fadd_rn(acc, __fmul_rn(dy[o], inv_area));
        }
      }
    dx[i] = acc;
  }
}

/// sqrt(2 / pi) and the cubic coefficient of GELU's tanh approximation.
constexpr float k_gelu_scale = 0.7978845608028654f;
constexpr float k_gelu_cubic = 0.044715f;

template <activation F>
__device__ inline float activation_value(float x) {
  if constexpr (F == activation::relu) {
    return x < 0.0f ? 0.0f : x;  // std::max(x, 0.0f), as the CPU: a NaN stays NaN
  } else if constexpr (F == activation::gelu) {
    const float u = k_gelu_scale * (x + k_gelu_cubic * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
  } else {
    return tanhf(x);
  }
}

/// f'(x).
template <activation F>
__device__ inline float activation_derivative(float x) {
  if constexpr (F == activation::relu) {
    return x > 0.0f ? 1.0f : 0.0f;
  } else if constexpr (F == activation::gelu) {
    // Grouped as the CPU backend groups it.
    const float t = tanhf(k_gelu_scale * (x + k_gelu_cubic * x * x * x));
    const float dt = (1.0f - t * t) * k_gelu_scale * (1.0f + 3.0f * k_gelu_cubic * x * x);
    return 0.5f * (1.0f + t) + 0.5f * x * dt;
  } else {
    const float t = tanhf(x);
    return 1.0f - t * t;
  }
}

/// y = f(x); y may be x (each element is read before it is written, by the same thread).
template <activation F>
__global__ void activation_forward_kernel(const float* x, float* y, int64_t n) {
  for (int64_t i = grid_start(); i < n; i += grid_stride()) y[i] = activation_value<F>(x[i]);
}

/// dx = dy * f'(x); dx may be dy.
template <activation F>
__global__ void activation_backward_kernel(const float* x, const float* dy, float* dx, int64_t n) {
  for (int64_t i = grid_start(); i < n; i += grid_stride()) {
    if constexpr (F == activation::relu) {
      dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;  // no 0 * inf = NaN for a masked gradient
    } else {
      dx[i] = dy[i] * activation_derivative<F>(x[i]);
    }
  }
}

/// out = a * b; out may be a or b.
__global__ void multiply_kernel(int64_t n, const float* a, const float* b, float* out) {
  for (int64_t i = grid_start(); i < n; i += grid_stride()) out[i] = a[i] * b[i];
}

/// Inverted dropout's mask from splitmix64 of (seed + i * golden ratio), the top 24 bits as a
/// uniform u in [0, 1): mask = 0 where u < rate, else `keep` (1 / (1 - rate), rounded once on
/// the host). Integer arithmetic and exact conversions only, so the mask is bit for bit the
/// CPU backend's.
__global__ void dropout_mask_kernel(int64_t n, float rate, float keep, uint64_t seed, float* mask) {
  for (int64_t i = grid_start(); i < n; i += grid_stride()) {
    uint64_t z = seed + static_cast<uint64_t>(i) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
    mask[i] = u < rate ? 0.0f : keep;
  }
}

/// Layer norm (or RMS norm) forward, one block per row: the row's mean and variance (or mean
/// square) by block reductions in double, then y = xhat * gamma (+ beta) with xhat = (x -
/// mean) * rstd computed in float from the saved (rounded) mean and rstd, exactly as the
/// backward pass recomputes it. y may be x: every read of the row precedes the reductions'
/// barriers, and each thread then reads and writes only its own elements.
template <bool Rms>
__global__ void norm_forward_kernel(const float* x, const float* gamma, const float* beta,
                                    int64_t rows, int64_t cols, float eps, float* y,
                                    float* mean_out, float* rstd_out) {
  // The loop bound depends only on blockIdx, so the whole block agrees at every barrier.
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const float* xr = x + row * cols;
    float* yr = y + row * cols;
    double mean = 0.0;
    double acc = 0.0;
    if (!Rms) {
      for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) acc += xr[j];
      mean = block_allreduce_sum(acc) / static_cast<double>(cols);
      acc = 0.0;
    }
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const double d = static_cast<double>(xr[j]) - mean;
      acc += d * d;
    }
    const double var = block_allreduce_sum(acc) / static_cast<double>(cols);
    const auto m = static_cast<float>(mean);
    const auto r = static_cast<float>(1.0 / sqrt(var + static_cast<double>(eps)));
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const float xhat = Rms ? xr[j] * r : (xr[j] - m) * r;
      yr[j] = Rms || beta == nullptr ? xhat * gamma[j] : xhat * gamma[j] + beta[j];
    }
    if (threadIdx.x == 0) {
      if (mean_out != nullptr) mean_out[row] = Rms ? 0.0f : m;
      if (rstd_out != nullptr) rstd_out[row] = r;
    }
  }
}

/// dx of layer norm (or RMS norm), one block per row: with g = dy * gamma, dx = rstd * (g -
/// mean(g) - xhat * mean(g * xhat)) (RMS: without the mean(g) term), the two means by block
/// reductions in double and the final expression in double, as the CPU backend forms it.
/// dx may be dy or x (reads precede the barriers; afterwards each thread touches only its own
/// elements). RMS norm never reads `mean`.
template <bool Rms>
__global__ void norm_backward_dx_kernel(const float* x, const float* gamma, const float* dy,
                                        const float* mean, const float* rstd, int64_t rows,
                                        int64_t cols, float* dx) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const float* xr = x + row * cols;
    const float* dyr = dy + row * cols;
    float* dxr = dx + row * cols;
    const float m = Rms ? 0.0f : mean[row];
    const float r = rstd[row];
    double sum_g = 0.0;
    double sum_gx = 0.0;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const double g = static_cast<double>(dyr[j]) * gamma[j];  // exact in double
      const float xhat = Rms ? xr[j] * r : (xr[j] - m) * r;
      sum_g += g;
      sum_gx += g * xhat;
    }
    block_sum2(sum_g, sum_gx);
    const double mean_g = Rms ? 0.0 : sum_g / static_cast<double>(cols);
    const double mean_gx = sum_gx / static_cast<double>(cols);
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const float g = dyr[j] * gamma[j];
      const double xhat = Rms ? xr[j] * r : (xr[j] - m) * r;
      dxr[j] = static_cast<float>(r * (g - mean_g - xhat * mean_gx));
    }
  }
}

/// dgamma[c] = sum over rows of dy * xhat, dbeta[c] (if not null) = sum over rows of dy, as
/// column_sum_kernel sums: block (32, 8), each thread every 8th row of one column in double,
/// the 8 partials added in a fixed order. Deterministic; rows == 0 writes zeros.
template <bool Rms>
__global__ void norm_param_grad_kernel(const float* x, const float* dy, const float* mean,
                                       const float* rstd, int64_t rows, int64_t cols, float* dgamma,
                                       float* dbeta) {
  __shared__ double partial_gamma[k_tile_rows][k_tile_cols];
  __shared__ double partial_beta[k_tile_rows][k_tile_cols];
  for (int64_t tile = blockIdx.x; tile * k_tile_cols < cols; tile += gridDim.x) {
    const int64_t c = tile * k_tile_cols + threadIdx.x;
    double acc_gamma = 0.0;
    double acc_beta = 0.0;
    if (c < cols)
      for (int64_t r = threadIdx.y; r < rows; r += k_tile_rows) {
        const float xv = x[r * cols + c];
        const float xhat = Rms ? xv * rstd[r] : (xv - mean[r]) * rstd[r];
        const float d = dy[r * cols + c];
        acc_gamma += static_cast<double>(d) * xhat;
        acc_beta += d;
      }
    partial_gamma[threadIdx.y][threadIdx.x] = acc_gamma;
    partial_beta[threadIdx.y][threadIdx.x] = acc_beta;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
      double total_gamma = 0.0;
      double total_beta = 0.0;
      for (int i = 0; i < k_tile_rows; ++i) {
        total_gamma += partial_gamma[i][threadIdx.x];
        total_beta += partial_beta[i][threadIdx.x];
      }
      if (dgamma != nullptr) dgamma[c] = static_cast<float>(total_gamma);
      if (dbeta != nullptr) dbeta[c] = static_cast<float>(total_beta);
    }
    __syncthreads();  // the partials are reused by the next tile
  }
}

/// y[r, d] = table[ids[r], d], one thread per output value (coalesced along d).
__global__ void embedding_forward_kernel(const int32_t* ids, const float* table, int64_t rows,
                                         int64_t dim, float* y) {
  const int64_t n = rows * dim;
  for (int64_t i = grid_start(); i < n; i += grid_stride()) {
    const int64_t r = i / dim;
    y[i] = table[static_cast<int64_t>(ids[r]) * dim + i % dim];
  }
}

/// dtable[ids[r], d] += dy[r, d], one thread per dy value; dtable was zeroed before. Repeated
/// ids add up with float atomics. An id outside [0, vocab) (a caller bug: ids are checked at
/// load time) is skipped rather than written out of bounds.
__global__ void embedding_backward_kernel(const int32_t* ids, const float* dy, int64_t rows,
                                          int64_t dim, int64_t vocab, float* dtable) {
  const int64_t n = rows * dim;
  for (int64_t i = grid_start(); i < n; i += grid_stride()) {
    const int64_t id = ids[i / dim];
    if (id < 0 || id >= vocab) continue;
    atomicAdd(&dtable[id * dim + i % dim], dy[i]);
  }
}

/// Causal softmax in place, one warp per row of `t` scores (rows = count * t): row i of its
/// matrix (i = row % t) sees columns 0..i. p = exp(scale*s - max) * float(1 / sum), the sum
/// over the visible columns in double (as the CPU backend forms it), and 0 for the rest. The
/// scaled value is formed with __fmul_rn in every pass so that no contraction into an FMA
/// makes the max pass and the exp pass see different values. Each lane reads and writes only
/// its own columns (j = lane mod 32), so in place is safe.
__global__ void causal_softmax_kernel(float* s, int64_t rows, int64_t t, float scale) {
  const int lane = threadIdx.x % k_warp;
  const int warp = threadIdx.x / k_warp;
  const int64_t warps_in_grid = static_cast<int64_t>(gridDim.x) * k_warps_per_block;
  // The loop bound depends only on the warp, so all 32 lanes take part in every shuffle.
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * k_warps_per_block + warp; row < rows;
       row += warps_in_grid) {
    float* sr = s + row * t;
    const int64_t visible = row % t + 1;
    float best = -INFINITY;
    for (int64_t j = lane; j < visible; j += k_warp) best = fmaxf(best, __fmul_rn(scale, sr[j]));
    best = warp_max(best);
    double total = 0.0;
    for (int64_t j = lane; j < visible; j += k_warp) total += expf(__fmul_rn(scale, sr[j]) - best);
    const auto inv = static_cast<float>(1.0 / warp_sum(total));
    for (int64_t j = lane; j < t; j += k_warp)
      sr[j] = j < visible ? expf(__fmul_rn(scale, sr[j]) - best) * inv : 0.0f;
  }
}

/// Softmax backward in place, one warp per row: dp = scale * p * (dp - sum(p * dp)), the dot
/// product in double. Each lane reads and writes only its own columns.
__global__ void softmax_backward_kernel(const float* p, float* dp, int64_t rows, int64_t cols,
                                        float scale) {
  const int lane = threadIdx.x % k_warp;
  const int warp = threadIdx.x / k_warp;
  const int64_t warps_in_grid = static_cast<int64_t>(gridDim.x) * k_warps_per_block;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * k_warps_per_block + warp; row < rows;
       row += warps_in_grid) {
    const float* pr = p + row * cols;
    float* dpr = dp + row * cols;
    double dot = 0.0;
    for (int64_t j = lane; j < cols; j += k_warp) dot += static_cast<double>(pr[j]) * dpr[j];
    const auto d = static_cast<float>(warp_sum(dot));
    for (int64_t j = lane; j < cols; j += k_warp) dpr[j] = scale * pr[j] * (dpr[j] - d);
  }
}

/// Mean squared error against one-hot labels, one warp per row, laid out as
/// softmax_xent_kernel: per row the squared error sum (in double) and the first arg-max;
/// per-block totals go to `stats` with one atomic each. dy = 2 (y - onehot) * grad_scale if
/// not null; dy may alias y (each lane reads y[j] before writing dy[j], for its own j only).
__global__ void mse_onehot_kernel(const float* y, const int32_t* labels, int64_t rows, int64_t cols,
                                  float grad_scale, float* dy, float* stats) {
  __shared__ double block_loss[k_warps_per_block];
  __shared__ double block_correct[k_warps_per_block];
  const int lane = threadIdx.x % k_warp;
  const int warp = threadIdx.x / k_warp;
  double loss_total = 0.0;
  double correct_total = 0.0;
  const int64_t warps_in_grid = static_cast<int64_t>(gridDim.x) * k_warps_per_block;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * k_warps_per_block + warp; row < rows;
       row += warps_in_grid) {
    const float* yr = y + row * cols;
    const int32_t label = labels[row];
    float best = -INFINITY;
    int64_t best_index = INT64_MAX;
    double loss = 0.0;
    for (int64_t j = lane; j < cols; j += k_warp) {
      const float v = yr[j];
      if (v > best || best_index == INT64_MAX) {
        best = v;
        best_index = j;
      }
      const float e = v - (j == label ? 1.0f : 0.0f);
      loss += static_cast<double>(e) * e;
    }
    for (int offset = k_warp / 2; offset > 0; offset /= 2) {
      const float other = __shfl_xor_sync(k_full_mask, best, offset);
      const int64_t other_index = __shfl_xor_sync(k_full_mask, best_index, offset);
      if (other > best || (other == best && other_index < best_index)) {
        best = other;
        best_index = other_index;
      }
    }
    loss = warp_sum(loss);
    if (lane == 0) {
      // An out-of-range label matches no column: an all-zero target, never counted correct
      // (as on the CPU; there is no out-of-bounds read to guard against here).
      loss_total += loss;
      correct_total += best_index == label ? 1.0 : 0.0;
    }
    if (dy != nullptr) {
      float* d = dy + row * cols;
      for (int64_t j = lane; j < cols; j += k_warp)
        d[j] = 2.0f * (yr[j] - (j == label ? 1.0f : 0.0f)) * grad_scale;
    }
  }
  add_block_stats(block_loss, block_correct, lane, warp, loss_total, correct_total, stats);
}

// -- the backend ------------------------------------------------------------------------------

/// Makes `ordinal` the calling thread's device for the lifetime of the guard and restores the
/// previous one after; for code that runs on arbitrary threads (tensor deleters). Never
/// throws: errors are ignored and cleared from the runtime's last-error slot.
class device_guard {
 public:
  explicit device_guard(int ordinal) noexcept {
    if (cudaGetDevice(&previous_) != cudaSuccess) {
      (void)cudaGetLastError();
      previous_ = -1;
    }
    if (previous_ == ordinal) {
      previous_ = -1;  // already current: nothing to switch or restore
    } else if (cudaSetDevice(ordinal) != cudaSuccess) {
      (void)cudaGetLastError();
      previous_ = -1;
    }
  }
  ~device_guard() {
    if (previous_ >= 0 && cudaSetDevice(previous_) != cudaSuccess) (void)cudaGetLastError();
  }
  device_guard(const device_guard&) = delete;
  device_guard& operator=(const device_guard&) = delete;

 private:
  int previous_ = -1;
};

/// The backend's stream, shared between the backend and the deleters of the tensors it
/// allocated: a tensor may be freed after its backend is gone, and stream-ordered frees need
/// a live stream.
class stream_owner {
 public:
  stream_owner(int ordinal, bool pooled) : ordinal_(ordinal), pooled_(pooled) {
    GFLEX_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  ~stream_owner() {
    device_guard guard(ordinal_);
    // Returns at once; pending work still completes before the stream's resources go.
    if (cudaStreamDestroy(stream_) != cudaSuccess) (void)cudaGetLastError();
  }
  stream_owner(const stream_owner&) = delete;
  stream_owner& operator=(const stream_owner&) = delete;

  cudaStream_t stream() const noexcept { return stream_; }
  bool pooled() const noexcept { return pooled_; }

  /// Frees `bytes` of memory from `allocate_device`, ordered after all work enqueued so far,
  /// and gives the bytes back to the device's budget. Never throws (it runs in a deleter); a
  /// failure can only leak, and is cleared so that it does not surface as an unrelated launch
  /// error later.
  void free(void* memory, uint64_t bytes) const noexcept {
    if (memory == nullptr) return;
    {
      device_guard guard(ordinal_);
      const cudaError_t status = pooled_ ? cudaFreeAsync(memory, stream_) : cudaFree(memory);
      if (status != cudaSuccess) (void)cudaGetLastError();
    }
    // Given back as soon as the free is enqueued: the pool itself keeps the memory from a new
    // owner until this stream's work on it is done.
    detail::release_device_memory(ordinal_, bytes);
  }

 private:
  int ordinal_;
  bool pooled_;
  cudaStream_t stream_ = nullptr;
};

/// Owns one cuDNN descriptor; `Destroy` is the matching cudnnDestroy*Descriptor. Descriptors
/// are host objects: destroying one needs no device and no stream.
template <class Handle, cudnnStatus_t (*Destroy)(Handle)>
class cudnn_descriptor {
 public:
  cudnn_descriptor() = default;
  ~cudnn_descriptor() {
    if (handle_ != nullptr) (void)Destroy(handle_);
  }
  cudnn_descriptor(const cudnn_descriptor&) = delete;
  cudnn_descriptor& operator=(const cudnn_descriptor&) = delete;

  Handle get() const noexcept { return handle_; }
  Handle* out() noexcept { return &handle_; }

 private:
  Handle handle_ = nullptr;
};

using tensor_descriptor = cudnn_descriptor<cudnnTensorDescriptor_t, cudnnDestroyTensorDescriptor>;
using filter_descriptor = cudnn_descriptor<cudnnFilterDescriptor_t, cudnnDestroyFilterDescriptor>;
using convolution_descriptor =
    cudnn_descriptor<cudnnConvolutionDescriptor_t, cudnnDestroyConvolutionDescriptor>;

/// The three passes of a convolution, each with its own algorithm.
enum class conv_pass : int { forward = 0, backward_data = 1, backward_filter = 2 };

constexpr const char* pass_name(conv_pass pass) {
  switch (pass) {
    case conv_pass::forward:
      return "forward";
    case conv_pass::backward_data:
      return "backward-data";
    case conv_pass::backward_filter:
      return "backward-filter";
  }
  return "?";
}

/// What the plan cache is keyed on: the geometry and the precision (which sets the math types
/// the algorithm may use).
struct conv_key {
  std::array<int64_t, 10> extents{};
  math_precision precision = math_precision::fp32;
  auto operator<=>(const conv_key&) const = default;
};

/// The algorithm chosen for one pass, with the math type it runs under and the workspace it
/// needs.
struct conv_choice {
  bool chosen = false;
  int algo = 0;
  cudnnMathType_t math = CUDNN_FMA_MATH;
  size_t workspace = 0;
};

/// Everything cuDNN needs for one geometry: built once, then reused by every call (a training
/// run has a handful of geometries and calls each thousands of times). Each pass has its own
/// convolution descriptor because each carries the math type of its own algorithm.
struct conv_plan {
  tensor_descriptor x;
  tensor_descriptor y;
  filter_descriptor w;
  std::array<convolution_descriptor, 3> conv;
  std::array<conv_choice, 3> choice;
};

/// "batch 128, 32x32x3 -> 16, kernel 3x3, pad 1x1, stride 1": a geometry for error messages.
std::string describe_geometry(const conv2d_geometry& g) {
  return "batch " + std::to_string(g.batch) + ", " + std::to_string(g.height) + "x" +
         std::to_string(g.width) + "x" + std::to_string(g.in_channels) + " -> " +
         std::to_string(g.out_channels) + ", kernel " + std::to_string(g.kernel_h) + "x" +
         std::to_string(g.kernel_w) + ", pad " + std::to_string(g.pad_h) + "x" +
         std::to_string(g.pad_w) + ", stride " + std::to_string(g.stride);
}

/// Whether an algorithm that cuDNN's heuristics rate with math type `math` may serve a
/// backend at precision `p`. FP32 takes only algorithms without tensor cores (FMA; DEFAULT
/// rows run under the descriptor's FMA_MATH, which forbids TF32). TF32 and BF16 also take
/// tensor-core algorithms (TF32 for FP32 data), but never ALLOW_CONVERSION: the legacy API's
/// down-conversion is to FP16, whose range (65504) gradients can overflow.
bool math_allowed(cudnnMathType_t math, math_precision p) {
  if (math == CUDNN_FMA_MATH || math == CUDNN_DEFAULT_MATH) return true;
  return p != math_precision::fp32 && math == CUDNN_TENSOR_OP_MATH;
}

/// Picks the first algorithm of cuDNN's heuristic ranking (best first) that succeeds, is
/// allowed at precision `p`, needs at most `cap` bytes of workspace, and (in the first round)
/// is deterministic; the second round drops determinism rather than fail. Leaves `conv` at
/// the chosen algorithm's math type. `heuristic(requested, &returned, perf)` and
/// `workspace(algo, &bytes)` wrap the pass's cudnnGet*Algorithm_v7 and
/// cudnnGet*WorkspaceSize.
template <class Perf, class Heuristic, class Workspace>
conv_choice pick_algorithm(cudnnConvolutionDescriptor_t conv, math_precision p, size_t cap,
                           int max_count, Heuristic heuristic, Workspace workspace, conv_pass pass,
                           const conv2d_geometry& g) {
  // FP32 must never run tensor-core math: FMA_MATH on the descriptor both steers the
  // heuristics and forbids TF32 at run time. Otherwise DEFAULT_MATH permits TF32.
  const cudnnMathType_t preferred = p == math_precision::fp32 ? CUDNN_FMA_MATH : CUDNN_DEFAULT_MATH;
  GFLEX_CUDNN_CHECK(cudnnSetConvolutionMathType(conv, preferred));
  std::vector<Perf> perf(static_cast<size_t>(std::max(max_count, 1)));
  int returned = 0;
  GFLEX_CUDNN_CHECK(heuristic(static_cast<int>(perf.size()), &returned, perf.data()));
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < returned; ++i) {
      const Perf& candidate = perf[static_cast<size_t>(i)];
      if (candidate.status != CUDNN_STATUS_SUCCESS) continue;
      if (round == 0 && candidate.determinism != CUDNN_DETERMINISTIC) continue;
      if (!math_allowed(candidate.mathType, p) || candidate.memory > cap) continue;
      const cudnnMathType_t math = p == math_precision::fp32 ? CUDNN_FMA_MATH : candidate.mathType;
      if (cudnnSetConvolutionMathType(conv, math) != CUDNN_STATUS_SUCCESS) continue;
      // The heuristics' memory figure is an estimate; the exact size under the math type we
      // run with decides, and a failure here means the algorithm cannot run this way.
      size_t bytes = 0;
      if (workspace(static_cast<int>(candidate.algo), &bytes) != CUDNN_STATUS_SUCCESS ||
          bytes > cap)
        continue;
      return conv_choice{true, static_cast<int>(candidate.algo), math, bytes};
    }
  }
  throw compute_error(gflex::error(
      errc::device_error, std::string("no cuDNN ") + pass_name(pass) +
                              " convolution algorithm for " + describe_geometry(g) + " at " +
                              to_string(p) + " within a workspace of " + std::to_string(cap) +
                              " bytes (" + std::to_string(returned) + " candidates)"));
}

/// Pinned staging buffers of `upload`, and the most one copy stages at once. Four slots let
/// the host fill one while up to three DMAs are in flight; 16 MiB chunks keep a large upload
/// pipelined (memcpy of chunk i+1 overlaps the DMA of chunk i) and bound the pinned memory
/// per backend to 64 MiB, however large the tensors.
constexpr int k_staging_slots = 4;
constexpr size_t k_staging_chunk = size_t{16} << 20;

/// The largest cuDNN workspace a backend holds. FFT and Winograd algorithms can ask for
/// gigabytes for a few percent of speed; past this the next-ranked algorithm is used.
constexpr size_t k_max_workspace = size_t{512} << 20;

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
    auto numel = checked_numel(shape);
    if (!numel) throw compute_error(numel.error());
    const size_t bytes = static_cast<size_t>(*numel) * size_of(type);
    if (bytes == 0) return tensor::adopt(std::move(shape), type, where(), nullptr);
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
    activate();
    const auto* from = static_cast<const char*>(src);
    auto* to = static_cast<char*>(dst);
    while (count > 0) {
      const size_t chunk = std::min(count, k_staging_chunk);
      staging_slot& slot = staging_[next_slot_];
      next_slot_ = (next_slot_ + 1) % k_staging_slots;
      if (slot.pending) {
        // The slot's previous DMA must have read the buffer before we overwrite it.
        GFLEX_CUDA_CHECK(cudaEventSynchronize(slot.done));
        slot.pending = false;
      }
      if (slot.capacity < chunk) {
        // Grown in powers of two (up to the chunk size) so that a run of slightly growing
        // uploads does not re-pin memory each time; pinning is slow.
        size_t capacity = std::max<size_t>(slot.capacity, 4096);
        while (capacity < chunk) capacity *= 2;
        capacity = std::min(capacity, k_staging_chunk);
        if (slot.host != nullptr) GFLEX_CUDA_CHECK(cudaFreeHost(slot.host));
        slot.host = nullptr;
        slot.capacity = 0;
        GFLEX_CUDA_CHECK(cudaMallocHost(&slot.host, capacity));
        slot.capacity = capacity;
      }
      std::memcpy(slot.host, from, chunk);
      GFLEX_CUDA_CHECK(cudaMemcpyAsync(to, slot.host, chunk, cudaMemcpyHostToDevice, stream()));
      GFLEX_CUDA_CHECK(cudaEventRecord(slot.done, stream()));
      slot.pending = true;
      from += chunk;
      to += chunk;
      count -= chunk;
    }
  }

  void download(const void* src, void* dst, size_t count) override {
    if (count == 0) return;
    activate();
    GFLEX_CUDA_CHECK(cudaMemcpyAsync(dst, src, count, cudaMemcpyDeviceToHost, stream()));
    GFLEX_CUDA_CHECK(cudaStreamSynchronize(stream()));
  }

  void synchronize() override {
    activate();
    GFLEX_CUDA_CHECK(cudaStreamSynchronize(stream()));
  }

  void fill(float* x, int64_t n, float value) override {
    if (n <= 0) return;
    activate();
    fill_kernel<<<grid_for(n), k_block, 0, stream()>>>(x, n, value);
    GFLEX_CUDA_CHECK_LAUNCH();
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
      scale_matrix_kernel<<<grid_for(m * n), k_block, 0, stream()>>>(c, m, n, ldc, 0, 1, beta);
      GFLEX_CUDA_CHECK_LAUNCH();
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

  void axpby(int64_t n, float a, const float* x, float b, float* y) override {
    if (n <= 0) return;
    activate();
    axpby_kernel<<<grid_for(n), k_block, 0, stream()>>>(n, a, x, b, y);
    GFLEX_CUDA_CHECK_LAUNCH();
  }

  // -- layers ---------------------------------------------------------------------------------

  void bias_relu_forward(float* y, const float* bias, int64_t rows, int64_t cols,
                         bool relu) override {
    if (rows <= 0 || cols <= 0) return;
    activate();
    const int64_t n = rows * cols;
    if (relu) {
      bias_relu_kernel<true><<<grid_for(n), k_block, 0, stream()>>>(y, bias, rows, cols);
    } else {
      bias_relu_kernel<false><<<grid_for(n), k_block, 0, stream()>>>(y, bias, rows, cols);
    }
    GFLEX_CUDA_CHECK_LAUNCH();
  }

  void relu_backward(float* dy, const float* y, int64_t n) override {
    if (n <= 0) return;
    activate();
    relu_backward_kernel<<<grid_for(n), k_block, 0, stream()>>>(dy, y, n);
    GFLEX_CUDA_CHECK_LAUNCH();
  }

  void column_sum(const float* x, int64_t rows, int64_t cols, float* out) override {
    // rows == 0 still runs: every column sums to 0.
    if (cols <= 0) return;
    activate();
    const int64_t tiles = (cols + k_tile_cols - 1) / k_tile_cols;
    const auto blocks = static_cast<unsigned>(std::min<int64_t>(tiles, max_blocks_));
    column_sum_kernel<<<blocks, dim3(k_tile_cols, k_tile_rows), 0, stream()>>>(
        x, std::max<int64_t>(rows, 0), cols, out);
    GFLEX_CUDA_CHECK_LAUNCH();
  }

  void softmax_xent(const float* logits, const int32_t* labels, int64_t rows, int64_t classes,
                    float grad_scale, float* dlogits, float* stats) override {
    if (rows <= 0 || classes <= 0) return;
    activate();
    const int64_t needed = (rows + k_warps_per_block - 1) / k_warps_per_block;
    const auto blocks = static_cast<unsigned>(std::min<int64_t>(needed, max_blocks_));
    softmax_xent_kernel<<<blocks, k_block, 0, stream()>>>(logits, labels, rows, classes, grad_scale,
                                                          dlogits, stats);
    GFLEX_CUDA_CHECK_LAUNCH();
  }

  // -- convolutional layers -----------------------------------------------------------------

  void conv2d_forward(const conv2d_geometry& g, const float* x, const float* w, float* y) override {
    activate();
    conv_plan& plan = plan_for(g);
    const conv_choice& choice = choose(plan, conv_pass::forward, g);
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
    const conv_choice& choice = choose(plan, conv_pass::backward_data, g);
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
    const conv_choice& choice = choose(plan, conv_pass::backward_filter, g);
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
    max_pool2_forward_kernel<<<grid_for(n), k_block, 0, stream()>>>(x, height, width, channels,
                                                                    out_h, out_w, n, y, argmax);
    GFLEX_CUDA_CHECK_LAUNCH();
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
    max_pool2_backward_kernel<<<grid_for(n), k_block, 0, stream()>>>(dy, argmax, sample_in,
                                                                     sample_out, n, dx);
    GFLEX_CUDA_CHECK_LAUNCH();
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
    if (max) {
      pool2d_forward_kernel<true><<<grid_for(n), k_block, 0, stream()>>>(
          x, height, width, channels, window, stride, out_h, out_w, n, y, argmax);
    } else {
      pool2d_forward_kernel<false><<<grid_for(n), k_block, 0, stream()>>>(
          x, height, width, channels, window, stride, out_h, out_w, n, y, nullptr);
    }
    GFLEX_CUDA_CHECK_LAUNCH();
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
    if (max) {
      pool2d_backward_kernel<true><<<grid_for(n), k_block, 0, stream()>>>(
          dy, argmax, height, width, channels, window, stride, out_h, out_w, n, dx);
    } else {
      pool2d_backward_kernel<false><<<grid_for(n), k_block, 0, stream()>>>(
          dy, nullptr, height, width, channels, window, stride, out_h, out_w, n, dx);
    }
    GFLEX_CUDA_CHECK_LAUNCH();
  }

  void activation_forward(activation f, const float* x, float* y, int64_t n) override {
    if (n <= 0) return;
    activate();
    switch (f) {
      case activation::relu:
        activation_forward_kernel<activation::relu><<<grid_for(n), k_block, 0, stream()>>>(x, y, n);
        break;
      case activation::gelu:
        activation_forward_kernel<activation::gelu><<<grid_for(n), k_block, 0, stream()>>>(x, y, n);
        break;
      case activation::tanh:
        activation_forward_kernel<activation::tanh><<<grid_for(n), k_block, 0, stream()>>>(x, y, n);
        break;
      default:
        throw_unknown_activation(f);
    }
    GFLEX_CUDA_CHECK_LAUNCH();
  }

  void activation_backward(activation f, const float* x, const float* dy, float* dx,
                           int64_t n) override {
    if (n <= 0) return;
    activate();
    switch (f) {
      case activation::relu:
        activation_backward_kernel<activation::relu>
            <<<grid_for(n), k_block, 0, stream()>>>(x, dy, dx, n);
        break;
      case activation::gelu:
        activation_backward_kernel<activation::gelu>
            <<<grid_for(n), k_block, 0, stream()>>>(x, dy, dx, n);
        break;
      case activation::tanh:
        activation_backward_kernel<activation::tanh>
            <<<grid_for(n), k_block, 0, stream()>>>(x, dy, dx, n);
        break;
      default:
        throw_unknown_activation(f);
    }
    GFLEX_CUDA_CHECK_LAUNCH();
  }

  void multiply(int64_t n, const float* a, const float* b, float* out) override {
    if (n <= 0) return;
    activate();
    multiply_kernel<<<grid_for(n), k_block, 0, stream()>>>(n, a, b, out);
    GFLEX_CUDA_CHECK_LAUNCH();
  }

  void dropout_mask(int64_t n, float rate, uint64_t seed, float* mask) override {
    if (n <= 0) return;
    activate();
    // Rounded once here, as the CPU backend's 1.0f / (1.0f - rate): the same float either way.
    const float keep = 1.0f / (1.0f - rate);
    dropout_mask_kernel<<<grid_for(n), k_block, 0, stream()>>>(n, rate, keep, seed, mask);
    GFLEX_CUDA_CHECK_LAUNCH();
  }

  void norm_forward(bool rms, const float* x, const float* gamma, const float* beta, int64_t rows,
                    int64_t cols, float eps, float* y, float* mean, float* rstd) override {
    if (rows <= 0 || cols <= 0) return;
    activate();
    const auto blocks = static_cast<unsigned>(std::min<int64_t>(rows, max_blocks_));
    if (rms) {
      norm_forward_kernel<true>
          <<<blocks, k_block, 0, stream()>>>(x, gamma, nullptr, rows, cols, eps, y, mean, rstd);
    } else {
      norm_forward_kernel<false>
          <<<blocks, k_block, 0, stream()>>>(x, gamma, beta, rows, cols, eps, y, mean, rstd);
    }
    GFLEX_CUDA_CHECK_LAUNCH();
  }

  void norm_backward(bool rms, const float* x, const float* gamma, const float* dy,
                     const float* mean, const float* rstd, int64_t rows, int64_t cols, float* dx,
                     float* dgamma, float* dbeta) override {
    if (cols <= 0) return;
    rows = std::max<int64_t>(rows, 0);  // no rows still overwrites dgamma and dbeta with zeros
    activate();
    // The parameter gradients first: they read dy and x, which dx may overwrite.
    const int64_t tiles = (cols + k_tile_cols - 1) / k_tile_cols;
    const auto tile_blocks = static_cast<unsigned>(std::min<int64_t>(tiles, max_blocks_));
    if (rms) {
      norm_param_grad_kernel<true><<<tile_blocks, dim3(k_tile_cols, k_tile_rows), 0, stream()>>>(
          x, dy, nullptr, rstd, rows, cols, dgamma, nullptr);
    } else {
      norm_param_grad_kernel<false><<<tile_blocks, dim3(k_tile_cols, k_tile_rows), 0, stream()>>>(
          x, dy, mean, rstd, rows, cols, dgamma, dbeta);
    }
    GFLEX_CUDA_CHECK_LAUNCH();
    if (rows == 0) return;
    const auto blocks = static_cast<unsigned>(std::min<int64_t>(rows, max_blocks_));
    if (rms) {
      norm_backward_dx_kernel<true>
          <<<blocks, k_block, 0, stream()>>>(x, gamma, dy, nullptr, rstd, rows, cols, dx);
    } else {
      norm_backward_dx_kernel<false>
          <<<blocks, k_block, 0, stream()>>>(x, gamma, dy, mean, rstd, rows, cols, dx);
    }
    GFLEX_CUDA_CHECK_LAUNCH();
  }

  void embedding_forward(const int32_t* ids, const float* table, int64_t rows, int64_t dim,
                         float* y) override {
    if (rows <= 0 || dim <= 0) return;
    activate();
    embedding_forward_kernel<<<grid_for(rows * dim), k_block, 0, stream()>>>(ids, table, rows, dim,
                                                                             y);
    GFLEX_CUDA_CHECK_LAUNCH();
  }

  void embedding_backward(const int32_t* ids, const float* dy, int64_t rows, int64_t dim,
                          int64_t vocab, float* dtable) override {
    if (vocab <= 0 || dim <= 0) return;  // dtable is empty
    activate();
    GFLEX_CUDA_CHECK(
        cudaMemsetAsync(dtable, 0, static_cast<size_t>(vocab * dim) * sizeof(float), stream()));
    if (rows <= 0) return;
    embedding_backward_kernel<<<grid_for(rows * dim), k_block, 0, stream()>>>(ids, dy, rows, dim,
                                                                              vocab, dtable);
    GFLEX_CUDA_CHECK_LAUNCH();
  }

  void causal_softmax_forward(float* s, int64_t count, int64_t t, float scale) override {
    if (count <= 0 || t <= 0) return;
    activate();
    const int64_t rows = count * t;
    causal_softmax_kernel<<<warp_row_blocks(rows), k_block, 0, stream()>>>(s, rows, t, scale);
    GFLEX_CUDA_CHECK_LAUNCH();
  }

  void softmax_backward(const float* p, float* dp, int64_t rows, int64_t cols,
                        float scale) override {
    if (rows <= 0 || cols <= 0) return;
    activate();
    softmax_backward_kernel<<<warp_row_blocks(rows), k_block, 0, stream()>>>(p, dp, rows, cols,
                                                                             scale);
    GFLEX_CUDA_CHECK_LAUNCH();
  }

  void gemm_strided_batched(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                            float alpha, const float* a, int64_t lda, int64_t stride_a,
                            const float* b, int64_t ldb, int64_t stride_b, float beta, float* c,
                            int64_t ldc, int64_t stride_c, int64_t count) override {
    if (m <= 0 || n <= 0 || count <= 0) return;
    activate();
    if (k <= 0) {
      // C_i = beta * C_i, as gemm does for k == 0 (cuBLAS never sees the empty operands).
      scale_matrix_kernel<<<grid_for(m * n * count), k_block, 0, stream()>>>(c, m, n, ldc, stride_c,
                                                                             count, beta);
      GFLEX_CUDA_CHECK_LAUNCH();
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
    mse_onehot_kernel<<<warp_row_blocks(rows), k_block, 0, stream()>>>(y, labels, rows, cols,
                                                                       grad_scale, dy, stats);
    GFLEX_CUDA_CHECK_LAUNCH();
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
    const auto grid = static_cast<unsigned>(std::min<int64_t>(blocks, max_blocks_));
    if (residual != nullptr) {
      quantize_int8_kernel<true>
          <<<grid, k_block, 0, stream()>>>(x, residual, n, block, blocks, q, scales);
    } else {
      quantize_int8_kernel<false>
          <<<grid, k_block, 0, stream()>>>(x, residual, n, block, blocks, q, scales);
    }
    GFLEX_CUDA_CHECK_LAUNCH();
  }

  void dequantize_int8(const int8_t* q, const float* scales, int64_t n, int64_t block,
                       float* out) override {
    if (n <= 0) return;
    check_quant_block(block);
    activate();
    dequantize_int8_kernel<<<grid_for(n), k_block, 0, stream()>>>(q, scales, n, block, out);
    GFLEX_CUDA_CHECK_LAUNCH();
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
    adamw_kernel<<<grid_for(n), k_block, 0, stream()>>>(param, grad, m, v, n, config.lr,
                                                        config.beta1, config.beta2, config.eps,
                                                        config.weight_decay, bc1, bc2);
    GFLEX_CUDA_CHECK_LAUNCH();
  }

  // -- reductions (synchronising) -------------------------------------------------------------

  double sum(const float* x, int64_t n) override { return reduce<false>(x, n); }

  double sum_squares(const float* x, int64_t n) override { return reduce<true>(x, n); }

 private:
  /// One pinned staging buffer of `upload` and the event behind its last copy.
  struct staging_slot {
    void* host = nullptr;
    size_t capacity = 0;
    cudaEvent_t done = nullptr;
    bool pending = false;  ///< A copy from `host` was enqueued and `done` recorded after it.
  };

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
    for (staging_slot& slot : staging_) {
      // No timing: these events only order host reuse after the DMA, and timing costs.
      GFLEX_CUDA_CHECK(cudaEventCreateWithFlags(&slot.done, cudaEventDisableTiming));
    }
    // max_blocks_ partials, then the final sum. Allocated once, synchronously (no pool
    // needed), but counted against the budget like everything else on the device.
    reduce_buffer_ = static_cast<double*>(allocate_fixed(
        sizeof(double) * static_cast<size_t>(max_blocks_ + 1), reduce_bytes_, "reduction scratch"));
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
    // Staging buffers may still feed a DMA: wait for each slot's last copy before unpinning.
    for (staging_slot& slot : staging_) {
      if (slot.pending && cudaEventSynchronize(slot.done) != cudaSuccess) (void)cudaGetLastError();
      slot.pending = false;
      if (slot.host != nullptr && cudaFreeHost(slot.host) != cudaSuccess) (void)cudaGetLastError();
      slot.host = nullptr;
      slot.capacity = 0;
      if (slot.done != nullptr && cudaEventDestroy(slot.done) != cudaSuccess)
        (void)cudaGetLastError();
      slot.done = nullptr;
    }
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

  /// Blocks for a grid-stride loop over n > 0 elements: enough for one element per thread,
  /// at most one full-occupancy wave.
  unsigned grid_for(int64_t n) const {
    return static_cast<unsigned>(std::min<int64_t>((n + k_block - 1) / k_block, max_blocks_));
  }

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

  /// The cuDNN workspace, grown to at least `bytes` (null for 0). Growing frees the old one on
  /// the stream first, so the calls already enqueued keep theirs and the pool can reuse it.
  void* ensure_workspace(size_t bytes) {
    if (bytes <= workspace_bytes_) return workspace_;
    if (workspace_ != nullptr) streams_->free(workspace_, workspace_bytes_);
    workspace_ = nullptr;
    workspace_bytes_ = 0;
    workspace_ = allocate_device(bytes, "allocating a cuDNN workspace of " + std::to_string(bytes) +
                                            " bytes on cuda:" + std::to_string(ordinal_));
    workspace_bytes_ = bytes;
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
    conv_key key;
    key.extents = {g.batch,    g.height,   g.width, g.in_channels, g.out_channels,
                   g.kernel_h, g.kernel_w, g.pad_h, g.pad_w,       g.stride};
    key.precision = precision_;
    if (auto found = plans_.find(key); found != plans_.end()) return *found->second;

    ensure_dnn();
    auto plan = std::make_unique<conv_plan>();
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
      throw compute_error(gflex::error(
          errc::device_error, "cuDNN computes a " + std::to_string(dn) + "x" + std::to_string(dh) +
                                  "x" + std::to_string(dw) + "x" + std::to_string(dk) +
                                  " output for " + describe_geometry(g)));
    return *plans_.emplace(key, std::move(plan)).first->second;
  }

  /// The algorithm of `pass` in `plan`, chosen on first use (see pick_algorithm).
  const conv_choice& choose(conv_plan& plan, conv_pass pass, const conv2d_geometry& g) {
    conv_choice& choice = plan.choice[static_cast<size_t>(pass)];
    if (choice.chosen) return choice;
    cudnnConvolutionDescriptor_t conv = plan.conv[static_cast<size_t>(pass)].get();
    const size_t cap = workspace_cap();
    int max_count = 0;
    switch (pass) {
      case conv_pass::forward:
        GFLEX_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(dnn_, &max_count));
        choice = pick_algorithm<cudnnConvolutionFwdAlgoPerf_t>(
            conv, precision_, cap, max_count,
            [&](int requested, int* returned, cudnnConvolutionFwdAlgoPerf_t* perf) {
              return cudnnGetConvolutionForwardAlgorithm_v7(
                  dnn_, plan.x.get(), plan.w.get(), conv, plan.y.get(), requested, returned, perf);
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
            [&](int algo, size_t* bytes) {
              return cudnnGetConvolutionBackwardFilterWorkspaceSize(
                  dnn_, plan.x.get(), plan.y.get(), conv, plan.w.get(),
                  static_cast<cudnnConvolutionBwdFilterAlgo_t>(algo), bytes);
            },
            pass, g);
        break;
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

  [[noreturn]] static void throw_unknown_activation(activation f) {
    throw compute_error(gflex::error(errc::invalid_argument,
                                     "unknown activation " + std::to_string(static_cast<int>(f))));
  }

  /// Blocks for a kernel with one warp per row over `rows` > 0 rows (at most one wave).
  unsigned warp_row_blocks(int64_t rows) const {
    const int64_t needed = (rows + k_warps_per_block - 1) / k_warps_per_block;
    return static_cast<unsigned>(std::min<int64_t>(needed, max_blocks_));
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
    activate();
    const unsigned blocks = grid_for(n);
    double* result = reduce_buffer_ + max_blocks_;
    reduce_partial_kernel<Square><<<blocks, k_block, 0, stream()>>>(x, n, reduce_buffer_);
    GFLEX_CUDA_CHECK_LAUNCH();
    reduce_final_kernel<<<1, k_block, 0, stream()>>>(reduce_buffer_, static_cast<int>(blocks),
                                                     result);
    GFLEX_CUDA_CHECK_LAUNCH();
    double host = 0.0;
    GFLEX_CUDA_CHECK(cudaMemcpyAsync(&host, result, sizeof host, cudaMemcpyDeviceToHost, stream()));
    GFLEX_CUDA_CHECK(cudaStreamSynchronize(stream()));
    return host;
  }

  int ordinal_;
  std::string description_;
  int max_blocks_ = 1;
  math_precision precision_ = math_precision::fp32;
  std::shared_ptr<stream_owner> streams_;
  cublasHandle_t blas_ = nullptr;
  cudnnHandle_t dnn_ = nullptr;      ///< Made by the first convolution (ensure_dnn).
  double* reduce_buffer_ = nullptr;  ///< Device scratch for sum / sum_squares.
  size_t reduce_bytes_ = 0;
  void* blas_workspace_ = nullptr;  ///< cuBLAS's workspace, counted against the budget.
  size_t blas_workspace_bytes_ = 0;
  void* workspace_ = nullptr;  ///< cuDNN workspace, shared by every plan (calls are ordered).
  size_t workspace_bytes_ = 0;
  std::map<conv_key, std::unique_ptr<conv_plan>> plans_;
  std::array<staging_slot, k_staging_slots> staging_{};
  int next_slot_ = 0;
};

}  // namespace

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
    std::unique_ptr<backend> result = std::make_unique<cuda_backend>(ordinal);
    return expected<std::unique_ptr<backend>>(std::move(result));
  } catch (const compute_error& e) {
    return e.err();
  }
}

}  // namespace gflex::kernels
