// The whole model against Hugging Face transformers: logits (relative L2 per row <= 1e-4) and
// greedy continuations (token for token) for every fixture in tests/golden/fixtures
// (made by tests/golden/make_fixtures.py), plus RoPE tables bit for bit and chunked prefill.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>

#include "nlohmann/json.hpp"
#include "runtime/engine.h"
#include "runtime/executor.h"
#include "runtime/generate.h"
#include "runtime/npy.h"
#include "runtime/qwen3.h"
#include "runtime/rope.h"
#include "tests/golden/bf16_golden.h"

namespace tessera {
namespace {

constexpr double kLogitTolerance = 1e-4;

using testing::GoldenModel;
using testing::LoadGoldenModel;
using testing::RowRelativeL2;

// Fixtures load onto the (stateless) CPU backend with bf16_golden.h's loader, which the CUDA
// golden test shares.
std::unique_ptr<GoldenModel> LoadFixture(const std::string& name, int block_size = 16) {
  static std::unique_ptr<Backend> cpu = MakeCpuBackend();
  return LoadGoldenModel(name, *cpu, block_size);
}

double MaxRowRelativeL2(const std::vector<float>& got, const std::vector<float>& want,
                        int64_t cols) {
  const std::vector<double> rows = RowRelativeL2(got, want, cols);
  return rows.empty() ? 0.0 : *std::max_element(rows.begin(), rows.end());
}

// Penalties on the device path: a seeded request with repetition / presence / frequency
// penalties gives the same tokens when its rows are sampled by Backend::SampleTokens with
// penalty entries as when its logits come back to the host Sampler (top_logprobs forces that
// path). All requests share the steps, so device rows with and without penalties and host rows
// are mixed in one batch.
TEST(EnginePenaltiesTest, DeviceAndHostSamplersGiveTheSameTokens) {
  auto f = LoadFixture("dense_gqa");
  EngineOptions options;
  options.seed = 11;
  Engine engine(*f->executor, nullptr, nullptr, options);
  std::thread loop([&] { engine.Run(); });

  SamplingParams greedy;
  greedy.temperature = 0.0f;
  greedy.repetition_penalty = 1.3f;
  greedy.presence_penalty = 0.5f;
  greedy.frequency_penalty = 0.3f;
  SamplingParams drawn;
  drawn.temperature = 0.8f;
  drawn.top_k = 20;
  drawn.top_p = 0.95f;
  drawn.repetition_penalty = 0.8f;  // < 1 favours seen ids
  drawn.frequency_penalty = -0.4f;
  drawn.seed = 5;
  SamplingParams plain = greedy;
  plain.repetition_penalty = 1.0f;
  plain.presence_penalty = plain.frequency_penalty = 0.0f;
  struct Run {
    SamplingParams sampling;
    int top_logprobs;
    std::shared_ptr<RequestStream> stream;
  };
  std::vector<Run> runs = {{greedy, -1, nullptr},
                           {greedy, 0, nullptr},
                           {drawn, -1, nullptr},
                           {drawn, 0, nullptr},
                           {plain, -1, nullptr}};
  for (size_t i = 0; i < runs.size(); ++i) {
    EngineRequest request;
    request.request_id = "r" + std::to_string(i);
    request.prompt = f->prompt;
    request.max_tokens = 24;
    request.ignore_eos = true;
    request.sampling = runs[i].sampling;
    request.top_logprobs = runs[i].top_logprobs;
    auto stream = engine.Submit(request);
    ASSERT_TRUE(stream.ok()) << stream.status();
    runs[i].stream = *stream;
  }
  std::vector<std::vector<int32_t>> tokens(runs.size());
  for (size_t i = 0; i < runs.size(); ++i) {
    EngineOutput out;
    while (runs[i].stream->Next(&out, std::chrono::milliseconds(120000))) {
      tokens[i].insert(tokens[i].end(), out.token_ids.begin(), out.token_ids.end());
      if (out.finished) break;
    }
    EXPECT_TRUE(out.finished && out.status.ok()) << i << ": " << out.status;
    EXPECT_EQ(tokens[i].size(), 24u) << i;
  }
  engine.Stop();
  loop.join();
  EXPECT_EQ(tokens[0], tokens[1]) << "greedy with penalties: device and host differ";
  EXPECT_EQ(tokens[2], tokens[3]) << "seeded draw with penalties: device and host differ";
  EXPECT_NE(tokens[0], tokens[4]) << "the penalties changed nothing: the test tests nothing";
}

class GoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, RopeTablesMatchTransformersBitForBit) {
  auto f = LoadFixture(GetParam());
  const RopeTables tables = ComputeRopeTables(f->config);
  const auto want = f->expected["inv_freq"].get<std::vector<double>>();
  ASSERT_EQ(tables.inv_freq.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(tables.inv_freq[i], static_cast<float>(want[i])) << "inv_freq[" << i << "]";
  }
  EXPECT_NEAR(tables.attention_scaling, f->expected["attention_scaling"].get<double>(), 1e-7);
}

TEST_P(GoldenTest, PromptLogitsAndGreedyTokensMatch) {
  auto f = LoadFixture(GetParam());
  auto want = ReadNpyFloat32(f->dir + "/prompt_logits.npy");
  ASSERT_TRUE(want.ok()) << want.status();
  ASSERT_EQ(want->shape,
            (std::vector<int64_t>{static_cast<int64_t>(f->prompt.size()), f->config.vocab_size}));
  const auto greedy = f->expected["greedy_tokens"].get<std::vector<int32_t>>();

  GenerateOptions options;
  options.max_new_tokens = static_cast<int>(greedy.size());
  options.sampling.temperature = 0.0f;
  options.want_prompt_logits = true;
  auto result = Generate(*f->executor, f->prompt, options);
  ASSERT_TRUE(result.ok()) << result.status();
  const double err = MaxRowRelativeL2(result->prompt_logits, want->data, f->config.vocab_size);
  std::printf("[golden] %s: max row relative L2 %.3e (min HF top-2 margin %.3e)\n",
              GetParam().c_str(), err, f->expected["min_margin"].get<double>());
  EXPECT_LE(err, kLogitTolerance);
  EXPECT_EQ(result->tokens, greedy);
}

TEST_P(GoldenTest, ChunkedPrefillMatchesWholePrefill) {
  auto f = LoadFixture(GetParam());
  GenerateOptions options;
  options.max_new_tokens = 4;
  options.sampling.temperature = 0.0f;
  options.want_prompt_logits = true;
  auto whole = Generate(*f->executor, f->prompt, options);
  ASSERT_TRUE(whole.ok()) << whole.status();
  options.prefill_chunk = 7;
  auto g = LoadFixture(GetParam(), /*block_size=*/5);  // blocks that do not align with chunks
  auto chunked = Generate(*g->executor, g->prompt, options);
  ASSERT_TRUE(chunked.ok()) << chunked.status();
  EXPECT_LE(MaxRowRelativeL2(chunked->prompt_logits, whole->prompt_logits, f->config.vocab_size),
            1e-5);
  EXPECT_EQ(chunked->tokens, whole->tokens);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenTest,
                         ::testing::Values("dense_gqa", "dense_mha_tied", "dense_gqa_kv2",
                                           "dense_yarn", "dense_yarn_v5", "moe_norm_topk",
                                           "moe_no_norm", "moe_mixed_layers"));

}  // namespace
}  // namespace tessera
