// Helpers for kernel tests: seeded random tensors and tolerance checks (atol + rtol * |ref|).
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace tessera::testing {

inline std::vector<float> RandomVector(size_t n, std::mt19937& rng, float lo = -1.0f,
                                       float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// Every element within atol + rtol * |ref|; reports the first failure with its index.
inline void ExpectClose(const std::vector<float>& got, const std::vector<double>& ref, double atol,
                        double rtol) {
  ASSERT_EQ(got.size(), ref.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_FALSE(std::isnan(got[i])) << "NaN at " << i;
    ASSERT_LE(std::fabs(got[i] - ref[i]), atol + rtol * std::fabs(ref[i]))
        << "at " << i << ": got " << got[i] << ", want " << ref[i];
  }
}

}  // namespace tessera::testing
