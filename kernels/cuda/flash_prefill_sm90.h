// Causal GQA flash attention for prefill on Hopper's warpgroup MMA (flash_prefill_sm90.cu):
// wgmma with a producer warpgroup gathering K/V through the block table, sm_90a only.
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/cuda/attention.h"

namespace tessera::cuda {

// Same contract and numerics as LaunchFlashPrefill's mma.sync kernel. Returns false, launching
// nothing, where it does not apply: a device other than sm_90, a build without the sm_90a target,
// head_dim other than 128, q rows or pointers not 16-byte aligned, scale <= 0.
bool LaunchFlashPrefillSm90(const PagedAttentionArgs& args, cudaStream_t stream);

}  // namespace tessera::cuda
