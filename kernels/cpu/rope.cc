// Qwen3's per-head q/k RMSNorm followed by NeoX (rotate-half) rotary embedding.
//
// As transformers computes it: angle = float(inv_freq[i] * position) in fp32, cos/sin of that in
// fp32, times attention_scaling (YaRN's mscale, 1 otherwise);
//   out[i]       = x[i] * cos_i - x[i + d/2] * sin_i
//   out[i + d/2] = x[i + d/2] * cos_i + x[i] * sin_i
#include <cmath>
#include <vector>

#include "kernels/cpu/reference.h"

namespace tessera::cpu {

void HeadNormRope(float* x, int64_t row_stride, int n, int heads, int head_dim,
                  const float* norm_weight, float eps, const int32_t* positions,
                  const float* inv_freq, float attention_scaling) {
  const int half = head_dim / 2;
#pragma omp parallel for schedule(static)
  for (int t = 0; t < n; ++t) {
    std::vector<float> cos_v(half), sin_v(half), tmp(head_dim);
    const float pos = static_cast<float>(positions[t]);
    for (int i = 0; i < half; ++i) {
      const float angle = inv_freq[i] * pos;
      cos_v[i] = std::cos(angle) * attention_scaling;
      sin_v[i] = std::sin(angle) * attention_scaling;
    }
    for (int h = 0; h < heads; ++h) {
      float* v = x + t * row_stride + static_cast<int64_t>(h) * head_dim;
      if (norm_weight) {
        double sum_sq = 0.0;
        for (int i = 0; i < head_dim; ++i) sum_sq += static_cast<double>(v[i]) * v[i];
        const float inv = 1.0f / std::sqrt(static_cast<float>(sum_sq / head_dim) + eps);
        for (int i = 0; i < head_dim; ++i) tmp[i] = norm_weight[i] * (v[i] * inv);
      } else {
        for (int i = 0; i < head_dim; ++i) tmp[i] = v[i];
      }
      for (int i = 0; i < half; ++i) {
        const float a = tmp[i];
        const float b = tmp[i + half];
        v[i] = a * cos_v[i] - b * sin_v[i];
        v[i + half] = b * cos_v[i] + a * sin_v[i];
      }
    }
  }
}

}  // namespace tessera::cpu
