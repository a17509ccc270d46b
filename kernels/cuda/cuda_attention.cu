/// @file
/// Flash attention kernels (cuda_attention.hpp).
///
/// Layout: q, k and v of head h are the columns [h * dh, (h + 1) * dh) of the first, second
/// and third d columns of qkv ([batch, t, 3d], row stride 3d); ctx and dctx take the same
/// block of [batch, t, d]; lse and the backward's D are [batch, heads, t]. A block has four
/// warps and a tile of 64 rows; each warp owns 16 of them, so its products are 16-row WMMA
/// products over the shared tiles of the other operand. Operands are converted to bf16 as
/// they are loaded; products accumulate in FP32, and the softmax and every sum are FP32.

#include "cuda_attention.hpp"

#include <cuda_bf16.h>
#include <mma.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda_check.hpp"

namespace gflex::kernels::detail {

namespace {

using namespace nvcuda;
using bf16 = __nv_bfloat16;

constexpr int k_tile = 64;  ///< Rows of a block's tile, and of each tile it walks.
constexpr int k_warps = 4;  ///< Each owns k_tile / k_warps = 16 rows: one WMMA row block.
constexpr int k_threads = k_warps * 32;
constexpr int k_rows_per_warp = k_tile / k_warps;
constexpr unsigned k_full_mask = 0xffffffffu;

/// Shared-memory row strides in elements. The padding keeps consecutive rows off the same
/// banks and every WMMA pointer 32-byte aligned (16 rows of each stride are a multiple of
/// 32 bytes; bf16 strides are multiples of 8 elements, FP32 ones of 4, as WMMA requires).
template <int DH>
struct strides {
  static constexpr int operand = DH + 8;      ///< bf16 [64][DH]: q, k, v, do tiles
  static constexpr int scores = k_tile + 4;   ///< FP32 [64][64]: scores, dP
  static constexpr int probs = k_tile + 8;    ///< bf16 [64][64]: P, dS as WMMA operands
  static constexpr int accumulator = DH + 4;  ///< FP32 [64][DH]: O, dK, dV, dQ
  static constexpr size_t operand_bytes = size_t{k_tile} * operand * sizeof(bf16);
  static constexpr size_t scores_bytes = size_t{k_tile} * scores * sizeof(float);
  static constexpr size_t probs_bytes = size_t{k_tile} * probs * sizeof(bf16);
  static constexpr size_t accumulator_bytes = size_t{k_tile} * accumulator * sizeof(float);
  static constexpr size_t row_bytes = size_t{k_tile} * sizeof(float);
  /// Forward: q, k, v; scores; P; O; the running max and sum per row.
  static constexpr size_t forward =
      3 * operand_bytes + scores_bytes + probs_bytes + accumulator_bytes + 2 * row_bytes;
  /// dK and dV: k, v, q, do; scores (then P), dP; P, dS; dK, dV; lse, D.
  static constexpr size_t key_grads = 4 * operand_bytes + 2 * scores_bytes + 2 * probs_bytes +
                                      2 * accumulator_bytes + 2 * row_bytes;
  /// dQ: q, do, k, v; scores, dP; dS; dQ; lse, D.
  static constexpr size_t query_grads =
      4 * operand_bytes + 2 * scores_bytes + probs_bytes + accumulator_bytes + 2 * row_bytes;
};

/// Carves consecutive arrays out of dynamic shared memory (each size a multiple of 128 bytes
/// by construction of `strides`, so every array stays aligned).
struct shared_carver {
  char* at;
  template <class T>
  __device__ T* take(size_t bytes) {
    T* p = reinterpret_cast<T*>(at);
    at += bytes;
    return p;
  }
};

/// Loads rows [row0, row0 + 64) of a head's DH columns (at `src`, row stride `ld`) into a
/// bf16 tile; rows at or past `t` become zeros.
template <int DH>
__device__ void load_tile(const float* src, int64_t ld, int64_t row0, int64_t t, bf16* tile) {
  for (int i = threadIdx.x; i < k_tile * DH; i += k_threads) {
    const int r = i / DH, c = i % DH;
    const int64_t row = row0 + r;
    tile[r * strides<DH>::operand + c] = __float2bfloat16(row < t ? src[row * ld + c] : 0.0f);
  }
}

/// Loads 64 per-row values (lse or D) of rows [row0, row0 + 64); 0 past `t`.
__device__ void load_rows(const float* src, int64_t row0, int64_t t, float* rows) {
  for (int i = threadIdx.x; i < k_tile; i += k_threads)
    rows[i] = row0 + i < t ? src[row0 + i] : 0.0f;
}

/// One warp: c[16][16 NT] (FP32, stride ldc) = (accumulate ? c : 0) + a[16][16 KT] x B, with
/// a bf16 row-major (stride lda) and B [16 KT][16 NT] bf16 read from `b` (stride ldb) either
/// row-major or, with BLayout col_major, as the transpose of a row-major [16 NT][16 KT] tile.
template <int KT, int NT, class BLayout>
__device__ void warp_mma(const bf16* a, int lda, const bf16* b, int ldb, float* c, int ldc,
                         bool accumulate) {
  constexpr bool row_major_b = std::is_same_v<BLayout, wmma::row_major>;
  for (int n = 0; n < NT; ++n) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    if (accumulate)
      wmma::load_matrix_sync(acc, c + n * 16, ldc, wmma::mem_row_major);
    else
      wmma::fill_fragment(acc, 0.0f);
    for (int k = 0; k < KT; ++k) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> fa;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, BLayout> fb;
      wmma::load_matrix_sync(fa, a + k * 16, lda);
      wmma::load_matrix_sync(
          fb, row_major_b ? b + k * 16 * ldb + n * 16 : b + n * 16 * ldb + k * 16, ldb);
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(c + n * 16, acc, ldc, wmma::mem_row_major);
  }
}

/// Zeroes a warp's 16 rows of an accumulator tile.
template <int DH>
__device__ void zero_rows(float* rows, int lane) {
  for (int i = lane; i < k_rows_per_warp * DH; i += 32)
    rows[(i / DH) * strides<DH>::accumulator + i % DH] = 0.0f;
}

/// Where a block and its thread stand: the sample b and head h of blockIdx.x (b * heads +
/// h), the first row of the block's tile (blockIdx.y), the sample's qkv rows (stride 3d), and
/// the thread's warp, lane and the first of the 16 rows its warp owns.
struct block_place {
  int64_t bh, b, h, tile0, ld;
  const float* sample;
  int warp, lane, row0;
};

__device__ block_place place_of(const float* qkv, int64_t t, int64_t d, int64_t heads) {
  block_place at;
  at.bh = blockIdx.x;
  at.b = at.bh / heads;
  at.h = at.bh % heads;
  at.tile0 = static_cast<int64_t>(blockIdx.y) * k_tile;
  at.ld = 3 * d;
  at.sample = qkv + at.b * t * at.ld;
  at.warp = static_cast<int>(threadIdx.x) / 32;
  at.lane = static_cast<int>(threadIdx.x) % 32;
  at.row0 = at.warp * k_rows_per_warp;
  return at;
}

/// Forward. Grid (batch * heads, query tiles); a block's warps own 16 query rows each and walk
/// the key tiles up to the diagonal one, keeping O unnormalised with the running maximum m and
/// sum l of each row's exponentials; at the end ctx = O / l and lse = m + log(l).
template <int DH>
__global__ void __launch_bounds__(k_threads)
    flash_forward_kernel(const float* qkv, int64_t t, int64_t d, int64_t heads, float scale,
                         float* ctx, float* lse) {
  using S = strides<DH>;
  extern __shared__ __align__(128) char shared[];
  shared_carver carve{shared};
  bf16* sq = carve.take<bf16>(S::operand_bytes);
  bf16* sk = carve.take<bf16>(S::operand_bytes);
  bf16* sv = carve.take<bf16>(S::operand_bytes);
  float* ss = carve.take<float>(S::scores_bytes);
  bf16* sp = carve.take<bf16>(S::probs_bytes);
  float* so = carve.take<float>(S::accumulator_bytes);
  float* sm = carve.take<float>(S::row_bytes);
  float* sl = carve.take<float>(S::row_bytes);

  const block_place at = place_of(qkv, t, d, heads);
  const int64_t bh = at.bh, b = at.b, h = at.h, q0 = at.tile0, ld = at.ld;
  const float* sample = at.sample;
  const int lane = at.lane, row0 = at.row0;

  load_tile<DH>(sample + h * DH, ld, q0, t, sq);
  zero_rows<DH>(so + row0 * S::accumulator, lane);
  if (lane < k_rows_per_warp) {
    sm[row0 + lane] = -INFINITY;
    sl[row0 + lane] = 0.0f;
  }
  for (int64_t k0 = 0; k0 <= q0 && k0 < t; k0 += k_tile) {
    __syncthreads();  // every warp is done with the previous key tile
    load_tile<DH>(sample + d + h * DH, ld, k0, t, sk);
    load_tile<DH>(sample + 2 * d + h * DH, ld, k0, t, sv);
    __syncthreads();
    float* srows = ss + row0 * S::scores;
    warp_mma<DH / 16, k_tile / 16, wmma::col_major>(sq + row0 * S::operand, S::operand, sk,
                                                    S::operand, srows, S::scores, false);
    __syncwarp();
    // Two lanes a row, 32 columns each: the row's new maximum, its exponentials (P, as bf16
    // for the product with V) and their sum, and O's rescaling by exp(m_old - m_new).
    const int r = lane / 2, half = lane % 2;
    const int64_t q = q0 + row0 + r;
    float* srow = srows + r * S::scores;
    float top = -INFINITY;
    for (int c = half * 32; c < half * 32 + 32; ++c) {
      const int64_t key = k0 + c;
      const float v = key <= q && key < t ? srow[c] * scale : -INFINITY;
      srow[c] = v;
      top = fmaxf(top, v);
    }
    top = fmaxf(top, __shfl_xor_sync(k_full_mask, top, 1));
    const float m_old = sm[row0 + r];
    const float m_new = fmaxf(m_old, top);
    bf16* prow = sp + (row0 + r) * S::probs;
    float sum = 0.0f;
    for (int c = half * 32; c < half * 32 + 32; ++c) {
      const float p = m_new == -INFINITY ? 0.0f : __expf(srow[c] - m_new);
      prow[c] = __float2bfloat16(p);
      sum += p;
    }
    sum += __shfl_xor_sync(k_full_mask, sum, 1);
    const float alpha = m_old == -INFINITY ? 0.0f : __expf(m_old - m_new);
    float* orow = so + (row0 + r) * S::accumulator;
    for (int c = half * (DH / 2); c < (half + 1) * (DH / 2); ++c) orow[c] *= alpha;
    __syncwarp();  // both lanes have read m_old
    if (half == 0) {
      sm[row0 + r] = m_new;
      sl[row0 + r] = sl[row0 + r] * alpha + sum;
    }
    __syncwarp();
    warp_mma<k_tile / 16, DH / 16, wmma::row_major>(sp + row0 * S::probs, S::probs, sv, S::operand,
                                                    so + row0 * S::accumulator, S::accumulator,
                                                    true);
  }
  __syncwarp();
  float* out = ctx + b * t * d + h * DH;
  for (int i = lane; i < k_rows_per_warp * DH; i += 32) {
    const int r = row0 + i / DH, c = i % DH;
    const int64_t q = q0 + r;
    if (q < t) out[q * d + c] = so[r * S::accumulator + c] / sl[r];
  }
  if (lane < k_rows_per_warp && q0 + row0 + lane < t)
    lse[bh * t + q0 + row0 + lane] = sm[row0 + lane] + logf(sl[row0 + lane]);
}

/// D[b, h, i] = sum over the head's columns of dctx * ctx: one warp per row.
template <int DH>
__global__ void __launch_bounds__(k_threads)
    flash_row_dot_kernel(const float* ctx, const float* dctx, int64_t batch, int64_t t, int64_t d,
                         int64_t heads, float* dsum) {
  const int64_t rows = batch * heads * t;
  const int lane = threadIdx.x % 32;
  for (int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x / 32) {
    const int64_t bh = row / t, i = row % t, b = bh / heads, h = bh % heads;
    const int64_t at = (b * t + i) * d + h * DH;
    float s = 0.0f;
    for (int c = lane; c < DH; c += 32) s += dctx[at + c] * ctx[at + c];
    for (int offset = 16; offset > 0; offset /= 2) s += __shfl_down_sync(k_full_mask, s, offset);
    if (lane == 0) dsum[row] = s;
  }
}

/// dK and dV. Grid (batch * heads, key tiles); a block's warps own 16 key rows each and walk
/// the query tiles from the diagonal one on: P^T = exp(scale K Q^T - lse) (causal), dV += P^T
/// dO, dP^T = V dO^T, dS^T = P^T (dP^T - D), dK += dS^T Q; dK is scaled at the end.
template <int DH>
__global__ void __launch_bounds__(k_threads)
    flash_key_grads_kernel(const float* qkv, const float* lse, const float* dctx, const float* dsum,
                           int64_t t, int64_t d, int64_t heads, float scale, float* dqkv) {
  using S = strides<DH>;
  extern __shared__ __align__(128) char shared[];
  shared_carver carve{shared};
  bf16* sk = carve.take<bf16>(S::operand_bytes);
  bf16* sv = carve.take<bf16>(S::operand_bytes);
  bf16* sq = carve.take<bf16>(S::operand_bytes);
  bf16* sdo = carve.take<bf16>(S::operand_bytes);
  float* ss = carve.take<float>(S::scores_bytes);
  float* sdp = carve.take<float>(S::scores_bytes);
  bf16* sp = carve.take<bf16>(S::probs_bytes);
  bf16* sds = carve.take<bf16>(S::probs_bytes);
  float* sdk = carve.take<float>(S::accumulator_bytes);
  float* sdv = carve.take<float>(S::accumulator_bytes);
  float* slse = carve.take<float>(S::row_bytes);
  float* sd = carve.take<float>(S::row_bytes);

  const block_place at = place_of(qkv, t, d, heads);
  const int64_t bh = at.bh, b = at.b, h = at.h, k0 = at.tile0, ld = at.ld;
  const float* sample = at.sample;
  const float* dout = dctx + b * t * d + h * DH;
  const int lane = at.lane, row0 = at.row0;

  load_tile<DH>(sample + d + h * DH, ld, k0, t, sk);
  load_tile<DH>(sample + 2 * d + h * DH, ld, k0, t, sv);
  zero_rows<DH>(sdk + row0 * S::accumulator, lane);
  zero_rows<DH>(sdv + row0 * S::accumulator, lane);
  for (int64_t q0 = k0; q0 < t; q0 += k_tile) {
    __syncthreads();  // every warp is done with the previous query tile
    load_tile<DH>(sample + h * DH, ld, q0, t, sq);
    load_tile<DH>(dout, d, q0, t, sdo);
    load_rows(lse + bh * t, q0, t, slse);
    load_rows(dsum + bh * t, q0, t, sd);
    __syncthreads();
    float* srows = ss + row0 * S::scores;
    float* dprows = sdp + row0 * S::scores;
    bf16* prows = sp + row0 * S::probs;
    bf16* dsrows = sds + row0 * S::probs;
    warp_mma<DH / 16, k_tile / 16, wmma::col_major>(sk + row0 * S::operand, S::operand, sq,
                                                    S::operand, srows, S::scores, false);
    __syncwarp();
    for (int i = lane; i < k_rows_per_warp * k_tile; i += 32) {
      const int r = i / k_tile, c = i % k_tile;
      const int64_t key = k0 + row0 + r, q = q0 + c;
      const float p =
          key <= q && q < t && key < t ? __expf(srows[r * S::scores + c] * scale - slse[c]) : 0.0f;
      srows[r * S::scores + c] = p;
      prows[r * S::probs + c] = __float2bfloat16(p);
    }
    __syncwarp();
    warp_mma<k_tile / 16, DH / 16, wmma::row_major>(
        prows, S::probs, sdo, S::operand, sdv + row0 * S::accumulator, S::accumulator, true);
    warp_mma<DH / 16, k_tile / 16, wmma::col_major>(sv + row0 * S::operand, S::operand, sdo,
                                                    S::operand, dprows, S::scores, false);
    __syncwarp();
    for (int i = lane; i < k_rows_per_warp * k_tile; i += 32) {
      const int r = i / k_tile, c = i % k_tile;
      dsrows[r * S::probs + c] =
          __float2bfloat16(srows[r * S::scores + c] * (dprows[r * S::scores + c] - sd[c]));
    }
    __syncwarp();
    warp_mma<k_tile / 16, DH / 16, wmma::row_major>(
        dsrows, S::probs, sq, S::operand, sdk + row0 * S::accumulator, S::accumulator, true);
  }
  __syncwarp();
  float* grads = dqkv + b * t * ld + h * DH;
  for (int i = lane; i < k_rows_per_warp * DH; i += 32) {
    const int r = row0 + i / DH, c = i % DH;
    const int64_t key = k0 + r;
    if (key >= t) continue;
    grads[key * ld + d + c] = sdk[r * S::accumulator + c] * scale;
    grads[key * ld + 2 * d + c] = sdv[r * S::accumulator + c];
  }
}

/// dQ. Grid (batch * heads, query tiles); a block's warps own 16 query rows each and walk the
/// key tiles up to the diagonal one: P = exp(scale Q K^T - lse) (causal), dP = dO V^T,
/// dS = P (dP - D), dQ += dS K; dQ is scaled at the end.
template <int DH>
__global__ void __launch_bounds__(k_threads)
    flash_query_grads_kernel(const float* qkv, const float* lse, const float* dctx,
                             const float* dsum, int64_t t, int64_t d, int64_t heads, float scale,
                             float* dqkv) {
  using S = strides<DH>;
  extern __shared__ __align__(128) char shared[];
  shared_carver carve{shared};
  bf16* sq = carve.take<bf16>(S::operand_bytes);
  bf16* sdo = carve.take<bf16>(S::operand_bytes);
  bf16* sk = carve.take<bf16>(S::operand_bytes);
  bf16* sv = carve.take<bf16>(S::operand_bytes);
  float* ss = carve.take<float>(S::scores_bytes);
  float* sdp = carve.take<float>(S::scores_bytes);
  bf16* sds = carve.take<bf16>(S::probs_bytes);
  float* sdq = carve.take<float>(S::accumulator_bytes);
  float* slse = carve.take<float>(S::row_bytes);
  float* sd = carve.take<float>(S::row_bytes);

  const block_place at = place_of(qkv, t, d, heads);
  const int64_t bh = at.bh, b = at.b, h = at.h, q0 = at.tile0, ld = at.ld;
  const float* sample = at.sample;
  const int lane = at.lane, row0 = at.row0;

  load_tile<DH>(sample + h * DH, ld, q0, t, sq);
  load_tile<DH>(dctx + b * t * d + h * DH, d, q0, t, sdo);
  load_rows(lse + bh * t, q0, t, slse);
  load_rows(dsum + bh * t, q0, t, sd);
  zero_rows<DH>(sdq + row0 * S::accumulator, lane);
  for (int64_t k0 = 0; k0 <= q0 && k0 < t; k0 += k_tile) {
    __syncthreads();  // every warp is done with the previous key tile
    load_tile<DH>(sample + d + h * DH, ld, k0, t, sk);
    load_tile<DH>(sample + 2 * d + h * DH, ld, k0, t, sv);
    __syncthreads();
    float* srows = ss + row0 * S::scores;
    float* dprows = sdp + row0 * S::scores;
    bf16* dsrows = sds + row0 * S::probs;
    warp_mma<DH / 16, k_tile / 16, wmma::col_major>(sq + row0 * S::operand, S::operand, sk,
                                                    S::operand, srows, S::scores, false);
    warp_mma<DH / 16, k_tile / 16, wmma::col_major>(sdo + row0 * S::operand, S::operand, sv,
                                                    S::operand, dprows, S::scores, false);
    __syncwarp();
    for (int i = lane; i < k_rows_per_warp * k_tile; i += 32) {
      const int r = i / k_tile, c = i % k_tile;
      const int64_t q = q0 + row0 + r, key = k0 + c;
      const float p = key <= q && q < t && key < t
                          ? __expf(srows[r * S::scores + c] * scale - slse[row0 + r])
                          : 0.0f;
      dsrows[r * S::probs + c] = __float2bfloat16(p * (dprows[r * S::scores + c] - sd[row0 + r]));
    }
    __syncwarp();
    warp_mma<k_tile / 16, DH / 16, wmma::row_major>(
        dsrows, S::probs, sk, S::operand, sdq + row0 * S::accumulator, S::accumulator, true);
  }
  __syncwarp();
  float* grads = dqkv + b * t * ld + h * DH;
  for (int i = lane; i < k_rows_per_warp * DH; i += 32) {
    const int r = row0 + i / DH, c = i % DH;
    const int64_t q = q0 + r;
    if (q < t) grads[q * ld + c] = sdq[r * S::accumulator + c] * scale;
  }
}

/// Launches `kernel` with `bytes` of dynamic shared memory (past the default 48 KiB, which
/// each kernel must opt into) on a (batch * heads, tiles) grid.
template <class Kernel, class... Args>
void launch(Kernel kernel, size_t bytes, cudaStream_t stream, int64_t batch_heads, int64_t tiles,
            Args... args) {
  GFLEX_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
  const dim3 grid(static_cast<unsigned>(batch_heads), static_cast<unsigned>(tiles));
  kernel<<<grid, k_threads, bytes, stream>>>(args...);
  GFLEX_CUDA_CHECK_LAUNCH();
}

/// The grid's extents: batch * heads blocks across (at most 2^31 - 1) and a tile's blocks
/// down (at most 65,535: a context of 4 million tokens).
void check_grid(int64_t batch, int64_t t, int64_t heads) {
  if (batch * heads > INT32_MAX || (t + k_tile - 1) / k_tile > 65535)
    throw compute_error(
        gflex::error(errc::invalid_argument, "fused attention: " + std::to_string(batch) + " x " +
                                                 std::to_string(heads) + " heads of " +
                                                 std::to_string(t) + " tokens is past its grid"));
}

template <int DH>
void forward(cudaStream_t stream, const float* qkv, int64_t batch, int64_t t, int64_t d,
             int64_t heads, float scale, float* ctx, float* lse) {
  launch(flash_forward_kernel<DH>, strides<DH>::forward, stream, batch * heads,
         (t + k_tile - 1) / k_tile, qkv, t, d, heads, scale, ctx, lse);
}

template <int DH>
void backward(cudaStream_t stream, const float* qkv, const float* ctx, const float* lse,
              const float* dctx, int64_t batch, int64_t t, int64_t d, int64_t heads, float scale,
              float* dqkv, float* dsum) {
  const int64_t rows = batch * heads * t;
  const int64_t blocks = std::min<int64_t>((rows + k_warps - 1) / k_warps, 65535);
  flash_row_dot_kernel<DH><<<static_cast<unsigned>(blocks), k_threads, 0, stream>>>(
      ctx, dctx, batch, t, d, heads, dsum);
  GFLEX_CUDA_CHECK_LAUNCH();
  const int64_t tiles = (t + k_tile - 1) / k_tile;
  launch(flash_key_grads_kernel<DH>, strides<DH>::key_grads, stream, batch * heads, tiles, qkv, lse,
         dctx, static_cast<const float*>(dsum), t, d, heads, scale, dqkv);
  launch(flash_query_grads_kernel<DH>, strides<DH>::query_grads, stream, batch * heads, tiles, qkv,
         lse, dctx, static_cast<const float*>(dsum), t, d, heads, scale, dqkv);
}

size_t shared_needed(int64_t head_dim) {
  switch (head_dim) {
    case 16:
      return std::max(strides<16>::forward, strides<16>::key_grads);
    case 32:
      return std::max(strides<32>::forward, strides<32>::key_grads);
    case 64:
      return std::max(strides<64>::forward, strides<64>::key_grads);
    default:
      return 0;
  }
}

}  // namespace

