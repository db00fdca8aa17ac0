// Linear (cuBLASLt bf16, fp32 compute) against the fp32 reference on the same bf16 inputs: odd
// sizes, the decode shape, and operands at unaligned offsets (as MoE expert slices are).
#include <gtest/gtest.h>

#include "kernels/cpu/reference.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace tessera {
namespace {

using testing::kOneRounding;

// m, n, k, and an element offset applied to x, w and y (0 = allocation-aligned).
class CudaLinearTest : public testing::CudaParamTest<std::tuple<int, int, int, int>> {};

TEST_P(CudaLinearTest, MatchesReference) {
  const auto [m, n, k, offset] = GetParam();
  std::mt19937 rng(m * 1000003 + n * 1009 + k + offset);
  auto x = testing::RandomBf16(offset + m * k, rng);
  auto w = testing::RandomBf16(offset + n * k, rng);
  std::vector<float> ref(m * n);
  cpu::Linear(x.data() + offset, w.data() + offset, m, n, k, ref.data());

  DeviceBuffer dx = testing::UploadBf16(gpu(), x), dw = testing::UploadBf16(gpu(), w);
  DeviceBuffer dy = testing::PoisonedBf16(gpu(), offset + m * n);
  gpu().Linear(dx.as<uint16_t>() + offset, dw.as<uint16_t>() + offset, m, n, k,
               dy.as<uint16_t>() + offset);
  auto y = testing::DownloadBf16(gpu(), dy, offset + m * n);
  y.erase(y.begin(), y.begin() + offset);
  char what[64];
  std::snprintf(what, sizeof(what), "Linear m=%d n=%d k=%d offset=%d", m, n, k, offset);
  testing::ExpectRelativeL2(what, y, ref, kOneRounding);
}

TEST_P(CudaLinearTest, RepeatsBitForBit) {
  // The cached plan gives the same bits on a second call (no nondeterministic split-K).
  const auto [m, n, k, offset] = GetParam();
  std::mt19937 rng(7 * m + n + k);
  auto x = testing::RandomBf16(m * k, rng), w = testing::RandomBf16(n * k, rng);
  DeviceBuffer dx = testing::UploadBf16(gpu(), x), dw = testing::UploadBf16(gpu(), w);
  DeviceBuffer y1 = gpu().Allocate(m * n * 2), y2 = gpu().Allocate(m * n * 2);
  gpu().Linear(dx.data(), dw.data(), m, n, k, y1.data());
  gpu().Linear(dx.data(), dw.data(), m, n, k, y2.data());
  EXPECT_EQ(testing::DownloadRaw<uint16_t>(gpu(), y1, m * n),
            testing::DownloadRaw<uint16_t>(gpu(), y2, m * n));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaLinearTest,
    ::testing::Values(std::make_tuple(1, 1, 1, 0), std::make_tuple(3, 5, 7, 0),
                      std::make_tuple(17, 65, 33, 0), std::make_tuple(1, 1000, 64, 0),
                      std::make_tuple(1, 2048, 1024, 0), std::make_tuple(37, 257, 130, 0),
                      std::make_tuple(256, 384, 512, 0), std::make_tuple(300, 1536, 1024, 0),
                      std::make_tuple(5, 96, 64, 1), std::make_tuple(9, 33, 17, 3),
                      std::make_tuple(64, 128, 256, 8)));

}  // namespace
}  // namespace tessera
