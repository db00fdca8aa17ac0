// Causal GQA attention over a paged KV cache, and the cache write.
//
// Query head h reads KV head h / (q_heads / kv_heads). Token t at position p of its sequence
// attends to cached positions 0..p; position j lives at slot
// block_tables[seq][j / block_size] * block_size + j % block_size. Scores and softmax in fp32
// (a running max keeps exp() in range), as transformers' eager attention does.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/reference.h"

namespace tessera::cpu {

void WriteKvCache(const float* k, const float* v, int64_t row_stride, int n, int kv_heads,
                  int head_dim, const int32_t* slot_mapping, float* k_cache, float* v_cache) {
  const int64_t width = static_cast<int64_t>(kv_heads) * head_dim;
  for (int t = 0; t < n; ++t) {
    const int64_t slot = slot_mapping[t];
    if (slot < 0) continue;
    std::memcpy(k_cache + slot * width, k + t * row_stride, width * sizeof(float));
    std::memcpy(v_cache + slot * width, v + t * row_stride, width * sizeof(float));
  }
}

void QkNormRopeKvWrite(float* qkv, int64_t row_stride, int n, int q_heads, int kv_heads,
                       int head_dim, const float* q_norm, const float* k_norm, float eps,
                       const int32_t* positions, const float* inv_freq, float attention_scaling,
                       const int32_t* slot_mapping, float* k_cache, float* v_cache) {
  float* k = qkv + static_cast<int64_t>(q_heads) * head_dim;
  const float* v = k + static_cast<int64_t>(kv_heads) * head_dim;
  HeadNormRope(qkv, row_stride, n, q_heads, head_dim, q_norm, eps, positions, inv_freq,
               attention_scaling);
  HeadNormRope(k, row_stride, n, kv_heads, head_dim, k_norm, eps, positions, inv_freq,
               attention_scaling);
  WriteKvCache(k, v, row_stride, n, kv_heads, head_dim, slot_mapping, k_cache, v_cache);
}

void Attention(const float* q, int64_t q_row_stride, const float* k_cache, const float* v_cache,
               int num_tokens, const int32_t* positions, const int32_t* token_seq,
               const int32_t* block_tables, int max_blocks_per_seq, int block_size, int q_heads,
               int kv_heads, int head_dim, float scale, float* out) {
  const int group = q_heads / kv_heads;
  const int64_t kv_width = static_cast<int64_t>(kv_heads) * head_dim;
#pragma omp parallel for collapse(2) schedule(static)
  for (int t = 0; t < num_tokens; ++t) {
    for (int h = 0; h < q_heads; ++h) {
      const int context = positions[t] + 1;
      const int32_t* table = block_tables + static_cast<int64_t>(token_seq[t]) * max_blocks_per_seq;
      const float* qv = q + t * q_row_stride + static_cast<int64_t>(h) * head_dim;
      const int kvh = h / group;
      std::vector<float> scores(context);
      float max_score = -INFINITY;
      for (int j = 0; j < context; ++j) {
        const int64_t slot =
            static_cast<int64_t>(table[j / block_size]) * block_size + j % block_size;
        const float* kv = k_cache + slot * kv_width + static_cast<int64_t>(kvh) * head_dim;
        float dot = 0.0f;
        for (int d = 0; d < head_dim; ++d) dot += qv[d] * kv[d];
        scores[j] = dot * scale;
        max_score = std::max(max_score, scores[j]);
      }
      float denom = 0.0f;
      for (int j = 0; j < context; ++j) {
        scores[j] = std::exp(scores[j] - max_score);
        denom += scores[j];
      }
      float* o = out + (static_cast<int64_t>(t) * q_heads + h) * head_dim;
      std::fill(o, o + head_dim, 0.0f);
      for (int j = 0; j < context; ++j) {
        const int64_t slot =
            static_cast<int64_t>(table[j / block_size]) * block_size + j % block_size;
        const float* vv = v_cache + slot * kv_width + static_cast<int64_t>(kvh) * head_dim;
        const float p = scores[j] / denom;
        for (int d = 0; d < head_dim; ++d) o[d] += p * vv[d];
      }
    }
  }
}

}  // namespace tessera::cpu
