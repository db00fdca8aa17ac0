// Token sampling on the host from one row of float32 logits.
//
// Order of operations, as Hugging Face's logits processors and vLLM apply them:
// penalties -> temperature -> top-k -> top-p -> min-p -> draw. temperature == 0 is greedy
// (argmax, ties to the lowest id). Ids >= `sampleable_vocab` (Qwen3's embedding padding
// 151669..151935) are never sampled. A request's seed fixes its random stream, so the same
// request gives the same tokens on every run and on every rank.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace tessera {

struct SamplingParams {
  float temperature = 1.0f;         // 0 = greedy
  int top_k = 0;                    // <= 0: off
  float top_p = 1.0f;               // (0, 1]; 1 = off
  float min_p = 0.0f;               // [0, 1]; 0 = off
  float repetition_penalty = 1.0f;  // > 0; 1 = off (HF semantics: divides positive logits)
  float presence_penalty = 0.0f;    // [-2, 2] (OpenAI semantics)
  float frequency_penalty = 0.0f;   // [-2, 2]
  std::optional<uint64_t> seed;
};

// Returns InvalidArgument naming the field for NaN, negative temperature, top_p outside (0, 1],
// min_p outside [0, 1], non-positive repetition_penalty, penalties outside [-2, 2].
absl::Status ValidateSamplingParams(const SamplingParams& params);

class Sampler {
 public:
  // `seed` used when the params carry none.
  Sampler(const SamplingParams& params, uint64_t default_seed);

  // Picks the next token from `logits` [vocab]. `history` holds prompt and generated ids (for the
  // repetition penalty) and `generated` only the generated ones (presence/frequency penalties).
  int32_t Sample(absl::Span<const float> logits, int64_t sampleable_vocab,
                 absl::Span<const int32_t> history, absl::Span<const int32_t> generated);

  // log-softmax of the logits the draw used (after penalties and temperature), for logprobs.
  const std::vector<float>& last_logprobs() const { return logprobs_; }

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<float> work_;
  std::vector<float> logprobs_;
  std::vector<int32_t> order_;
};

}  // namespace tessera
