/// @file
/// The CUDA backend's own kernels (everything that is not cuBLAS or cuDNN) and their host-side
/// launchers. The kernels are private to this file; the backend reaches them only through the
/// launchers declared in cuda_kernels.hpp, which size each grid from the device's
/// full-occupancy wave and check each launch, so that no launch configuration is spread over
/// the backend.

#include <cuda_runtime.h>

#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda_check.hpp"
#include "cuda_kernels.hpp"

namespace gflex::kernels::detail {

namespace {

/// The warp size, the warps of a k_block-thread block, and the mask of a full warp's lanes.
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
    // Not fmaxf, which turns a NaN into 0: as the CPU's std::max, a NaN stays NaN, so that a
    // diverging model's loss says so on every backend.
    y[i] = Relu ? (v < 0.0f ? 0.0f : v) : v;
  }
}

__global__ void relu_backward_kernel(float* dy, const float* y, int64_t n) {
  for (int64_t i = grid_start(); i < n; i += grid_stride())
    if (!(y[i] > 0.0f)) dy[i] = 0.0f;  // as the CPU: no gradient through a NaN either
}

/// Columns per column_sum tile (one per lane, so that a warp reads 32 consecutive floats of a
/// row: coalesced) and row groups per tile (the block's other dimension).
constexpr int k_tile_cols = k_warp;
constexpr int k_tile_rows = k_block / k_tile_cols;

/// Rows one block of a chunked column sum sums per column at the least.
constexpr int64_t k_column_chunk_rows = 512;

/// out[c] = sum over r of x[r, c]. Block (32, 8): each thread sums every 8th row of one
/// column in double, then the 8 partials are added in a fixed order: deterministic. With
/// `partial`, the first pass over a tall matrix cut into gridDim.y chunks of `chunk_rows`
/// rows: block (tile, chunk) sums its chunk only, into partial[chunk * cols + c], and
/// column_sum_final_kernel adds the chunks (one block per 32 columns left a convolution's bias
/// gradient, 100,352 rows of 32 channels at batch 128, on one SM).
__global__ void column_sum_kernel(const float* x, int64_t rows, int64_t cols, int64_t chunk_rows,
                                  float* out, double* partial) {
  __shared__ double part[k_tile_rows][k_tile_cols];
  const int64_t first = static_cast<int64_t>(blockIdx.y) * chunk_rows;
  const int64_t last = first + chunk_rows < rows ? first + chunk_rows : rows;
  // The loop condition depends only on blockIdx, so the whole block agrees at __syncthreads.
  for (int64_t tile = blockIdx.x; tile * k_tile_cols < cols; tile += gridDim.x) {
    const int64_t c = tile * k_tile_cols + threadIdx.x;
    double acc = 0.0;
    if (c < cols)
      for (int64_t r = first + threadIdx.y; r < last; r += k_tile_rows) acc += x[r * cols + c];
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
      double total = 0.0;
      for (int i = 0; i < k_tile_rows; ++i) total += part[i][threadIdx.x];
      if (partial != nullptr)
        partial[static_cast<int64_t>(blockIdx.y) * cols + c] = total;
      else
        out[c] = static_cast<float>(total);
    }
    __syncthreads();  // part is reused by the next tile
  }
}

/// Second pass: out[c] = the sum of column c's `chunks` partials, in chunk order.
__global__ void column_sum_final_kernel(const double* partial, int64_t chunks, int64_t cols,
                                        float* out) {
  for (int64_t c = grid_start(); c < cols; c += grid_stride()) {
    double total = 0.0;
    for (int64_t k = 0; k < chunks; ++k) total += partial[k * cols + c];
    out[c] = static_cast<float>(total);
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
    // Relative to the row's maximum, as the CPU backend: best + log(sum) rounds to best's
    // precision, and past logits of about 1e5 that shifted every probability (logits of 1e7
    // gave a loss of 1, not ln 2, and a gradient whose row did not sum to 0).
    const float log_sum = logf(sum_exp), inv_sum = 1.0f / sum_exp;

    const int32_t label = labels[row];
    const bool valid = label >= 0 && label < classes;
    // An out-of-range label is a caller bug; make it show as a NaN loss, not a stray read.
    const float label_logit = valid ? x[label] : NAN;
    __syncwarp();  // every lane has read x[label] before any lane may overwrite it below
    if (lane == 0) {
      loss_total += static_cast<double>(log_sum - (label_logit - best));
      correct_total += (valid && best_index == label) ? 1.0 : 0.0;
    }
    if (dlogits != nullptr) {
      float* d = dlogits + row * classes;
      for (int64_t j = lane; j < classes; j += k_warp) {
        const float p = expf(x[j] - best) * inv_sum;
        d[j] = (p - (j == label ? 1.0f : 0.0f)) * grad_scale;
      }
    }
  }
  add_block_stats(block_loss, block_correct, lane, warp, loss_total, correct_total, stats);
}

/// One AdamW step: the CPU backend's formula (decoupled weight decay, bias-corrected moments),
/// not its order of operations (it multiplies by precomputed reciprocals and nvcc fuses
/// multiply-adds here), so the two agree to rounding, not bit for bit.
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
    // Grouped as the CPU backend groups it, x clamped as it clamps it: past |x| = 10 the
    // gradient is 1 or 0, and x * x cannot overflow into (1 - t^2) * inf = NaN.
    x = fminf(fmaxf(x, -10.0f), 10.0f);
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

/// x += bias (per column), y = f(x): bias_relu_kernel<false> and activation_forward_kernel<F>
/// in one pass, with the same roundings.
template <activation F>
__global__ void bias_activation_kernel(float* x, const float* bias, int64_t rows, int64_t cols,
                                       float* y) {
  const int64_t n = rows * cols;
  for (int64_t i = grid_start(); i < n; i += grid_stride()) {
    const float v = x[i] + bias[i % cols];
    x[i] = v;
    y[i] = activation_value<F>(v);
  }
}

