// The engine <-> model step contract: what one engine step asks of the model (StepBatch), how
// the model returns each logit row (LogitRowSampling), and the largest step the model's workspace
// is planned for (StepLimits). Header-only: the model (runtime/model/qwen3.h) implements it, the
// engine (step plans, executor, Generate) builds it; neither side includes the other's headers
// for it. docs/design.md, "The step contract".
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/ops.h"

namespace tessera {

// What the last stage does with one logit row: sample it on the device (only its id travels to
// rank 0), or return its logits (rows that need logprobs or prompt logits).
struct LogitRowSampling {
  bool on_device = false;
  SamplingRowParams params;  // when on_device
  // When on_device with penalties: their values (begin/end unused here) and the (id, count)
  // pairs of runtime/engine/sampler.h's PenaltyEntries; empty = none.
  SamplingPenaltyRow penalty;
  std::vector<int32_t> penalty_entries;
};

// One engine step, on the host. Tokens of a sequence are contiguous and in position order.
struct StepBatch {
  std::vector<int32_t> token_ids;     // [num_tokens]
  std::vector<int32_t> positions;     // [num_tokens]
  std::vector<int32_t> token_seq;     // [num_tokens] sequence index in [0, num_seqs)
  std::vector<int32_t> slot_mapping;  // [num_tokens] KV-cache slot of each token
  std::vector<int32_t> block_tables;  // [num_seqs, max_blocks_per_seq]
  int num_seqs = 0;
  int max_blocks_per_seq = 0;
  // How many leading sequences have exactly one token in this step (token t is then sequence t,
  // for t < single_token_seqs); 0 = none or unknown. The engine orders a step's one-token
  // sequences first so that the model's attention runs them on its decode kernel.
  int single_token_seqs = 0;
  // [num_tokens], or empty (every id is in token_ids). Async scheduling: -1 = token_ids[t]; i >= 0
  // = the id this rank's model sampled for logit row i of its previous forward, which the engine
  // had not read back when it planned this step (token_ids[t] is then 0). Decode tokens only.
  std::vector<int32_t> token_from_row;
  std::vector<int32_t> logit_tokens;  // token indices whose logits are wanted, e.g. each seq's last
  // [logit_tokens.size()], or empty: every row returns logits.
  std::vector<LogitRowSampling> logit_sampling;
};

// The largest step a model's workspace is planned for, per micro-batch (Qwen3Model::PlanWorkspace):
// every buffer a step uses is sized from these once, before the first step, so steps and ops never
// allocate. A step beyond them is the caller's error; the engine's budgets keep within them.
struct StepLimits {
  int max_tokens = 1;          // tokens of one step (the chunked-prefill budget)
  int max_logit_rows = 1;      // rows whose logits one step computes (<= max_tokens)
  int max_seqs = 1;            // sequences of one step
  int max_blocks_per_seq = 1;  // width of the step's block table
  int max_seq_len = 1;         // positions of the longest sequence (bounds penalty entries)
};

// The logit rows of `batch` whose logits come back to the host (the others come back as ids).
inline int NumLogitRowsReturned(const StepBatch& batch) {
  if (batch.logit_sampling.empty()) return static_cast<int>(batch.logit_tokens.size());
  int n = 0;
  for (const LogitRowSampling& row : batch.logit_sampling) n += row.on_device ? 0 : 1;
  return n;
}

}  // namespace tessera
