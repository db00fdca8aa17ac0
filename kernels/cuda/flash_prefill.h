// Tensor-core flash attention for prefill (flash_prefill.cu): causal GQA attention of a batch's
// query tokens over the paged KV cache, bf16 mma.sync with fp32 accumulation (sm_80+).
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/cuda/attention.h"

namespace tessera::cuda {

// Same contract as LaunchPagedAttention. Returns false, launching nothing, for what it does not
// support (head_dim other than 64 or 128, q rows or pointers not 16-byte aligned, scale <= 0);
// the caller then runs the general kernel. Runs the wgmma kernel (flash_prefill_sm90.h) where it
// applies (sm_90 with the sm_90a image, head_dim 128), the mma.sync kernel otherwise.
bool LaunchFlashPrefill(const PagedAttentionArgs& args, cudaStream_t stream);

// The mma.sync kernel alone, on any sm_80+ GPU (tests and benchmarks compare the two).
bool LaunchFlashPrefillMmaSync(const PagedAttentionArgs& args, cudaStream_t stream);

}  // namespace tessera::cuda
