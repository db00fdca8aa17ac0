// HeadNormRope against the fp32 reference on the same bf16 inputs: strided rows, several head
// sizes, positions up to 1e5 (large angles), YaRN-style attention scaling, with and without the
// per-head norm; elements between rows stay untouched.
// QkNormRopeKvWrite: bit for bit the unfused HeadNormRope (q), HeadNormRope (k), WriteKvCache on
// the GPU, and within one rounding of the fp32 reference; slots < 0 leave the caches untouched.
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
  // Rows like the fused qkv's; an odd stride takes the scalar kernel, an even one (with d % 4 == 0)
  // the vectorised kernel.
  for (const int pad : {1, 2}) {
    SCOPED_TRACE(pad);
    const int stride = heads * head_dim + 3 * head_dim + pad;
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
    gpu().HeadNormRope(dx.data(), stride, n, heads, head_dim, with_norm ? dw.data() : nullptr,
                       1e-6f, dpos.as<int32_t>(), dfreq.as<float>(), scaling);
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
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaRopeTest,
    ::testing::Values(std::make_tuple(1, 1, 2, true), std::make_tuple(9, 5, 16, true),
                      std::make_tuple(9, 5, 16, false), std::make_tuple(33, 8, 128, true),
                      std::make_tuple(7, 64, 128, true), std::make_tuple(5, 3, 80, true),
                      std::make_tuple(4, 2, 256, true)));

// n, q_heads, kv_heads, head_dim, YaRN-style (scaled inv_freq and attention_scaling != 1)
class CudaQkNormRopeKvWriteTest
    : public testing::CudaParamTest<std::tuple<int, int, int, int, bool>> {};

