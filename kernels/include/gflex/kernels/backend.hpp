#pragma once
/// @file
/// The compute backend interface: every numeric operation a workload needs, implemented
/// once on the CPU (OpenBLAS and plain loops) and once in CUDA (cuBLAS and own kernels).
///
/// Conventions: matrices are row-major; pointers passed to an operation point into memory
/// of the backend's own device (host memory for the CPU backend, device memory for CUDA),
/// allocated with `allocate`. Operations are enqueued in order on the backend's single
/// stream; only `download`, `synchronize` and the functions documented as synchronising wait
/// for them. A backend is used by one thread at a time.

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

#include "gflex/runtime/error.hpp"
#include "gflex/runtime/precision.hpp"
#include "gflex/runtime/tensor.hpp"

namespace gflex::kernels {

/// Hyper-parameters of AdamW (decoupled weight decay, Loshchilov & Hutter).
struct adamw_config {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  /// Plain SGD instead: p -= lr * g, no moments and no decay (the synchronous data-parallel
  /// baseline runs one such step per round).
  bool plain_sgd = false;
};

/// Elementwise activations of model graphs (GELU in its tanh approximation).
enum class activation : uint8_t { relu = 0, gelu = 1, tanh = 2 };

/// The geometry of a 2-D convolution. Activations are NHWC ([batch, height, width,
/// channels], channels fastest: a bias or ReLU over channels is a row-wise operation on
/// [batch*height*width, channels]); filters are [out_channels, kernel_h, kernel_w,
/// in_channels] (cuDNN's NHWC filter layout, "KRSC"). Zero padding of pad_h / pad_w.
struct conv2d_geometry {
  int64_t batch = 0;
  int64_t height = 0;
  int64_t width = 0;
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  int64_t kernel_h = 0;
  int64_t kernel_w = 0;
  int64_t pad_h = 0;
  int64_t pad_w = 0;
  int64_t stride = 1;  ///< The step between output pixels, in both directions.

  int64_t out_height() const { return (height + 2 * pad_h - kernel_h) / stride + 1; }
  int64_t out_width() const { return (width + 2 * pad_w - kernel_w) / stride + 1; }
  /// Values per filter: kernel_h * kernel_w * in_channels.
  int64_t patch() const { return kernel_h * kernel_w * in_channels; }
  /// Whether every extent is positive and the output is not empty.
  bool valid() const;
};

/// A device failure inside a backend operation (a CUDA error, out of device memory). The
/// operations return nothing so that they can be enqueued cheaply; a failure is thrown as
/// this exception and caught where the work was started (the trainer, a worker actor), which
/// turns it back into `err`.
class compute_error : public std::runtime_error {
 public:
  explicit compute_error(gflex::error err)
      : std::runtime_error(err.message()), err_(std::move(err)) {}
  const gflex::error& err() const noexcept { return err_; }

 private:
  gflex::error err_;
};

/// Work a backend recorded and can enqueue again as one launch (a CUDA graph): the same
/// operations on the same addresses with the same arguments.
class recorded_work {
 public:
  virtual ~recorded_work() = default;
};

/// One device's compute. See the file comment for the conventions.
class backend {
 public:
  virtual ~backend() = default;

  /// The device this backend computes on.
  virtual device where() const = 0;
  /// A description for logs and benchmarks ("cpu: OpenBLAS, 2 threads").
  virtual std::string describe() const = 0;
  /// The backend's CUDA stream (a cudaStream_t) for libraries that enqueue on it (NCCL);
  /// null for the CPU backend.
  virtual void* native_stream() const noexcept { return nullptr; }

  // -- memory ---------------------------------------------------------------------------------

  /// A tensor in this backend's memory, uninitialised.
  virtual tensor allocate(shape_t shape, dtype type) = 0;
  /// Copies `count` bytes from host memory into backend memory (asynchronous where the
  /// device allows; `src` must stay valid until the next synchronisation).
  virtual void upload(const void* src, void* dst, size_t count) = 0;
  /// Copies `count` bytes from backend memory to host memory and waits for it.
  virtual void download(const void* src, void* dst, size_t count) = 0;
  /// Waits until every enqueued operation has finished.
  virtual void synchronize() = 0;
  /// x[i] = value for i < n.
  virtual void fill(float* x, int64_t n, float value) = 0;

  // -- dense algebra --------------------------------------------------------------------------

  /// C[m,n] = alpha * op(A) * op(B) + beta * C with op(A) [m,k], op(B) [k,n], all row-major
  /// with leading dimensions lda, ldb, ldc.
  virtual void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                    const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                    int64_t ldc) = 0;

