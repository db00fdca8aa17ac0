// Offline generation for one prompt (`tessera run`): prefill (optionally in chunks) then decode
// one token at a time over the paged KV cache, never recomputing the prompt.
//
// The serving engine (runtime/engine/ENGINE.md) batches many sequences; this is the single-sequence
// path the golden tests and `tessera run` use, built from the same model step.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/engine/executor.h"
#include "runtime/engine/sampler.h"

namespace tessera {

struct GenerateOptions {
  int max_new_tokens = 16;
  SamplingParams sampling;
  uint64_t default_seed = 0;
  bool want_prompt_logits = false;      // fills GenerateResult::prompt_logits
  std::vector<int32_t> stop_token_ids;  // generation ends after emitting one of these
  int64_t sampleable_vocab = -1;        // ids >= this are never sampled; -1 = the whole vocab
  int prefill_chunk = 0;  // > 0: prefill in chunks of this many tokens (chunked prefill)
};

struct GenerateResult {
  std::vector<int32_t> tokens;       // generated ids
  std::vector<float> prompt_logits;  // [n_prompt, vocab] when asked
  std::string finish_reason;         // "length" or "stop"
};

// Checks a prompt against the model: non-empty, ids in [0, vocab), prompt + max_new_tokens
// within max_position_embeddings. Errors say which id / length and the limit.
absl::Status ValidatePrompt(const ModelConfig& config, const std::vector<int64_t>& prompt,
                            int64_t max_new_tokens);

// Rank 0 only (the coordinator): runs the sequence on attention-DP replica 0 through
// executor.Execute; the other ranks must be in Executor::RunWorker. Uses the executor's KV blocks.
absl::StatusOr<GenerateResult> Generate(Executor& executor, const std::vector<int32_t>& prompt,
                                        const GenerateOptions& options);

}  // namespace tessera
