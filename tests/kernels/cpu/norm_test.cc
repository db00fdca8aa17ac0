// RMSNorm and the fused residual-add + RMSNorm against float64.
#include <gtest/gtest.h>

#include "kernels/cpu/reference.h"
#include "tests/kernels/cpu/test_util.h"

namespace tessera {
namespace {

std::vector<double> RefNorm(const std::vector<float>& x, const std::vector<float>& w, int rows,
                            int dim, double eps) {
  std::vector<double> out(rows * dim);
  for (int r = 0; r < rows; ++r) {
    double ss = 0;
    for (int i = 0; i < dim; ++i) ss += static_cast<double>(x[r * dim + i]) * x[r * dim + i];
    const double inv = 1.0 / std::sqrt(ss / dim + eps);
    for (int i = 0; i < dim; ++i) out[r * dim + i] = w[i] * x[r * dim + i] * inv;
  }
  return out;
}

TEST(RmsNormTest, MatchesFloat64) {
  for (auto [rows, dim] : {std::pair{1, 1}, {3, 7}, {5, 128}, {2, 1001}}) {
    std::mt19937 rng(rows * 31 + dim);
    auto x = testing::RandomVector(rows * dim, rng, -3, 3);
    auto w = testing::RandomVector(dim, rng, 0.5, 1.5);
    std::vector<float> out(rows * dim, NAN);
    cpu::RmsNorm(x.data(), w.data(), rows, dim, 1e-6f, out.data());
    testing::ExpectClose(out, RefNorm(x, w, rows, dim, 1e-6), 1e-6, 1e-5);
  }
}

TEST(RmsNormTest, AddRmsNormUpdatesResidual) {
  const int rows = 3, dim = 37;
  std::mt19937 rng(5);
  auto residual = testing::RandomVector(rows * dim, rng);
  auto x = testing::RandomVector(rows * dim, rng);
  auto w = testing::RandomVector(dim, rng, 0.5, 1.5);
  std::vector<float> sum(rows * dim);
  for (int i = 0; i < rows * dim; ++i) sum[i] = residual[i] + x[i];
  std::vector<float> out(rows * dim, NAN);
  cpu::AddRmsNorm(residual.data(), x.data(), w.data(), rows, dim, 1e-5f, out.data());
  EXPECT_EQ(residual, sum);
  testing::ExpectClose(out, RefNorm(sum, w, rows, dim, 1e-5), 1e-6, 1e-5);
}

}  // namespace
}  // namespace tessera
