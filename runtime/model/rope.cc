#include "runtime/model/rope.h"

#include <algorithm>
#include <cmath>

namespace tessera {
namespace {

// NOTE: each step mirrors a torch float32 tensor operation (the Python scalars are cast to
// float32 first), so inv_freq is bit-for-bit what transformers uses, not a float64 recomputation.
std::vector<float> PosFreqs(double base, int dim) {
  std::vector<float> pos(dim / 2);
  for (int i = 0; i < dim / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    pos[i] = std::pow(static_cast<float>(base), exponent);
  }
  return pos;
}

double YarnMscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

}  // namespace

RopeTables ComputeRopeTables(const ModelConfig& config) {
  const int dim = static_cast<int>(config.head_dim);
  const RopeConfig& rope = config.rope;
  const std::vector<float> pos = PosFreqs(rope.theta, dim);
  RopeTables tables;
  tables.inv_freq.resize(dim / 2);
  if (rope.type == RopeType::kDefault) {
    for (int i = 0; i < dim / 2; ++i) tables.inv_freq[i] = 1.0f / pos[i];
    return tables;
  }

  // YaRN.
  const double original_max = rope.original_max_position_embeddings > 0
                                  ? static_cast<double>(rope.original_max_position_embeddings)
                                  : static_cast<double>(config.max_position_embeddings);
  const double factor = rope.factor > 0
                            ? rope.factor
                            : static_cast<double>(config.max_position_embeddings) / original_max;
  double attention_factor = rope.attention_factor;
  if (attention_factor < 0) {
    attention_factor =
        (rope.mscale != 0 && rope.mscale_all_dim != 0)
            ? YarnMscale(factor, rope.mscale) / YarnMscale(factor, rope.mscale_all_dim)
            : YarnMscale(factor, 1.0);
  }
  const double beta_fast = rope.beta_fast != 0 ? rope.beta_fast : 32.0;
  const double beta_slow = rope.beta_slow != 0 ? rope.beta_slow : 1.0;
  auto correction_dim = [&](double rotations) {
    return (dim * std::log(original_max / (rotations * 2 * M_PI))) / (2 * std::log(rope.theta));
  };
  double low = correction_dim(beta_fast);
  double high = correction_dim(beta_slow);
  if (rope.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  const float low_f = static_cast<float>(low);
  const float range_f = static_cast<float>(high - low);
  const float factor_f = static_cast<float>(factor);
  for (int i = 0; i < dim / 2; ++i) {
    const float ramp = std::clamp((static_cast<float>(i) - low_f) / range_f, 0.0f, 1.0f);
    const float extrapolation_factor = 1.0f - ramp;
    const float extrapolation = 1.0f / pos[i];
    const float interpolation = 1.0f / (factor_f * pos[i]);
    tables.inv_freq[i] =
        interpolation * (1.0f - extrapolation_factor) + extrapolation * extrapolation_factor;
  }
  tables.attention_scaling = static_cast<float>(attention_factor);
  return tables;
}

}  // namespace tessera
