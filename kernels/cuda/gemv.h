// A bandwidth-bound bf16 GEMV for decode: y [m, n] = x [m, k] @ w [n, k]^T for m <= kGemvMaxRows,
// fp32 accumulation, one bf16 rounding per output.
//
// Why: at m = 1..8 the product is a pass over w (n * k * 2 bytes; x and y are tiny), so the floor
// is the copy bandwidth (~4.3 TB/s on an H200). cuBLASLt's GEMM tiles reach 3.0-4.1 TB/s there
// depending on the shape, the small (o_proj, qkv, tensor-parallel shards) worst.
//
// Layout of the work (gemv.cu): a block of 8 warps owns `rows` consecutive rows of w (1, 2 or 4);
// its warps split k in interleaved 256-element chunks (32 lanes x 8 bf16, one 16-byte load each),
// each thread keeping 8 loads of w in flight. Partial sums are reduced in a fixed order (warp
// shuffles, then the 8 warps in index order through shared memory), so a launch with the same shape
// repeats bit for bit. No workspace, no host synchronisation: graph-capturable.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace tessera::cuda {

constexpr int64_t kGemvMaxRows = 8;

// Whether LaunchGemv handles this call: 1 <= m <= kGemvMaxRows, k a multiple of 8, x and w
// 16-byte aligned (so every row of both starts on 16 bytes). y has no alignment requirement.
bool GemvSupported(const __nv_bfloat16* x, const __nv_bfloat16* w, int64_t m, int64_t k);

// Whether the GEMV beats cuBLASLt's heuristic choice for this shape (Linear's dispatch rule).
// NOTE: measured on an H200 (tests/kernels/cuda/linear_test.cc, TESSERA_GEMM_BENCH=1, Qwen3-14B
// shapes unsharded and as TP4 shards; docs/perf/2026-11-22-gemv.md): at m = 1 the GEMV wins on
// every shape (6-40%); at m = 2 it wins on qkv, gate_up and down (2-37%), is 2-5% slower on
// o_proj and down/TP4 and ties at k = 1280 (so m = 2 takes it only for k >= 2048); at m >= 4
// cuBLASLt wins (re-reading x for every 16 bytes of w makes the GEMV issue-bound).
bool GemvPreferred(int64_t m, int64_t n, int64_t k);

// The rows of w per block LaunchGemv picks for a shape (exposed for the tests and benchmark).
int GemvRowsPerBlock(int64_t m, int64_t n, int64_t k);

// y [m, n] = x [m, k] @ w [n, k]^T. `rows_per_block` 0 picks GemvRowsPerBlock; else 1, 2 or 4.
void LaunchGemv(const __nv_bfloat16* x, const __nv_bfloat16* w, int64_t m, int64_t n, int64_t k,
                __nv_bfloat16* y, cudaStream_t stream, int rows_per_block = 0);

}  // namespace tessera::cuda
