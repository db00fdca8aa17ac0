// Token sampling on the host from one row of float32 logits, for the rows the device cannot
// sample (logprobs). Penalties travel to the device as (id, output count) entries
// (PenaltyEntries) and are applied there by the same arithmetic (cpu::ApplyPenalties).
//
// Order of operations, as Hugging Face's logits processors and vLLM apply them:
// penalties -> temperature -> top-k -> top-p -> min-p -> draw. temperature == 0 is greedy
// (argmax, ties to the lowest id). Ids >= `sampleable_vocab` (Qwen3's embedding padding
// 151669..151935) are never sampled. After the penalties, the draw is the device's
// (Backend::SampleTokens, kernels/base/sampling_rule.h): token n of a request is draw n of the
// counter-based stream of its seed, so the same request gives the same tokens on every run, in
// any batch, on any parallel layout, whether its rows are sampled here or on the device.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/ops.h"

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

// True when the params have repetition, presence or frequency penalties.
bool HasPenalties(const SamplingParams& params);

// The device's penalty row for the params (entries [begin, end) are set by whoever packs them).
SamplingPenaltyRow DevicePenaltyRow(const SamplingParams& params);

// (id, count) int32 pairs, ascending by id: the distinct ids of `history` (prompt and output)
// and `generated` (the output), count = occurrences of the id in `generated`.
std::vector<int32_t> PenaltyEntries(absl::Span<const int32_t> history,
                                    absl::Span<const int32_t> generated);

// The device's parameters for draw `step` (tokens generated before this one) of the request's
// stream; `default_seed` when the params carry no seed.
SamplingRowParams DeviceSamplingParams(const SamplingParams& params, uint64_t default_seed,
                                       uint64_t step, int64_t sampleable_vocab);

class Sampler {
 public:
  // `seed` used when the params carry none.
  Sampler(const SamplingParams& params, uint64_t default_seed);

  // Picks the next token from `logits` [vocab]. `history` holds prompt and generated ids (for the
  // repetition penalty) and `generated` only the generated ones (presence/frequency penalties).
  // Call n (from 0) takes draw n of the stream.
  int32_t Sample(absl::Span<const float> logits, int64_t sampleable_vocab,
                 absl::Span<const int32_t> history, absl::Span<const int32_t> generated);

  // log-softmax of the logits the draw used (after penalties and temperature), for logprobs.
  const std::vector<float>& last_logprobs() const { return logprobs_; }

 private:
  SamplingParams params_;
  uint64_t default_seed_;
  uint64_t step_ = 0;
  std::vector<float> work_;
  std::vector<float> logprobs_;
};

}  // namespace tessera
