// Device helpers shared by the CUDA kernel families: bf16 <-> fp32, 16-byte vectors of 8 bf16,
// and warp / block reductions; and the launchers' shared-memory opt-in. Included by .cu files
// only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

#include "kernels/cuda/cuda_check.h"

namespace tessera::cuda {

// Lets `kernel` launch with `bytes` of dynamic shared memory on the current device. The limit past
// the default 48 KB belongs to the device's context, so it is raised per (device, kernel), once
// for each larger size asked. Host calls only: legal during graph capture.
inline void AllowDynamicSmem(const void* kernel, size_t bytes) {
  static std::mutex mu;
  static std::map<std::pair<int, const void*>, size_t> granted;
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mu);
  size_t& have = granted.try_emplace({device, kernel}, size_t{48} << 10).first->second;
  if (bytes <= have) return;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(bytes)));
  have = bytes;
}

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float ToFloat(bf16 x) { return __bfloat162float(x); }
// Round to nearest even, as torch's .to(torch.bfloat16) does.
__device__ __forceinline__ bf16 ToBf16(float x) { return __float2bfloat16_rn(x); }

// 8 bf16 in one 16-byte load or store: the widest access one thread makes (Hopper's memory-bound
// kernels want 16 bytes per thread). Callers check 16-byte alignment on the host.
// NOTE: held as a uint4, not as bf16 pairs: a struct of four __nv_bfloat162 is copied member by
// member (ld.global.v2.u16 in the PTX), not in one ld.global.v4.
struct Bf16x8 {
  uint4 bits;  // element 2j in the low half of word j, 2j + 1 in the high half
};
__device__ __forceinline__ Bf16x8 Load8(const bf16* p) {
  return {*reinterpret_cast<const uint4*>(p)};
}
__device__ __forceinline__ void Store8(bf16* p, const Bf16x8& v) {
  *reinterpret_cast<uint4*>(p) = v.bits;
}
// bf16 -> fp32 is exact: the bf16 bits are the float's upper half.
__device__ __forceinline__ void Unpack8(const Bf16x8& v, float (&f)[8]) {
  const uint32_t w[4] = {v.bits.x, v.bits.y, v.bits.z, v.bits.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    f[2 * j] = __uint_as_float(w[j] << 16);
    f[2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
  }
}
// Each element rounded once, to nearest even (as ToBf16).
__device__ __forceinline__ Bf16x8 Pack8(const float (&f)[8]) {
  uint32_t w[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    w[j] = static_cast<uint32_t>(__bfloat16_as_ushort(ToBf16(f[2 * j]))) |
           (static_cast<uint32_t>(__bfloat16_as_ushort(ToBf16(f[2 * j + 1]))) << 16);
  }
  return {make_uint4(w[0], w[1], w[2], w[3])};
}

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum over the block; every thread gets the result. `scratch` holds 32 floats of shared memory.
// blockDim.x must be a multiple of 32.
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = WarpSum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  return WarpSum(v);
}

__device__ __forceinline__ float BlockMax(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = WarpMax(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
  return WarpMax(v);
}

// Host side: whether `p` may be accessed `bytes` at a time.
inline bool IsAligned(const void* p, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// Host side: the current device's multiprocessor count (grid-stride kernels size their grids by
// it). Read once per device; the runtime call does not synchronise and is capturable.
inline int CurrentSmCount() {
  static int cached[64] = {};
  int device = 0;
  cudaGetDevice(&device);
  if (device < 0 || device >= 64) return 132;
  if (cached[device] == 0) {
    int count = 0;
    cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device);
    cached[device] = count > 0 ? count : 132;
  }
  return cached[device];
}

}  // namespace tessera::cuda
