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
#include "runtime/engine/engine.h"
#include "runtime/engine/executor.h"
#include "runtime/engine/generate.h"
#include "runtime/model/npy.h"
#include "runtime/model/qwen3.h"
#include "runtime/model/rope.h"
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
  options.max_num_batched_tokens = 512;  // the fixture's planned step (bf16_golden.h)
  options.max_num_seqs = 8;
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

// The workspace is planned once for the largest step (Qwen3Model::PlanWorkspace): Generate keeps
// its chunks within the plan, gives the same logits as an unconstrained executor, and refuses a
// sequence longer than the planned block table; a step beyond the plan is a checked error.
TEST(PlannedWorkspaceTest, GenerateChunksWithinThePlan) {
  static std::unique_ptr<Backend> cpu = MakeCpuBackend();
  auto whole = LoadFixture("dense_gqa");
  StepLimits small;
  small.max_tokens = 6;
  small.max_logit_rows = 6;
  small.max_seqs = 1;
  small.max_blocks_per_seq = 4;  // 64 positions of 16
  small.max_seq_len = 64;
  auto f = LoadGoldenModel("dense_gqa", *cpu, 16, &small);
  EXPECT_GT(f->executor->model().workspace_bytes(), 0u);
  EXPECT_LT(f->executor->model().workspace_bytes(), whole->executor->model().workspace_bytes());

  GenerateOptions options;
  options.max_new_tokens = 4;
  options.sampling.temperature = 0.0f;
  options.want_prompt_logits = true;
  auto want = Generate(*whole->executor, whole->prompt, options);
  ASSERT_TRUE(want.ok()) << want.status();
  auto got = Generate(*f->executor, f->prompt, options);  // 37 prompt tokens in chunks of 6
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->prompt_logits.size(), want->prompt_logits.size());
  EXPECT_LE(MaxRowRelativeL2(got->prompt_logits, want->prompt_logits, f->config.vocab_size), 1e-5);
  EXPECT_EQ(got->tokens, want->tokens);

  options.max_new_tokens = 30;  // 67 positions: 5 blocks, one more than planned
  auto refused = Generate(*f->executor, f->prompt, options);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("planned for 4"), std::string::npos)
      << refused.status();
}

TEST(PlannedWorkspaceDeathTest, StepBeyondThePlanIsACheckedError) {
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  static std::unique_ptr<Backend> cpu = MakeCpuBackend();
  StepLimits small;
  small.max_tokens = 4;
  small.max_logit_rows = 4;
  small.max_seqs = 1;
  small.max_blocks_per_seq = 2;
  small.max_seq_len = 32;
  auto f = LoadGoldenModel("dense_gqa", *cpu, 16, &small);
  StepPlan plan;
  plan.replicas.assign(1, std::vector<StepBatch>(1));
  StepBatch& b = plan.replicas[0][0];
  b.num_seqs = 1;
  b.max_blocks_per_seq = 1;
  b.block_tables = {0};
  for (int p = 0; p < 5; ++p) {
    b.token_ids.push_back(f->prompt[p]);
    b.positions.push_back(p);
    b.token_seq.push_back(0);
    b.slot_mapping.push_back(p);
  }
  b.logit_tokens = {4};
  EXPECT_DEATH(f->executor->Execute(plan), "tokens in one step \\(planned workspace\\)");
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenTest,
                         ::testing::Values("dense_gqa", "dense_mha_tied", "dense_gqa_kv2",
                                           "dense_yarn", "dense_yarn_v5", "moe_norm_topk",
                                           "moe_no_norm", "moe_mixed_layers"));

}  // namespace
}  // namespace tessera