TEST_P(CudaQkNormRopeKvWriteTest, MatchesUnfusedBitForBit) {
  const auto [n, qh, kvh, d, yarn] = GetParam();
  const int row = (qh + 2 * kvh) * d;
  const int stride = row + (d % 4 == 0 ? 8 : 3);  // a padded row; odd for the scalar shapes
  const int kv_width = kvh * d, num_slots = 2 * n + 5;
  std::mt19937 rng(n * 7 + qh * 3 + kvh + d + yarn);
  auto qkv = testing::RandomBf16(static_cast<size_t>(n) * stride, rng, -2, 2);
  auto qn = testing::RandomBf16(d, rng, 0.5, 1.5), kn = testing::RandomBf16(d, rng, 0.5, 1.5);
  std::vector<float> inv_freq(d / 2);
  for (int i = 0; i < d / 2; ++i) {
    inv_freq[i] = std::pow(1e6f, -2.0f * static_cast<float>(i) / static_cast<float>(d));
    if (yarn && i >= d / 4) inv_freq[i] /= 4.0f;  // YaRN's interpolated low frequencies
  }
  const float scaling = yarn ? 1.1386f : 1.0f;
  std::vector<int32_t> positions(n), slots(n);
  std::uniform_int_distribution<int> pos(0, 100000);
  for (int t = 0; t < n; ++t) {
    positions[t] = t < 2 ? t : pos(rng);
    slots[t] = t % 5 == 3 ? -1 : 2 * t + 1;  // some tokens without a slot (graph padding rows)
  }
  const std::vector<float> nan_cache(static_cast<size_t>(num_slots) * kv_width, NAN);

  // fp32 reference.
  std::vector<float> ref = qkv, ref_k = nan_cache, ref_v = nan_cache;
  cpu::QkNormRopeKvWrite(ref.data(), stride, n, qh, kvh, d, qn.data(), kn.data(), 1e-6f,
                         positions.data(), inv_freq.data(), scaling, slots.data(), ref_k.data(),
                         ref_v.data());

  DeviceBuffer dqn = testing::UploadBf16(gpu(), qn), dkn = testing::UploadBf16(gpu(), kn);
  DeviceBuffer dpos = testing::UploadRaw(gpu(), positions),
               dslots = testing::UploadRaw(gpu(), slots);
  DeviceBuffer dfreq = testing::UploadRaw(gpu(), inv_freq);
  // Unfused on the GPU.
  DeviceBuffer ux = testing::UploadBf16(gpu(), qkv);
  DeviceBuffer uk = testing::UploadBf16(gpu(), nan_cache),
               uv = testing::UploadBf16(gpu(), nan_cache);
  auto* uq = ux.as<uint16_t>();
  gpu().HeadNormRope(uq, stride, n, qh, d, dqn.data(), 1e-6f, dpos.as<int32_t>(), dfreq.as<float>(),
                     scaling);
  gpu().HeadNormRope(uq + qh * d, stride, n, kvh, d, dkn.data(), 1e-6f, dpos.as<int32_t>(),
                     dfreq.as<float>(), scaling);
  gpu().WriteKvCache(uq + qh * d, uq + (qh + kvh) * d, stride, n, kvh, d, dslots.as<int32_t>(),
                     uk.data(), uv.data());
  // Fused.
  DeviceBuffer fx = testing::UploadBf16(gpu(), qkv);
  DeviceBuffer fk = testing::UploadBf16(gpu(), nan_cache),
               fv = testing::UploadBf16(gpu(), nan_cache);
  gpu().QkNormRopeKvWrite(fx.data(), stride, n, qh, kvh, d, dqn.data(), dkn.data(), 1e-6f,
                          dpos.as<int32_t>(), dfreq.as<float>(), scaling, dslots.as<int32_t>(),
                          fk.data(), fv.data());

  const size_t xs = static_cast<size_t>(n) * stride, cs = nan_cache.size();
  auto bits = [&](const DeviceBuffer& b, size_t count) {
    return testing::DownloadRaw<uint16_t>(gpu(), b, count);
  };
  EXPECT_EQ(bits(fx, xs), bits(ux, xs)) << "qkv rows differ from the unfused ops";
  EXPECT_EQ(bits(fk, cs), bits(uk, cs)) << "key cache differs from the unfused ops";
  EXPECT_EQ(bits(fv, cs), bits(uv, cs)) << "value cache differs from the unfused ops";

  // Against fp32: q and k heads within one rounding; v and padding untouched; the caches hold
  // exactly the (rounded) k and v rows at each slot and NaN at every other slot.
  auto got = testing::DownloadBf16(gpu(), fx, xs);
  auto got_k = testing::DownloadBf16(gpu(), fk, cs), got_v = testing::DownloadBf16(gpu(), fv, cs);
  std::vector<float> got_qk, ref_qk;
  for (int t = 0; t < n; ++t) {
    for (int i = 0; i < stride; ++i) {
      const size_t at = static_cast<size_t>(t) * stride + i;
      if (i < (qh + kvh) * d) {
        got_qk.push_back(got[at]);
        ref_qk.push_back(ref[at]);
      } else {
        ASSERT_EQ(got[at], qkv[at]) << "row " << t << " element " << i << " past q and k";
      }
    }
  }
  testing::ExpectRelativeL2("QkNormRopeKvWrite q|k", got_qk, ref_qk, kOneRounding);
  for (int s = 0; s < num_slots; ++s) {
    int token = -1;
    for (int t = 0; t < n; ++t) token = slots[t] == s ? t : token;
    for (int i = 0; i < kv_width; ++i) {
      const size_t at = static_cast<size_t>(s) * kv_width + i;
      if (token < 0) {
        ASSERT_TRUE(std::isnan(got_k[at]) && std::isnan(got_v[at])) << "slot " << s << " written";
      } else {
        const size_t from = static_cast<size_t>(token) * stride + qh * d + i;
        ASSERT_EQ(got_k[at], got[from]) << "slot " << s << " key " << i;
        ASSERT_EQ(got_v[at], qkv[from + kv_width]) << "slot " << s << " value " << i;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaQkNormRopeKvWriteTest,
    ::testing::Values(std::make_tuple(1, 40, 8, 128, false), std::make_tuple(64, 40, 8, 128, true),
                      std::make_tuple(9, 5, 1, 64, false), std::make_tuple(6, 4, 2, 256, true),
                      std::make_tuple(13, 3, 3, 80, false), std::make_tuple(5, 3, 1, 6, true),
                      std::make_tuple(300, 16, 4, 128, true)));

}  // namespace
}  // namespace tessera
