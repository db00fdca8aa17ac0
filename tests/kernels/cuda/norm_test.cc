// RmsNorm and AddRmsNorm against the fp32 reference on the same bf16 inputs, odd sizes included.
#include <gtest/gtest.h>

#include "kernels/cpu/reference.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace tessera {
namespace {

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
                                           std::make_tuple(3, 10001)));

}  // namespace
}  // namespace tessera
