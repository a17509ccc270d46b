#pragma once
/// @file
/// Flash attention for the CUDA backend: causal multi-head self-attention that never writes
/// the [t, t] probabilities to device memory. Each block holds a 64-row tile of one sample's
/// head in shared memory and walks the other operand's tiles, multiplying in bf16 on tensor
/// cores (WMMA) and keeping the softmax's running maximum and sum per row (the forward) or
/// recomputing the probabilities from the saved log-sum-exp (the backward). Private to the
/// CUDA backend; backend.hpp's fused_attention_forward and _backward say what is computed.
///
/// Deterministic: the backward computes dK and dV in one kernel (a block per key tile, over
/// the query tiles that see it) and dQ in another (a block per query tile), so that no
/// gradient is accumulated across blocks with atomics. Heads of 16, 32 or 64 values.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace gflex::kernels::detail {

/// Whether the kernels take heads of `head_dim` values on a device whose blocks may opt into
/// `shared_per_block` bytes of shared memory (cudaDevAttrMaxSharedMemoryPerBlockOptin: the
/// backward's largest kernel needs about 123 KiB at 64 values, which Ampere and Hopper data
/// centre cards give and consumer cards, at 99 KiB, do not).
bool flash_attention_supported(int64_t head_dim, size_t shared_per_block);

/// Bytes of device workspace flash_attention_backward needs.
size_t flash_attention_backward_workspace(int64_t batch, int64_t t, int64_t heads);

/// See backend::fused_attention_forward. Enqueued on `stream`; launches are checked.
void flash_attention_forward(cudaStream_t stream, const float* qkv, int64_t batch, int64_t t,
                             int64_t d, int64_t heads, float scale, float* ctx, float* lse);

/// See backend::fused_attention_backward; `workspace` holds
/// flash_attention_backward_workspace(batch, t, heads) bytes.
void flash_attention_backward(cudaStream_t stream, const float* qkv, const float* ctx,
                              const float* lse, const float* dctx, int64_t batch, int64_t t,
                              int64_t d, int64_t heads, float scale, float* dqkv, void* workspace);

}  // namespace gflex::kernels::detail
