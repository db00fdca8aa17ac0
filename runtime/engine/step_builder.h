// StepBatchBuilder: the one way the engine side turns sequences into the step contract's
// StepBatch (runtime/engine/step.h; docs/design.md, "The step contract").
//
// The serving engine's step (Engine::Step), offline Generate and the benchmarks each schedule
// differently, but a micro-batch always holds consecutive positions of some sequences, each with
// its KV blocks, and a few logit rows. Building it in one place keeps the invariants the model
// checks (tokens of a sequence contiguous and in position order, slots inside the sequence's
// blocks, one sampling entry per logit row) in one place too.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "runtime/engine/sampler.h"
#include "runtime/engine/step.h"

namespace tessera {

class StepBatchBuilder {
 public:
  explicit StepBatchBuilder(int block_size) : block_size_(block_size) {}

  // Appends positions [begin, end) of one sequence: `tokens` its ids (at least `end` of them),
  // `blocks` its KV blocks, covering positions [0, end). Returns the sequence's index.
  int AddSequence(absl::Span<const int32_t> tokens, absl::Span<const int32_t> blocks, int begin,
                  int end);

  // Appends one decode token at `position` whose id is not known on the host yet: the id the model
  // sampled for logit row `from_row` of its previous forward (StepBatch::token_from_row; async
  // scheduling). `blocks` cover positions [0, position]. Returns the sequence's index.
  int AddPendingToken(absl::Span<const int32_t> blocks, int position, int from_row);

  // Asks for the logits of token `token_index` of the batch (rows in call order), returned to the
  // host or sampled on the device as `sampling` says.
  void AddLogitRow(int token_index, const LogitRowSampling& sampling = {});

  int num_tokens() const { return static_cast<int>(batch_.token_ids.size()); }

  // The batch's StepBatch::single_token_seqs counts the one-token sequences added before the first
  // sequence with another count: add those first for the model's decode attention path.

  // The batch: block tables as wide as the longest block list. `logit_sampling` is left empty when
  // no row is sampled on the device (the contract's "every row returns logits").
  StepBatch Build() &&;

 private:
  int block_size_;
  StepBatch batch_;
  std::vector<absl::Span<const int32_t>> blocks_;  // [num_seqs]
  bool any_on_device_ = false;
  bool any_pending_ = false;
};

// The logit row of a sequence's next token, sampled on the device: draw `tokens.size() + pending -
// prompt_len` of the request's stream (seeded by `params.seed`, else `default_seed`), with the
// penalties of `params` over `tokens` (the prompt, then the output). The draw the host Sampler
// makes for the same row. `pending`: sampled tokens not yet in `tokens` (async scheduling; only
// without penalties, which need every token).
LogitRowSampling DeviceSampledRow(const SamplingParams& params, uint64_t default_seed,
                                  absl::Span<const int32_t> tokens, int prompt_len,
                                  int64_t sampleable_vocab, int pending = 0);

}  // namespace tessera
