// StepBatchBuilder against StepBatches written out by hand: the layout the model's Forward reads
// (runtime/engine/step.h), for a prefill chunk and a decode mixed in one micro-batch.
#include "runtime/engine/step_builder.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <vector>

namespace tessera {
namespace {

using ::testing::ElementsAre;

TEST(StepBatchBuilderTest, PrefillChunkAndDecode) {
  constexpr int kBlockSize = 4;
  // Sequence 0: positions [2, 7) of 9 tokens in blocks {5, 1}; sequence 1: a decode at position 4
  // in blocks {3, 8, 2} (its block list is the widest).
  const std::vector<int32_t> tokens0 = {10, 11, 12, 13, 14, 15, 16, 17, 18};
  const std::vector<int32_t> blocks0 = {5, 1};
  const std::vector<int32_t> tokens1 = {20, 21, 22, 23, 24};
  const std::vector<int32_t> blocks1 = {3, 8, 2};
  StepBatchBuilder builder(kBlockSize);
  EXPECT_EQ(builder.AddSequence(tokens0, blocks0, 2, 7), 0);
  EXPECT_EQ(builder.AddSequence(tokens1, blocks1, 4, 5), 1);
  builder.AddLogitRow(builder.num_tokens() - 1);
  const StepBatch b = std::move(builder).Build();

  EXPECT_THAT(b.token_ids, ElementsAre(12, 13, 14, 15, 16, 24));
  EXPECT_THAT(b.positions, ElementsAre(2, 3, 4, 5, 6, 4));
  EXPECT_THAT(b.token_seq, ElementsAre(0, 0, 0, 0, 0, 1));
  // slot = block * block_size + position % block_size.
  EXPECT_THAT(b.slot_mapping, ElementsAre(22, 23, 4, 5, 6, 32));
  EXPECT_EQ(b.num_seqs, 2);
  EXPECT_EQ(b.single_token_seqs, 0);  // the decode follows a chunk: it does not lead
  EXPECT_EQ(b.max_blocks_per_seq, 3);
  EXPECT_THAT(b.block_tables, ElementsAre(5, 1, 0, 3, 8, 2));
  EXPECT_THAT(b.logit_tokens, ElementsAre(5));
  // No row is sampled on the device: every row returns logits.
  EXPECT_TRUE(b.logit_sampling.empty());
  EXPECT_EQ(NumLogitRowsReturned(b), 1);
}

// single_token_seqs counts the one-token sequences (decodes, pending tokens, 1-token chunks)
// before the first longer one, not those after it.
TEST(StepBatchBuilderTest, CountsLeadingOneTokenSequences) {
  const std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8};
  const std::vector<int32_t> blocks = {0, 1};
  StepBatchBuilder builder(4);
  builder.AddSequence(tokens, blocks, 7, 8);
  builder.AddPendingToken(blocks, 6, 0);
  builder.AddSequence(tokens, blocks, 3, 4);
  builder.AddSequence(tokens, blocks, 0, 5);
  builder.AddSequence(tokens, blocks, 7, 8);
  const StepBatch b = std::move(builder).Build();
  EXPECT_EQ(b.num_seqs, 5);
  EXPECT_EQ(b.single_token_seqs, 3);
}

TEST(StepBatchBuilderTest, DeviceRowsKeepOneSamplingEntryPerRow) {
  const std::vector<int32_t> tokens = {1, 2, 3};
  const std::vector<int32_t> blocks = {0};
  StepBatchBuilder builder(16);
  builder.AddSequence(tokens, blocks, 0, 3);
  LogitRowSampling device;
  device.on_device = true;
  builder.AddLogitRow(0);
  builder.AddLogitRow(2, device);
  const StepBatch b = std::move(builder).Build();
  EXPECT_THAT(b.logit_tokens, ElementsAre(0, 2));
  ASSERT_EQ(b.logit_sampling.size(), 2u);
  EXPECT_FALSE(b.logit_sampling[0].on_device);
  EXPECT_TRUE(b.logit_sampling[1].on_device);
  EXPECT_EQ(NumLogitRowsReturned(b), 1);
}

TEST(StepBatchBuilderTest, DeviceSampledRowCountsTheOutput) {
  SamplingParams params;
  params.temperature = 0.7f;
  params.repetition_penalty = 1.1f;
  // Prompt {4, 4, 9}, output {9, 2}: draw 2 of the stream; 9 was generated once, 2 once.
  const std::vector<int32_t> tokens = {4, 4, 9, 9, 2};
  const LogitRowSampling row = DeviceSampledRow(params, 7, tokens, 3, 100);
  EXPECT_TRUE(row.on_device);
  const SamplingRowParams want = DeviceSamplingParams(params, 7, 2, 100);
  EXPECT_EQ(row.params.step, 2u);
  EXPECT_EQ(row.params.step, want.step);
  EXPECT_EQ(row.params.seed, want.seed);
  EXPECT_EQ(row.penalty_entries,
            PenaltyEntries(absl::MakeConstSpan(tokens), absl::MakeConstSpan(tokens).subspan(3)));
  EXPECT_THAT(row.penalty_entries, ElementsAre(2, 1, 4, 0, 9, 1));

  SamplingParams plain;
  EXPECT_TRUE(DeviceSampledRow(plain, 7, tokens, 3, 100).penalty_entries.empty());
}

}  // namespace
}  // namespace tessera
