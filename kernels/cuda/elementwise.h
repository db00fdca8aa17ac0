// Launchers for the memory-bound element-wise ops (elementwise.cu). bf16 tensors, fp32 math.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace tessera::cuda {

// out [n, hidden] = table [vocab_end - vocab_start, hidden][ids[t] - vocab_start], or zeros when
// the id is outside [vocab_start, vocab_end) (the vocabulary shards are then summed).
void LaunchEmbedding(const __nv_bfloat16* table, int64_t vocab_start, int64_t vocab_end,
                     int64_t hidden, const int32_t* ids, int n, __nv_bfloat16* out,
                     cudaStream_t stream);

// out [m, I] = silu(gate_up[:, :I]) * gate_up[:, I:], gate_up [m, 2I].
void LaunchSiluMul(const __nv_bfloat16* gate_up, int64_t m, int64_t intermediate,
                   __nv_bfloat16* out, cudaStream_t stream);

// out [r, dim] = x [., dim][rows[i]].
void LaunchGatherRows(const __nv_bfloat16* x, const int32_t* rows, int r, int64_t dim,
                      __nv_bfloat16* out, cudaStream_t stream);

// out [n] = a + b (out may alias a or b).
void LaunchAdd(const __nv_bfloat16* a, const __nv_bfloat16* b, int64_t n, __nv_bfloat16* out,
               cudaStream_t stream);

}  // namespace tessera::cuda
