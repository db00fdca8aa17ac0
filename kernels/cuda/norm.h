// RMSNorm launchers (norm.cu). bf16 in and out, statistics in fp32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace tessera::cuda {

// out [rows, dim] = x / sqrt(mean(x^2) + eps) * weight [dim].
void LaunchRmsNorm(const __nv_bfloat16* x, const __nv_bfloat16* weight, int64_t rows, int64_t dim,
                   float eps, __nv_bfloat16* out, cudaStream_t stream);

// residual [rows, dim] += x (rounded to bf16, as the residual stream is stored); then
// out = RmsNorm(residual).
void LaunchAddRmsNorm(__nv_bfloat16* residual, const __nv_bfloat16* x, const __nv_bfloat16* weight,
                      int64_t rows, int64_t dim, float eps, __nv_bfloat16* out,
                      cudaStream_t stream);

}  // namespace tessera::cuda
