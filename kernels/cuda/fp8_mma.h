// Block-scaled FP8-weight GEMMs on mma.sync (bf16 tensor cores, sm_80+): the Ampere path and the
// fallback wherever cuBLASLt's block-scaled FP8 GEMM (fp8_gemm.h) is not available.
//
//   W8A16: y [m, n] = x [m, k] @ W^T, x bf16, W the e4m3 weight with 128x128 block scales.
//   W8A8:  y [m, n] = X @ W^T, X the e4m3 activations with 1x128 group scales (fp8_quant.h).
//
// FP8 tiles are widened to bf16 inside the main loop (exact: every e4m3 value is a bf16 value) and
// multiplied unscaled; each 128-k group's fp32 partial sums are then scaled once and added to the
// accumulators ("scale promotion", as the CPU reference kernels/cpu/fp8.cc computes them).
// Tiles of 64 x 128 x 64, 8 warps of 32 x 32, a 3-stage cp.async pipeline. Any m and n; k % 16 == 0
// and 16-byte aligned operands. No workspace, graph-capturable.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace tessera::cuda {

// Whether the kernels take operands at these addresses with this k.
bool Fp8MmaSupported(const void* x, const uint8_t* w, int64_t k);

void LaunchFp8MmaW8A16(const __nv_bfloat16* x, const uint8_t* w, const float* w_scale,
                       int64_t w_scale_stride, int64_t m, int64_t n, int64_t k, __nv_bfloat16* y,
                       cudaStream_t stream);

void LaunchFp8MmaW8A8(const uint8_t* x, const float* x_scale, int64_t x_scale_stride,
                      const uint8_t* w, const float* w_scale, int64_t w_scale_stride, int64_t m,
                      int64_t n, int64_t k, __nv_bfloat16* y, cudaStream_t stream);

}  // namespace tessera::cuda