  /// y = a * x + b * y, elementwise over n values; with b == 0, y is not read.
  virtual void axpby(int64_t n, float a, const float* x, float b, float* y) = 0;

  // -- layers ---------------------------------------------------------------------------------

  /// y[r, c] += bias[c], then y = max(y, 0) if `relu`: the epilogue of a dense layer. A NaN
  /// stays NaN (a diverging model shows it in its loss on every backend).
  virtual void bias_relu_forward(float* y, const float* bias, int64_t rows, int64_t cols,
                                 bool relu) = 0;
  /// dy[i] = 0 where y[i] is not > 0 (NaN included): ReLU's backward pass, using the layer's
  /// output.
  virtual void relu_backward(float* dy, const float* y, int64_t n) = 0;
  /// out[c] = sum over r of x[r, c]: the bias gradient of a dense layer.
  virtual void column_sum(const float* x, int64_t rows, int64_t cols, float* out) = 0;

  /// Softmax cross-entropy over `rows` rows of `classes` logits with integer labels.
  /// Adds the summed loss to stats[0] and the number of rows whose arg-max equals the label
  /// to stats[1]. If `dlogits` is not null, writes (softmax - onehot) * grad_scale there.
  /// Labels outside [0, classes) are a caller bug; workloads validate labels at load time.
  virtual void softmax_xent(const float* logits, const int32_t* labels, int64_t rows,
                            int64_t classes, float grad_scale, float* dlogits, float* stats) = 0;

  // -- convolutional layers -----------------------------------------------------------------

  /// y = x (*) w for the geometry `g`: x [N,H,W,C], w [K,R,S,C], y [N,OH,OW,K] (overwritten).
  virtual void conv2d_forward(const conv2d_geometry& g, const float* x, const float* w,
                              float* y) = 0;
  /// dx = dLoss/dx from dy [N,OH,OW,K] and w (overwritten, [N,H,W,C]).
  virtual void conv2d_backward_data(const conv2d_geometry& g, const float* dy, const float* w,
                                    float* dx) = 0;
  /// dw = dLoss/dw from x and dy (overwritten, [K,R,S,C]).
  virtual void conv2d_backward_filter(const conv2d_geometry& g, const float* x, const float* dy,
                                      float* dw) = 0;

  /// 2x2 max pooling with stride 2 over NHWC x [batch, height, width, channels]: y is
  /// [batch, height/2, width/2, channels] (an odd last row or column is dropped). `argmax`
  /// (one int32 per output) records the offset of the winning input within its sample, the
  /// first of equal values in row-major window order.
  virtual void max_pool2_forward(const float* x, int64_t batch, int64_t height, int64_t width,
                                 int64_t channels, float* y, int32_t* argmax) = 0;
  /// dx (overwritten, x's shape) = dy routed to the inputs `argmax` names, zero elsewhere.
  virtual void max_pool2_backward(const float* dy, const int32_t* argmax, int64_t batch,
                                  int64_t height, int64_t width, int64_t channels, float* dx) = 0;

  // -- layers of user-defined models (model_graph) -----------------------------------------

  /// General 2-D pooling over NHWC x [batch, height, width, channels]: windows of
  /// `window` x `window` every `stride` pixels, no padding; y is [batch, (height - window) /
  /// stride + 1, (width - window) / stride + 1, channels]. Max pooling records in `argmax`
  /// (one int32 per output) the offset of the winner within its sample, the first of equal
  /// values in row-major window order; average pooling ignores `argmax` (may be null).
  virtual void pool2d_forward(bool max, const float* x, int64_t batch, int64_t height,
                              int64_t width, int64_t channels, int64_t window, int64_t stride,
                              float* y, int32_t* argmax) = 0;
  /// dx (overwritten, x's shape) from dy: max pooling routes each dy to its argmax, average
  /// pooling spreads dy / window^2 over its window (overlapping windows add up).
  virtual void pool2d_backward(bool max, const float* dy, const int32_t* argmax, int64_t batch,
                               int64_t height, int64_t width, int64_t channels, int64_t window,
                               int64_t stride, float* dx) = 0;

  /// y = f(x) elementwise over n values (y may be x).
  virtual void activation_forward(activation f, const float* x, float* y, int64_t n) = 0;
  /// x[r, c] += bias[c], then y = f(x), over `rows` rows of `cols` values in one pass: a dense
  /// or convolutional layer's bias and the activation after it, x keeping the activation's
  /// input for its backward pass (y must not alias x). The same values as bias_relu_forward
  /// without the ReLU followed by activation_forward.
  virtual void bias_activation_forward(activation f, float* x, const float* bias, int64_t rows,
                                       int64_t cols, float* y) = 0;
  /// dx = dy * f'(x) elementwise, from the activation's input x (dx may be dy).
  virtual void activation_backward(activation f, const float* x, const float* dy, float* dx,
                                   int64_t n) = 0;

