// RouterTopK and MoeExperts against the fp32 reference on the same bf16 inputs: expert counts
// from 4 to 128, ties, local expert ranges (expert parallelism), odd sizes, and a token count
// that spans two chunks of the backend's MoE scratch.
#include <algorithm>

#include <gtest/gtest.h>

#include "kernels/cpu/reference.h"
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
  std::vector<int32_t> ids(c.n * c.top_k);
  std::vector<float> w(c.n * c.top_k);
  std::vector<int32_t> all(c.global_experts);
  std::iota(all.begin(), all.end(), 0);
  std::uniform_real_distribution<float> wd(0.05f, 1.0f);
  for (int t = 0; t < c.n; ++t) {
    std::shuffle(all.begin(), all.end(), rng);
    for (int k = 0; k < c.top_k; ++k) {
      ids[t * c.top_k + k] = all[k];
      w[t * c.top_k + k] = wd(rng);
    }
  }
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
                      // 114 KB of scratch per token: 584 tokens per chunk, so two chunks.
                      MoeCase{"two_chunks", 700, 8, 0, 8, 8, 2048, 1024, 50}),
    MoeName);

}  // namespace
}  // namespace tessera
