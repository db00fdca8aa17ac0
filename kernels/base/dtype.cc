#include "kernels/base/dtype.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/base/check.h"

namespace tessera {

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kBF16:
      return 2;
    case DType::kF16:
      return 2;
    case DType::kF8E4M3:
      return 1;
    case DType::kI32:
      return 4;
    case DType::kI64:
      return 8;
  }
  return 0;
}

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kF16:
      return "F16";
    case DType::kF8E4M3:
      return "F8_E4M3";
    case DType::kI32:
      return "I32";
    case DType::kI64:
      return "I64";
  }
  return "?";
}

bool ParseDTypeName(std::string_view name, DType* dtype) {
  static constexpr struct {
    std::string_view name;
    DType dtype;
  } kNames[] = {{"F32", DType::kF32},        {"BF16", DType::kBF16}, {"F16", DType::kF16},
                {"F8_E4M3", DType::kF8E4M3}, {"I32", DType::kI32},   {"I64", DType::kI64}};
  for (const auto& entry : kNames) {
    if (entry.name == name) {
      *dtype = entry.dtype;
      return true;
    }
  }
  return false;
}

float F16ToFloat(uint16_t h) {
  const uint32_t sign = (h >> 15) & 1u;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  float value;
  if (exponent == 0) {
    value = std::ldexp(static_cast<float>(mantissa), -24);  // zero or subnormal
  } else if (exponent == 31) {
    value =
        mantissa ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  } else {
    value = std::ldexp(static_cast<float>(mantissa | 0x400u), static_cast<int>(exponent) - 25);
  }
  return sign ? -value : value;
}

uint16_t FloatToF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (abs < 0x38800000u) {                                               // subnormal or zero
    const float magnitude = std::fabs(f);
    const uint32_t m = static_cast<uint32_t>(std::nearbyint(std::ldexp(magnitude, 24)));
    return static_cast<uint16_t>(sign | m);
  }
  uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);  // round to nearest even at bit 13
  return static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
}

float F8E4M3ToFloat(uint8_t bits) {
  const uint32_t sign = bits >> 7;
  const uint32_t exponent = (bits >> 3) & 0xfu;
  const uint32_t mantissa = bits & 0x7u;
  float value;
  if (exponent == 0xf && mantissa == 0x7) {
    value = std::numeric_limits<float>::quiet_NaN();
  } else if (exponent == 0) {
    value = std::ldexp(static_cast<float>(mantissa), -9);  // subnormal: m * 2^-3 * 2^-6
  } else {
    value = std::ldexp(static_cast<float>(mantissa | 0x8u), static_cast<int>(exponent) - 10);
  }
  return sign ? -value : value;
}

uint8_t FloatToF8E4M3(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7f;  // NaN
  float mag;
  std::memcpy(&mag, &a, sizeof(mag));
  if (mag >= 448.0f) return sign | 0x7e;  // saturate (448 = 0x7e; 0x7f is NaN)
  if (mag < 0.015625f) {
    // Subnormal range (below 2^-6): steps of 2^-9. mag * 512 is exact (a power-of-two scaling of
    // a value far above float's subnormals, or a float subnormal that rounds to 0), and
    // nearbyint rounds it to nearest even; 8 steps is the smallest normal, encoded as 0x08.
    return sign | static_cast<uint8_t>(std::nearbyint(mag * 512.0f));
  }
  // Normal: keep 3 of float's 23 mantissa bits, rounding to nearest even; a carry out of the
  // mantissa moves to the next binade, as it should.
  uint32_t r = a + 0x7ffffu + ((a >> 20) & 1u);
  const int exponent = static_cast<int>(r >> 23) - 127 + 7;  // e4m3 bias 7
  if (exponent > 15 || (exponent == 15 && ((r >> 20) & 7u) == 7u)) return sign | 0x7e;
  return sign | static_cast<uint8_t>((exponent << 3) | ((r >> 20) & 7u));
}

void ConvertToFloat(DType dtype, const void* src, size_t count, float* dst) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, count * sizeof(float));
      return;
    // NOTE: memory-mapped tensors need not be 2-byte aligned, so elements are read with memcpy.
    case DType::kBF16: {
      const auto* s = static_cast<const unsigned char*>(src);
      for (size_t i = 0; i < count; ++i) {
        uint16_t bits;
        std::memcpy(&bits, s + 2 * i, 2);
        dst[i] = BF16ToFloat(bits);
      }
      return;
    }
    case DType::kF16: {
      const auto* s = static_cast<const unsigned char*>(src);
      for (size_t i = 0; i < count; ++i) {
        uint16_t bits;
        std::memcpy(&bits, s + 2 * i, 2);
        dst[i] = F16ToFloat(bits);
      }
      return;
    }
    case DType::kF8E4M3: {
      const auto* s = static_cast<const uint8_t*>(src);
      for (size_t i = 0; i < count; ++i) dst[i] = F8E4M3ToFloat(s[i]);
      return;
    }
    case DType::kI32:
    case DType::kI64:
      break;
  }
  TESSERA_CHECK(false) << "ConvertToFloat: integer dtype " << DTypeName(dtype);
}

void ConvertDType(DType src_dtype, const void* src, size_t count, DType dst_dtype, void* dst) {
  if (src_dtype == dst_dtype) {
    std::memcpy(dst, src, count * DTypeSize(src_dtype));
    return;
  }
  if (dst_dtype == DType::kF32) {
    ConvertToFloat(src_dtype, src, count, static_cast<float*>(dst));
    return;
  }
  TESSERA_CHECK(dst_dtype == DType::kBF16)
      << "ConvertDType: to " << DTypeName(dst_dtype) << " is not supported (F32 or BF16)";
  constexpr size_t kPiece = 1024;
  float piece[kPiece];
  const auto* s = static_cast<const unsigned char*>(src);
  auto* d = static_cast<unsigned char*>(dst);
  const size_t src_size = DTypeSize(src_dtype);
  for (size_t begin = 0; begin < count; begin += kPiece) {
    const size_t n = std::min(kPiece, count - begin);
    ConvertToFloat(src_dtype, s + begin * src_size, n, piece);
    for (size_t i = 0; i < n; ++i) {
      const uint16_t bits = FloatToBF16(piece[i]);
      std::memcpy(d + (begin + i) * 2, &bits, 2);
    }
  }
}

}  // namespace tessera
