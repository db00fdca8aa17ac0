// The CUDA backend's FillRandom (kernels/cuda/random.cu) against Backend::FillRandom's host
// default (generate on the host, round with FloatToBF16, upload): bit for bit, for bf16 and f32,
// odd counts (a tail shorter than a block, and counts across the host default's 2^20-element
// pieces), several seeds, means and scales. Dummy weights must not depend on where they were made.
// Also: nothing past `count` is written, and the values are what the generator promises (inside
// mean +- scale, not constant).
#include <algorithm>
#include <cstring>

#include <gtest/gtest.h>

#include "tests/kernels/cuda/cuda_test_util.h"

namespace tessera {
namespace {

using testing::CudaTest;

struct Case {
  size_t count;
  uint64_t seed;
  float mean, scale;
};

// Exact equality of the stored bits, reporting the first few mismatches.
template <typename T>
void ExpectSameBits(const std::vector<T>& got, const std::vector<T>& want, const char* what) {
  ASSERT_EQ(got.size(), want.size());
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0 && ++bad <= 5) {
      ADD_FAILURE() << what << ": element " << i << " differs";
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements differ";
}

TEST_F(CudaTest, FillRandomMatchesTheHostDefaultBitForBit) {
  const Case cases[] = {
      {1, 0, 0.0f, 1.0f},
      {255, 7, 0.0f, 0.02f},
      {4097, 0x123456789abcdefull, 1.0f, 0.05f},
      {(size_t{1} << 20) + 333, 42, -3.5f, 0.7f},  // crosses the host default's piece boundary
      {1000003, ~0ull, 0.25f, 1e-3f},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "count " << c.count << " seed " << c.seed << " mean "
                                      << c.mean << " scale " << c.scale);
    // bf16: one guard element past the end, poisoned, must stay as it was.
    const uint16_t kGuard = 0x7fc1;
    const std::vector<uint16_t> poison(c.count + 1, kGuard);
    DeviceBuffer dev = testing::UploadRaw(gpu(), poison), host = testing::UploadRaw(gpu(), poison);
    gpu().FillRandom(dev.data(), DType::kBF16, c.count, c.seed, c.mean, c.scale);
    gpu().Backend::FillRandom(host.data(), DType::kBF16, c.count, c.seed, c.mean, c.scale);
    const auto got = testing::DownloadRaw<uint16_t>(gpu(), dev, c.count + 1);
    const auto want = testing::DownloadRaw<uint16_t>(gpu(), host, c.count + 1);
    ExpectSameBits(got, want, "bf16");
    EXPECT_EQ(got[c.count], kGuard) << "bf16: wrote past count";

    // f32.
    const std::vector<float> fpoison(c.count + 1, -12345.0f);
    DeviceBuffer fdev = testing::UploadRaw(gpu(), fpoison),
                 fhost = testing::UploadRaw(gpu(), fpoison);
    gpu().FillRandom(fdev.data(), DType::kF32, c.count, c.seed, c.mean, c.scale);
    gpu().Backend::FillRandom(fhost.data(), DType::kF32, c.count, c.seed, c.mean, c.scale);
    const auto fgot = testing::DownloadRaw<float>(gpu(), fdev, c.count + 1);
    const auto fwant = testing::DownloadRaw<float>(gpu(), fhost, c.count + 1);
    ExpectSameBits(fgot, fwant, "f32");
    EXPECT_EQ(fgot[c.count], -12345.0f) << "f32: wrote past count";

    // The values are the generator's: within [mean - scale, mean + scale] and not all equal.
    float lo = fgot[0], hi = fgot[0];
    for (size_t i = 0; i < c.count; ++i) {
      lo = std::min(lo, fgot[i]);
      hi = std::max(hi, fgot[i]);
    }
    EXPECT_GE(lo, c.mean - c.scale);
    EXPECT_LE(hi, c.mean + c.scale);
    if (c.count > 1) {
      EXPECT_LT(lo, hi);
    }
  }
}

TEST_F(CudaTest, FillRandomIsTheSameAtAnyOffsetIntoAPiece) {
  // Element i depends on (seed, i) only: filling a prefix gives the prefix of a longer fill.
  const size_t n = 100003;
  DeviceBuffer a = gpu().Allocate(n * 2), b = gpu().Allocate(n * 2);
  gpu().FillRandom(a.data(), DType::kBF16, n, 9, 0.0f, 1.0f);
  gpu().FillRandom(b.data(), DType::kBF16, 517, 9, 0.0f, 1.0f);
  const auto long_fill = testing::DownloadRaw<uint16_t>(gpu(), a, n);
  const auto short_fill = testing::DownloadRaw<uint16_t>(gpu(), b, 517);
  EXPECT_TRUE(std::equal(short_fill.begin(), short_fill.end(), long_fill.begin()));
}

}  // namespace
}  // namespace tessera