bool flash_attention_supported(int64_t head_dim, size_t shared_per_block) {
  const size_t needed = shared_needed(head_dim);
  return needed > 0 && needed <= shared_per_block;
}

size_t flash_attention_backward_workspace(int64_t batch, int64_t t, int64_t heads) {
  return static_cast<size_t>(batch * heads * t) * sizeof(float);
}

void flash_attention_forward(cudaStream_t stream, const float* qkv, int64_t batch, int64_t t,
                             int64_t d, int64_t heads, float scale, float* ctx, float* lse) {
  check_grid(batch, t, heads);
  switch (d / heads) {
    case 16:
      return forward<16>(stream, qkv, batch, t, d, heads, scale, ctx, lse);
    case 32:
      return forward<32>(stream, qkv, batch, t, d, heads, scale, ctx, lse);
    case 64:
      return forward<64>(stream, qkv, batch, t, d, heads, scale, ctx, lse);
    default:
      throw compute_error(gflex::error(
          errc::invalid_argument,
          "fused attention takes heads of 16, 32 or 64 values, not " + std::to_string(d / heads)));
  }
}

void flash_attention_backward(cudaStream_t stream, const float* qkv, const float* ctx,
                              const float* lse, const float* dctx, int64_t batch, int64_t t,
                              int64_t d, int64_t heads, float scale, float* dqkv, void* workspace) {
  check_grid(batch, t, heads);
  auto* dsum = static_cast<float*>(workspace);
  switch (d / heads) {
    case 16:
      return backward<16>(stream, qkv, ctx, lse, dctx, batch, t, d, heads, scale, dqkv, dsum);
    case 32:
      return backward<32>(stream, qkv, ctx, lse, dctx, batch, t, d, heads, scale, dqkv, dsum);
    case 64:
      return backward<64>(stream, qkv, ctx, lse, dctx, batch, t, d, heads, scale, dqkv, dsum);
    default:
      throw compute_error(gflex::error(
          errc::invalid_argument,
          "fused attention takes heads of 16, 32 or 64 values, not " + std::to_string(d / heads)));
  }
}

}  // namespace gflex::kernels::detail
