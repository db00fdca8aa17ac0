// kernels/base/fp8_bits.h on the CPU: the bit-move widening the CUDA FP8 expert GEMMs use
// (cuda/fp8.cuh WidenE4M3Bits) gives, for every finite e4m3 code in every byte position and a
// spread of block scales (subnormal, tiny, typical, >= 2^8 and negative), the bf16 bits of
// bf16(fp32(e4m3) * scale): those of the conversion path and of DequantizeFp8Weight.
#include "kernels/base/fp8_bits.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/base/dtype.h"

namespace tessera {
namespace {

uint16_t ToBf16Bits(float f) {
  uint16_t out;
  ConvertDType(DType::kF32, &f, 1, DType::kBF16, &out);
  return out;
}

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// As WidenE4M3Bits computes one element, on the host.
float WidenedTimesScale(uint32_t bits, float scale) {
  if (E4m3ScaleFolds(scale)) return FromBits(bits) * (scale * kE4m3BitsUnscale);
  return FromBits(bits) * kE4m3BitsUnscale * scale;
}

TEST(Fp8BitsTest, UnscaledIsExact) {
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7f) == 0x7f) continue;  // NaN
    for (int pos = 0; pos < 4; ++pos) {
      uint32_t bits[4];
      E4m3x4ToF32Bits(static_cast<uint32_t>(code) << (8 * pos), bits);
      for (int j = 0; j < 4; ++j) {
        const float want = j == pos ? F8E4M3ToFloat(static_cast<uint8_t>(code)) : 0.0f;
        EXPECT_EQ(FromBits(bits[j]) * kE4m3BitsUnscale, want) << code << " in byte " << pos;
      }
    }
  }
}

TEST(Fp8BitsTest, ScaledRoundsAsTheConversionPath) {
  std::vector<float> scales = {1.0f,     0.5f,   1.0f / 448, 3.7e-3f, 1.234567e-5f, 0x1p-130f,
                               1e-40f,   255.9f, 256.0f,     1000.0f, -0.0123f,     1e30f,
                               1.2e-38f, 0.1f,   3.3333f,    -300.0f};
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> exponent(-40.0f, 3.0f);
  for (int i = 0; i < 200; ++i) scales.push_back(std::pow(10.0f, exponent(rng)));
  for (float scale : scales) {
    for (int code = 0; code < 256; ++code) {
      if ((code & 0x7f) == 0x7f) continue;
      const uint16_t want = ToBf16Bits(F8E4M3ToFloat(static_cast<uint8_t>(code)) * scale);
      for (int pos = 0; pos < 4; ++pos) {
        uint32_t bits[4];
        E4m3x4ToF32Bits(static_cast<uint32_t>(code) << (8 * pos), bits);
        EXPECT_EQ(ToBf16Bits(WidenedTimesScale(bits[pos], scale)), want)
            << "code " << code << " byte " << pos << " scale " << scale;
      }
    }
  }
}

}  // namespace
}  // namespace tessera
