// Linear against a float64 triple loop, on odd sizes and the decode shape (m = 1).
#include <gtest/gtest.h>

#include "kernels/cpu/reference.h"
#include "tests/kernels/cpu/test_util.h"

namespace tessera {
namespace {

class LinearTest : public ::testing::TestWithParam<std::tuple<int, int, int>> {};

TEST_P(LinearTest, MatchesFloat64) {
  const auto [m, n, k] = GetParam();
  std::mt19937 rng(m * 1000003 + n * 1009 + k);
  auto x = testing::RandomVector(m * k, rng);
  auto w = testing::RandomVector(n * k, rng);
  std::vector<float> y(m * n, NAN);
  cpu::Linear(x.data(), w.data(), m, n, k, y.data());
  std::vector<double> ref(m * n);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double s = 0;
      for (int p = 0; p < k; ++p) s += static_cast<double>(x[i * k + p]) * w[j * k + p];
      ref[i * n + j] = s;
    }
  testing::ExpectClose(y, ref, 1e-5 * std::sqrt(k), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Shapes, LinearTest,
                         ::testing::Values(std::make_tuple(1, 1, 1), std::make_tuple(1, 67, 129),
                                           std::make_tuple(3, 5, 7), std::make_tuple(17, 65, 33),
                                           std::make_tuple(33, 130, 256),
                                           std::make_tuple(1, 1000, 64)));

}  // namespace
}  // namespace tessera