/// out = a * b; out may be a or b.
__global__ void multiply_kernel(int64_t n, const float* a, const float* b, float* out) {
  for (int64_t i = grid_start(); i < n; i += grid_stride()) out[i] = a[i] * b[i];
}

/// out = a + b; out may be a or b.
__global__ void add_kernel(int64_t n, const float* a, const float* b, float* out) {
  for (int64_t i = grid_start(); i < n; i += grid_stride()) out[i] = a[i] + b[i];
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
/// elements), except with `accumulate`, which adds the value to what dx holds. RMS norm never
/// reads `mean`.
template <bool Rms>
__global__ void norm_backward_dx_kernel(const float* x, const float* gamma, const float* dy,
                                        const float* mean, const float* rstd, int64_t rows,
                                        int64_t cols, float* dx, bool accumulate) {
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
      const float v = static_cast<float>(r * (g - mean_g - xhat * mean_gx));
      dxr[j] = accumulate ? dxr[j] + v : v;
    }
  }
}

/// dgamma[c] = sum over rows of dy * xhat, dbeta[c] (if not null) = sum over rows of dy, as
/// column_sum_kernel sums: block (32, 8), each thread every 8th row of one column in double,
/// the 8 partials added in a fixed order. Deterministic; rows == 0 writes zeros. With
/// `partial` (a tall matrix, as column_sum_kernel cuts it), block (tile, chunk) sums
/// rows [chunk * chunk_rows, ...) only, into partial[chunk * cols + c] for dgamma and
/// partial[(chunks + chunk) * cols + c] for dbeta; norm_param_grad_final_kernel adds them.
template <bool Rms>
__global__ void norm_param_grad_kernel(const float* x, const float* dy, const float* mean,
                                       const float* rstd, int64_t rows, int64_t cols,
                                       int64_t chunk_rows, float* dgamma, float* dbeta,
                                       double* partial) {
  __shared__ double partial_gamma[k_tile_rows][k_tile_cols];
  __shared__ double partial_beta[k_tile_rows][k_tile_cols];
  const int64_t first = static_cast<int64_t>(blockIdx.y) * chunk_rows;
  const int64_t last = first + chunk_rows < rows ? first + chunk_rows : rows;
  for (int64_t tile = blockIdx.x; tile * k_tile_cols < cols; tile += gridDim.x) {
    const int64_t c = tile * k_tile_cols + threadIdx.x;
    double acc_gamma = 0.0;
    double acc_beta = 0.0;
    if (c < cols)
      for (int64_t r = first + threadIdx.y; r < last; r += k_tile_rows) {
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
      if (partial != nullptr) {
        partial[static_cast<int64_t>(blockIdx.y) * cols + c] = total_gamma;
        partial[static_cast<int64_t>(gridDim.y + blockIdx.y) * cols + c] = total_beta;
      } else {
        if (dgamma != nullptr) dgamma[c] = static_cast<float>(total_gamma);
        if (dbeta != nullptr) dbeta[c] = static_cast<float>(total_beta);
      }
    }
    __syncthreads();  // the partials are reused by the next tile
  }
}

