// Device pieces shared by the decode GEMVs (gemv.cu: bf16 weights; fp8_gemv.cu: e4m3 weights):
// the streaming load of the weight and the block's fixed-order reduction of its per-thread sums.
// Included by .cu files only.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.cuh"

namespace tessera::cuda {

// NOTE: w is read exactly once: a streaming load that skips L1 keeps L1 for x, which every
// block re-reads. A template over the pointer type: taking `const void*` made ptxas spill 4
// bytes in GemvKernel<6, 1> for sm_90a.
template <typename T>
__device__ __forceinline__ uint4 LoadStreaming(const T* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// y[i, row0 + r] = the sum over the block's kThreads threads of acc[i][r], for rows < n: xor
// shuffles within each warp, then the warps in index order (a fixed order: repeats bit for bit),
// rounded once to bf16. Every thread of the block must call it.
template <int kThreads, int M, int R>
__device__ __forceinline__ void GemvReduceStore(const float (&acc)[M][R], int row0, int n,
                                                bf16* __restrict__ y) {
  constexpr int kWarps = kThreads / 32;
  static_assert(kThreads % 32 == 0 && M * R <= kThreads, "one thread per output");
  __shared__ float partial[kWarps][M * R];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int i = 0; i < M; ++i)
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float s = WarpSum(acc[i][r]);
      if (lane == 0) partial[warp][i * R + r] = s;
    }
  __syncthreads();
  if (threadIdx.x < M * R) {
    const int i = threadIdx.x / R, r = threadIdx.x % R;
    float s = 0.0f;
#pragma unroll
    for (int q = 0; q < kWarps; ++q) s += partial[q][threadIdx.x];
    if (row0 + r < n) y[static_cast<int64_t>(i) * n + row0 + r] = ToBf16(s);
  }
}

}  // namespace tessera::cuda
