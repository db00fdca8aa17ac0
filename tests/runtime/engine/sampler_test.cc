// The sampler: greedy, temperature, top-k, top-p, min-p, penalties, padding ids, seeds.
#include "runtime/engine/sampler.h"

#include <cmath>
#include <map>

#include <gtest/gtest.h>

#include "kernels/cpu/reference.h"

namespace tessera {
namespace {

std::vector<float> Logits() { return {1.0f, 3.0f, 2.5f, -1.0f, 3.0f, 0.0f}; }

int32_t SampleOnce(SamplingParams p, const std::vector<float>& logits, uint64_t seed = 1,
                   int64_t sampleable = -1) {
  Sampler s(p, seed);
  return s.Sample(logits, sampleable < 0 ? static_cast<int64_t>(logits.size()) : sampleable, {},
                  {});
}

TEST(SamplerTest, GreedyTakesArgmaxLowestIdOnTies) {
  SamplingParams p;
  p.temperature = 0;
  EXPECT_EQ(SampleOnce(p, Logits()), 1);
}

TEST(SamplerTest, PaddingIdsAreNeverSampled) {
  SamplingParams p;
  p.temperature = 0;
  std::vector<float> logits = {0, 1, 2, 50, 60};  // ids 3, 4 are "padding"
  EXPECT_EQ(SampleOnce(p, logits, 1, 3), 2);
  p.temperature = 5.0f;
  for (uint64_t seed = 0; seed < 200; ++seed) EXPECT_LT(SampleOnce(p, logits, seed, 3), 3);
}

TEST(SamplerTest, TopKOneAndTinyTopPAreGreedyOrKeepTheTiedMaxima) {
  // Without a tie at the top, top_k = 1 and a tiny top_p leave only the argmax.
  const std::vector<float> distinct = {1.0f, 3.0f, 2.5f, -1.0f, 2.9f, 0.0f};
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 1;
  for (uint64_t seed = 0; seed < 50; ++seed) EXPECT_EQ(SampleOnce(p, distinct, seed), 1);
  p.top_k = 0;
  p.top_p = 1e-6f;
  for (uint64_t seed = 0; seed < 50; ++seed) EXPECT_EQ(SampleOnce(p, distinct, seed), 1);
  // Ids 1 and 4 tie at the maximum: both are kept (HF's TopK warper keeps every value equal to the
  // k-th; the top-p rule keeps a class of tied values whole, kernels/base/sampling_rule.h), so the
  // draw picks either; only temperature 0 means the lowest id.
  for (int mode = 0; mode < 2; ++mode) {
    SamplingParams q;
    q.temperature = 1.0f;
    if (mode == 0) q.top_k = 1;
    if (mode == 1) q.top_p = 1e-6f;
    std::map<int32_t, int> seen;
    for (uint64_t seed = 0; seed < 200; ++seed) ++seen[SampleOnce(q, Logits(), seed)];
    EXPECT_EQ(seen.size(), 2u) << "mode " << mode;
    EXPECT_GT(seen[1], 0) << "mode " << mode;
    EXPECT_GT(seen[4], 0) << "mode " << mode;
  }
}

TEST(SamplerTest, TopKRestrictsToTheKLargest) {
  SamplingParams p;
  p.top_k = 3;  // ids 1, 4 (3.0) and 2 (2.5)
  std::map<int32_t, int> seen;
  for (uint64_t seed = 0; seed < 500; ++seed) ++seen[SampleOnce(p, Logits(), seed)];
  for (const auto& [id, count] : seen) EXPECT_TRUE(id == 1 || id == 2 || id == 4) << id;
  EXPECT_EQ(seen.size(), 3u);
}

TEST(SamplerTest, MinPDropsUnlikelyTokens) {
  SamplingParams p;
  p.min_p = 0.5f;  // keeps tokens with p >= 0.5 * p_max: logits within ln 2 of the max
  for (uint64_t seed = 0; seed < 300; ++seed) {
    const int32_t id = SampleOnce(p, Logits(), seed);
    EXPECT_TRUE(id == 1 || id == 2 || id == 4) << id;
  }
}

TEST(SamplerTest, FrequenciesFollowTheSoftmax) {
  // Two tokens with logits 0 and ln 3: probabilities 1/4 and 3/4.
  std::vector<float> logits = {0.0f, std::log(3.0f)};
  SamplingParams p;
  Sampler s(p, 12345);
  int ones = 0;
  const int trials = 20000;
  for (int i = 0; i < trials; ++i) ones += s.Sample(logits, 2, {}, {});
  EXPECT_NEAR(static_cast<double>(ones) / trials, 0.75, 0.015);
}

TEST(SamplerTest, SameSeedSameStream) {
  SamplingParams p;
  p.temperature = 1.5f;
  p.seed = 42;
  Sampler a(p, 0), b(p, 999);  // the request's seed wins over the default
  for (int i = 0; i < 100; ++i)
    EXPECT_EQ(a.Sample(Logits(), 6, {}, {}), b.Sample(Logits(), 6, {}, {}));
}

// Without penalties the host Sampler's n-th token is the device rule's draw n, so a request's
// tokens do not depend on where its rows are sampled.
TEST(SamplerTest, SameTokensAsTheDeviceRule) {
  SamplingParams p;
  p.temperature = 0.9f;
  p.top_k = 4;
  p.top_p = 0.95f;
  p.seed = 2024;
  Sampler s(p, 0);
  for (uint64_t step = 0; step < 50; ++step) {
    const SamplingRowParams row = DeviceSamplingParams(p, 0, step, 6);
    EXPECT_EQ(s.Sample(Logits(), 6, {}, {}), cpu::SampleRow(Logits().data(), 6, row)) << step;
  }
  EXPECT_FALSE(HasPenalties(p));
  p.presence_penalty = 0.5f;
  EXPECT_TRUE(HasPenalties(p));
}

TEST(SamplerTest, PenaltiesMoveTheArgmax) {
  SamplingParams p;
  p.temperature = 0;
  p.repetition_penalty = 2.0f;  // 3.0 -> 1.5 for ids 1 and 4; id 2 (2.5) wins
  Sampler s(p, 0);
  std::vector<int32_t> history = {1, 4, 4};
  EXPECT_EQ(s.Sample(Logits(), 6, history, {}), 2);
  SamplingParams q;
  q.temperature = 0;
  q.frequency_penalty = 0.3f;  // id 1 generated twice: 3.0 - 0.6 = 2.4 < 3.0 (id 4)
  Sampler t(q, 0);
  std::vector<int32_t> generated = {1, 1};
  EXPECT_EQ(t.Sample(Logits(), 6, generated, generated), 4);
}

TEST(SamplerTest, ValidationNamesTheField) {
  auto check = [](SamplingParams p, const char* field) {
    absl::Status s = ValidateSamplingParams(p);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_NE(s.message().find(field), std::string::npos) << s.message();
  };
  SamplingParams p;
  p.temperature = NAN;
  check(p, "temperature");
  p = {};
  p.temperature = -0.1f;
  check(p, "temperature");
  p = {};
  p.top_p = 0.0f;
  check(p, "top_p");
  p = {};
  p.top_p = 1.5f;
  check(p, "top_p");
  p = {};
  p.min_p = 2.0f;
  check(p, "min_p");
  p = {};
  p.top_k = -3;
  check(p, "top_k");
  p = {};
  p.repetition_penalty = 0.0f;
  check(p, "repetition_penalty");
  p = {};
  p.presence_penalty = 3.0f;
  check(p, "presence_penalty");
  EXPECT_TRUE(ValidateSamplingParams(SamplingParams{}).ok());
}

}  // namespace
}  // namespace tessera