/// Second pass of a chunked norm_param_grad_kernel: each column's `chunks` partials of
/// dgamma and of dbeta, in chunk order.
__global__ void norm_param_grad_final_kernel(const double* partial, int64_t chunks, int64_t cols,
                                             float* dgamma, float* dbeta) {
  for (int64_t c = grid_start(); c < cols; c += grid_stride()) {
    double gamma = 0.0, beta = 0.0;
    for (int64_t k = 0; k < chunks; ++k) {
      gamma += partial[k * cols + c];
      beta += partial[(chunks + k) * cols + c];
    }
    if (dgamma != nullptr) dgamma[c] = static_cast<float>(gamma);
    if (dbeta != nullptr) dbeta[c] = static_cast<float>(beta);
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

/// Rows of one id summed by one thread before its partial joins the id's others: short
/// enough that an id on a fifth of the rows (a space in text) still spreads over many threads.
constexpr int64_t k_embedding_piece = 32;

__global__ void iota_kernel(int32_t* x, int64_t n) {
  for (int64_t i = grid_start(); i < n; i += grid_stride()) x[i] = static_cast<int32_t>(i);
}

/// One thread per (sorted position p, column d), d fastest: where p starts a piece (the start
/// of an id's run of sorted rows, or a multiple of k_embedding_piece inside one), the thread
/// sums the piece's rows of dy in order into partial[p, d].
__global__ void embedding_piece_sum_kernel(const int32_t* keys, const int32_t* sorted_rows,
                                           const float* dy, int64_t rows, int64_t dim,
                                           float* partial) {
  const int64_t n = rows * dim;
  for (int64_t i = grid_start(); i < n; i += grid_stride()) {
    const int64_t p = i / dim;
    const int64_t d = i % dim;
    const int32_t key = keys[p];
    if (p % k_embedding_piece != 0 && keys[p - 1] == key) continue;  // inside a piece
    float s = 0.0f;
    int64_t q = p;
    do {
      s += dy[static_cast<int64_t>(sorted_rows[q]) * dim + d];
      ++q;
    } while (q < rows && q % k_embedding_piece != 0 && keys[q] == key);
    partial[i] = s;
  }
}

/// One thread per (sorted position p, column d): where p starts an id's run, the thread adds
/// the run's piece partials in order and writes the id's row of dtable. An id outside
/// [0, vocab) (a caller bug: ids are checked at load time) is skipped rather than written out
/// of bounds.
__global__ void embedding_run_sum_kernel(const int32_t* keys, const float* partial, int64_t rows,
                                         int64_t dim, int64_t vocab, float* dtable) {
  const int64_t n = rows * dim;
  for (int64_t i = grid_start(); i < n; i += grid_stride()) {
    const int64_t p = i / dim;
    const int64_t d = i % dim;
    const int32_t key = keys[p];
    if ((p > 0 && keys[p - 1] == key) || key < 0 || key >= vocab) continue;
    float s = partial[i];
    for (int64_t q = (p / k_embedding_piece + 1) * k_embedding_piece; q < rows && keys[q] == key;
         q += k_embedding_piece)
      s += partial[q * dim + d];
    dtable[static_cast<int64_t>(key) * dim + d] = s;
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

// -- rows held in registers -------------------------------------------------------------------
//
// A language model's norms and attention softmaxes run over rows of at most 1,024 columns
// (its width, its context), millions of rows a step. The kernels below give each row one
// warp that holds the row in registers, PerLane values a lane (lane l holds columns l, l + 32,
// ...), so that each value is read from device memory once and written once, with no block
// barrier: the block-per-row norm kernels above read a row three times and wait at four
// barriers a row, and the softmax kernels above read each value twice. Each computes what
// its wider counterpart computes, in the same order per lane and the same warp reductions
// (the softmaxes bit for bit; the norms differ only in how the block's partial sums were
// grouped); rows wider than 32 * 32 columns (a norm's dx: 16 * 32, measured; see its launcher)
// take the kernels above.

/// The most columns a warp holds in registers.
constexpr int64_t k_register_row_cols = 32 * k_warp;

/// Loads a row of `cols` values into a warp's registers, lane `lane` holding columns lane,
/// lane + 32, ...; zeros past the row's end.
template <int PerLane>
__device__ inline void load_row(const float* row, int lane, int64_t cols, float (&v)[PerLane]) {
#pragma unroll
  for (int i = 0; i < PerLane; ++i) {
    const int64_t j = lane + static_cast<int64_t>(i) * k_warp;
    v[i] = j < cols ? row[j] : 0.0f;
  }
}

/// Layer norm (or RMS norm) forward, one warp per row of at most 32 * PerLane columns: as
/// norm_forward_kernel. y may be x (the row is in registers before anything is written).
template <bool Rms, int PerLane>
__global__ void norm_forward_rows_kernel(const float* x, const float* gamma, const float* beta,
                                         int64_t rows, int64_t cols, float eps, float* y,
                                         float* mean_out, float* rstd_out) {
  const int lane = threadIdx.x % k_warp;
  const int warp = threadIdx.x / k_warp;
  const int64_t warps_in_grid = static_cast<int64_t>(gridDim.x) * k_warps_per_block;
  // The loop bound depends only on the warp, so all 32 lanes take part in every shuffle.
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * k_warps_per_block + warp; row < rows;
       row += warps_in_grid) {
    float v[PerLane];
    load_row(x + row * cols, lane, cols, v);
    double mean = 0.0;
    if (!Rms) {
      double acc = 0.0;
#pragma unroll
      for (int i = 0; i < PerLane; ++i) acc += v[i];  // the zeros past the row add nothing
      mean = warp_sum(acc) / static_cast<double>(cols);
    }
    double acc = 0.0;
#pragma unroll
    for (int i = 0; i < PerLane; ++i) {
      if (lane + static_cast<int64_t>(i) * k_warp < cols) {
        const double d = static_cast<double>(v[i]) - mean;
        acc += d * d;
      }
    }
    const double var = warp_sum(acc) / static_cast<double>(cols);
    const auto m = static_cast<float>(mean);
    const auto r = static_cast<float>(1.0 / sqrt(var + static_cast<double>(eps)));
    float* yr = y + row * cols;
#pragma unroll
    for (int i = 0; i < PerLane; ++i) {
      const int64_t j = lane + static_cast<int64_t>(i) * k_warp;
      if (j < cols) {
        const float xhat = Rms ? v[i] * r : (v[i] - m) * r;
        yr[j] = Rms || beta == nullptr ? xhat * gamma[j] : xhat * gamma[j] + beta[j];
      }
    }
    if (lane == 0) {
      if (mean_out != nullptr) mean_out[row] = Rms ? 0.0f : m;
      if (rstd_out != nullptr) rstd_out[row] = r;
    }
  }
}

/// dx of layer norm (or RMS norm), one warp per row of at most 32 * PerLane columns: as
/// norm_backward_dx_kernel. dx may be dy or x (the row's x and dy are in registers before
/// anything is written), except with `accumulate`.
template <bool Rms, int PerLane>
__global__ void norm_backward_dx_rows_kernel(const float* x, const float* gamma, const float* dy,
                                             const float* mean, const float* rstd, int64_t rows,
                                             int64_t cols, float* dx, bool accumulate) {
  const int lane = threadIdx.x % k_warp;
  const int warp = threadIdx.x / k_warp;
  const int64_t warps_in_grid = static_cast<int64_t>(gridDim.x) * k_warps_per_block;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * k_warps_per_block + warp; row < rows;
       row += warps_in_grid) {
    const float m = Rms ? 0.0f : mean[row];
    const float r = rstd[row];
    float xv[PerLane];
    float dyv[PerLane];
    load_row(x + row * cols, lane, cols, xv);
    load_row(dy + row * cols, lane, cols, dyv);
    double sum_g = 0.0;
    double sum_gx = 0.0;
#pragma unroll
    for (int i = 0; i < PerLane; ++i) {
      const int64_t j = lane + static_cast<int64_t>(i) * k_warp;
      if (j < cols) {
        const double g = static_cast<double>(dyv[i]) * gamma[j];  // exact in double
        const float xhat = Rms ? xv[i] * r : (xv[i] - m) * r;
        sum_g += g;
        sum_gx += g * xhat;
      }
    }
    sum_g = warp_sum(sum_g);
    sum_gx = warp_sum(sum_gx);
    const double mean_g = Rms ? 0.0 : sum_g / static_cast<double>(cols);
    const double mean_gx = sum_gx / static_cast<double>(cols);
    float* dxr = dx + row * cols;
#pragma unroll
    for (int i = 0; i < PerLane; ++i) {
      const int64_t j = lane + static_cast<int64_t>(i) * k_warp;
      if (j < cols) {
        const float g = dyv[i] * gamma[j];
        const double xhat = Rms ? xv[i] * r : (xv[i] - m) * r;
        const float v = static_cast<float>(r * (g - mean_g - xhat * mean_gx));
        dxr[j] = accumulate ? dxr[j] + v : v;
      }
    }
  }
}

/// The causal softmax in place, one warp per row of t <= 32 * PerLane columns: as
/// causal_softmax_kernel, bit for bit, reading only the row's visible columns, once, and
/// computing each exponential once.
template <int PerLane>
__global__ void causal_softmax_rows_kernel(float* s, int64_t rows, int64_t t, float scale) {
  const int lane = threadIdx.x % k_warp;
  const int warp = threadIdx.x / k_warp;
  const int64_t warps_in_grid = static_cast<int64_t>(gridDim.x) * k_warps_per_block;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * k_warps_per_block + warp; row < rows;
       row += warps_in_grid) {
    float* sr = s + row * t;
    const int64_t visible = row % t + 1;
    float v[PerLane];
    float best = -INFINITY;
#pragma unroll
    for (int i = 0; i < PerLane; ++i) {
      const int64_t j = lane + static_cast<int64_t>(i) * k_warp;
      v[i] = j < visible ? __fmul_rn(scale, sr[j]) : -INFINITY;
      best = fmaxf(best, v[i]);
    }
    best = warp_max(best);
    double total = 0.0;
#pragma unroll
    for (int i = 0; i < PerLane; ++i) {
      if (lane + static_cast<int64_t>(i) * k_warp < visible) {
        v[i] = expf(v[i] - best);
        total += v[i];
      }
    }
    const auto inv = static_cast<float>(1.0 / warp_sum(total));
#pragma unroll
    for (int i = 0; i < PerLane; ++i) {
      const int64_t j = lane + static_cast<int64_t>(i) * k_warp;
      if (j < t) sr[j] = j < visible ? v[i] * inv : 0.0f;
    }
  }
}

/// Softmax backward in place, one warp per row of at most 32 * PerLane columns: as
/// softmax_backward_kernel, bit for bit, reading p and dp once each.
template <int PerLane>
__global__ void softmax_backward_rows_kernel(const float* p, float* dp, int64_t rows, int64_t cols,
                                             float scale) {
  const int lane = threadIdx.x % k_warp;
  const int warp = threadIdx.x / k_warp;
  const int64_t warps_in_grid = static_cast<int64_t>(gridDim.x) * k_warps_per_block;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * k_warps_per_block + warp; row < rows;
       row += warps_in_grid) {
    float* dpr = dp + row * cols;
    float pv[PerLane];
    float dv[PerLane];
    load_row(p + row * cols, lane, cols, pv);
    load_row(dpr, lane, cols, dv);
    double dot = 0.0;
#pragma unroll
    for (int i = 0; i < PerLane; ++i)
      if (lane + static_cast<int64_t>(i) * k_warp < cols) dot += static_cast<double>(pv[i]) * dv[i];
    const auto d = static_cast<float>(warp_sum(dot));
#pragma unroll
    for (int i = 0; i < PerLane; ++i) {
      const int64_t j = lane + static_cast<int64_t>(i) * k_warp;
      if (j < cols) dpr[j] = scale * pv[i] * (dv[i] - d);
    }
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

// -- grids ------------------------------------------------------------------------------------

/// `blocks`, capped at one full-occupancy wave.
unsigned at_most_one_wave(launch_config launch, int64_t blocks) {
  return static_cast<unsigned>(std::min<int64_t>(blocks, launch.max_blocks));
}

/// Blocks for a grid-stride loop over n > 0 elements: enough for one element per thread,
/// at most one full-occupancy wave.
unsigned grid_for(launch_config launch, int64_t n) {
  return at_most_one_wave(launch, (n + k_block - 1) / k_block);
}

/// Blocks for a kernel with one warp per row over `rows` > 0 rows (at most one wave).
unsigned warp_row_blocks(launch_config launch, int64_t rows) {
  return at_most_one_wave(launch, (rows + k_warps_per_block - 1) / k_warps_per_block);
}

/// Calls `launch(std::integral_constant<int, N>{})` with the fewest values per lane N (4, 8,
/// 16 or up to MaxPerLane, at most 32) with which a warp holds `cols` columns in registers
/// (the *_rows_kernel kernels); false, calling nothing, for rows wider than 32 * MaxPerLane
/// columns.
template <int MaxPerLane = 32, typename Launch>
bool with_register_rows(int64_t cols, Launch&& launch) {
  static_assert(MaxPerLane == 16 || MaxPerLane == 32, "a register count the kernels take");
  if (cols <= 4 * k_warp) {
    launch(std::integral_constant<int, 4>{});
  } else if (cols <= 8 * k_warp) {
    launch(std::integral_constant<int, 8>{});
  } else if (cols <= 16 * k_warp) {
    launch(std::integral_constant<int, 16>{});
  } else if constexpr (MaxPerLane == 32) {
    if (cols > k_register_row_cols) return false;
    launch(std::integral_constant<int, 32>{});
  } else {
    return false;
  }
  return true;
}

/// Calls `f(std::true_type{})` or `f(std::false_type{})` as `value` is: a flag known only
/// at run time as a kernel's template argument.
template <typename F>
void with_flag(bool value, F&& f) {
  if (value)
    f(std::true_type{});
  else
    f(std::false_type{});
}

/// Launches a row kernel through `rows` (called as with_register_rows calls it) where a warp
/// holds `cols` columns in registers (up to 32 * MaxPerLane), else through `blocks` (a
/// kernel of another shape), and checks the launch.
template <int MaxPerLane = 32, typename Rows, typename Blocks>
void launch_by_width(int64_t cols, Rows&& rows, Blocks&& blocks) {
  if (!with_register_rows<MaxPerLane>(cols, rows)) blocks();
  GFLEX_CUDA_CHECK_LAUNCH();
}

/// Blocks for a kernel with one (k_tile_cols x k_tile_rows) block per tile of k_tile_cols
/// columns over `cols` > 0 columns (at most one wave).
unsigned column_tile_blocks(launch_config launch, int64_t cols) {
  return at_most_one_wave(launch, (cols + k_tile_cols - 1) / k_tile_cols);
}

/// How a column reduction over `rows` x `cols` (given `tile_blocks` blocks of column tiles)
/// cuts its rows: into as many chunks as the rest of a wave's blocks allow, of at least
/// k_column_chunk_rows rows, with room for `partials_per` partials per chunk and column in
/// `scratch` (`scratch_count` doubles), within the grid's y extent; every chunk has rows. One
/// chunk: no partials, the kernel writes its result.
struct row_split {
  int64_t chunks = 1;
  int64_t chunk_rows = 0;
};
row_split split_rows(launch_config launch, int64_t rows, int64_t cols, unsigned tile_blocks,
                     const double* scratch, int64_t scratch_count, int64_t partials_per) {
  row_split out{1, rows};
  if (scratch == nullptr || cols <= 0) return out;
  int64_t chunks = (rows + k_column_chunk_rows - 1) / k_column_chunk_rows;
  chunks = std::min<int64_t>(chunks, launch.max_blocks / static_cast<int64_t>(tile_blocks));
  chunks = std::min<int64_t>(chunks, scratch_count / (partials_per * cols));
  chunks = std::min<int64_t>(chunks, 65535);
  if (chunks <= 1) return out;
  out.chunk_rows = (rows + chunks - 1) / chunks;
  out.chunks = (rows + out.chunk_rows - 1) / out.chunk_rows;
  return out;
}

[[noreturn]] void throw_unknown_activation(activation f) {
  throw compute_error(gflex::error(errc::invalid_argument,
                                   "unknown activation " + std::to_string(static_cast<int>(f))));
}

}  // namespace

// -- launchers --------------------------------------------------------------------------------

void launch_fill(launch_config launch, float* x, int64_t n, float value) {
  fill_kernel<<<grid_for(launch, n), k_block, 0, launch.stream>>>(x, n, value);
  GFLEX_CUDA_CHECK_LAUNCH();
}

void launch_axpby(launch_config launch, int64_t n, float a, const float* x, float b, float* y) {
  axpby_kernel<<<grid_for(launch, n), k_block, 0, launch.stream>>>(n, a, x, b, y);
  GFLEX_CUDA_CHECK_LAUNCH();
}

__global__ void to_bf16_kernel(const float* src, int64_t rows, int64_t cols, int64_t ld,
                               __nv_bfloat16* dst) {
  const int64_t n = rows * cols;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols;
    dst[i] = __float2bfloat16_rn(src[r * ld + (i - r * cols)]);
  }
}

