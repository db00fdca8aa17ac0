// A bandwidth-bound FP8-weight GEMV for decode (W8A16): y [m, n] = x [m, k] @ W^T for
// m <= kFp8GemvMaxRows, W the block-scaled e4m3 weight of kernels/ops.h (Fp8Weight), x bf16,
// fp32 accumulation, one bf16 rounding per output.
//
// Why: at decode batch sizes the product is one pass over W, so the floor is the copy bandwidth;
// e4m3 halves W's bytes against bf16 (Qwen3-14B's 14 GB of linear weights become 7 GB per token).
// Activations stay bf16 (no quantization error on x, nothing to quantize per step).
//
// Layout of the work (fp8_gemv.cu), as the bf16 GEMV (gemv.h): a block of 8 warps owns R rows of W
// (2 or 4); thread t reads the 16-byte vectors (16 e4m3) t, t + 256, ... of each row, 8 loads in
// flight; each vector's dot product with x is scaled by its block's scale and added in fp32.
// Fixed-order reduction (shuffles, then warps in index order): repeats bit for bit. No workspace,
// graph-capturable.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace tessera::cuda {

constexpr int64_t kFp8GemvMaxRows = 8;

// Whether LaunchFp8Gemv handles the call: 1 <= m <= kFp8GemvMaxRows, k % 16 == 0, x and w 16-byte
// aligned.
bool Fp8GemvSupported(const __nv_bfloat16* x, const uint8_t* w, int64_t m, int64_t k);

// y [m, n] = x [m, k] @ (w [n, k] * scale [ceil(n/128), scale_stride] per 128x128 block)^T.
// `rows_per_block` 0 picks by k; else 2 or 4. e4m3 becomes fp32 by the hardware's cvt
// (e4m3x2 -> f16x2 -> f32); a bit-move unpacking measured no faster on an H100
// (docs/perf/2026-12-07-fp8-kernels.md) and was dropped.
void LaunchFp8Gemv(const __nv_bfloat16* x, const uint8_t* w, const float* scale,
                   int64_t scale_stride, int64_t m, int64_t n, int64_t k, __nv_bfloat16* y,
                   cudaStream_t stream, int rows_per_block = 0);

}  // namespace tessera::cuda
