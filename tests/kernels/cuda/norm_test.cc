// RmsNorm and AddRmsNorm against the fp32 reference on the same bf16 inputs, odd sizes included.
// The shapes reach every path of norm.cu: scalar (widths not a multiple of 8, or misaligned
// rows), one warp per row (widths <= 1024, 1, 2 or 4 vectors per lane, a partial last block)
// and one block per row (1, 2 and 4 vectors per thread, a partial last warp).
#include <gtest/gtest.h>

#include "kernels/cpu/reference.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace tessera {
namespace {

using testing::CudaTest;
using testing::kOneRounding;

class CudaNormTest : public testing::CudaParamTest<std::tuple<int, int>> {};

TEST_P(CudaNormTest, RmsNormMatchesReference) {
  const auto [rows, dim] = GetParam();
  std::mt19937 rng(rows * 131 + dim);
  auto x = testing::RandomBf16(rows * dim, rng, -3, 3);
  auto w = testing::RandomBf16(dim, rng, 0.5, 1.5);
  std::vector<float> ref(rows * dim);
  cpu::RmsNorm(x.data(), w.data(), rows, dim, 1e-6f, ref.data());
  DeviceBuffer dx = testing::UploadBf16(gpu(), x), dw = testing::UploadBf16(gpu(), w);
  DeviceBuffer out = testing::PoisonedBf16(gpu(), rows * dim);
  gpu().RmsNorm(dx.data(), dw.data(), rows, dim, 1e-6f, out.data());
  testing::ExpectRelativeL2("RmsNorm", testing::DownloadBf16(gpu(), out, rows * dim), ref,
                            kOneRounding);
}

TEST_P(CudaNormTest, AddRmsNormMatchesReference) {
  const auto [rows, dim] = GetParam();
  std::mt19937 rng(rows * 71 + dim);
  auto residual = testing::RandomBf16(rows * dim, rng, -3, 3);
  auto x = testing::RandomBf16(rows * dim, rng, -3, 3);
  auto w = testing::RandomBf16(dim, rng, 0.5, 1.5);
  std::vector<float> ref_residual = residual, ref(rows * dim);
  cpu::AddRmsNorm(ref_residual.data(), x.data(), w.data(), rows, dim, 1e-5f, ref.data());
  DeviceBuffer dr = testing::UploadBf16(gpu(), residual), dx = testing::UploadBf16(gpu(), x),
               dw = testing::UploadBf16(gpu(), w);
  DeviceBuffer out = testing::PoisonedBf16(gpu(), rows * dim);
  gpu().AddRmsNorm(dr.data(), dx.data(), dw.data(), rows, dim, 1e-5f, out.data());
  testing::ExpectRelativeL2("AddRmsNorm residual", testing::DownloadBf16(gpu(), dr, rows * dim),
                            ref_residual, kOneRounding);
  // The residual is rounded before it is normalised: two roundings in series.
  testing::ExpectRelativeL2("AddRmsNorm out", testing::DownloadBf16(gpu(), out, rows * dim), ref,
                            2 * kOneRounding);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaNormTest,
                         ::testing::Values(std::make_tuple(1, 1), std::make_tuple(1, 64),
                                           std::make_tuple(7, 97), std::make_tuple(33, 256),
                                           std::make_tuple(5, 5120), std::make_tuple(130, 4096),
                                           std::make_tuple(3, 10001), std::make_tuple(1, 8),
                                           std::make_tuple(9, 8), std::make_tuple(11, 520),
                                           std::make_tuple(17, 1000), std::make_tuple(1, 5120),
                                           std::make_tuple(64, 5120), std::make_tuple(3, 17408),
                                           std::make_tuple(2, 32768), std::make_tuple(2, 40000),
                                           std::make_tuple(4097, 128)));

// Rows one element off 16-byte alignment take the scalar kernel; the results are the same.
TEST_F(CudaTest, AddRmsNormOnMisalignedRows) {
  const int rows = 3, dim = 5120;
  std::mt19937 rng(5);
  auto residual = testing::RandomBf16(rows * dim + 1, rng, -3, 3);
  auto x = testing::RandomBf16(rows * dim + 1, rng, -3, 3);
  auto w = testing::RandomBf16(dim, rng, 0.5, 1.5);
  std::vector<float> ref_residual(residual.begin() + 1, residual.end()), ref(rows * dim);
  cpu::AddRmsNorm(ref_residual.data(), x.data() + 1, w.data(), rows, dim, 1e-6f, ref.data());
  DeviceBuffer dr = testing::UploadBf16(gpu(), residual), dx = testing::UploadBf16(gpu(), x),
               dw = testing::UploadBf16(gpu(), w);
  DeviceBuffer out = testing::PoisonedBf16(gpu(), rows * dim + 1);
  gpu().AddRmsNorm(dr.as<uint16_t>() + 1, dx.as<uint16_t>() + 1, dw.data(), rows, dim, 1e-6f,
                   out.as<uint16_t>() + 1);
  auto got_residual = testing::DownloadBf16(gpu(), dr, rows * dim + 1);
  auto got = testing::DownloadBf16(gpu(), out, rows * dim + 1);
  EXPECT_EQ(got_residual[0], residual[0]);
  testing::ExpectRelativeL2("AddRmsNorm misaligned residual",
                            {got_residual.begin() + 1, got_residual.end()}, ref_residual,
                            kOneRounding);
  testing::ExpectRelativeL2("AddRmsNorm misaligned out", {got.begin() + 1, got.end()}, ref,
                            2 * kOneRounding);
}

}  // namespace
}  // namespace tessera
