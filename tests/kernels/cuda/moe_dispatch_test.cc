// The expert-parallel dispatch kernels against the CPU reference: the send layout bit for bit
// (rank counts, expert counts, send tokens, slots) over rank counts 1..64 and odd token counts
// with padding rows, the pack exactly (a copy), and the combine within one bf16 rounding (fp32
// sums of bf16 rows, rounded once), unaligned widths included; each shape also in the fixed-block
// layout of the low-latency exchange (block capacity n, and n + 3: blocks with unused rows), and
// with a valid-row count on the device (the tail as padding) and the expert-load counters added to.
// The FP8 payload's dequantize bit for bit against the CPU reference rounded to bf16.
#include <algorithm>
#include <numeric>

#include <gtest/gtest.h>

#include "kernels/cpu/reference.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace tessera {
namespace {

using testing::kOneRounding;

std::vector<int32_t> RandomRouting(int n, int experts, int top_k, std::mt19937& rng) {
  std::vector<int32_t> ids(static_cast<size_t>(n) * top_k), all(experts);
  std::iota(all.begin(), all.end(), 0);
  for (int t = 0; t < n; ++t) {
    std::shuffle(all.begin(), all.end(), rng);
    const bool pad = t % 7 == 6;  // padding rows, as an EP slice's tail
    for (int k = 0; k < top_k; ++k) ids[static_cast<size_t>(t) * top_k + k] = pad ? -1 : all[k];
  }
  return ids;
}

// n, ranks, experts per rank, top_k, hidden
class CudaDispatchTest : public testing::CudaParamTest<std::tuple<int, int, int, int, int>> {};

// valid < 0: no valid-row count and no load counters.
void CheckDispatch(Backend& gpu, int n, int ranks, int per_rank, int top_k, int hidden, int cap,
                   int valid) {
  std::mt19937 rng(n * 5 + ranks * 3 + per_rank + top_k + hidden + cap + valid);
  const auto ids = RandomRouting(n, ranks * per_rank, top_k, rng);
  const size_t send_cap = cap > 0 ? static_cast<size_t>(std::max(ranks * cap, 1))
                                  : static_cast<size_t>(std::max(n, 1)) * std::min(top_k, ranks);

  std::vector<int32_t> rc(ranks), ec(ranks * per_rank), st(send_cap, -7), ts(n * top_k);
  // The counters start from earlier calls' totals (past 2^31: int64 on the device).
  std::vector<int64_t> load(ranks + ranks * per_rank);
  for (size_t i = 0; i < load.size(); ++i)
    load[i] = (int64_t{1} << 32) + 3 * static_cast<int64_t>(i);
  const std::vector<int64_t> load_before = load;
  cpu::MoeDispatchLayout(ids.data(), n, top_k, ranks, per_rank, rc.data(), ec.data(), st.data(),
                         ts.data(), cap, valid >= 0 ? &valid : nullptr,
                         valid >= 0 ? load.data() : nullptr);
  DeviceBuffer d_valid = testing::UploadRaw(gpu, std::vector<int32_t>{valid});
  DeviceBuffer d_load = testing::UploadRaw(gpu, load_before);
  DeviceBuffer d_ids = testing::UploadRaw(gpu, ids);
  DeviceBuffer d_rc = testing::UploadRaw(gpu, std::vector<int32_t>(ranks, -7));
  DeviceBuffer d_ec = testing::UploadRaw(gpu, std::vector<int32_t>(ranks * per_rank, -7));
  DeviceBuffer d_st = testing::UploadRaw(gpu, std::vector<int32_t>(send_cap, -7));
  DeviceBuffer d_ts = testing::UploadRaw(gpu, std::vector<int32_t>(std::max(n * top_k, 1), -7));
  gpu.MoeDispatchLayout(d_ids.as<int32_t>(), n, top_k, ranks, per_rank, d_rc.as<int32_t>(),
                        d_ec.as<int32_t>(), d_st.as<int32_t>(), d_ts.as<int32_t>(), cap,
                        valid >= 0 ? d_valid.as<int32_t>() : nullptr,
                        valid >= 0 ? d_load.as<int64_t>() : nullptr);
  EXPECT_EQ(testing::DownloadRaw<int32_t>(gpu, d_rc, ranks), rc);
  EXPECT_EQ(testing::DownloadRaw<int64_t>(gpu, d_load, load.size()), load);
  EXPECT_EQ(testing::DownloadRaw<int32_t>(gpu, d_ec, ranks * per_rank), ec);
  // Packed: the first sum(rc) rows; fixed blocks: all S * cap rows (unused ones -1).
  const int rows = cap > 0 ? ranks * cap : std::accumulate(rc.begin(), rc.end(), 0);
  const auto got_st = testing::DownloadRaw<int32_t>(gpu, d_st, send_cap);
  EXPECT_TRUE(std::equal(st.begin(), st.begin() + rows, got_st.begin()));
  EXPECT_EQ(testing::DownloadRaw<int32_t>(gpu, d_ts, n * top_k), ts);

  // Pack: an exact copy of rows, ids and weights.
  const auto x = testing::RandomBf16(static_cast<size_t>(n) * hidden, rng);
  std::vector<float> w(n * top_k);
  for (auto& v : w) v = std::uniform_real_distribution<float>(0, 1)(rng);
  std::vector<float> sx(rows * hidden), sw(rows * top_k);
  std::vector<int32_t> si(rows * top_k);
  cpu::MoeDispatchPack(x.data(), ids.data(), w.data(), st.data(), rows, hidden, top_k, sx.data(),
                       si.data(), sw.data());
  DeviceBuffer d_x = testing::UploadBf16(gpu, x.empty() ? std::vector<float>{0} : x);
  DeviceBuffer d_w = testing::UploadRaw(gpu, w.empty() ? std::vector<float>{0} : w);
  DeviceBuffer d_sx = testing::PoisonedBf16(gpu, std::max<size_t>(sx.size(), 1));
  DeviceBuffer d_si = testing::UploadRaw(gpu, std::vector<int32_t>(std::max<size_t>(si.size(), 1)));
  DeviceBuffer d_sw = testing::UploadRaw(gpu, std::vector<float>(std::max<size_t>(sw.size(), 1)));
  gpu.MoeDispatchPack(d_x.data(), d_ids.as<int32_t>(), d_w.as<float>(), d_st.as<int32_t>(), rows,
                      hidden, top_k, d_sx.data(), d_si.as<int32_t>(), d_sw.as<float>());
  EXPECT_EQ(testing::DownloadBf16(gpu, d_sx, sx.size()), sx);
  EXPECT_EQ(testing::DownloadRaw<int32_t>(gpu, d_si, si.size()), si);
  EXPECT_EQ(testing::DownloadRaw<float>(gpu, d_sw, sw.size()), sw);

  // Combine: the ranks' partial sums (any bf16 rows) summed per token in slot order.
  const auto y = testing::RandomBf16(static_cast<size_t>(std::max(rows, 1)) * hidden, rng);
  std::vector<float> ref(static_cast<size_t>(n) * hidden);
  cpu::MoeCombineRanks(y.data(), ts.data(), n, top_k, hidden, ref.data());
  DeviceBuffer d_y = testing::UploadBf16(gpu, y);
  DeviceBuffer d_out = testing::PoisonedBf16(gpu, std::max<size_t>(ref.size(), 1));
  gpu.MoeCombineRanks(d_y.data(), d_ts.as<int32_t>(), n, top_k, hidden, d_out.data());
  if (n > 0) {
    testing::ExpectRelativeL2("MoeCombineRanks", testing::DownloadBf16(gpu, d_out, ref.size()), ref,
                              kOneRounding);
  }
}

TEST_P(CudaDispatchTest, LayoutExactPackExactCombineClose) {
  const auto [n, ranks, per_rank, top_k, hidden] = GetParam();
  for (int cap : {0, n, n + 3}) {
    if (cap == n && n == 0) continue;  // 0 is the packed layout, checked first
    for (int valid : {-1, n - n / 3}) {
      SCOPED_TRACE(::testing::Message() << "block capacity " << cap << ", valid rows " << valid);
      CheckDispatch(gpu(), n, ranks, per_rank, top_k, hidden, cap, valid);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaDispatchTest,
    ::testing::Values(std::make_tuple(0, 4, 2, 2, 64), std::make_tuple(1, 1, 8, 3, 24),
                      std::make_tuple(33, 2, 4, 2, 72), std::make_tuple(37, 3, 3, 5, 13),
                      std::make_tuple(300, 8, 16, 8, 4096), std::make_tuple(517, 64, 2, 8, 136),
                      std::make_tuple(1000, 16, 8, 8, 256)));

using CudaDequantizeFp8Test = testing::CudaTest;

TEST_F(CudaDequantizeFp8Test, MatchesReferenceBitForBit) {
  // m, k: partial 128-groups, widths not a multiple of 8 (the scalar path), Qwen3-235B's hidden.
  const std::vector<std::pair<int, int>> shapes = {
      {1, 128}, {7, 200}, {5, 13}, {33, 4096}, {300, 4096}};
  for (const auto& [m, k] : shapes) {
    SCOPED_TRACE(::testing::Message() << m << " x " << k);
    std::mt19937 rng(m * 31 + k);
    auto x = testing::RandomBf16(static_cast<size_t>(m) * k, rng, -40.0f, 40.0f);
    x[0] = 0.0f;
    const int64_t stride = m + 3, groups = Fp8Blocks(k);
    std::vector<uint8_t> data(x.size());
    std::vector<float> scale(static_cast<size_t>(groups * stride), 1.0f), want(x.size());
    cpu::QuantizeFp8(x.data(), m, k, data.data(), scale.data(), stride);
    cpu::DequantizeFp8Activations(data.data(), scale.data(), stride, m, k, want.data());
    for (float& v : want) v = testing::RoundBf16(v);
    DeviceBuffer d_data = testing::UploadRaw(gpu(), data);
    DeviceBuffer d_scale = testing::UploadRaw(gpu(), scale);
    DeviceBuffer d_out = testing::PoisonedBf16(gpu(), x.size());
    Fp8Activations q;
    q.data = d_data.data();
    q.scale = d_scale.as<float>();
    q.scale_stride = stride;
    gpu().DequantizeFp8(q, m, k, d_out.data());
    EXPECT_EQ(testing::DownloadBf16(gpu(), d_out, x.size()), want);
  }
}

}  // namespace
}  // namespace tessera
