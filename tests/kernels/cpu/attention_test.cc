// Paged causal GQA attention against a float64 reference over contiguous K/V, with shuffled
// physical blocks, several sequences of odd lengths, and the cache write.
#include <algorithm>
#include <numeric>

#include <gtest/gtest.h>

#include "kernels/cpu/reference.h"
#include "tests/kernels/cpu/test_util.h"

namespace tessera {
namespace {

struct Case {
  int q_heads, kv_heads, head_dim, block_size;
  std::vector<int> seq_lens;
};

class AttentionTest : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionTest, PagedMatchesContiguousFloat64) {
  const Case c = GetParam();
  std::mt19937 rng(c.q_heads * 7 + c.head_dim + c.block_size);
  const int num_seqs = static_cast<int>(c.seq_lens.size());
  int max_blocks = 0, total_blocks = 0, n = 0;
  for (int len : c.seq_lens) {
    max_blocks = std::max(max_blocks, (len + c.block_size - 1) / c.block_size);
    total_blocks += (len + c.block_size - 1) / c.block_size;
    n += len;
  }
  // Physical blocks handed out in a shuffled order, as an allocator would after churn.
  std::vector<int32_t> physical(total_blocks + 3);
  std::iota(physical.begin(), physical.end(), 0);
  std::shuffle(physical.begin(), physical.end(), rng);
  std::vector<int32_t> tables(num_seqs * max_blocks, -1);
  int next = 0;
  for (int s = 0; s < num_seqs; ++s)
    for (int b = 0; b * c.block_size < c.seq_lens[s]; ++b)
      tables[s * max_blocks + b] = physical[next++];

  const int kv_width = c.kv_heads * c.head_dim;
  const int q_width = c.q_heads * c.head_dim;
  // q, k, v packed in one row like the fused qkv projection: [n, q | k | v].
  const int row = q_width + 2 * kv_width;
  auto qkv = testing::RandomVector(n * row, rng, -2, 2);
  std::vector<int32_t> positions, token_seq, slots;
  for (int s = 0; s < num_seqs; ++s)
    for (int p = 0; p < c.seq_lens[s]; ++p) {
      positions.push_back(p);
      token_seq.push_back(s);
      slots.push_back(tables[s * max_blocks + p / c.block_size] * c.block_size + p % c.block_size);
    }
  const int num_slots = static_cast<int>(physical.size()) * c.block_size;
  std::vector<float> k_cache(num_slots * kv_width, NAN), v_cache(num_slots * kv_width, NAN);
  cpu::WriteKvCache(qkv.data() + q_width, qkv.data() + q_width + kv_width, row, n, c.kv_heads,
                    c.head_dim, slots.data(), k_cache.data(), v_cache.data());
  std::vector<float> out(n * q_width, NAN);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  cpu::Attention(qkv.data(), row, k_cache.data(), v_cache.data(), n, positions.data(),
                 token_seq.data(), tables.data(), max_blocks, c.block_size, c.q_heads, c.kv_heads,
                 c.head_dim, scale, out.data());

  std::vector<double> ref(n * q_width);
  int start = 0;
  for (int s = 0; s < num_seqs; ++s) {
    for (int i = 0; i < c.seq_lens[s]; ++i) {
      const int t = start + i;
      for (int h = 0; h < c.q_heads; ++h) {
        const int kvh = h / (c.q_heads / c.kv_heads);
        std::vector<double> sc(i + 1);
        double mx = -1e300;
        for (int j = 0; j <= i; ++j) {
          double d = 0;
          for (int e = 0; e < c.head_dim; ++e)
            d += static_cast<double>(qkv[t * row + h * c.head_dim + e]) *
                 qkv[(start + j) * row + q_width + kvh * c.head_dim + e];
          sc[j] = d * scale;
          mx = std::max(mx, sc[j]);
        }
        double den = 0;
        for (auto& v : sc) den += (v = std::exp(v - mx));
        for (int e = 0; e < c.head_dim; ++e) {
          double o = 0;
          for (int j = 0; j <= i; ++j)
            o += sc[j] / den * qkv[(start + j) * row + q_width + kv_width + kvh * c.head_dim + e];
          ref[(t * c.q_heads + h) * c.head_dim + e] = o;
        }
      }
    }
    start += c.seq_lens[s];
  }
  testing::ExpectClose(out, ref, 1e-5, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionTest,
                         ::testing::Values(Case{1, 1, 2, 1, {1}},
                                           Case{4, 4, 8, 4, {5, 1, 9}},      // MHA
                                           Case{8, 2, 16, 16, {33, 17}},     // GQA 4:1
                                           Case{6, 3, 6, 3, {10, 2, 7, 1}},  // odd head_dim, block
                                           Case{16, 4, 128, 16, {40}}));

// Decode: one query at the end of a long context reads the same result as the full prefill row.
TEST(AttentionTest, DecodeRowEqualsPrefillRow) {
  const int heads = 4, kv = 2, hd = 8, bs = 4, len = 13;
  std::mt19937 rng(9);
  const int row = heads * hd + 2 * kv * hd;
  auto qkv = testing::RandomVector(len * row, rng);
  const int blocks = (len + bs - 1) / bs;
  std::vector<int32_t> table(blocks), positions(len), seq(len, 0), slots(len);
  for (int b = 0; b < blocks; ++b) table[b] = blocks - 1 - b;
  for (int p = 0; p < len; ++p) {
    positions[p] = p;
    slots[p] = table[p / bs] * bs + p % bs;
  }
  std::vector<float> kc(blocks * bs * kv * hd), vc(blocks * bs * kv * hd);
  cpu::WriteKvCache(qkv.data() + heads * hd, qkv.data() + heads * hd + kv * hd, row, len, kv, hd,
                    slots.data(), kc.data(), vc.data());
  std::vector<float> full(len * heads * hd), last(heads * hd);
  cpu::Attention(qkv.data(), row, kc.data(), vc.data(), len, positions.data(), seq.data(),
                 table.data(), blocks, bs, heads, kv, hd, 0.3f, full.data());
  cpu::Attention(qkv.data() + (len - 1) * row, row, kc.data(), vc.data(), 1, &positions[len - 1],
                 seq.data(), table.data(), blocks, bs, heads, kv, hd, 0.3f, last.data());
  for (int i = 0; i < heads * hd; ++i) EXPECT_EQ(last[i], full[(len - 1) * heads * hd + i]);
}

}  // namespace
}  // namespace tessera
