#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_map>

#include "absl/strings/str_cat.h"

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

Sampler::Sampler(const SamplingParams& params, uint64_t default_seed)
    : params_(params), rng_(params.seed.value_or(default_seed)) {}

int32_t Sampler::Sample(absl::Span<const float> logits, int64_t sampleable_vocab,
                        absl::Span<const int32_t> history, absl::Span<const int32_t> generated) {
  const int64_t vocab = std::min<int64_t>(sampleable_vocab, static_cast<int64_t>(logits.size()));
  work_.assign(logits.begin(), logits.begin() + vocab);

  // Penalties.
  if (params_.repetition_penalty != 1.0f) {
    for (int32_t id : history) {
      if (id < 0 || id >= vocab) continue;
      float& l = work_[id];
      // NOTE: idempotent per id (HF gathers unique ids), so repeated ids are penalised once.
      l = logits[id] > 0 ? logits[id] / params_.repetition_penalty
                         : logits[id] * params_.repetition_penalty;
    }
  }
  if (params_.presence_penalty != 0.0f || params_.frequency_penalty != 0.0f) {
    std::unordered_map<int32_t, int> counts;
    for (int32_t id : generated) ++counts[id];
    for (const auto& [id, count] : counts) {
      if (id < 0 || id >= vocab) continue;
      work_[id] -= params_.frequency_penalty * count + params_.presence_penalty;
    }
  }

  if (params_.temperature == 0.0f) {
    const int32_t best =
        static_cast<int32_t>(std::max_element(work_.begin(), work_.end()) - work_.begin());
    logprobs_.resize(vocab);
    const float mx = work_[best];
    double sum = 0;
    for (float l : work_) sum += std::exp(static_cast<double>(l - mx));
    const float log_sum = static_cast<float>(std::log(sum));
    for (int64_t i = 0; i < vocab; ++i) logprobs_[i] = work_[i] - mx - log_sum;
    return best;
  }

  for (float& l : work_) l /= params_.temperature;
  // Log-probabilities of the tempered distribution (before truncation), for logprobs.
  {
    const float mx = *std::max_element(work_.begin(), work_.end());
    double sum = 0;
    for (float l : work_) sum += std::exp(static_cast<double>(l - mx));
    const float log_sum = static_cast<float>(std::log(sum));
    logprobs_.resize(vocab);
    for (int64_t i = 0; i < vocab; ++i) logprobs_[i] = work_[i] - mx - log_sum;
  }

  // Candidates sorted by logit, descending; ties to the lower id.
  order_.resize(vocab);
  std::iota(order_.begin(), order_.end(), 0);
  int64_t keep = vocab;
  if (params_.top_k > 0 && params_.top_k < vocab) keep = params_.top_k;
  auto by_logit = [&](int32_t a, int32_t b) {
    return work_[a] > work_[b] || (work_[a] == work_[b] && a < b);
  };
  if (keep < vocab) {
    std::partial_sort(order_.begin(), order_.begin() + keep, order_.end(), by_logit);
  } else {
    std::sort(order_.begin(), order_.end(), by_logit);
  }
  order_.resize(keep);

  // Probabilities over the kept candidates.
  std::vector<double> probs(keep);
  const float mx = work_[order_[0]];
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i)
    sum += (probs[i] = std::exp(static_cast<double>(work_[order_[i]] - mx)));
  for (double& p : probs) p /= sum;

  // top-p: the smallest prefix whose mass reaches top_p (at least one token).
  if (params_.top_p < 1.0f) {
    double cumulative = 0;
    int64_t cut = keep;
    for (int64_t i = 0; i < keep; ++i) {
      cumulative += probs[i];
      if (cumulative >= params_.top_p) {
        cut = i + 1;
        break;
      }
    }
    keep = cut;
  }
  // min-p: drop tokens below min_p times the top probability.
  if (params_.min_p > 0.0f) {
    const double threshold = params_.min_p * probs[0];
    int64_t cut = 1;
    while (cut < keep && probs[cut] >= threshold) ++cut;
    keep = cut;
  }

  double mass = 0;
  for (int64_t i = 0; i < keep; ++i) mass += probs[i];
  const double u = std::uniform_real_distribution<double>(0.0, mass)(rng_);
  double cumulative = 0;
  for (int64_t i = 0; i < keep; ++i) {
    cumulative += probs[i];
    if (u < cumulative) return order_[i];
  }
  return order_[keep - 1];
}

}  // namespace tessera
