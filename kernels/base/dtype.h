// Element types tessera reads from checkpoints and computes in, and their conversions to float.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace tessera {

enum class DType { kF32, kBF16, kF16, kF8E4M3, kI32, kI64 };

// Bytes per element.
size_t DTypeSize(DType dtype);
// The safetensors spelling: "F32", "BF16", "F16", "F8_E4M3", "I32", "I64".
std::string_view DTypeName(DType dtype);
// Parses a safetensors dtype name; returns false for names tessera does not handle.
bool ParseDTypeName(std::string_view name, DType* dtype);

inline float BF16ToFloat(uint16_t bits) {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Round to nearest even, as torch does; NaN stays NaN.
inline uint16_t FloatToBF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float F16ToFloat(uint16_t bits);
uint16_t FloatToF16(float f);
// OCP FP8 E4M3 (the "fn" variant: no infinities, 0x7f/0xff are NaN), as in Qwen3 FP8 checkpoints.
float F8E4M3ToFloat(uint8_t bits);
// float32 -> E4M3 as Hopper's cvt.rn.satfinite.e4m3x2.f32 does it: round to nearest even,
// magnitudes past the largest finite value (448, infinities included) saturate to +-448, NaN
// becomes NaN (0x7f with the sign). The FP8 kernels' CPU references quantize through this.
uint8_t FloatToF8E4M3(float f);

// Converts `count` elements of `dtype` at `src` to float32. Integer dtypes are not convertible.
void ConvertToFloat(DType dtype, const void* src, size_t count, float* dst);

// Converts `count` elements of `src_dtype` to `dst_dtype` (F32 or BF16): the same dtype is copied
// byte for byte; anything else goes through float32 (ConvertToFloat, then FloatToBF16 for BF16).
// The host reference of the weight loader's conversion on the device (Backend::UploadStaged).
void ConvertDType(DType src_dtype, const void* src, size_t count, DType dst_dtype, void* dst);

}  // namespace tessera