void launch_to_bf16(launch_config launch, const float* src, int64_t rows, int64_t cols, int64_t ld,
                    __nv_bfloat16* dst) {
  to_bf16_kernel<<<grid_for(launch, rows * cols), k_block, 0, launch.stream>>>(src, rows, cols, ld,
                                                                               dst);
  GFLEX_CUDA_CHECK_LAUNCH();
}

void launch_scale_matrix(launch_config launch, float* c, int64_t rows, int64_t cols, int64_t ldc,
                         int64_t stride_c, int64_t count, float beta) {
  scale_matrix_kernel<<<grid_for(launch, rows * cols * count), k_block, 0, launch.stream>>>(
      c, rows, cols, ldc, stride_c, count, beta);
  GFLEX_CUDA_CHECK_LAUNCH();
}

void launch_bias_relu(launch_config launch, bool relu, float* y, const float* bias, int64_t rows,
                      int64_t cols) {
  const int64_t n = rows * cols;
  if (relu) {
    bias_relu_kernel<true><<<grid_for(launch, n), k_block, 0, launch.stream>>>(y, bias, rows, cols);
  } else {
    bias_relu_kernel<false>
        <<<grid_for(launch, n), k_block, 0, launch.stream>>>(y, bias, rows, cols);
  }
  GFLEX_CUDA_CHECK_LAUNCH();
}

