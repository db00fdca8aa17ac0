// RouterTopK, the device-side grouping and MoeExperts against the CPU reference on the same bf16
// inputs: expert counts from 4 to 128, ties, local expert ranges (expert parallelism), odd and
// unaligned sizes, each grouped-GEMM tile shape (the launcher picks it from n * top_k / E), a
// token count that spans two chunks of the backend's MoE scratch, and a MoE call recorded into a
// CUDA graph and replayed with new routing.
#include <algorithm>
#include <numeric>

#include <gtest/gtest.h>

#include "kernels/cpu/reference.h"
#include "kernels/cuda/moe.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace tessera {
namespace {

using testing::kOneRounding;

// n, experts, top_k, normalize
class CudaRouterTest : public testing::CudaParamTest<std::tuple<int, int, int, bool>> {};

TEST_P(CudaRouterTest, IdsExactWeightsClose) {
  const auto [n, experts, top_k, normalize] = GetParam();
  std::mt19937 rng(n * 3 + experts * 5 + top_k + normalize);
  // NOTE: bf16 logits repeat often among 128 experts, so ties are exercised by random rows too.
  auto logits = testing::RandomBf16(n * experts, rng, -3, 3);
  for (int e = 0; e < experts; ++e) logits[e] = 1.0f;  // row 0: all tied
  if (n > 1) {
    for (int e = 0; e < experts; ++e) logits[experts + e] = e % 3 == 1 ? 2.0f : -1.0f;
  }
  std::vector<int32_t> ref_ids(n * top_k);
  std::vector<float> ref_w(n * top_k);
  cpu::RouterTopK(logits.data(), n, experts, top_k, normalize, ref_ids.data(), ref_w.data());
  DeviceBuffer dl = testing::UploadBf16(gpu(), logits);
  DeviceBuffer ids = testing::UploadRaw(gpu(), std::vector<int32_t>(n * top_k, -7));
  DeviceBuffer w = testing::UploadRaw(gpu(), std::vector<float>(n * top_k, NAN));
  gpu().RouterTopK(dl.data(), n, experts, top_k, normalize, ids.as<int32_t>(), w.as<float>());
  EXPECT_EQ(testing::DownloadRaw<int32_t>(gpu(), ids, n * top_k), ref_ids);
  const auto got_w = testing::DownloadRaw<float>(gpu(), w, n * top_k);
  for (int i = 0; i < n * top_k; ++i) EXPECT_NEAR(got_w[i], ref_w[i], 1e-6) << i;
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaRouterTest,
    ::testing::Values(std::make_tuple(1, 4, 1, true), std::make_tuple(33, 8, 2, true),
                      std::make_tuple(33, 8, 2, false), std::make_tuple(17, 9, 3, false),
                      std::make_tuple(65, 128, 8, true), std::make_tuple(5, 512, 10, true)));

// Distinct experts per token over [0, global_experts), in random order.
std::vector<int32_t> RandomRouting(int n, int global_experts, int top_k, std::mt19937& rng) {
  std::vector<int32_t> ids(static_cast<size_t>(n) * top_k), all(global_experts);
  std::iota(all.begin(), all.end(), 0);
  for (int t = 0; t < n; ++t) {
    std::shuffle(all.begin(), all.end(), rng);
    std::copy_n(all.begin(), top_k, ids.begin() + static_cast<size_t>(t) * top_k);
  }
  return ids;
}

// n, global experts, first local expert, local experts, top_k
class CudaMoeGroupTest : public testing::CudaParamTest<std::tuple<int, int, int, int, int>> {};

// The grouping is integer bookkeeping: it must equal the reference exactly, run after run.
TEST_P(CudaMoeGroupTest, MatchesReferenceExactly) {
  const auto [n, global, first, local, top_k] = GetParam();
  std::mt19937 rng(n * 7 + global + first * 3 + top_k);
  const auto ids = RandomRouting(n, global, top_k, rng);
  const size_t pairs = static_cast<size_t>(n) * top_k;
  std::vector<int32_t> ref_offsets(local + 1), ref_gather(pairs, -9), ref_rows(pairs);
  cpu::MoeGroupRows(ids.data(), n, top_k, first, local, ref_offsets.data(), ref_gather.data(),
                    ref_rows.data());
  ref_gather.resize(ref_offsets[local]);
  DeviceBuffer dids = testing::UploadRaw(gpu(), ids);
  for (int run = 0; run < 2; ++run) {
    DeviceBuffer offsets = testing::UploadRaw(gpu(), std::vector<int32_t>(local + 1, -9));
    DeviceBuffer gather = testing::UploadRaw(gpu(), std::vector<int32_t>(pairs, -9));
    DeviceBuffer rows = testing::UploadRaw(gpu(), std::vector<int32_t>(pairs, -9));
    cuda::LaunchMoeGroup(dids.as<int32_t>(), n, top_k, first, local, offsets.as<int32_t>(),
                         gather.as<int32_t>(), rows.as<int32_t>(),
                         static_cast<cudaStream_t>(gpu().stream()));
    EXPECT_EQ(testing::DownloadRaw<int32_t>(gpu(), offsets, local + 1), ref_offsets);
    auto got_gather = testing::DownloadRaw<int32_t>(gpu(), gather, pairs);
    got_gather.resize(ref_gather.size());
    EXPECT_EQ(got_gather, ref_gather);
    EXPECT_EQ(testing::DownloadRaw<int32_t>(gpu(), rows, pairs), ref_rows);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaMoeGroupTest,
    ::testing::Values(std::make_tuple(1, 128, 0, 128, 8), std::make_tuple(5, 4, 0, 4, 1),
                      std::make_tuple(37, 10, 4, 3, 4), std::make_tuple(300, 128, 0, 128, 8),
                      std::make_tuple(513, 60, 30, 30, 6), std::make_tuple(777, 9, 0, 9, 9)));

struct MoeCase {
  const char* name;
  int n, global_experts, first, local, top_k, hidden, inter;
  int check_every;  // compare every this-many-th token (large cases)
};

class CudaMoeTest : public testing::CudaParamTest<MoeCase> {};

TEST_P(CudaMoeTest, MatchesReference) {
  const MoeCase& c = GetParam();
  std::mt19937 rng(c.n + c.hidden * 3 + c.inter + c.first);
  auto x = testing::RandomBf16(static_cast<size_t>(c.n) * c.hidden, rng);
  const float scale_gu = 1.0f / std::sqrt(static_cast<float>(c.hidden));
  const float scale_d = 1.0f / std::sqrt(static_cast<float>(c.inter));
  auto gate_up = testing::RandomBf16(static_cast<size_t>(c.local) * 2 * c.inter * c.hidden, rng,
                                     -2 * scale_gu, 2 * scale_gu);
  auto down = testing::RandomBf16(static_cast<size_t>(c.local) * c.hidden * c.inter, rng,
                                  -2 * scale_d, 2 * scale_d);
  // Routing: distinct experts per token over the global range, random weights.
  const std::vector<int32_t> ids = RandomRouting(c.n, c.global_experts, c.top_k, rng);
  std::vector<float> w(c.n * c.top_k);
  std::uniform_real_distribution<float> wd(0.05f, 1.0f);
  for (float& v : w) v = wd(rng);
  DeviceBuffer dx = testing::UploadBf16(gpu(), x), dgu = testing::UploadBf16(gpu(), gate_up),
               dd = testing::UploadBf16(gpu(), down);
  DeviceBuffer dids = testing::UploadRaw(gpu(), ids), dw = testing::UploadRaw(gpu(), w);
  DeviceBuffer out = testing::PoisonedBf16(gpu(), static_cast<size_t>(c.n) * c.hidden);
  ExpertWeights experts;
  experts.first_expert = c.first;
  experts.num_local_experts = c.local;
  experts.hidden = c.hidden;
  experts.intermediate = c.inter;
  experts.gate_up = dgu.data();
  experts.down = dd.data();
  gpu().MoeExperts(dx.data(), c.n, dids.as<int32_t>(), dw.as<float>(), c.top_k, experts,
                   out.data());
  const auto got_all = testing::DownloadBf16(gpu(), out, static_cast<size_t>(c.n) * c.hidden);

  // The reference one token at a time, for the checked tokens.
  std::vector<float> got, ref, row(c.hidden);
  for (int t = 0; t < c.n; t += c.check_every) {
    cpu::MoeExperts(x.data() + static_cast<size_t>(t) * c.hidden, 1, ids.data() + t * c.top_k,
                    w.data() + t * c.top_k, c.top_k, c.first, c.local, c.hidden, c.inter,
                    gate_up.data(), down.data(), row.data());
    ref.insert(ref.end(), row.begin(), row.end());
    got.insert(got.end(), got_all.begin() + static_cast<size_t>(t) * c.hidden,
               got_all.begin() + static_cast<size_t>(t + 1) * c.hidden);
  }
  EXPECT_EQ(testing::CountNaN(got_all), 0u) << "unwritten output rows";
  // gate|up, the activation, each expert's output and the combined output are each rounded.
  testing::ExpectRelativeL2(c.name, got, ref, 4 * kOneRounding);

  // Deterministic: a second call gives the same bits.
  DeviceBuffer again = testing::PoisonedBf16(gpu(), static_cast<size_t>(c.n) * c.hidden);
  gpu().MoeExperts(dx.data(), c.n, dids.as<int32_t>(), dw.as<float>(), c.top_k, experts,
                   again.data());
  EXPECT_EQ(testing::DownloadBf16(gpu(), again, got_all.size()), got_all);
}

std::string MoeName(const ::testing::TestParamInfo<MoeCase>& info) { return info.param.name; }

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaMoeTest,
    ::testing::Values(MoeCase{"all_local", 37, 6, 0, 6, 2, 72, 40, 1},
                      MoeCase{"odd_sizes", 29, 8, 0, 8, 3, 33, 17, 1},
                      MoeCase{"expert_parallel_slice", 41, 10, 4, 3, 4, 64, 24, 1},
                      MoeCase{"single_token_top8", 1, 128, 0, 128, 8, 256, 96, 1},
                      // 300 pairs over 4 experts: 128-row tiles, partial row, column and k tiles.
                      MoeCase{"prefill_tiles", 300, 4, 0, 4, 2, 200, 72, 1},
                      MoeCase{"medium_tiles_slice", 40, 16, 4, 5, 8, 136, 88, 1},
                      MoeCase{"decode_top8_of_16", 3, 16, 0, 16, 8, 1024, 384, 1},
                      // 48 KB of scratch per token: 5454 tokens per 256 MiB chunk, so two.
                      MoeCase{"two_chunks", 5600, 8, 0, 8, 8, 2048, 1024, 200}),
    MoeName);

// MoeExperts reads the routing on the device only, so it records into a CUDA graph; a replay
// after new ids and weights are written into the same buffers equals a direct call on them.
class CudaMoeGraphTest : public testing::CudaTest {};

TEST_F(CudaMoeGraphTest, MoeExpertsReplaysFromGraph) {
  ASSERT_TRUE(gpu().CanCaptureGraphs());
  const int n = 24, global = 32, top_k = 8, hidden = 256, inter = 96;
  std::mt19937 rng(11);
  auto x = testing::RandomBf16(static_cast<size_t>(n) * hidden, rng);
  auto gate_up =
      testing::RandomBf16(static_cast<size_t>(global) * 2 * inter * hidden, rng, -0.1f, 0.1f);
  auto down = testing::RandomBf16(static_cast<size_t>(global) * hidden * inter, rng, -0.2f, 0.2f);
  DeviceBuffer dx = testing::UploadBf16(gpu(), x), dgu = testing::UploadBf16(gpu(), gate_up),
               dd = testing::UploadBf16(gpu(), down);
  ExpertWeights experts;
  experts.num_local_experts = global;
  experts.hidden = hidden;
  experts.intermediate = inter;
  experts.gate_up = dgu.data();
  experts.down = dd.data();
  std::uniform_real_distribution<float> wd(0.05f, 1.0f);
  auto routing = [&] {
    std::vector<float> w(static_cast<size_t>(n) * top_k);
    for (float& v : w) v = wd(rng);
    return std::make_pair(RandomRouting(n, global, top_k, rng), w);
  };
  auto [ids0, w0] = routing();
  DeviceBuffer dids = testing::UploadRaw(gpu(), ids0), dw = testing::UploadRaw(gpu(), w0);
  DeviceBuffer out = testing::PoisonedBf16(gpu(), static_cast<size_t>(n) * hidden);
  gpu().BeginCapture();
  gpu().MoeExperts(dx.data(), n, dids.as<int32_t>(), dw.as<float>(), top_k, experts, out.data());
  std::unique_ptr<DeviceGraph> graph = gpu().EndCapture();
  ASSERT_NE(graph, nullptr) << "MoeExperts could not be recorded";
  for (int replay = 0; replay < 3; ++replay) {
    auto [ids, w] = routing();
    gpu().CopyToDevice(dids.data(), ids.data(), ids.size() * sizeof(int32_t));
    gpu().CopyToDevice(dw.data(), w.data(), w.size() * sizeof(float));
    graph->Replay();
    const auto got = testing::DownloadBf16(gpu(), out, static_cast<size_t>(n) * hidden);
    DeviceBuffer direct = testing::PoisonedBf16(gpu(), static_cast<size_t>(n) * hidden);
    gpu().MoeExperts(dx.data(), n, dids.as<int32_t>(), dw.as<float>(), top_k, experts,
                     direct.data());
    EXPECT_EQ(got, testing::DownloadBf16(gpu(), direct, got.size())) << "replay " << replay;
    std::vector<float> ref(static_cast<size_t>(n) * hidden);
    cpu::MoeExperts(x.data(), n, ids.data(), w.data(), top_k, 0, global, hidden, inter,
                    gate_up.data(), down.data(), ref.data());
    testing::ExpectRelativeL2("graph replay", got, ref, 4 * kOneRounding);
  }
}

}  // namespace
}  // namespace tessera
