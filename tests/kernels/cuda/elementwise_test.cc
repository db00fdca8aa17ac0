// Embedding (vocab-sharded), SiluMul, GatherRows, Add, and the backend's memory ops, against the
// fp32 reference on the same bf16 inputs. Copies are compared bit for bit.
#include <gtest/gtest.h>

#include "kernels/cpu/reference.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace tessera {
namespace {

using testing::CudaTest;
using testing::kOneRounding;

TEST_F(CudaTest, UploadRoundsToNearestEvenAndDownloadIsExact) {
  std::mt19937 rng(1);
  auto x = testing::RandomBf16(1001, rng, -100, 100);  // already bf16 values
  std::vector<float> raw = {1.0f + 1.0f / 512, 1.0f + 3.0f / 512, -0.0f, INFINITY, 3.3e38f};
  DeviceBuffer d = testing::UploadBf16(gpu(), x);
  EXPECT_EQ(testing::DownloadBf16(gpu(), d, x.size()), x);
  DeviceBuffer r = testing::UploadBf16(gpu(), raw);
  const auto got = testing::DownloadBf16(gpu(), r, raw.size());
  for (size_t i = 0; i < raw.size(); ++i) EXPECT_EQ(got[i], testing::RoundBf16(raw[i])) << i;
  // f32 storage passes through unchanged.
  std::vector<float> f = {1.0f / 3, -2.5e-20f, 7.0f};
  DeviceBuffer df = gpu().Allocate(f.size() * 4);
  gpu().UploadFloat(df.data(), DType::kF32, f.data(), f.size());
  std::vector<float> back(f.size());
  gpu().DownloadFloat(back.data(), df.data(), DType::kF32, f.size());
  EXPECT_EQ(back, f);
}

TEST_F(CudaTest, EmbeddingShardIsExactAndZeroOutside) {
  for (int hidden : {67, 5120}) {
    const int vocab = 50, start = 10, end = 30, n = 13;
    std::mt19937 rng(2);
    auto table = testing::RandomBf16(vocab * hidden, rng);
    std::vector<float> shard(table.begin() + start * hidden, table.begin() + end * hidden);
    std::vector<int32_t> ids(n);
    std::uniform_int_distribution<int> id(0, vocab - 1);
    for (auto& i : ids) i = id(rng);
    ids[0] = start;
    ids[1] = end - 1;
    ids[2] = end;
    std::vector<float> ref(n * hidden);
    cpu::Embedding(shard.data(), start, end, hidden, ids.data(), n, ref.data());
    DeviceBuffer dt = testing::UploadBf16(gpu(), shard), di = testing::UploadRaw(gpu(), ids);
    DeviceBuffer out = testing::PoisonedBf16(gpu(), n * hidden);
    gpu().Embedding(dt.data(), start, end, hidden, di.as<int32_t>(), n, out.data());
    EXPECT_EQ(testing::DownloadBf16(gpu(), out, n * hidden), ref);
  }
}

TEST_F(CudaTest, SiluMulMatchesReference) {
  for (auto [m, inter] :
       {std::pair{1, 1}, std::pair{7, 97}, std::pair{64, 1536}, std::pair{3, 17408},
        std::pair{1, 8}, std::pair{5, 1000}, std::pair{1, 17408}, std::pair{2049, 64}}) {
    std::mt19937 rng(m + inter);
    auto gu = testing::RandomBf16(m * 2 * inter, rng, -6, 6);
    std::vector<float> ref(m * inter);
    cpu::SiluMul(gu.data(), m, inter, ref.data());
    DeviceBuffer d = testing::UploadBf16(gpu(), gu);
    DeviceBuffer out = testing::PoisonedBf16(gpu(), m * inter);
    gpu().SiluMul(d.data(), m, inter, out.data());
    testing::ExpectRelativeL2("SiluMul", testing::DownloadBf16(gpu(), out, m * inter), ref,
                              kOneRounding);
  }
}

TEST_F(CudaTest, GatherRowsIsExact) {
  for (int dim : {131, 5120}) {
    const int n = 9, r = 6;
    std::mt19937 rng(3);
    auto x = testing::RandomBf16(n * dim, rng);
    std::vector<int32_t> rows = {8, 0, 3, 3, 7, 1};
    std::vector<float> ref(r * dim);
    cpu::GatherRows(x.data(), rows.data(), r, dim, ref.data());
    DeviceBuffer dx = testing::UploadBf16(gpu(), x), dr = testing::UploadRaw(gpu(), rows);
    DeviceBuffer out = testing::PoisonedBf16(gpu(), r * dim);
    gpu().GatherRows(dx.data(), dr.as<int32_t>(), r, dim, out.data());
    EXPECT_EQ(testing::DownloadBf16(gpu(), out, r * dim), ref);
  }
}

TEST_F(CudaTest, AddMatchesReferenceInPlace) {
  for (int n : {1, 7, 8, 1001, 5120, 1 << 20, (1 << 20) + 13}) {
    std::mt19937 rng(n);
    auto a = testing::RandomBf16(n, rng, -4, 4), b = testing::RandomBf16(n, rng, -4, 4);
    std::vector<float> ref(n);
    cpu::Add(a.data(), b.data(), n, ref.data());
    DeviceBuffer da = testing::UploadBf16(gpu(), a), db = testing::UploadBf16(gpu(), b);
    gpu().Add(da.data(), db.data(), n, da.data());  // out aliases a, as the model calls it
    testing::ExpectRelativeL2("Add", testing::DownloadBf16(gpu(), da, n), ref, kOneRounding);
  }
}

}  // namespace
}  // namespace tessera
