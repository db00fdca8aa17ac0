// A bandwidth-bound FP8-weight GEMV for decode (W8A16): y [m, n] = x [m, k] @ W^T for
// m <= kFp8GemvMaxRows, W the block-scaled e4m3 weight of kernels/ops.h (Fp8Weight), x bf16,
// fp32 accumulation, one bf16 rounding per output.
//
// Why: at decode batch sizes the product is one pass over W, so the floor is the copy bandwidth;
// e4m3 halves W's bytes against bf16 (Qwen3-14B's 14 GB of linear weights become 7 GB per token).
// Activations stay bf16 (no quantization error on x, nothing to quantize per step).
//
// Two variants (fp8_gemv.cu), both with a fixed-order reduction (repeats bit for bit), no
// workspace, graph-capturable:
//   v1 (CUDA cores), as the bf16 GEMV (gemv.h): a block of 8 warps owns R rows of W (2 or 4);
//     thread t reads the 16-byte vectors t, t + 256, ... of each row, widens each e4m3 to fp32
//     (cvt) and dots it with x; a block-wide reduction. On an H100 it reaches 1.6-2.4 TB/s
//     (docs/perf/2026-12-07-fp8-kernels.md): issue-bound on 1.5 quarter-rate conversions a
//     weight.
//   v2 (tensor cores): a block of 8 warps owns 16 rows of W and splits k between its warps; each
//     warp multiplies its 16 x k-slice with x's (up to 8) rows on mma.sync m16n8k16 (bf16 in,
//     fp32 out), the e4m3 widened to bf16 by bit moves (no conversion instruction), every 128-k
//     group's sums scaled once; the warps' partial sums meet in shared memory.
// TESSERA_FP8_GEMV=v1|v2 (read once) picks the variant LaunchFp8Gemv runs by default.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace tessera::cuda {

constexpr int64_t kFp8GemvMaxRows = 8;

// Whether LaunchFp8Gemv handles the call: 1 <= m <= kFp8GemvMaxRows, k % 16 == 0, x and w 16-byte
// aligned.
bool Fp8GemvSupported(const __nv_bfloat16* x, const uint8_t* w, int64_t m, int64_t k);

enum class Fp8GemvVariant { kDefault, kV1, kV2 };
// NOTE: v2. Measured on an H100 (cuda_fp8_bench_test, 2026-12-08): Qwen3-14B's 40 layers of
// linears at m = 1 take 5.23 ms with v2 against 6.36 with v1 (gate_up 62.8 vs 85.7 us, o 13.1 vs
// 16.0); at m = 8 v1 falls to 0.57 TB/s (307 us for gate_up) where v2 keeps 2.7 TB/s (65.5 us).
constexpr Fp8GemvVariant kFp8GemvDefault = Fp8GemvVariant::kV2;

// The variant kDefault stands for: TESSERA_FP8_GEMV (v1 or v2), read once, else kFp8GemvDefault.
Fp8GemvVariant Fp8GemvDefaultVariant();

// y [m, n] = x [m, k] @ (w [n, k] * scale [ceil(n/128), scale_stride] per 128x128 block)^T.
// `rows_per_block` (v1 only) 0 picks by k; else 2 or 4. `blocks_in_flight` (v2 only): 128-k
// groups each warp loads before using any, 0 = 2; else 1, 2 or 4.
void LaunchFp8Gemv(const __nv_bfloat16* x, const uint8_t* w, const float* scale,
                   int64_t scale_stride, int64_t m, int64_t n, int64_t k, __nv_bfloat16* y,
                   cudaStream_t stream, Fp8GemvVariant variant = Fp8GemvVariant::kDefault,
                   int rows_per_block = 0, int blocks_in_flight = 0);

}  // namespace tessera::cuda
