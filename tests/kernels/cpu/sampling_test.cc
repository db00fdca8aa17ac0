// The sampling rule (kernels/base/sampling_rule.h) on hand-made rows: greedy ties, padding,
// top-k / top-p / min-p keep sets, the shard layout, and the draw's distribution (chi-square).
#include <cmath>
#include <map>
#include <random>
#include <set>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/cpu/reference.h"

namespace tessera {
namespace {

SamplingRowParams Params(float temperature) {
  SamplingRowParams p;
  p.temperature = temperature;
  return p;
}

// The ids drawn from `x` over `draws` seeds.
std::map<int32_t, int> Histogram(const std::vector<float>& x, SamplingRowParams p, int draws) {
  std::map<int32_t, int> seen;
  for (int i = 0; i < draws; ++i) {
    p.seed = 1000 + i;
    p.step = static_cast<uint64_t>(i % 7);
    ++seen[cpu::SampleRow(x.data(), static_cast<int64_t>(x.size()), p)];
  }
  return seen;
}

std::set<int32_t> Keys(const std::map<int32_t, int>& m) {
  std::set<int32_t> s;
  for (const auto& [id, count] : m) s.insert(id);
  return s;
}

// Pearson's statistic of `seen` against probabilities `want` (ids absent from `want` count as
// outside the support: the test fails on them separately).
double ChiSquare(const std::map<int32_t, int>& seen, const std::map<int32_t, double>& want,
                 int draws) {
  double chi = 0;
  for (const auto& [id, prob] : want) {
    const double expected = prob * draws;
    const auto it = seen.find(id);
    const double got = it == seen.end() ? 0 : it->second;
    chi += (got - expected) * (got - expected) / expected;
  }
  return chi;
}

TEST(CpuSamplingTest, GreedyTakesTheLowestIdOfTheMaximum) {
  const std::vector<float> x = {1.0f, 3.0f, 2.5f, -1.0f, 3.0f, 0.0f};
  EXPECT_EQ(cpu::SampleRow(x.data(), 6, Params(0)), 1);
  const std::vector<float> zeros = {-1.0f, -0.0f, 0.0f};  // -0 == +0: the lower id wins
  EXPECT_EQ(cpu::SampleRow(zeros.data(), 3, Params(0)), 1);
}

TEST(CpuSamplingTest, PaddingIsNeverDrawn) {
  const std::vector<float> x = {0.0f, 1.0f, 2.0f, 50.0f, 60.0f};  // ids 3, 4 are padding
  SamplingRowParams p = Params(0);
  p.sampleable_vocab = 3;
  EXPECT_EQ(cpu::SampleRow(x.data(), 5, p), 2);
  p.temperature = 5.0f;
  const auto seen = Histogram(x, p, 2000);
  EXPECT_EQ(Keys(seen), (std::set<int32_t>{0, 1, 2}));
}

TEST(CpuSamplingTest, TopKKeepsTiesAtTheKthValue) {
  // Sorted values 3, 3, 2.5, 2.5, 1: k = 3 lands on 2.5, so both 2.5s stay.
  const std::vector<float> x = {1.0f, 3.0f, 2.5f, -1.0f, 3.0f, 2.5f};
  SamplingRowParams p = Params(1.0f);
  p.top_k = 3;
  EXPECT_EQ(Keys(Histogram(x, p, 3000)), (std::set<int32_t>{1, 2, 4, 5}));
  p.top_k = 1;
  EXPECT_EQ(Keys(Histogram(x, p, 300)), (std::set<int32_t>{1, 4}));
}

TEST(CpuSamplingTest, TopPKeepsWholeValueClasses) {
  // Probabilities 1/2, 1/4, 1/8, 1/8 (the last two tie).
  const std::vector<float> x = {std::log(4.0f), std::log(2.0f), 0.0f, 0.0f};
  SamplingRowParams p = Params(1.0f);
  p.top_p = 0.45f;
  EXPECT_EQ(Keys(Histogram(x, p, 500)), (std::set<int32_t>{0}));
  p.top_p = 0.6f;
  EXPECT_EQ(Keys(Histogram(x, p, 2000)), (std::set<int32_t>{0, 1}));
  p.top_p = 0.8f;  // 3/4 < 0.8: the next class is both 1/8 tokens
  EXPECT_EQ(Keys(Histogram(x, p, 4000)), (std::set<int32_t>{0, 1, 2, 3}));
  p.top_k = 2;  // top-k first: top-p then sees 2/3, 1/3
  p.top_p = 0.6f;
  EXPECT_EQ(Keys(Histogram(x, p, 500)), (std::set<int32_t>{0}));
}

TEST(CpuSamplingTest, MinPDropsTokensBelowTheFractionOfTheTop) {
  const std::vector<float> x = {std::log(4.0f), std::log(2.0f), 0.0f, 0.0f};
  SamplingRowParams p = Params(1.0f);
  p.min_p = 0.3f;  // keeps p >= 0.15: 1/2 and 1/4
  EXPECT_EQ(Keys(Histogram(x, p, 2000)), (std::set<int32_t>{0, 1}));
  p.min_p = 1.0f;
  EXPECT_EQ(Keys(Histogram(x, p, 200)), (std::set<int32_t>{0}));
}

TEST(CpuSamplingTest, SameSeedAndStepSameToken) {
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  std::vector<float> x(1000);
  for (float& v : x) v = dist(rng);
  SamplingRowParams p = Params(1.0f);
  p.seed = 77;
  std::set<int32_t> over_steps;
  for (uint64_t step = 0; step < 20; ++step) {
    p.step = step;
    const int32_t a = cpu::SampleRow(x.data(), 1000, p);
    EXPECT_EQ(a, cpu::SampleRow(x.data(), 1000, p));
    over_steps.insert(a);
  }
  EXPECT_GT(over_steps.size(), 5u) << "the step must move the stream";
}

TEST(CpuSamplingTest, ShardedLayoutMatchesContiguousRows) {
  const int rows = 3, shards = 4;
  const int64_t vocab = 4 * 37;
  std::mt19937 rng(5);
  std::normal_distribution<float> dist(0.0f, 1.5f);
  std::vector<float> full(rows * vocab);
  for (float& v : full) v = dist(rng);
  std::vector<float> sharded(full.size());  // [shards, rows, vocab / shards]
  const int64_t cols = vocab / shards;
  for (int s = 0; s < shards; ++s)
    for (int r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        sharded[(s * rows + r) * cols + c] = full[r * vocab + s * cols + c];
  std::vector<SamplingRowParams> params(rows, Params(0.8f));
  params[1].top_k = 10;
  params[2].top_p = 0.7f;
  for (uint64_t seed = 0; seed < 50; ++seed) {
    for (auto& p : params) p.seed = seed;
    std::vector<int32_t> got(rows);
    cpu::SampleTokens(sharded.data(), rows, vocab, shards, params.data(), nullptr, got.data());
    for (int r = 0; r < rows; ++r)
      EXPECT_EQ(got[r], cpu::SampleRow(full.data() + r * vocab, vocab, params[r])) << r;
  }
}

// Penalties as Hugging Face / vLLM define them, written out by hand: repetition divides a
// positive logit and multiplies a negative one for every entry; presence and frequency
// subtract from output ids only; ids past the sampleable vocabulary are ignored. Then the rule.
TEST(CpuSamplingTest, PenaltiesThenTheRule) {
  const int64_t vocab = 12, sampleable = 10;
  const std::vector<float> x = {3.0f, -1.0f, 2.5f,  0.0f, 1.0f, -2.0f,
                                2.9f, 0.5f,  -0.5f, 1.5f, 9.0f, 9.0f};
  SamplingPenaltyRow row;
  row.repetition = 1.5f;
  row.presence = 0.25f;
  row.frequency = 0.5f;
  // (id, output count): 0 from the prompt only, 6 twice in the output, 1 once, 11 is padding.
  const std::vector<int32_t> entries = {0, 0, 6, 2, 1, 1, 11, 4};
  row.begin = 0;
  row.end = 4;
  std::vector<float> want = x;
  want[0] = 3.0f / 1.5f;
  want[6] = 2.9f / 1.5f - (0.5f * 2 + 0.25f);
  want[1] = -1.0f * 1.5f - (0.5f * 1 + 0.25f);
  std::vector<float> got = x;
  cpu::ApplyPenalties(got.data(), sampleable, row, entries.data());
  EXPECT_EQ(got, want);

  const SamplingPenalties penalties{&row, entries.data(), nullptr};
  for (uint64_t seed = 0; seed < 30; ++seed) {
    SamplingRowParams p = Params(seed % 3 == 0 ? 0.0f : 0.9f);
    p.sampleable_vocab = static_cast<int32_t>(sampleable);
    p.seed = seed;
    int32_t token = -1;
    cpu::SampleTokens(x.data(), 1, vocab, 1, &p, &penalties, &token);
    EXPECT_EQ(token, cpu::SampleRow(want.data(), vocab, p)) << seed;
  }
  SamplingRowParams greedy = Params(0.0f);
  greedy.sampleable_vocab = static_cast<int32_t>(sampleable);
  int32_t token = -1;
  cpu::SampleTokens(x.data(), 1, vocab, 1, &greedy, &penalties, &token);
  EXPECT_EQ(token, 2) << "2.5 leads once 3.0 and 2.9 are penalised";
}

// The draw follows softmax(x / T) restricted to the kept set: Pearson's chi-square over 40000
// draws stays under 30, which a correct sampler exceeds with probability < 1e-4 at <= 6 degrees
// of freedom (the 2e-6 relative error of the fixed-point weights moves the expectation by far
// less than one draw).
TEST(CpuSamplingTest, DrawFollowsTheTemperedSoftmax) {
  const std::vector<float> x = {0.3f, 1.2f, -0.5f, 2.0f, 0.0f, 1.1f, -3.0f};
  const int draws = 40000;
  struct Case {
    float temperature;
    int top_k;
    float top_p;
    std::set<int32_t> keep;
  };
  const std::vector<Case> cases = {
      {1.0f, 0, 1.0f, {0, 1, 2, 3, 4, 5, 6}},
      {0.7f, 0, 1.0f, {0, 1, 2, 3, 4, 5, 6}},
      {1.5f, 4, 1.0f, {0, 1, 3, 5}},
      {1.0f, 0, 0.8f, {1, 3, 5}},  // sorted masses .44, .20, .18 | .08: .64 < 0.8 <= .82
  };
  for (const Case& c : cases) {
    SamplingRowParams p = Params(c.temperature);
    p.top_k = c.top_k;
    p.top_p = c.top_p;
    double sum = 0;
    for (int32_t id : c.keep) sum += std::exp(x[id] / c.temperature);
    std::map<int32_t, double> want;
    for (int32_t id : c.keep) want[id] = std::exp(x[id] / c.temperature) / sum;
    const auto seen = Histogram(x, p, draws);
    EXPECT_EQ(Keys(seen), c.keep) << "T " << c.temperature;
    EXPECT_LT(ChiSquare(seen, want, draws), 30.0) << "T " << c.temperature;
  }
}

// TakeSampledIds: rows named by `from` take the sampled id, the others keep theirs.
TEST(CpuSamplingTest, TakeSampledIdsReplacesOnlyNamedTokens) {
  auto backend = MakeCpuBackend();
  const std::vector<int32_t> sampled = {11, 22, 33};
  const std::vector<int32_t> from = {-1, 2, 0, -1, 2};
  std::vector<int32_t> ids = {5, 6, 7, 8, 9};
  backend->TakeSampledIds(sampled.data(), 3, from.data(), 5, ids.data());
  EXPECT_EQ(ids, (std::vector<int32_t>{5, 33, 11, 8, 33}));
}

}  // namespace
}  // namespace tessera
