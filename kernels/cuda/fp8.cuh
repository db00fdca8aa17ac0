// Device helpers shared by the FP8-weight GEMMs on mma.sync (fp8_mma.cu: dense; moe.cu: the
// grouped expert GEMMs): e4m3 tiles widened to bf16 in shared memory for the bf16 tensor cores.
// Included by .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "kernels/base/fp8_bits.h"

namespace tessera::cuda {

// 16 e4m3 bytes -> 16 bf16 (two 16-byte chunks). Unscaled (kScaled false): exact, every e4m3
// value is a bf16 value. Scaled: each value times `scale` in fp32, rounded once to nearest even:
// the bits DequantizeFp8Weight (fp8_quant.cu) writes for the same element.
template <bool kScaled>
__device__ __forceinline__ void WidenE4M3(const uint4& v, float scale, uint4& lo, uint4& hi) {
  const uint32_t in[4] = {v.x, v.y, v.z, v.w};
  uint32_t out[8];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const __half2_raw raw = __nv_cvt_fp8x2_to_halfraw2(
          static_cast<__nv_fp8x2_storage_t>(in[i] >> (16 * h)), __NV_E4M3);
      float2 f = __half22float2(*reinterpret_cast<const __half2*>(&raw));
      if constexpr (kScaled) {
        f.x *= scale;
        f.y *= scale;
      }
      const __nv_bfloat162 b = __floats2bfloat162_rn(f.x, f.y);
      out[2 * i + h] = *reinterpret_cast<const uint32_t*>(&b);
    }
  }
  lo = make_uint4(out[0], out[1], out[2], out[3]);
  hi = make_uint4(out[4], out[5], out[6], out[7]);
}

// The same bits as WidenE4M3<true> by bit moves instead of conversion instructions
// (kernels/base/fp8_bits.h: each e4m3 as an fp32 of its value times 2^-120, subnormals included),
// then one fp32 multiply by scale * 2^120 (E4m3ScaleFolds; larger scales multiply by 2^120 first),
// which rounds the same real product e4m3 * scale once as the cvt path's multiply does, then one
// round to bf16 as before. Finite e4m3 only (quantized weights never hold the NaN codes).
// NOTE: per 4 bytes ~6 integer ops replace 2 e4m3x2->f16x2 and 4 f16->f32 conversions.
template <bool kTwoStep>
__device__ __forceinline__ void WidenE4M3BitsBy(const uint4& v, float mul, float scale, uint4& lo,
                                                uint4& hi) {
  const uint32_t in[4] = {v.x, v.y, v.z, v.w};
  uint32_t out[8];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    uint32_t bits[4];
    E4m3x4ToF32Bits(in[i], bits);
    float f[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      f[j] = __uint_as_float(bits[j]) * mul;
      if constexpr (kTwoStep) f[j] *= scale;
    }
    const __nv_bfloat162 b01 = __floats2bfloat162_rn(f[0], f[1]);
    const __nv_bfloat162 b23 = __floats2bfloat162_rn(f[2], f[3]);
    out[2 * i] = *reinterpret_cast<const uint32_t*>(&b01);
    out[2 * i + 1] = *reinterpret_cast<const uint32_t*>(&b23);
  }
  lo = make_uint4(out[0], out[1], out[2], out[3]);
  hi = make_uint4(out[4], out[5], out[6], out[7]);
}

__device__ __forceinline__ void WidenE4M3Bits(const uint4& v, float scale, uint4& lo, uint4& hi) {
  if (E4m3ScaleFolds(scale)) {
    WidenE4M3BitsBy<false>(v, scale * kE4m3BitsUnscale, scale, lo, hi);
  } else {
    WidenE4M3BitsBy<true>(v, kE4m3BitsUnscale, scale, lo, hi);
  }
}

// Stores two 16-byte chunks (st.shared.v4) at shared addresses d0 and d1.
__device__ __forceinline__ void StoreChunks(uint32_t d0, uint32_t d1, const uint4& lo,
                                            const uint4& hi) {
  asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(d0), "r"(lo.x), "r"(lo.y),
               "r"(lo.z), "r"(lo.w));
  asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(d1), "r"(hi.x), "r"(hi.y),
               "r"(hi.z), "r"(hi.w));
}

}  // namespace tessera::cuda
