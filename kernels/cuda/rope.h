// Per-head RMSNorm + rotary embedding launcher (rope.cu).
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

}  // namespace tessera::cuda
