// Paged causal GQA attention and the cache write against the fp32 reference on the same bf16
// inputs. Each case is a batch of sequences, each with `context` cached positions of which the
// last `queries` are this step's tokens: queries == context is a prefill, 1 a decode row, in
// between a prefill chunk after earlier chunks. Physical blocks are shuffled, q rows are strided
// like the fused qkv projection's, and the output is poisoned before the call.
#include <algorithm>
#include <numeric>

#include <gtest/gtest.h>

#include "kernels/cpu/reference.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace tessera {
namespace {

using testing::kOneRounding;

struct Seq {
  int context;  // cached positions after this step
  int queries;  // this step's tokens: positions context - queries .. context - 1
};

struct Case {
  const char* name;
  int q_heads, kv_heads, head_dim, block_size;
  std::vector<Seq> seqs;
};

class CudaAttentionTest : public testing::CudaParamTest<Case> {};

TEST_P(CudaAttentionTest, MatchesReference) {
  const Case& c = GetParam();
  std::mt19937 rng(c.q_heads * 7 + c.head_dim + c.block_size + c.seqs.size());
  const int num_seqs = static_cast<int>(c.seqs.size());
  int max_blocks = 0, total_blocks = 0, cached = 0, n = 0;
  for (const Seq& s : c.seqs) {
    const int blocks = (s.context + c.block_size - 1) / c.block_size;
    max_blocks = std::max(max_blocks, blocks);
    total_blocks += blocks;
    cached += s.context;
    n += s.queries;
  }
  std::vector<int32_t> physical(total_blocks + 5);
  std::iota(physical.begin(), physical.end(), 0);
  std::shuffle(physical.begin(), physical.end(), rng);
  std::vector<int32_t> tables(num_seqs * max_blocks, -1);
  int next = 0;
  for (int s = 0; s < num_seqs; ++s)
    for (int b = 0; b * c.block_size < c.seqs[s].context; ++b)
      tables[s * max_blocks + b] = physical[next++];

  // Every cached position's [q | k | v] row; the step's tokens are the last rows of each sequence.
  const int q_width = c.q_heads * c.head_dim, kv_width = c.kv_heads * c.head_dim;
  const int row = q_width + 2 * kv_width;
  auto qkv = testing::RandomBf16(static_cast<size_t>(cached) * row, rng, -2, 2);
  std::vector<int32_t> all_slots, positions, token_seq, step_rows;
  int base = 0;
  for (int s = 0; s < num_seqs; ++s) {
    for (int p = 0; p < c.seqs[s].context; ++p) {
      all_slots.push_back(tables[s * max_blocks + p / c.block_size] * c.block_size +
                          p % c.block_size);
      if (p >= c.seqs[s].context - c.seqs[s].queries) {
        positions.push_back(p);
        token_seq.push_back(s);
        step_rows.push_back(base + p);
      }
    }
    base += c.seqs[s].context;
  }
  std::vector<float> q_rows(static_cast<size_t>(n) * row);
  for (int t = 0; t < n; ++t)
    std::copy(qkv.begin() + static_cast<size_t>(step_rows[t]) * row,
              qkv.begin() + static_cast<size_t>(step_rows[t] + 1) * row,
              q_rows.begin() + static_cast<size_t>(t) * row);

  const size_t num_slots = physical.size() * c.block_size;
  std::vector<float> k_cache(num_slots * kv_width, 0.0f), v_cache(num_slots * kv_width, 0.0f);
  cpu::WriteKvCache(qkv.data() + q_width, qkv.data() + q_width + kv_width, row, cached, c.kv_heads,
                    c.head_dim, all_slots.data(), k_cache.data(), v_cache.data());
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  std::vector<float> ref(static_cast<size_t>(n) * q_width);
  cpu::Attention(q_rows.data(), row, k_cache.data(), v_cache.data(), n, positions.data(),
                 token_seq.data(), tables.data(), max_blocks, c.block_size, c.q_heads, c.kv_heads,
                 c.head_dim, scale, ref.data());

  // GPU: the cache written by WriteKvCache from the same rows (NaN in every other slot).
  DeviceBuffer d_qkv = testing::UploadBf16(gpu(), qkv);
  DeviceBuffer d_k = testing::PoisonedBf16(gpu(), num_slots * kv_width);
  DeviceBuffer d_v = testing::PoisonedBf16(gpu(), num_slots * kv_width);
  DeviceBuffer d_slots = testing::UploadRaw(gpu(), all_slots);
  const auto* qkv_b = d_qkv.as<uint16_t>();
  gpu().WriteKvCache(qkv_b + q_width, qkv_b + q_width + kv_width, row, cached, c.kv_heads,
                     c.head_dim, d_slots.as<int32_t>(), d_k.data(), d_v.data());
  // The cache write is a copy: bit for bit where written.
  const auto k_got = testing::DownloadBf16(gpu(), d_k, num_slots * kv_width);
  for (size_t slot_i = 0; slot_i < all_slots.size(); ++slot_i) {
    const size_t at = static_cast<size_t>(all_slots[slot_i]) * kv_width;
    ASSERT_TRUE(
        std::equal(k_cache.begin() + at, k_cache.begin() + at + kv_width, k_got.begin() + at))
        << "cache slot " << all_slots[slot_i];
  }

  DeviceBuffer d_q = testing::UploadBf16(gpu(), q_rows);
  DeviceBuffer d_pos = testing::UploadRaw(gpu(), positions);
  DeviceBuffer d_seq = testing::UploadRaw(gpu(), token_seq);
  DeviceBuffer d_tables = testing::UploadRaw(gpu(), tables);
  DeviceBuffer d_out = testing::PoisonedBf16(gpu(), static_cast<size_t>(n) * q_width);
  AttentionBatch batch;
  batch.num_tokens = n;
  batch.num_seqs = num_seqs;
  batch.positions = d_pos.as<int32_t>();
  batch.token_seq = d_seq.as<int32_t>();
  batch.block_tables = d_tables.as<int32_t>();
  batch.max_blocks_per_seq = max_blocks;
  batch.block_size = c.block_size;
  gpu().Attention(d_q.data(), row, d_k.data(), d_v.data(), batch, c.q_heads, c.kv_heads, c.head_dim,
                  scale, d_out.data());
  testing::ExpectRelativeL2(c.name, testing::DownloadBf16(gpu(), d_out, ref.size()), ref,
                            kOneRounding);
}

std::string CaseName(const ::testing::TestParamInfo<Case>& info) { return info.param.name; }

INSTANTIATE_TEST_SUITE_P(
    Batches, CudaAttentionTest,
    ::testing::Values(
        Case{"prefill_gqa_d16", 8, 4, 16, 16, {{37, 37}}},
        Case{"prefill_mha_d64_block5", 6, 6, 64, 5, {{23, 23}}},
        Case{"prefill_two_seqs_d128", 40, 8, 128, 16, {{70, 70}, {33, 33}}},
        Case{"decode_batch_d128", 40, 8, 128, 16, {{1, 1}, {100, 1}, {257, 1}, {1000, 1}}},
        Case{"decode_group16_d128", 64, 4, 128, 16, {{513, 1}, {17, 1}, {3000, 1}}},
        Case{"mixed_prefill_chunk_decode", 32, 4, 128, 16, {{40, 1}, {90, 30}, {25, 25}, {7, 1}}},
        Case{"chunk_after_chunks_block7", 10, 5, 80, 7, {{61, 13}, {29, 29}}},
        Case{"long_prefill_group8", 32, 4, 128, 32, {{300, 300}}},
        Case{"d256_group16", 16, 1, 256, 32, {{45, 45}, {130, 1}}},
        Case{"tiny_d2_block1", 3, 1, 2, 1, {{5, 5}, {3, 1}}}),
    CaseName);

}  // namespace
}  // namespace tessera
