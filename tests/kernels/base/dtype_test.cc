// Conversions between float32 and the checkpoint dtypes, against known bit patterns.
#include "kernels/base/dtype.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace tessera {
namespace {

TEST(DTypeTest, NamesRoundTrip) {
  for (DType d :
       {DType::kF32, DType::kBF16, DType::kF16, DType::kF8E4M3, DType::kI32, DType::kI64}) {
    DType parsed;
    ASSERT_TRUE(ParseDTypeName(DTypeName(d), &parsed));
    EXPECT_EQ(parsed, d);
  }
  DType unused;
  EXPECT_FALSE(ParseDTypeName("F64", &unused));
  EXPECT_FALSE(ParseDTypeName("", &unused));
}

TEST(DTypeTest, BF16KnownValues) {
  EXPECT_EQ(BF16ToFloat(0x3f80), 1.0f);
  EXPECT_EQ(BF16ToFloat(0xc000), -2.0f);
  EXPECT_EQ(FloatToBF16(1.0f), 0x3f80);
  // 1 + 2^-8 is halfway between two bf16 values: ties round to even (down to 1.0).
  EXPECT_EQ(FloatToBF16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  // 1 + 3*2^-8 ties up to the even neighbour 1 + 2^-6.
  EXPECT_EQ(FloatToBF16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_TRUE(std::isnan(BF16ToFloat(FloatToBF16(NAN))));
}

TEST(DTypeTest, F16RoundTripsEveryValue) {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float f = F16ToFloat(static_cast<uint16_t>(bits));
    if (std::isnan(f)) continue;
    EXPECT_EQ(FloatToF16(f), bits) << "bits " << bits;
  }
  EXPECT_EQ(F16ToFloat(0x3c00), 1.0f);
  EXPECT_EQ(F16ToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(F16ToFloat(0x7bff), 65504.0f);
}

TEST(DTypeTest, F8E4M3KnownValues) {
  EXPECT_EQ(F8E4M3ToFloat(0x38), 1.0f);
  EXPECT_EQ(F8E4M3ToFloat(0x7e), 448.0f);                // largest finite
  EXPECT_EQ(F8E4M3ToFloat(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(F8E4M3ToFloat(0xb8), -1.0f);
  EXPECT_TRUE(std::isnan(F8E4M3ToFloat(0x7f)));
  EXPECT_TRUE(std::isnan(F8E4M3ToFloat(0xff)));
}

TEST(DTypeTest, ConvertToFloatUnaligned) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-4.0f, 4.0f);
  std::vector<unsigned char> bytes(1 + 2 * 33);
  std::vector<float> expect(33);
  for (int i = 0; i < 33; ++i) {
    uint16_t b = FloatToBF16(dist(rng));
    expect[i] = BF16ToFloat(b);
    std::memcpy(bytes.data() + 1 + 2 * i, &b, 2);
  }
  std::vector<float> got(33);
  ConvertToFloat(DType::kBF16, bytes.data() + 1, 33, got.data());
  EXPECT_EQ(got, expect);
}

// The host reference of the loader's conversion: the same dtype byte for byte (bf16 NaN payloads
// included), F32 through ConvertToFloat, BF16 through ConvertToFloat then FloatToBF16, across
// its internal pieces (1024 elements) and an odd tail.
TEST(DTypeTest, ConvertDTypeIsCopyOrFloatRoundTrip) {
  std::mt19937 rng(5);
  const size_t n = 2 * 1024 + 37;
  for (DType src : {DType::kBF16, DType::kF16, DType::kF32, DType::kF8E4M3}) {
    std::vector<uint8_t> bytes(n * DTypeSize(src));
    for (auto& b : bytes) b = static_cast<uint8_t>(rng());
    std::vector<float> as_float(n);
    ConvertToFloat(src, bytes.data(), n, as_float.data());

    std::vector<float> f32(n);
    ConvertDType(src, bytes.data(), n, DType::kF32, f32.data());
    EXPECT_EQ(std::memcmp(f32.data(), as_float.data(), n * 4), 0) << DTypeName(src);

    std::vector<uint16_t> bf16(n);
    ConvertDType(src, bytes.data(), n, DType::kBF16, bf16.data());
    for (size_t i = 0; i < n; ++i) {
      uint16_t want;
      if (src == DType::kBF16) {
        std::memcpy(&want, &bytes[2 * i], 2);
      } else {
        want = FloatToBF16(as_float[i]);
      }
      ASSERT_EQ(bf16[i], want) << DTypeName(src) << " element " << i;
    }
  }
}

}  // namespace
}  // namespace tessera