  /// out[i] = a[i] * b[i] (out may be a or b).
  virtual void multiply(int64_t n, const float* a, const float* b, float* out) = 0;
  /// out[i] = a[i] + b[i] (out may be a or b): a residual connection in one pass.
  virtual void add(int64_t n, const float* a, const float* b, float* out) = 0;
  /// Inverted dropout's mask: mask[i] = 0 with probability `rate`, else 1 / (1 - rate), from a
  /// counter-based hash of (seed, i), so every backend draws the same mask.
  virtual void dropout_mask(int64_t n, float rate, uint64_t seed, float* mask) = 0;

  /// Normalises each of `rows` rows of `cols` values: layer norm y = (x - mean) * rstd *
  /// gamma + beta, or RMS norm (`rms`, no mean and no beta: beta may be null) y = x * rstd *
  /// gamma with rstd = 1 / sqrt(mean(x^2) + eps). Saves mean (0 for RMS) and rstd per row for
  /// the backward pass.
  virtual void norm_forward(bool rms, const float* x, const float* gamma, const float* beta,
                            int64_t rows, int64_t cols, float eps, float* y, float* mean,
                            float* rstd) = 0;
  /// dx from dy and the saved statistics, overwritten or, with `accumulate`, added to what
  /// dx holds (a residual stream's gradient: dx + value rounds as one addition, as adding a
  /// separate result would); dgamma and dbeta (overwritten; dbeta null for RMS) are the
  /// parameter gradients summed over the rows.
  virtual void norm_backward(bool rms, const float* x, const float* gamma, const float* dy,
                             const float* mean, const float* rstd, int64_t rows, int64_t cols,
                             float* dx, float* dgamma, float* dbeta, bool accumulate) = 0;

  /// y[r, :] = table[ids[r], :] for `rows` ids, rows of `dim` values. Ids are checked at load
  /// time to be below the table's row count.
  virtual void embedding_forward(const int32_t* ids, const float* table, int64_t rows, int64_t dim,
                                 float* y) = 0;
  /// dtable (overwritten, [vocab, dim]) = sum over r with ids[r] == v of dy[r, :].
  virtual void embedding_backward(const int32_t* ids, const float* dy, int64_t rows, int64_t dim,
                                  int64_t vocab, float* dtable) = 0;

  /// In place over `count` square [t, t] score matrices: s = softmax(scale * s) per row with a
  /// causal mask (row i sees columns 0..i; the rest become 0).
  virtual void causal_softmax_forward(float* s, int64_t count, int64_t t, float scale) = 0;
  /// In place over `rows` rows of `cols` probabilities p: dp becomes the gradient of the
  /// softmax's input, p * (dp - sum(p * dp)), times `scale`.
  virtual void softmax_backward(const float* p, float* dp, int64_t rows, int64_t cols,
                                float scale) = 0;

  /// Whether fused_attention_forward and _backward take heads of `head_dim` values at the
  /// current precision. The CPU's runs row by row in FP32 (about as fast as composing
  /// attention from the GEMMs and the softmax below, without the [t, t] probabilities); the CUDA
  /// backend's flash-attention kernels multiply in bf16 on tensor cores, so only at
  /// math_precision::bf16 there.
  virtual bool fused_attention(int64_t head_dim) const {
    (void)head_dim;
    return false;
  }
  /// Causal multi-head self-attention in one pass, never holding the [t, t] probabilities:
  /// per sample and head, ctx = softmax(scale * Q K^T, causal) V, where Q, K and V are the
  /// head's column block (d / heads wide) of the first, second and third d columns of qkv
  /// ([batch, t, 3d]) and ctx ([batch, t, d], overwritten) takes the same block. lse
  /// ([batch, heads, t], overwritten) keeps each row's log-sum-exp of its scaled scores for
  /// the backward pass. Only where fused_attention(d / heads); elsewhere it throws
  /// compute_error.
  virtual void fused_attention_forward(const float* qkv, int64_t batch, int64_t t, int64_t d,
                                       int64_t heads, float scale, float* ctx, float* lse);
  /// dqkv ([batch, t, 3d], overwritten) from dctx, given the forward's qkv, ctx and lse: the
  /// probabilities are computed again from the scores rather than read.
  virtual void fused_attention_backward(const float* qkv, const float* ctx, const float* lse,
                                        const float* dctx, int64_t batch, int64_t t, int64_t d,
                                        int64_t heads, float scale, float* dqkv);