void launch_relu_backward(launch_config launch, float* dy, const float* y, int64_t n) {
  relu_backward_kernel<<<grid_for(launch, n), k_block, 0, launch.stream>>>(dy, y, n);
  GFLEX_CUDA_CHECK_LAUNCH();
}

void launch_column_sum(launch_config launch, const float* x, int64_t rows, int64_t cols, float* out,
                       double* scratch, int64_t scratch_count) {
  const unsigned blocks = column_tile_blocks(launch, cols);
  const row_split split = split_rows(launch, rows, cols, blocks, scratch, scratch_count, 1);
  double* partial = split.chunks > 1 ? scratch : nullptr;
  column_sum_kernel<<<dim3(blocks, static_cast<unsigned>(split.chunks)),
                      dim3(k_tile_cols, k_tile_rows), 0, launch.stream>>>(
      x, rows, cols, split.chunk_rows, out, partial);
  GFLEX_CUDA_CHECK_LAUNCH();
  if (partial == nullptr) return;
  column_sum_final_kernel<<<grid_for(launch, cols), k_block, 0, launch.stream>>>(
      partial, split.chunks, cols, out);
  GFLEX_CUDA_CHECK_LAUNCH();
}

void launch_softmax_xent(launch_config launch, const float* logits, const int32_t* labels,
                         int64_t rows, int64_t classes, float grad_scale, float* dlogits,
                         float* stats) {
  softmax_xent_kernel<<<warp_row_blocks(launch, rows), k_block, 0, launch.stream>>>(
      logits, labels, rows, classes, grad_scale, dlogits, stats);
  GFLEX_CUDA_CHECK_LAUNCH();
}

