// SampleTokens on the CUDA backend against the CPU reference: the same token for every row.
//
// No tolerance applies here: the rule (kernels/base/sampling_rule.h) makes the draw a function
// of the bf16 logits alone, with integer weight sums, so the GPU must return exactly the CPU's
// ids. Logits are bf16-rounded N(0, sigma) values: at 152K entries bf16 makes many exact ties,
// which exercises the tie rules of greedy, top-k and top-p. Also the async-scheduling mechanism
// beside the sampler: TakeSampledIds, and the step timer (DeviceTimer).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/cpu/reference.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace tessera::testing {
namespace {

struct Shape {
  int rows;
  int64_t vocab;
  int shards;
  int64_t sampleable;  // 0 = all
};

class CudaSamplingTest : public CudaParamTest<Shape> {};

// Every parameter mix, cycled over the rows.
std::vector<SamplingRowParams> Mixes(int rows, int64_t sampleable, uint64_t seed) {
  const SamplingRowParams kinds[] = {
      {0.0f, 0, 1.0f, 0.0f, 0, 0, 0, 0},      // greedy
      {1.0f, 0, 1.0f, 0.0f, 0, 0, 0, 0},      // plain draw
      {0.6f, 50, 1.0f, 0.0f, 0, 0, 0, 0},     // top-k
      {1.0f, 0, 0.9f, 0.0f, 0, 0, 0, 0},      // top-p
      {0.8f, 0, 1.0f, 0.05f, 0, 0, 0, 0},     // min-p
      {0.7f, 20, 0.8f, 0.1f, 0, 0, 0, 0},     // all of them
      {1.3f, 1, 1.0f, 0.0f, 0, 0, 0, 0},      // top-k 1
      {2.0f, 1000, 0.95f, 0.0f, 0, 0, 0, 0},  // wide
  };
  std::vector<SamplingRowParams> params(rows);
  for (int r = 0; r < rows; ++r) {
    params[r] = kinds[r % 8];
    params[r].sampleable_vocab = static_cast<int32_t>(sampleable);
    params[r].seed = seed * 1000003 + r;
    params[r].step = static_cast<uint64_t>(r * 7 + 3);
  }
  return params;
}

TEST_P(CudaSamplingTest, SameTokensAsTheCpuReference) {
  const Shape s = GetParam();
  std::mt19937 rng(static_cast<uint32_t>(s.vocab + s.rows));
  std::normal_distribution<float> dist(0.0f, 2.5f);
  std::vector<float> logits(static_cast<size_t>(s.rows) * s.vocab);  // [shards, rows, cols]
  for (float& v : logits) v = RoundBf16(dist(rng));
  DeviceBuffer d_logits = UploadBf16(gpu(), logits);
  auto cpu = MakeCpuBackend();
  for (uint64_t seed = 0; seed < 4; ++seed) {
    const std::vector<SamplingRowParams> params = Mixes(s.rows, s.sampleable, seed);
    std::vector<int32_t> want(s.rows);
    cpu->SampleTokens(logits.data(), s.rows, s.vocab, s.shards, params.data(), nullptr,
                      want.data());
    DeviceBuffer d_params = UploadRaw(gpu(), params);
    DeviceBuffer d_tokens = UploadRaw(gpu(), std::vector<int32_t>(s.rows, -7));
    gpu().SampleTokens(d_logits.data(), s.rows, s.vocab, s.shards, d_params.as<SamplingRowParams>(),
                       nullptr, d_tokens.as<int32_t>());
    const std::vector<int32_t> got = DownloadRaw<int32_t>(gpu(), d_tokens, s.rows);
    const int64_t bound = s.sampleable > 0 ? s.sampleable : s.vocab;
    for (int r = 0; r < s.rows; ++r) {
      EXPECT_EQ(got[r], want[r]) << "row " << r << " (mix " << r % 8 << "), seed " << seed;
      EXPECT_GE(got[r], 0);
      EXPECT_LT(got[r], bound);
    }
  }
}

// Penalties: random repetition / presence / frequency on most rows (every third row has none),
// each row's entries the distinct ids of a made-up prompt and output, weighted to the row's
// largest logits so that they move the draw; some ids past the sampleable vocabulary. The
// penalised float rows must give the CPU's ids, and the bf16 logits must stay untouched.
TEST_P(CudaSamplingTest, PenaltiesGiveTheCpuReferenceTokens) {
  const Shape s = GetParam();
  std::mt19937 rng(static_cast<uint32_t>(3 * s.vocab + s.rows));
  std::normal_distribution<float> dist(0.0f, 2.5f);
  std::vector<float> logits(static_cast<size_t>(s.rows) * s.vocab);  // [shards, rows, cols]
  for (float& v : logits) v = RoundBf16(dist(rng));
  DeviceBuffer d_logits = UploadBf16(gpu(), logits);
  const std::vector<uint16_t> logit_bits = DownloadRaw<uint16_t>(gpu(), d_logits, logits.size());
  const int64_t cols = s.vocab / s.shards;
  auto logit = [&](int r, int64_t id) {
    return logits[(id / cols * s.rows + r) * cols + id % cols];
  };
  auto cpu = MakeCpuBackend();
  std::uniform_real_distribution<float> rep(0.5f, 2.0f), pen(-2.0f, 2.0f);
  for (uint64_t seed = 0; seed < 4; ++seed) {
    const std::vector<SamplingRowParams> params = Mixes(s.rows, s.sampleable, seed);
    std::vector<SamplingPenaltyRow> rows(s.rows);
    std::vector<int32_t> entries;
    for (int r = 0; r < s.rows; ++r) {
      rows[r].begin = static_cast<int32_t>(entries.size() / 2);
      if (r % 3 != 2) {
        rows[r].repetition = r % 4 == 1 ? 1.0f : rep(rng);
        rows[r].presence = r % 5 == 0 ? 0.0f : pen(rng);
        rows[r].frequency = r % 4 == 3 ? 0.0f : pen(rng);
        // Ids above the row's 90th-percentile-ish logit, plus random ones and some padding ids.
        std::vector<char> seen(static_cast<size_t>(s.vocab), 0);
        std::uniform_int_distribution<int64_t> any(0, s.vocab - 1);
        std::uniform_int_distribution<int> count(0, 3);
        const int want = static_cast<int>(std::min<int64_t>(s.vocab, 200));
        for (int k = 0; k < 4 * want && static_cast<int>(entries.size() / 2) - rows[r].begin < want;
             ++k) {
          const int64_t id = any(rng);
          if (seen[id] || (logit(r, id) < 2.5f && k % 4 != 0)) continue;
          seen[id] = 1;
          entries.push_back(static_cast<int32_t>(id));
          entries.push_back(count(rng));
        }
      }
      rows[r].end = static_cast<int32_t>(entries.size() / 2);
    }
    entries.push_back(-1);  // never empty
    entries.push_back(0);
    SamplingPenalties host{rows.data(), entries.data(), nullptr};
    std::vector<int32_t> want(s.rows);
    cpu->SampleTokens(logits.data(), s.rows, s.vocab, s.shards, params.data(), &host, want.data());

    DeviceBuffer d_params = UploadRaw(gpu(), params);
    DeviceBuffer d_rows = UploadRaw(gpu(), rows), d_entries = UploadRaw(gpu(), entries);
    DeviceBuffer d_scratch = UploadRaw(gpu(), std::vector<float>(logits.size(), NAN));
    SamplingPenalties device{d_rows.as<SamplingPenaltyRow>(), d_entries.as<int32_t>(),
                             d_scratch.as<float>()};
    DeviceBuffer d_tokens = UploadRaw(gpu(), std::vector<int32_t>(s.rows, -7));
    gpu().SampleTokens(d_logits.data(), s.rows, s.vocab, s.shards, d_params.as<SamplingRowParams>(),
                       &device, d_tokens.as<int32_t>());
    const std::vector<int32_t> got = DownloadRaw<int32_t>(gpu(), d_tokens, s.rows);
    const int64_t bound = s.sampleable > 0 ? s.sampleable : s.vocab;
    for (int r = 0; r < s.rows; ++r) {
      EXPECT_EQ(got[r], want[r]) << "row " << r << " (mix " << r % 8 << ", "
                                 << rows[r].end - rows[r].begin << " entries), seed " << seed;
      EXPECT_GE(got[r], 0);
      EXPECT_LT(got[r], bound);
    }
    EXPECT_EQ(DownloadRaw<uint16_t>(gpu(), d_logits, logits.size()), logit_bits)
        << "the logits were written";
  }
}

// TakeSampledIds (async scheduling's decode inputs) against the CPU backend's, odd sizes.
TEST_F(CudaTest, TakeSampledIdsGivesTheCpuBackendsIds) {
  auto cpu = MakeCpuBackend();
  std::mt19937 rng(3);
  for (const auto& [n, num_sampled] :
       std::vector<std::pair<int, int>>{{1, 1}, {7, 3}, {300, 257}, {1000, 1}}) {
    std::vector<int32_t> sampled(num_sampled), from(n), ids(n);
    for (int32_t& v : sampled) v = std::uniform_int_distribution<int32_t>(0, 151935)(rng);
    for (int32_t& v : ids) v = std::uniform_int_distribution<int32_t>(0, 151935)(rng);
    for (int32_t& v : from) v = std::uniform_int_distribution<int32_t>(-2, num_sampled - 1)(rng);
    std::vector<int32_t> want = ids;
    cpu->TakeSampledIds(sampled.data(), num_sampled, from.data(), n, want.data());
    DeviceBuffer d_sampled = UploadRaw(gpu(), sampled), d_from = UploadRaw(gpu(), from);
    DeviceBuffer d_ids = UploadRaw(gpu(), ids);
    gpu().TakeSampledIds(d_sampled.as<int32_t>(), num_sampled, d_from.as<int32_t>(), n,
                         d_ids.as<int32_t>());
    EXPECT_EQ(DownloadRaw<int32_t>(gpu(), d_ids, n), want) << n << " tokens";
  }
}

// The step timer (Backend::CreateTimer: the engine's per-step device time) around enqueued work:
// passed once the work is (WaitUntil, no Synchronize), positive and within the host's wall time
// for it; an empty span is ~0.
TEST_F(CudaTest, TimerGivesTheDeviceTimeOfEnqueuedWork) {
  constexpr size_t kCount = size_t{64} << 20;  // bf16: 128 MiB per fill
  DeviceBuffer buffer = gpu().Allocate(kCount * 2);
  gpu().Synchronize();
  std::unique_ptr<DeviceTimer> timer = gpu().CreateTimer();
  const auto begin = std::chrono::steady_clock::now();
  timer->Begin();
  for (int i = 0; i < 8; ++i) gpu().FillRandom(buffer.data(), DType::kBF16, kCount, i, 0, 1);
  timer->End();
  gpu().WaitUntil([&] { return timer->Query(); });
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  const double seconds = timer->Seconds();
  EXPECT_GT(seconds, 0);
  EXPECT_LE(seconds, wall);
  timer->Begin();
  timer->End();
  gpu().WaitUntil([&] { return timer->Query(); });
  EXPECT_GE(timer->Seconds(), 0);
  EXPECT_LT(timer->Seconds(), 1e-3);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaSamplingTest,
                         ::testing::Values(Shape{16, 151936, 1, 151669},  // Qwen3, padding
                                           Shape{8, 151936, 4, 151669},   // after a TP-4 gather
                                           Shape{9, 151936, 2, 0}, Shape{5, 1, 1, 0},
                                           Shape{11, 1000, 1, 0}, Shape{7, 4099, 1, 4000},
                                           Shape{3, 33, 3, 31}, Shape{8, 513, 1, 0}));

}  // namespace
}  // namespace tessera::testing
