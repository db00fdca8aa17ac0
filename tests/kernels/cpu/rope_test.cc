// Per-head RMSNorm + rotate-half RoPE against float64, and RoPE's defining properties.
#include <gtest/gtest.h>

#include "kernels/cpu/reference.h"
#include "tests/kernels/cpu/test_util.h"

namespace tessera {
namespace {

TEST(HeadNormRopeTest, MatchesFloat64WithStride) {
  const int n = 5, heads = 3, head_dim = 10, stride = 41;  // stride > heads * head_dim
  std::mt19937 rng(11);
  auto x = testing::RandomVector(n * stride, rng, -2, 2);
  auto w = testing::RandomVector(head_dim, rng, 0.5, 1.5);
  std::vector<float> inv_freq(head_dim / 2);
  for (int i = 0; i < head_dim / 2; ++i) inv_freq[i] = std::pow(10000.0f, -2.0f * i / head_dim);
  std::vector<int32_t> positions = {0, 1, 7, 100, 4095};
  const float scaling = 1.25f;
  auto original = x;
  cpu::HeadNormRope(x.data(), stride, n, heads, head_dim, w.data(), 1e-6f, positions.data(),
                    inv_freq.data(), scaling);
  std::vector<float> got;
  std::vector<double> ref;
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < heads; ++h) {
      const float* v = original.data() + t * stride + h * head_dim;
      double ss = 0;
      for (int i = 0; i < head_dim; ++i) ss += static_cast<double>(v[i]) * v[i];
      const double inv = 1.0 / std::sqrt(ss / head_dim + 1e-6);
      std::vector<double> nv(head_dim);
      for (int i = 0; i < head_dim; ++i) nv[i] = w[i] * v[i] * inv;
      for (int i = 0; i < head_dim; ++i) {
        const int j = i % (head_dim / 2);
        const double angle = static_cast<double>(inv_freq[j]) * positions[t];
        const double c = std::cos(angle) * scaling, s = std::sin(angle) * scaling;
        ref.push_back(i < head_dim / 2 ? nv[i] * c - nv[i + head_dim / 2] * s
                                       : nv[i] * c + nv[i - head_dim / 2] * s);
        got.push_back(x[t * stride + h * head_dim + i]);
      }
    }
    // Elements past the heads are untouched.
    for (int i = heads * head_dim; i < stride; ++i)
      EXPECT_EQ(x[t * stride + i], original[t * stride + i]);
  }
  // Angles up to ~4095 rad lose ~4e-4 relative in float32 rounding of the angle itself.
  testing::ExpectClose(got, ref, 2e-3, 1e-4);
}

TEST(HeadNormRopeTest, PositionZeroWithoutNormIsScaling) {
  const int head_dim = 8;
  std::mt19937 rng(3);
  auto x = testing::RandomVector(head_dim, rng);
  auto expect = x;
  std::vector<float> inv_freq(head_dim / 2, 0.5f);
  int32_t pos = 0;
  cpu::HeadNormRope(x.data(), head_dim, 1, 1, head_dim, nullptr, 0.0f, &pos, inv_freq.data(), 2.0f);
  for (int i = 0; i < head_dim; ++i) EXPECT_FLOAT_EQ(x[i], 2.0f * expect[i]);
}

}  // namespace
}  // namespace tessera
