// Per-head RMSNorm + rotary embedding launchers (rope.cu), alone and fused with the KV-cache write.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace tessera::cuda {

// In place on x [n, heads, head_dim], rows `row_stride` elements apart: per-head RMSNorm with
// norm_weight [head_dim] (skipped when null), then NeoX rotate-half RoPE at angle
// positions[t] * inv_freq[i] (fp32 [head_dim / 2]) with cos/sin times attention_scaling.
void LaunchHeadNormRope(__nv_bfloat16* x, int64_t row_stride, int n, int heads, int head_dim,
                        const __nv_bfloat16* norm_weight, float eps, const int32_t* positions,
                        const float* inv_freq, float attention_scaling, cudaStream_t stream);

// The step between the qkv projection and attention, on qkv [n, q_heads + 2 * kv_heads, head_dim]
// (rows row_stride elements apart): q heads get HeadNormRope with q_norm in place, k heads
// HeadNormRope with k_norm in place and are written to k_cache, v heads are written to v_cache;
// caches [num_slots, kv_heads, head_dim] at slot_mapping[t], negative slots skipped. Bit for bit
// the sequence LaunchHeadNormRope (q), LaunchHeadNormRope (k), LaunchWriteKvCache.
void LaunchQkNormRopeKvWrite(__nv_bfloat16* qkv, int64_t row_stride, int n, int q_heads,
                             int kv_heads, int head_dim, const __nv_bfloat16* q_norm,
                             const __nv_bfloat16* k_norm, float eps, const int32_t* positions,
                             const float* inv_freq, float attention_scaling,
                             const int32_t* slot_mapping, __nv_bfloat16* k_cache,
                             __nv_bfloat16* v_cache, cudaStream_t stream);

}  // namespace tessera::cuda