  /// `count` GEMMs as gemm() does them, the i-th on a + i * stride_a, b + i * stride_b and
  /// c + i * stride_c (cuBLAS's strided batched GEMM; the CPU loops).
  virtual void gemm_strided_batched(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                                    float alpha, const float* a, int64_t lda, int64_t stride_a,
                                    const float* b, int64_t ldb, int64_t stride_b, float beta,
                                    float* c, int64_t ldc, int64_t stride_c, int64_t count) = 0;

  /// Mean squared error of `rows` rows of `cols` predictions against one-hot labels: adds
  /// the summed per-row squared error to stats[0] and the rows whose arg-max is the label to
  /// stats[1]; if `dy` is not null writes 2 (y - onehot) * grad_scale there.
  virtual void mse_onehot(const float* y, const int32_t* labels, int64_t rows, int64_t cols,
                          float grad_scale, float* dy, float* stats) = 0;

  /// From now on GEMMs and convolutions round as `p` allows (see math_precision).
  virtual void set_precision(math_precision p) = 0;
  virtual math_precision precision() const = 0;

  // -- update compression ---------------------------------------------------------------------

  /// Int8 quantisation with error feedback, as the update codec does it: per block of `block`
  /// values (the last may be shorter), v = x + residual, scale = max|v| / 127, q = round(v /
  /// scale) clamped to [-127, 127] (all zero and scale 0 for a zero block), residual = v -
  /// q * scale. q has n values, scales one per block. A null `residual` quantises x alone.
  virtual void quantize_int8(const float* x, float* residual, int64_t n, int64_t block, int8_t* q,
                             float* scales) = 0;
  /// out[i] = q[i] * scales[i / block].
  virtual void dequantize_int8(const int8_t* q, const float* scales, int64_t n, int64_t block,
                               float* out) = 0;

  // -- optimisers -----------------------------------------------------------------------------

  /// One AdamW update of n parameters with moments m and v; `step` counts from 1 and sets
  /// the bias corrections.
  virtual void adamw(float* param, const float* grad, float* m, float* v, int64_t n,
                     const adamw_config& config, int64_t step) = 0;

  // -- recording (CUDA graphs) ----------------------------------------------------------------

  /// Whether begin_recording() records this backend's operations (the CUDA backend).
  virtual bool records() const { return false; }
  /// From now until end_recording(), operations are recorded instead of run. Nothing that
  /// waits (download, synchronize, the reductions below) or allocates may be called meanwhile:
  /// such a call throws compute_error, and end_recording() must still be called. Throws
  /// compute_error where records() is false.
  virtual void begin_recording();
  /// Ends the recording: the work, ready to replay, or null where it failed (then none of it
  /// ran, and the caller runs it again unrecorded).
  virtual std::unique_ptr<recorded_work> end_recording();
  /// Enqueues work this backend recorded. Throws compute_error for work another backend
  /// recorded, or work recorded before recording_epoch() last changed (it would use buffers
  /// since freed).
  virtual void replay(const recorded_work& work);
  /// How many times replay() has enqueued recorded work: a benchmark or test of recorded
  /// passes checks that they ran.
  virtual uint64_t replays() const { return 0; }
  /// Changes whenever the backend replaces a buffer of its own that recorded work may use
  /// (the cuDNN workspace, when a larger one is needed): work recorded before is stale.
  virtual uint64_t recording_epoch() const { return 0; }

  // -- reductions (synchronising) -------------------------------------------------------------

  /// Sum of n values, accumulated in double precision.
  virtual double sum(const float* x, int64_t n) = 0;
  /// Sum of squares of n values (the squared L2 norm), accumulated in double precision.
  virtual double sum_squares(const float* x, int64_t n) = 0;
};

/// The CPU backend on OpenBLAS, using `threads` threads (0: OpenBLAS's default).
std::unique_ptr<backend> make_cpu_backend(int threads);

/// Whether this build contains the CUDA backend.
bool cuda_compiled() noexcept;

/// Number of usable CUDA devices; 0 when the build has no CUDA backend or there is no
/// driver or device (any CUDA error here is taken as "no device").
int cuda_device_count() noexcept;

/// The CUDA backend on device `ordinal`, with its own stream, cuBLAS handle (cuDNN's is made
/// at the first convolution) and
/// pinned host staging buffers (so that `upload` returns before the copy is done and the
/// caller may reuse its memory at once). Fails with errc::no_device when there is no such
/// device (or no CUDA in this build). Allocations count against set_cuda_memory_limit.
expected<std::unique_ptr<backend>> make_cuda_backend(int ordinal);

/// A backend by name: "cpu" or "cuda" / "cuda:N".
expected<std::unique_ptr<backend>> make_backend(const std::string& name, int cpu_threads);

}  // namespace gflex::kernels