void launch_adamw(launch_config launch, float* param, const float* grad, float* m, float* v,
                  int64_t n, float lr, float beta1, float beta2, float eps, float weight_decay,
                  float bias_correction1, float bias_correction2) {
  adamw_kernel<<<grid_for(launch, n), k_block, 0, launch.stream>>>(
      param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, bias_correction1,
      bias_correction2);
  GFLEX_CUDA_CHECK_LAUNCH();
}

unsigned launch_reduce_partial(launch_config launch, bool square, const float* x, int64_t n,
                               double* partial) {
  const unsigned blocks = grid_for(launch, n);
  if (square) {
    reduce_partial_kernel<true><<<blocks, k_block, 0, launch.stream>>>(x, n, partial);
  } else {
    reduce_partial_kernel<false><<<blocks, k_block, 0, launch.stream>>>(x, n, partial);
  }
  GFLEX_CUDA_CHECK_LAUNCH();
  return blocks;
}

void launch_reduce_final(launch_config launch, const double* partial, int count, double* out) {
  reduce_final_kernel<<<1, k_block, 0, launch.stream>>>(partial, count, out);
  GFLEX_CUDA_CHECK_LAUNCH();
}

void launch_max_pool2_forward(launch_config launch, const float* x, int64_t height, int64_t width,
                              int64_t channels, int64_t out_h, int64_t out_w, int64_t n, float* y,
                              int32_t* argmax) {
  max_pool2_forward_kernel<<<grid_for(launch, n), k_block, 0, launch.stream>>>(
      x, height, width, channels, out_h, out_w, n, y, argmax);
  GFLEX_CUDA_CHECK_LAUNCH();
}

void launch_max_pool2_backward(launch_config launch, const float* dy, const int32_t* argmax,
                               int64_t sample_in, int64_t sample_out, int64_t n, float* dx) {
  max_pool2_backward_kernel<<<grid_for(launch, n), k_block, 0, launch.stream>>>(
      dy, argmax, sample_in, sample_out, n, dx);
  GFLEX_CUDA_CHECK_LAUNCH();
}

void launch_quantize_int8(launch_config launch, const float* x, float* residual, int64_t n,
                          int64_t block, int64_t blocks, int8_t* q, float* scales) {
  const unsigned grid = at_most_one_wave(launch, blocks);
  if (residual != nullptr) {
    quantize_int8_kernel<true>
        <<<grid, k_block, 0, launch.stream>>>(x, residual, n, block, blocks, q, scales);
  } else {
    quantize_int8_kernel<false>
        <<<grid, k_block, 0, launch.stream>>>(x, residual, n, block, blocks, q, scales);
  }
  GFLEX_CUDA_CHECK_LAUNCH();
}

void launch_dequantize_int8(launch_config launch, const int8_t* q, const float* scales, int64_t n,
                            int64_t block, float* out) {
  dequantize_int8_kernel<<<grid_for(launch, n), k_block, 0, launch.stream>>>(q, scales, n, block,
                                                                             out);
  GFLEX_CUDA_CHECK_LAUNCH();
}

void launch_pool2d_forward(launch_config launch, bool max, const float* x, int64_t height,
                           int64_t width, int64_t channels, int64_t window, int64_t stride,
                           int64_t out_h, int64_t out_w, int64_t n, float* y, int32_t* argmax) {
  if (max) {
    pool2d_forward_kernel<true><<<grid_for(launch, n), k_block, 0, launch.stream>>>(
        x, height, width, channels, window, stride, out_h, out_w, n, y, argmax);
  } else {
    pool2d_forward_kernel<false><<<grid_for(launch, n), k_block, 0, launch.stream>>>(
        x, height, width, channels, window, stride, out_h, out_w, n, y, nullptr);
  }
  GFLEX_CUDA_CHECK_LAUNCH();
}

void launch_pool2d_backward(launch_config launch, bool max, const float* dy, const int32_t* argmax,
                            int64_t height, int64_t width, int64_t channels, int64_t window,
                            int64_t stride, int64_t out_h, int64_t out_w, int64_t n, float* dx) {
  if (max) {
    pool2d_backward_kernel<true><<<grid_for(launch, n), k_block, 0, launch.stream>>>(
        dy, argmax, height, width, channels, window, stride, out_h, out_w, n, dx);
  } else {
    pool2d_backward_kernel<false><<<grid_for(launch, n), k_block, 0, launch.stream>>>(
        dy, nullptr, height, width, channels, window, stride, out_h, out_w, n, dx);
  }
  GFLEX_CUDA_CHECK_LAUNCH();
}

void launch_activation_forward(launch_config launch, activation f, const float* x, float* y,
                               int64_t n) {
  switch (f) {
    case activation::relu:
      activation_forward_kernel<activation::relu>
          <<<grid_for(launch, n), k_block, 0, launch.stream>>>(x, y, n);
      break;
    case activation::gelu:
      activation_forward_kernel<activation::gelu>
          <<<grid_for(launch, n), k_block, 0, launch.stream>>>(x, y, n);
      break;
    case activation::tanh:
      activation_forward_kernel<activation::tanh>
          <<<grid_for(launch, n), k_block, 0, launch.stream>>>(x, y, n);
      break;
    default:
      throw_unknown_activation(f);
  }
  GFLEX_CUDA_CHECK_LAUNCH();
}

