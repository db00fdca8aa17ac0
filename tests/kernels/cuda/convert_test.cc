// The weight loader's upload with conversion on the device (Backend::UploadStaged, convert.cu)
// against the host reference ConvertDType: bit for bit, for every bit pattern of the 16- and 8-bit
// source formats (NaNs, infinities, subnormals, both zeros), float32 rounding ties, NaN payloads
// and random values, to bf16 and f32, at odd counts; nothing written past `count`; the same dtype
// is a plain copy. The staging buffer is pinned memory from AllocateStaging, as the loader uses.
#include <algorithm>
#include <cstring>
#include <iterator>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "tests/kernels/cuda/cuda_test_util.h"

namespace tessera {
namespace {

using testing::CudaTest;

// Source bytes of `count` elements of `dtype`: every bit pattern in turn (16- and 8-bit formats),
// or for F32 special values followed by random bits and random normal values.
std::vector<uint8_t> SourceBytes(DType dtype, size_t count, std::mt19937& rng) {
  const size_t size = DTypeSize(dtype);
  std::vector<uint8_t> bytes(count * size);
  if (dtype != DType::kF32) {
    for (size_t i = 0; i < count; ++i) {
      const uint32_t pattern = static_cast<uint32_t>(i) & (size == 2 ? 0xffffu : 0xffu);
      std::memcpy(&bytes[i * size], &pattern, size);
    }
    return bytes;
  }
  const uint32_t specials[] = {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u,
                               0x7f800001u, 0xffbfffffu, 0x00000001u, 0x807fffffu, 0x3f808000u,
                               0x3f818000u, 0x3f80ffffu, 0x7f7fffffu, 0x477fe000u};
  std::normal_distribution<float> normal(0.0f, 0.05f);
  for (size_t i = 0; i < count; ++i) {
    uint32_t bits;
    if (i < std::size(specials)) {
      bits = specials[i];
    } else if (i % 2 == 0) {
      bits = rng();
    } else {
      const float f = normal(rng);
      std::memcpy(&bits, &f, 4);
    }
    std::memcpy(&bytes[i * 4], &bits, 4);
  }
  return bytes;
}

TEST_F(CudaTest, UploadStagedConvertsAsTheHostReferenceBitForBit) {
  std::mt19937 rng(7);
  const DType sources[] = {DType::kBF16, DType::kF16, DType::kF8E4M3, DType::kF32};
  const DType targets[] = {DType::kBF16, DType::kF32};
  for (DType src : sources) {
    const size_t all = src == DType::kF8E4M3 ? 256 : src == DType::kF32 ? 100003 : 65536;
    for (size_t count : {size_t{1}, size_t{255}, all, all + 4097}) {
      for (DType dst : targets) {
        SCOPED_TRACE(::testing::Message()
                     << DTypeName(src) << " -> " << DTypeName(dst) << ", " << count << " elements");
        const std::vector<uint8_t> source = SourceBytes(src, count, rng);
        const size_t out_size = DTypeSize(dst);
        std::vector<uint8_t> want(count * out_size);
        ConvertDType(src, source.data(), count, dst, want.data());

        DeviceBuffer staging = gpu().AllocateStaging(source.size());
        std::memcpy(staging.data(), source.data(), source.size());
        DeviceBuffer scratch;
        if (gpu().UploadNeedsScratch(src, dst)) scratch = gpu().Allocate(source.size());
        // One guard element past the end, poisoned: it must stay as it was.
        const std::vector<uint8_t> poison((count + 1) * out_size, 0xa5);
        DeviceBuffer out = gpu().Allocate(poison.size());
        gpu().CopyToDevice(out.data(), poison.data(), poison.size());
        std::unique_ptr<DeviceEvent> done = gpu().CreateEvent();
        gpu().UploadStaged(out.data(), dst, staging.data(), src, count, scratch.data());
        done->Record();
        done->Wait();
        EXPECT_TRUE(done->Query());
        std::vector<uint8_t> got(poison.size());
        gpu().CopyToHost(got.data(), out.data(), got.size());

        size_t bad = 0;
        for (size_t i = 0; i < count; ++i) {
          if (std::memcmp(&got[i * out_size], &want[i * out_size], out_size) != 0 && ++bad <= 5) {
            ADD_FAILURE() << "element " << i << " differs";
          }
        }
        EXPECT_EQ(bad, 0u) << bad << " of " << count << " elements differ";
        EXPECT_TRUE(std::all_of(got.begin() + count * out_size, got.end(), [](uint8_t b) {
          return b == 0xa5;
        })) << "wrote past count";
      }
    }
  }
}

}  // namespace
}  // namespace tessera
