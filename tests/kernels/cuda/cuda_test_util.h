// Helpers for the CUDA backend's tests: skip without a GPU, bf16 round trips, and the error
// measure and tolerances every test uses.
//
// Each test draws seeded random fp32 inputs, rounds them to bf16 (the values the GPU will hold),
// runs the op on the CUDA backend and the float32 CPU reference (kernels/cpu/reference.h) on the
// SAME rounded values, and compares by relative L2, ||got - ref|| / ||ref|| (docs/design.md,
// "Testing"). Outputs are poisoned with NaN first, so an element the kernel never wrote fails the
// test.
//
// Tolerances, from bf16's unit roundoff u = 2^-8 (8 significant bits, round to nearest: every
// rounding is off by at most u relative):
//   - an op whose fp32 result is rounded once to bf16 (norms, RoPE, Linear, SiluMul, Add,
//     attention: everything inside is fp32) has |got - ref| <= u |ref| per element, so its
//     relative L2 is <= u; fp32 differences in summation order (~1e-6) are far below that.
//     Random rounding errors make the typical figure ~u / 2.
//   - an op with r roundings in series is held to r * u: AddRmsNorm's output (residual, then out)
//     2u; MoeExperts (gate|up, activation, expert output, combined output) 4u.
//   - pure copies (embedding, gather, cache write) are exact: compared bit for bit.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/base/dtype.h"
#include "kernels/ops.h"

namespace tessera::testing {

constexpr double kBf16Unit = 1.0 / 256;  // u = 2^-8
constexpr double kOneRounding = kBf16Unit;

// Skips the test (with a message in the output) on a machine without a CUDA device, as CI is.
#define TESSERA_REQUIRE_CUDA()                                                 \
  do {                                                                         \
    if (::tessera::CudaDeviceCount() == 0)                                     \
      GTEST_SKIP() << "no CUDA device: the CUDA backend is compiled, not run"; \
  } while (0)

inline float RoundBf16(float x) { return BF16ToFloat(FloatToBF16(x)); }

inline std::vector<float> RandomBf16(size_t n, std::mt19937& rng, float lo = -1.0f,
                                     float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = RoundBf16(dist(rng));
  return v;
}

inline DeviceBuffer UploadBf16(Backend& b, const std::vector<float>& host) {
  DeviceBuffer buf = b.Allocate(host.size() * 2);
  b.UploadFloat(buf.data(), DType::kBF16, host.data(), host.size());
  return buf;
}

// A bf16 buffer of `count` NaNs.
inline DeviceBuffer PoisonedBf16(Backend& b, size_t count) {
  return UploadBf16(b, std::vector<float>(count, NAN));
}

inline std::vector<float> DownloadBf16(Backend& b, const DeviceBuffer& buf, size_t count) {
  std::vector<float> host(count);
  b.DownloadFloat(host.data(), buf.data(), DType::kBF16, count);
  return host;
}

template <typename T>
DeviceBuffer UploadRaw(Backend& b, const std::vector<T>& host) {
  DeviceBuffer buf = b.Allocate(host.size() * sizeof(T));
  b.CopyToDevice(buf.data(), host.data(), host.size() * sizeof(T));
  return buf;
}

template <typename T>
std::vector<T> DownloadRaw(Backend& b, const DeviceBuffer& buf, size_t count) {
  std::vector<T> host(count);
  b.CopyToHost(host.data(), buf.data(), count * sizeof(T));
  return host;
}

inline size_t CountNaN(const std::vector<float>& v) {
  size_t n = 0;
  for (float x : v) n += std::isnan(x) ? 1 : 0;
  return n;
}

// ||got - ref|| / ||ref|| in double; infinite when got has NaN.
inline double RelativeL2(const std::vector<float>& got, const std::vector<float>& ref) {
  EXPECT_EQ(got.size(), ref.size());
  double diff = 0, norm = 0;
  for (size_t i = 0; i < got.size() && i < ref.size(); ++i) {
    if (std::isnan(got[i])) return INFINITY;
    const double d = static_cast<double>(got[i]) - ref[i];
    diff += d * d;
    norm += static_cast<double>(ref[i]) * ref[i];
  }
  return norm == 0 ? std::sqrt(diff) : std::sqrt(diff / norm);
}

// Asserts no NaN (every element written) and relative L2 <= tol; prints the figure for the log.
inline void ExpectRelativeL2(const char* what, const std::vector<float>& got,
                             const std::vector<float>& ref, double tol) {
  EXPECT_EQ(CountNaN(got), 0u) << what << ": unwritten or NaN elements";
  const double err = RelativeL2(got, ref);
  std::printf("[cuda] %s: relative L2 %.3e (tolerance %.3e)\n", what, err, tol);
  EXPECT_LE(err, tol) << what;
}

// A test with a CUDA backend on GPU 0, skipped when there is none.
template <typename Base = ::testing::Test>
class CudaTestBase : public Base {
 protected:
  void SetUp() override {
    TESSERA_REQUIRE_CUDA();
    backend_ = MakeCudaBackend(0);
  }
  Backend& gpu() { return *backend_; }
  std::unique_ptr<Backend> backend_;
};
using CudaTest = CudaTestBase<>;
template <typename Param>
using CudaParamTest = CudaTestBase<::testing::TestWithParam<Param>>;

}  // namespace tessera::testing
