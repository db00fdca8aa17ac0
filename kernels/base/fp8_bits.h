// e4m3 -> fp32 by bit moves, shared by the CUDA kernels that widen FP8 weights (cuda/fp8.cuh) and
// a CPU test that checks it against the exact conversion (tests/kernels/base/fp8_bits_test.cc).
//
// Each byte's sign goes to bit 31 and its exponent and mantissa to bits 20..26 of an fp32: exactly
// the e4m3 value times 2^-120 (bias 127 against e4m3's 7; an e4m3 subnormal becomes the fp32
// subnormal of the same mantissa). No conversion instruction: a few integer ops per 4 bytes.
// Finite e4m3 only (the NaN codes 0x7f / 0xff become +-480 * 2^-120).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define TESSERA_HOST_DEVICE __host__ __device__
#else
#define TESSERA_HOST_DEVICE
#endif

namespace tessera {

// 2^120: what the fp32 bits of E4m3x4ToF32Bits are to be multiplied by.
inline constexpr float kE4m3BitsUnscale = 0x1p120f;

// The 4 e4m3 bytes of q (element i in byte i) -> fp32 bit patterns of value_i * 2^-120.
TESSERA_HOST_DEVICE inline void E4m3x4ToF32Bits(uint32_t q, uint32_t out[4]) {
  const uint32_t q8 = q << 8;
  // As bf16 halves: odd = (e1, e3), even = (e0, e2); a bf16 is an fp32's high half.
  const uint32_t odd = (q & 0x80008000u) | ((q & 0x7F007F00u) >> 4);
  const uint32_t even = (q8 & 0x80008000u) | ((q8 & 0x7F007F00u) >> 4);
  out[0] = even << 16;
  out[1] = odd << 16;
  out[2] = even & 0xFFFF0000u;
  out[3] = odd & 0xFFFF0000u;
}

// Whether value * 2^-120 times (scale * 2^120) rounds as value * scale does: scale * 2^120 is
// exact below 2^128. Larger scales multiply by 2^120 first, then by scale.
TESSERA_HOST_DEVICE inline bool E4m3ScaleFolds(float scale) {
  return scale < 256.0f && scale > -256.0f;
}

}  // namespace tessera
