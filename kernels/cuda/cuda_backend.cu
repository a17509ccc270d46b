/// @file
/// The CUDA backend: cuBLAS for gemm, own kernels for everything else.
///
/// Design:
/// - One non-blocking stream per backend, and one cuBLAS handle bound to it. Every operation
///   is enqueued on that stream, so operations run in the order they were called and only
///   `download`, `synchronize`, `sum` and `sum_squares` wait. Non-blocking, because the
///   legacy default stream would serialise us with every other library in the process.
/// - cudaSetDevice(ordinal) at the start of every public operation: the current device is per
///   host thread, and the actor layer may call a backend from a different thread than the one
///   that built it (one thread at a time, but not always the same one). The call is cheap.
/// - Memory comes from the device's stream-ordered pool (cudaMallocAsync) where the device
///   supports it, so a training step's temporaries cost no device synchronisation. A tensor's
///   deleter frees on the backend's stream; the stream is shared with the deleters so that a
///   tensor may outlive the backend that allocated it.
/// - Elementwise kernels use grid-stride loops with 256 threads per block and at most one
///   full-occupancy wave of blocks (SMs x resident blocks per SM): more blocks only add
///   scheduling, fewer leave SMs idle. 64-bit indices throughout; tensors may exceed 2^31.
/// - Reductions are two-pass (per-block partials in a fixed order, then one block) rather
///   than atomics, so `sum`, `sum_squares` and `column_sum` are deterministic run to run.
///   Only softmax_xent's statistics use float atomics, as its interface adds into `stats`.
/// - gemm is exact FP32: CUBLAS_DEFAULT_MATH, no TF32, so results match the CPU backend to
///   FP32 rounding.

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "cuda_check.hpp"
#include "gflex/kernels/backend.hpp"

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

/// C[r, c] *= beta for an m x n row-major block with leading dimension ldc; beta == 0 writes
/// zeros without reading C. This is gemm with k == 0.
__global__ void scale_matrix_kernel(float* c, int64_t rows, int64_t cols, int64_t ldc, float beta) {
  const int64_t n = rows * cols;
  for (int64_t i = grid_start(); i < n; i += grid_stride()) {
    float& e = c[(i / cols) * ldc + i % cols];
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

  /// Frees memory from `allocate`, ordered after all work enqueued so far. Never throws (it
  /// runs in a deleter); a failure can only leak, and is cleared so that it does not surface
  /// as an unrelated launch error later.
  void free(void* memory) const noexcept {
    device_guard guard(ordinal_);
    const cudaError_t status = pooled_ ? cudaFreeAsync(memory, stream_) : cudaFree(memory);
    if (status != cudaSuccess) (void)cudaGetLastError();
  }

 private:
  int ordinal_;
  bool pooled_;
  cudaStream_t stream_ = nullptr;
};

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

  // -- memory ---------------------------------------------------------------------------------

  tensor allocate(shape_t shape, dtype type) override {
    auto numel = checked_numel(shape);
    if (!numel) throw compute_error(numel.error());
    const size_t bytes = static_cast<size_t>(*numel) * size_of(type);
    if (bytes == 0) return tensor::adopt(std::move(shape), type, where(), nullptr);
    activate();
    void* memory = nullptr;
    const cudaError_t status = streams_->pooled()
                                   ? cudaMallocAsync(&memory, bytes, streams_->stream())
                                   : cudaMalloc(&memory, bytes);
    if (status != cudaSuccess) {
      const std::string what = "allocating " + std::to_string(bytes) + " bytes for " +
                               to_string(shape) + " " + to_string(type) +
                               " on cuda:" + std::to_string(ordinal_);
      detail::throw_cuda_error(status, what.c_str(), __FILE__, __LINE__);
    }
    std::shared_ptr<stream_owner> owner = streams_;
    return tensor::adopt(
        std::move(shape), type, where(),
        std::shared_ptr<void>(memory, [owner](void* p) noexcept { owner->free(p); }));
  }

  void upload(const void* src, void* dst, size_t count) override {
    if (count == 0) return;
    activate();
    GFLEX_CUDA_CHECK(cudaMemcpyAsync(dst, src, count, cudaMemcpyHostToDevice, stream()));
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
      scale_matrix_kernel<<<grid_for(m * n), k_block, 0, stream()>>>(c, m, n, ldc, beta);
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
    GFLEX_CUBLAS_CHECK(cublasSgemm(blas_, op_b, op_a, static_cast<int>(n), static_cast<int>(m),
                                   static_cast<int>(k), &alpha, b, static_cast<int>(ldb), a,
                                   static_cast<int>(lda), &beta, c, static_cast<int>(ldc)));
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
    // Exact FP32: TF32 would make gemm disagree with the CPU backend in the 4th digit.
    GFLEX_CUBLAS_CHECK(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH));
    // max_blocks_ partials, then the final sum.
    GFLEX_CUDA_CHECK(cudaMalloc(&reduce_buffer_, sizeof(double) * (max_blocks_ + 1)));
  }

  /// Frees what init() made, in reverse order; safe on a partly built backend. Never throws.
  void release() noexcept {
    device_guard guard(ordinal_);
    if (reduce_buffer_ != nullptr && cudaFree(reduce_buffer_) != cudaSuccess)
      (void)cudaGetLastError();
    reduce_buffer_ = nullptr;
    if (blas_ != nullptr) (void)cublasDestroy(blas_);
    blas_ = nullptr;
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
  std::shared_ptr<stream_owner> streams_;
  cublasHandle_t blas_ = nullptr;
  double* reduce_buffer_ = nullptr;  ///< Device scratch for sum / sum_squares.
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
