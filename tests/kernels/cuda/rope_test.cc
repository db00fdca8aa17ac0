// HeadNormRope against the fp32 reference on the same bf16 inputs: strided rows, several head
// sizes, positions up to 1e5 (large angles), YaRN-style attention scaling, with and without the
// per-head norm; elements between rows stay untouched.
#include <cmath>

#include <gtest/gtest.h>

#include "kernels/cpu/reference.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace tessera {
namespace {

using testing::kOneRounding;

// n, heads, head_dim, with norm
class CudaRopeTest : public testing::CudaParamTest<std::tuple<int, int, int, bool>> {};

TEST_P(CudaRopeTest, MatchesReference) {
  const auto [n, heads, head_dim, with_norm] = GetParam();
  const int stride = heads * head_dim + 3 * head_dim + 1;  // rows like the fused qkv's
  std::mt19937 rng(n * 17 + heads * 5 + head_dim + with_norm);
  auto x = testing::RandomBf16(n * stride, rng, -2, 2);
  auto w = testing::RandomBf16(head_dim, rng, 0.5, 1.5);
  std::vector<float> inv_freq(head_dim / 2);
  for (int i = 0; i < head_dim / 2; ++i)
    inv_freq[i] = std::pow(1e6f, -2.0f * static_cast<float>(i) / static_cast<float>(head_dim));
  std::vector<int32_t> positions(n);
  std::uniform_int_distribution<int> pos(0, 100000);
  for (int t = 0; t < n; ++t) positions[t] = t < 3 ? t : pos(rng);
  const float scaling = 1.1f;

  std::vector<float> ref = x;
  cpu::HeadNormRope(ref.data(), stride, n, heads, head_dim, with_norm ? w.data() : nullptr, 1e-6f,
                    positions.data(), inv_freq.data(), scaling);
  DeviceBuffer dx = testing::UploadBf16(gpu(), x), dw = testing::UploadBf16(gpu(), w);
  DeviceBuffer dpos = testing::UploadRaw(gpu(), positions);
  DeviceBuffer dfreq = testing::UploadRaw(gpu(), inv_freq);
  gpu().HeadNormRope(dx.data(), stride, n, heads, head_dim, with_norm ? dw.data() : nullptr, 1e-6f,
                     dpos.as<int32_t>(), dfreq.as<float>(), scaling);
  auto got = testing::DownloadBf16(gpu(), dx, n * stride);
  std::vector<float> got_heads, ref_heads;
  for (int t = 0; t < n; ++t) {
    for (int i = 0; i < stride; ++i) {
      const size_t at = static_cast<size_t>(t) * stride + i;
      if (i < heads * head_dim) {
        got_heads.push_back(got[at]);
        ref_heads.push_back(ref[at]);
      } else {
        ASSERT_EQ(got[at], x[at]) << "row " << t << " element " << i << " past the heads";
      }
    }
  }
  testing::ExpectRelativeL2("HeadNormRope", got_heads, ref_heads, kOneRounding);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaRopeTest,
    ::testing::Values(std::make_tuple(1, 1, 2, true), std::make_tuple(9, 5, 16, true),
                      std::make_tuple(9, 5, 16, false), std::make_tuple(33, 8, 128, true),
                      std::make_tuple(7, 64, 128, true), std::make_tuple(5, 3, 80, true),
                      std::make_tuple(4, 2, 256, true)));

}  // namespace
}  // namespace tessera
