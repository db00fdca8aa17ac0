#include "runtime/engine/sampler.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/reference.h"

namespace tessera {

absl::Status ValidateSamplingParams(const SamplingParams& p) {
  auto bad = [](const char* field, double value, const char* want) {
    return absl::InvalidArgumentError(absl::StrCat(field, " must be ", want, ", got ", value));
  };
  if (std::isnan(p.temperature) || p.temperature < 0 || std::isinf(p.temperature))
    return bad("temperature", p.temperature, "a finite number >= 0");
  if (std::isnan(p.top_p) || p.top_p <= 0 || p.top_p > 1) return bad("top_p", p.top_p, "in (0, 1]");
  if (std::isnan(p.min_p) || p.min_p < 0 || p.min_p > 1) return bad("min_p", p.min_p, "in [0, 1]");
  if (p.top_k < 0) return bad("top_k", p.top_k, ">= 0 (0 disables it)");
  if (std::isnan(p.repetition_penalty) || p.repetition_penalty <= 0 ||
      std::isinf(p.repetition_penalty))
    return bad("repetition_penalty", p.repetition_penalty, "a finite number > 0");
  if (std::isnan(p.presence_penalty) || p.presence_penalty < -2 || p.presence_penalty > 2)
    return bad("presence_penalty", p.presence_penalty, "in [-2, 2]");
  if (std::isnan(p.frequency_penalty) || p.frequency_penalty < -2 || p.frequency_penalty > 2)
    return bad("frequency_penalty", p.frequency_penalty, "in [-2, 2]");
  return absl::OkStatus();
}

bool HasPenalties(const SamplingParams& p) {
  return p.repetition_penalty != 1.0f || p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f;
}

SamplingPenaltyRow DevicePenaltyRow(const SamplingParams& p) {
  SamplingPenaltyRow row;
  row.repetition = p.repetition_penalty;
  row.presence = p.presence_penalty;
  row.frequency = p.frequency_penalty;
  return row;
}

std::vector<int32_t> PenaltyEntries(absl::Span<const int32_t> history,
                                    absl::Span<const int32_t> generated) {
  std::vector<int32_t> ids(history.begin(), history.end());
  ids.insert(ids.end(), generated.begin(), generated.end());  // normally already in history
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  std::vector<int32_t> counts(ids.size(), 0);
  for (int32_t id : generated) {
    const auto it = std::lower_bound(ids.begin(), ids.end(), id);
    if (it != ids.end() && *it == id) ++counts[it - ids.begin()];
  }
  std::vector<int32_t> entries(2 * ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    entries[2 * i] = ids[i];
    entries[2 * i + 1] = counts[i];
  }
  return entries;
}

SamplingRowParams DeviceSamplingParams(const SamplingParams& p, uint64_t default_seed,
                                       uint64_t step, int64_t sampleable_vocab) {
  SamplingRowParams row;
  row.temperature = p.temperature;
  row.top_k = p.top_k;
  row.top_p = p.top_p;
  row.min_p = p.min_p;
  row.sampleable_vocab = static_cast<int32_t>(sampleable_vocab);
  row.seed = p.seed.value_or(default_seed);
  row.step = step;
  return row;
}

Sampler::Sampler(const SamplingParams& params, uint64_t default_seed)
    : params_(params), default_seed_(default_seed) {}

int32_t Sampler::Sample(absl::Span<const float> logits, int64_t sampleable_vocab,
                        absl::Span<const int32_t> history, absl::Span<const int32_t> generated) {
  const int64_t vocab = std::min<int64_t>(sampleable_vocab, static_cast<int64_t>(logits.size()));
  work_.assign(logits.begin(), logits.begin() + vocab);

  // Penalties: the device's arithmetic on the same entries.
  if (HasPenalties(params_)) {
    const std::vector<int32_t> entries = PenaltyEntries(history, generated);
    SamplingPenaltyRow row = DevicePenaltyRow(params_);
    row.end = static_cast<int32_t>(entries.size() / 2);
    cpu::ApplyPenalties(work_.data(), vocab, row, entries.data());
  }

  // Log-probabilities of the tempered distribution (before truncation), for logprobs.
  const float t = params_.temperature == 0.0f ? 1.0f : params_.temperature;
  {
    const float mx = *std::max_element(work_.begin(), work_.end());
    double sum = 0;
    for (float l : work_) sum += std::exp(static_cast<double>(l / t - mx / t));
    const float log_sum = static_cast<float>(std::log(sum));
    logprobs_.resize(vocab);
    for (int64_t i = 0; i < vocab; ++i) logprobs_[i] = work_[i] / t - mx / t - log_sum;
  }
  // The rest is the device's rule, on the penalised logits.
  const SamplingRowParams row = DeviceSamplingParams(params_, default_seed_, step_++, vocab);
  return cpu::SampleRow(work_.data(), vocab, row);
}

}  // namespace tessera
