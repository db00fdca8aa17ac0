// Tensor-core flash attention for prefill (flash_prefill.cu): causal GQA attention of a batch's
// query tokens over the paged KV cache, bf16 mma.sync with fp32 accumulation (sm_80+).
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/cuda/attention.h"

namespace tessera::cuda {

// Same contract as LaunchPagedAttention. Returns false, launching nothing, for what it does not
// support (head_dim other than 64 or 128, q rows or pointers not 16-byte aligned, scale <= 0);
// the caller then runs the general kernel.
bool LaunchFlashPrefill(const PagedAttentionArgs& args, cudaStream_t stream);

}  // namespace tessera::cuda
