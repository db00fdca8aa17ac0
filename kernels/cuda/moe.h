// Mixture-of-experts launchers (moe.cu): the router's top-k and the weighted combine of expert
// outputs. The expert MLPs themselves are cuBLASLt GEMMs driven by the backend (cuda_backend.cc).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace tessera::cuda {

// probs = softmax(logits [n, num_experts]) in fp32; the top_k largest per row (ties to the lower
// expert id) into ids [n, top_k] and weights [n, top_k], renormalised to sum 1 when `normalize`.
void LaunchRouterTopK(const __nv_bfloat16* logits, int n, int num_experts, int top_k,
                      bool normalize, int32_t* ids, float* weights, cudaStream_t stream);

// out [n, hidden] = sum over s < slots of weights[widx[t, s]] * y[rows[t, s]], in fp32, in slot
// order (the caller lists each token's experts in increasing id, so the sum is deterministic and
// in the CPU reference's order); a row index < 0 ends the token's list.
// rows, widx: int32 [n, slots].
void LaunchMoeCombine(const __nv_bfloat16* y, const int32_t* rows, const int32_t* widx,
                      const float* weights, int n, int slots, int64_t hidden, __nv_bfloat16* out,
                      cudaStream_t stream);

}  // namespace tessera::cuda
