// StepBatch construction shared by Engine::Step, Generate and the benchmarks (see step_builder.h).
#include "runtime/engine/step_builder.h"

#include <algorithm>

#include "kernels/base/check.h"

namespace tessera {

int StepBatchBuilder::AddSequence(absl::Span<const int32_t> tokens,
                                  absl::Span<const int32_t> blocks, int begin, int end) {
  TESSERA_CHECK(0 <= begin && begin <= end && static_cast<size_t>(end) <= tokens.size())
      << "positions [" << begin << ", " << end << ") of a sequence of " << tokens.size();
  TESSERA_CHECK_LE(static_cast<int64_t>(end), static_cast<int64_t>(blocks.size()) * block_size_)
      << "KV blocks for the sequence's positions";
  const int seq = batch_.num_seqs++;
  if (end - begin == 1 && batch_.single_token_seqs == seq) ++batch_.single_token_seqs;
  blocks_.push_back(blocks);
  for (int p = begin; p < end; ++p) {
    if (any_pending_) batch_.token_from_row.push_back(-1);
    batch_.token_ids.push_back(tokens[p]);
    batch_.positions.push_back(p);
    batch_.token_seq.push_back(seq);
    batch_.slot_mapping.push_back(blocks[p / block_size_] * block_size_ + p % block_size_);
  }
  return seq;
}

int StepBatchBuilder::AddPendingToken(absl::Span<const int32_t> blocks, int position,
                                      int from_row) {
  TESSERA_CHECK(position >= 0 && from_row >= 0)
      << "pending token " << position << ", row " << from_row;
  TESSERA_CHECK_LT(static_cast<int64_t>(position),
                   static_cast<int64_t>(blocks.size()) * block_size_)
      << "KV blocks for the sequence's positions";
  if (!any_pending_) batch_.token_from_row.assign(batch_.token_ids.size(), -1);
  any_pending_ = true;
  const int seq = batch_.num_seqs++;
  if (batch_.single_token_seqs == seq) ++batch_.single_token_seqs;
  blocks_.push_back(blocks);
  batch_.token_ids.push_back(0);
  batch_.positions.push_back(position);
  batch_.token_seq.push_back(seq);
  batch_.slot_mapping.push_back(blocks[position / block_size_] * block_size_ +
                                position % block_size_);
  batch_.token_from_row.push_back(from_row);
  return seq;
}

void StepBatchBuilder::AddLogitRow(int token_index, const LogitRowSampling& sampling) {
  TESSERA_CHECK(0 <= token_index && token_index < num_tokens())
      << "logit row for token " << token_index << " of " << num_tokens();
  batch_.logit_tokens.push_back(token_index);
  batch_.logit_sampling.push_back(sampling);
  any_on_device_ |= sampling.on_device;
}

StepBatch StepBatchBuilder::Build() && {
  int width = 1;
  for (absl::Span<const int32_t> blocks : blocks_)
    width = std::max(width, static_cast<int>(blocks.size()));
  batch_.max_blocks_per_seq = width;
  batch_.block_tables.assign(static_cast<size_t>(batch_.num_seqs) * width, 0);
  for (int j = 0; j < batch_.num_seqs; ++j) {
    std::copy(blocks_[j].begin(), blocks_[j].end(),
              batch_.block_tables.begin() + static_cast<int64_t>(j) * width);
  }
  if (!any_on_device_) batch_.logit_sampling.clear();
  return std::move(batch_);
}

LogitRowSampling DeviceSampledRow(const SamplingParams& params, uint64_t default_seed,
                                  absl::Span<const int32_t> tokens, int prompt_len,
                                  int64_t sampleable_vocab, int pending) {
  LogitRowSampling row;
  row.on_device = true;
  row.params = DeviceSamplingParams(params, default_seed, tokens.size() + pending - prompt_len,
                                    sampleable_vocab);
  if (HasPenalties(params)) {
    TESSERA_CHECK_EQ(pending, 0) << "penalties count every token: none may be pending";
    row.penalty = DevicePenaltyRow(params);
    row.penalty_entries = PenaltyEntries(tokens, tokens.subspan(prompt_len));
  }
  return row;
}

}  // namespace tessera