void launch_activation_backward(launch_config launch, activation f, const float* x, const float* dy,
                                float* dx, int64_t n) {
  switch (f) {
    case activation::relu:
      activation_backward_kernel<activation::relu>
          <<<grid_for(launch, n), k_block, 0, launch.stream>>>(x, dy, dx, n);
      break;
    case activation::gelu:
      activation_backward_kernel<activation::gelu>
          <<<grid_for(launch, n), k_block, 0, launch.stream>>>(x, dy, dx, n);
      break;
    case activation::tanh:
      activation_backward_kernel<activation::tanh>
          <<<grid_for(launch, n), k_block, 0, launch.stream>>>(x, dy, dx, n);
      break;
    default:
      throw_unknown_activation(f);
  }
  GFLEX_CUDA_CHECK_LAUNCH();
}

void launch_bias_activation(launch_config launch, activation f, float* x, const float* bias,
                            int64_t rows, int64_t cols, float* y) {
  const unsigned grid = grid_for(launch, rows * cols);
  switch (f) {
    case activation::relu:
      bias_activation_kernel<activation::relu>
          <<<grid, k_block, 0, launch.stream>>>(x, bias, rows, cols, y);
      break;
    case activation::gelu:
      bias_activation_kernel<activation::gelu>
          <<<grid, k_block, 0, launch.stream>>>(x, bias, rows, cols, y);
      break;
    case activation::tanh:
      bias_activation_kernel<activation::tanh>
          <<<grid, k_block, 0, launch.stream>>>(x, bias, rows, cols, y);
      break;
    default:
      throw_unknown_activation(f);
  }
  GFLEX_CUDA_CHECK_LAUNCH();
}

void launch_multiply(launch_config launch, int64_t n, const float* a, const float* b, float* out) {
  multiply_kernel<<<grid_for(launch, n), k_block, 0, launch.stream>>>(n, a, b, out);
  GFLEX_CUDA_CHECK_LAUNCH();
}

void launch_add(launch_config launch, int64_t n, const float* a, const float* b, float* out) {
  add_kernel<<<grid_for(launch, n), k_block, 0, launch.stream>>>(n, a, b, out);
  GFLEX_CUDA_CHECK_LAUNCH();
}

void launch_dropout_mask(launch_config launch, int64_t n, float rate, float keep, uint64_t seed,
                         float* mask) {
  dropout_mask_kernel<<<grid_for(launch, n), k_block, 0, launch.stream>>>(n, rate, keep, seed,
                                                                          mask);
  GFLEX_CUDA_CHECK_LAUNCH();
}

void launch_norm_forward(launch_config launch, bool rms, const float* x, const float* gamma,
                         const float* beta, int64_t rows, int64_t cols, float eps, float* y,
                         float* mean_out, float* rstd_out) {
  with_flag(rms, [&](auto rms_flag) {
    constexpr bool r = decltype(rms_flag)::value;
    const float* b = r ? nullptr : beta;  // RMS norm has no shift
    launch_by_width(
        cols,
        [&](auto per_lane) {
          norm_forward_rows_kernel<r, decltype(per_lane)::value>
              <<<warp_row_blocks(launch, rows), k_block, 0, launch.stream>>>(
                  x, gamma, b, rows, cols, eps, y, mean_out, rstd_out);
        },
        [&] {
          norm_forward_kernel<r><<<at_most_one_wave(launch, rows), k_block, 0, launch.stream>>>(
              x, gamma, b, rows, cols, eps, y, mean_out, rstd_out);
        });
  });
}

void launch_norm_backward_dx(launch_config launch, bool rms, const float* x, const float* gamma,
                             const float* dy, const float* mean, const float* rstd, int64_t rows,
                             int64_t cols, float* dx, bool accumulate) {
  // In registers up to 512 columns: on an H200 the warp per row took a language model's
  // norm_backward from 2.39 to 1.72 ms at 256 columns, but from 3.85 to 5.19 ms at 768 (32
  // values a lane of x and of dy, and the double sums: more than a thread's registers
  // hold), where the block per row stays.
  with_flag(rms, [&](auto rms_flag) {
    constexpr bool r = decltype(rms_flag)::value;
    const float* m = r ? nullptr : mean;  // RMS norm has no mean
    launch_by_width<16>(
        cols,
        [&](auto per_lane) {
          norm_backward_dx_rows_kernel<r, decltype(per_lane)::value>
              <<<warp_row_blocks(launch, rows), k_block, 0, launch.stream>>>(
                  x, gamma, dy, m, rstd, rows, cols, dx, accumulate);
        },
        [&] {
          norm_backward_dx_kernel<r><<<at_most_one_wave(launch, rows), k_block, 0, launch.stream>>>(
              x, gamma, dy, m, rstd, rows, cols, dx, accumulate);
        });
  });
}

void launch_norm_param_grad(launch_config launch, bool rms, const float* x, const float* dy,
                            const float* mean, const float* rstd, int64_t rows, int64_t cols,
                            float* dgamma, float* dbeta, double* scratch, int64_t scratch_count) {
  const unsigned tile_blocks = column_tile_blocks(launch, cols);
  // Two partials (dgamma's, dbeta's) per chunk and column.
  const row_split split = split_rows(launch, rows, cols, tile_blocks, scratch, scratch_count, 2);
  double* partial = split.chunks > 1 ? scratch : nullptr;
  const dim3 grid(tile_blocks, static_cast<unsigned>(split.chunks));
  if (rms) {
    norm_param_grad_kernel<true><<<grid, dim3(k_tile_cols, k_tile_rows), 0, launch.stream>>>(
        x, dy, nullptr, rstd, rows, cols, split.chunk_rows, dgamma, nullptr, partial);
  } else {
    norm_param_grad_kernel<false><<<grid, dim3(k_tile_cols, k_tile_rows), 0, launch.stream>>>(
        x, dy, mean, rstd, rows, cols, split.chunk_rows, dgamma, dbeta, partial);
  }
  GFLEX_CUDA_CHECK_LAUNCH();
  if (partial == nullptr) return;
  norm_param_grad_final_kernel<<<grid_for(launch, cols), k_block, 0, launch.stream>>>(
      partial, split.chunks, cols, dgamma, rms ? nullptr : dbeta);
  GFLEX_CUDA_CHECK_LAUNCH();
}

