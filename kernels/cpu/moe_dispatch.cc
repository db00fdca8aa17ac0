// Expert-parallel dispatch over all-to-all: the float32 reference of the send layout (which rows
// go to which rank, in what order), the packing of the send rows and the combine of the ranks'
// partial sums on the tokens' home rank. The CUDA backend's kernels (kernels/cuda/moe_dispatch.cu)
// produce the same layout bit for bit; parallel/expert_exchange.h runs the exchange around them.
#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/base/check.h"
#include "kernels/cpu/reference.h"

namespace tessera::cpu {

void MoeDispatchLayout(const int32_t* ids, int n, int top_k, int num_ranks, int experts_per_rank,
                       int32_t* rank_counts, int32_t* expert_counts, int32_t* send_tokens,
                       int32_t* token_slots, int block_capacity, const int32_t* valid_rows,
                       int64_t* load) {
  const int S = num_ranks;
  const int64_t num_experts = static_cast<int64_t>(S) * experts_per_rank;
  std::fill(rank_counts, rank_counts + S, 0);
  if (expert_counts != nullptr) std::fill(expert_counts, expert_counts + num_experts, 0);
  // Tokens from `valid` on are padding: routed nowhere.
  const int valid = valid_rows != nullptr ? std::clamp(*valid_rows, 0, n) : n;
  // has[t, r]: token t has an expert on rank r.
  std::vector<uint8_t> has(static_cast<size_t>(n) * S, 0);
  for (int t = 0; t < valid; ++t) {
    for (int k = 0; k < top_k; ++k) {
      const int32_t id = ids[static_cast<int64_t>(t) * top_k + k];
      if (id < 0) continue;
      TESSERA_CHECK_LT(id, num_experts) << "expert id of token " << t;
      has[static_cast<size_t>(t) * S + id / experts_per_rank] = 1;
      if (expert_counts != nullptr) ++expert_counts[id];
      if (load != nullptr) ++load[S + id];
    }
  }
  // after this loop: row_of[t, r] = the send row of (t, r); rows grouped by rank, tokens ascending
  // (packed, or from r * block_capacity with the block's unused rows -1).
  std::vector<int32_t> row_of(static_cast<size_t>(n) * S, -1);
  int32_t row = 0;
  for (int r = 0; r < S; ++r) {
    if (block_capacity > 0) row = r * block_capacity;
    for (int t = 0; t < n; ++t) {
      if (!has[static_cast<size_t>(t) * S + r]) continue;
      TESSERA_CHECK(block_capacity == 0 || rank_counts[r] < block_capacity)
          << "rows for rank " << r << " over the block capacity " << block_capacity;
      row_of[static_cast<size_t>(t) * S + r] = row;
      send_tokens[row++] = t;
      ++rank_counts[r];
    }
    if (block_capacity > 0)
      std::fill(send_tokens + row, send_tokens + (r + 1) * block_capacity, -1);
    if (load != nullptr) load[r] += rank_counts[r];
  }
  for (int t = 0; t < n; ++t) {
    int32_t* slots = token_slots + static_cast<int64_t>(t) * top_k;
    int j = 0;
    for (int r = 0; r < S; ++r) {
      if (row_of[static_cast<size_t>(t) * S + r] >= 0)
        slots[j++] = row_of[static_cast<size_t>(t) * S + r];
    }
    std::fill(slots + j, slots + top_k, -1);
  }
}

void MoeDispatchPack(const float* x, const int32_t* ids, const float* weights,
                     const int32_t* send_tokens, int rows, int64_t hidden, int top_k, float* send_x,
                     int32_t* send_ids, float* send_weights) {
  for (int i = 0; i < rows; ++i) {
    const int64_t t = send_tokens[i];
    if (t < 0) {  // an unused row of a fixed-capacity block: zeros, routed nowhere
      std::fill(send_x + i * hidden, send_x + (i + 1) * hidden, 0.0f);
      std::fill(send_ids + static_cast<int64_t>(i) * top_k,
                send_ids + static_cast<int64_t>(i + 1) * top_k, -1);
      std::fill(send_weights + static_cast<int64_t>(i) * top_k,
                send_weights + static_cast<int64_t>(i + 1) * top_k, 0.0f);
      continue;
    }
    std::memcpy(send_x + i * hidden, x + t * hidden, hidden * sizeof(float));
    std::memcpy(send_ids + static_cast<int64_t>(i) * top_k, ids + t * top_k,
                top_k * sizeof(int32_t));
    std::memcpy(send_weights + static_cast<int64_t>(i) * top_k, weights + t * top_k,
                top_k * sizeof(float));
  }
}

void MoeCombineRanks(const float* y, const int32_t* token_slots, int n, int top_k, int64_t hidden,
                     float* out) {
  for (int t = 0; t < n; ++t) {
    float* o = out + static_cast<int64_t>(t) * hidden;
    std::fill(o, o + hidden, 0.0f);
    for (int j = 0; j < top_k; ++j) {
      const int32_t row = token_slots[static_cast<int64_t>(t) * top_k + j];
      if (row < 0) break;
      const float* src = y + static_cast<int64_t>(row) * hidden;
      for (int64_t d = 0; d < hidden; ++d) o[d] += src[d];
    }
  }
}

}  // namespace tessera::cpu