void launch_embedding_forward(launch_config launch, const int32_t* ids, const float* table,
                              int64_t rows, int64_t dim, float* y) {
  embedding_forward_kernel<<<grid_for(launch, rows * dim), k_block, 0, launch.stream>>>(
      ids, table, rows, dim, y);
  GFLEX_CUDA_CHECK_LAUNCH();
}

namespace {

/// Where launch_embedding_backward's buffers lie in its workspace, each 256-byte aligned.
struct embedding_workspace {
  size_t keys = 0, rows_in = 0, rows_out = 0, partial = 0, sort = 0, sort_bytes = 0, total = 0;
};

embedding_workspace embedding_layout(int64_t rows, int64_t dim) {
  if (rows > INT32_MAX)
    throw compute_error(
        gflex::error(errc::invalid_argument, "embedding_backward: " + std::to_string(rows) +
                                                 " rows, more than a radix sort takes (2^31 - 1)"));
  auto aligned = [](size_t bytes) { return (bytes + 255) / 256 * 256; };
  embedding_workspace w;
  const size_t ids = aligned(static_cast<size_t>(rows) * sizeof(int32_t));
  w.rows_in = w.keys + ids;
  w.rows_out = w.rows_in + ids;
  w.partial = w.rows_out + ids;
  w.sort = w.partial + aligned(static_cast<size_t>(rows * dim) * sizeof(float));
  GFLEX_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, w.sort_bytes, static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
      static_cast<int>(rows)));
  w.total = w.sort + aligned(w.sort_bytes);
  return w;
}

}  // namespace

size_t embedding_backward_workspace(int64_t rows, int64_t dim) {
  return embedding_layout(rows, dim).total;
}

void launch_embedding_backward(launch_config launch, const int32_t* ids, const float* dy,
                               int64_t rows, int64_t dim, int64_t vocab, float* dtable,
                               void* workspace, size_t workspace_bytes) {
  const embedding_workspace w = embedding_layout(rows, dim);
  if (workspace_bytes < w.total)
    throw compute_error(
        gflex::error(errc::invalid_argument, "embedding_backward: a workspace of " +
                                                 std::to_string(workspace_bytes) + " bytes, " +
                                                 std::to_string(w.total) + " needed"));
  auto* base = static_cast<char*>(workspace);
  auto* keys = reinterpret_cast<int32_t*>(base + w.keys);
  auto* rows_in = reinterpret_cast<int32_t*>(base + w.rows_in);
  auto* rows_out = reinterpret_cast<int32_t*>(base + w.rows_out);
  auto* partial = reinterpret_cast<float*>(base + w.partial);
  iota_kernel<<<grid_for(launch, rows), k_block, 0, launch.stream>>>(rows_in, rows);
  GFLEX_CUDA_CHECK_LAUNCH();
  // Stable: an id's rows stay in row order. All 32 bits, so that a stray negative id sorts
  // apart (it is skipped below) instead of aliasing a valid one.
  size_t sort_bytes = w.sort_bytes;
  GFLEX_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(base + w.sort, sort_bytes, ids, keys, rows_in,
                                                   rows_out, static_cast<int>(rows), 0, 32,
                                                   launch.stream));
  embedding_piece_sum_kernel<<<grid_for(launch, rows * dim), k_block, 0, launch.stream>>>(
      keys, rows_out, dy, rows, dim, partial);
  GFLEX_CUDA_CHECK_LAUNCH();
  embedding_run_sum_kernel<<<grid_for(launch, rows * dim), k_block, 0, launch.stream>>>(
      keys, partial, rows, dim, vocab, dtable);
  GFLEX_CUDA_CHECK_LAUNCH();
}

void launch_causal_softmax(launch_config launch, float* s, int64_t rows, int64_t t, float scale) {
  launch_by_width(
      t,
      [&](auto per_lane) {
        constexpr int n = decltype(per_lane)::value;
        causal_softmax_rows_kernel<n>
            <<<warp_row_blocks(launch, rows), k_block, 0, launch.stream>>>(s, rows, t, scale);
      },
      [&] {
        causal_softmax_kernel<<<warp_row_blocks(launch, rows), k_block, 0, launch.stream>>>(
            s, rows, t, scale);
      });
}

void launch_softmax_backward(launch_config launch, const float* p, float* dp, int64_t rows,
                             int64_t cols, float scale) {
  launch_by_width(
      cols,
      [&](auto per_lane) {
        constexpr int n = decltype(per_lane)::value;
        softmax_backward_rows_kernel<n>
            <<<warp_row_blocks(launch, rows), k_block, 0, launch.stream>>>(p, dp, rows, cols,
                                                                           scale);
      },
      [&] {
        softmax_backward_kernel<<<warp_row_blocks(launch, rows), k_block, 0, launch.stream>>>(
            p, dp, rows, cols, scale);
      });
}

void launch_mse_onehot(launch_config launch, const float* y, const int32_t* labels, int64_t rows,
                       int64_t cols, float grad_scale, float* dy, float* stats) {
  mse_onehot_kernel<<<warp_row_blocks(launch, rows), k_block, 0, launch.stream>>>(
      y, labels, rows, cols, grad_scale, dy, stats);
  GFLEX_CUDA_CHECK_LAUNCH();
}

}  // namespace gflex::kernels::detail
