// Paged causal GQA attention and the cache write against the fp32 reference on the same bf16
// inputs. Each case is a batch of sequences, each with `context` cached positions of which the
// last `queries` are this step's tokens: queries == context is a prefill, 1 a decode row, in
// between a prefill chunk after earlier chunks. Physical blocks are shuffled, q rows are strided
// like the fused qkv projection's, and the output is poisoned before the call. Every case runs
// twice and the two outputs must be bit-identical.
//
// Batches with prefill rows and head_dim 64 or 128 take the tensor-core kernel
// (kernels/cuda/flash_prefill.cu); the rest the fp32 one. TESSERA_ATTN_BENCH=1 adds a timing of
// long causal prefills (off by default).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdlib>
#include <numeric>

#include <gtest/gtest.h>

#include "kernels/cpu/reference.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_check.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace tessera {
namespace {

using testing::kBf16Unit;
using testing::kOneRounding;

// The tensor-core prefill kernel rounds P to bf16 before P.V: one rounding more than the fp32
// path, in series with the output's. Each weight p_j gets a relative error <= u; the output is
// normalised by the sum of the rounded weights, so it stays a convex combination of V rows, and
// the weight errors (independent, zero-mean for rounding to nearest) enter ||got - ref|| with a
// typical size u / sqrt(3) of ||ref|| on random inputs, below the u that bounds one rounding. With
// the output's own rounding that is two roundings in series: 2u (cuda_test_util.h). Scores and
// sums stay fp32 (mma accumulates bf16 products exactly in fp32), as in the reference.
constexpr double kTwoRoundings = 2 * kBf16Unit;

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

// The dispatch rule of cuda::LaunchPagedAttention, for the tolerance: batches that are not pure
// decode, at head_dim 64 or 128, run the tensor-core prefill kernel.
bool TakesFlashPrefill(const Case& c) {
  int n = 0;
  for (const Seq& s : c.seqs) n += s.queries;
  return n != static_cast<int>(c.seqs.size()) && (c.head_dim == 64 || c.head_dim == 128);
}

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
                            TakesFlashPrefill(c) ? kTwoRoundings : kOneRounding);

  // A second launch gives the same bits (no order-dependent reductions, no stale state).
  DeviceBuffer d_out2 = testing::PoisonedBf16(gpu(), static_cast<size_t>(n) * q_width);
  gpu().Attention(d_q.data(), row, d_k.data(), d_v.data(), batch, c.q_heads, c.kv_heads, c.head_dim,
                  scale, d_out2.data());
  EXPECT_EQ(testing::DownloadRaw<uint16_t>(gpu(), d_out, ref.size()),
            testing::DownloadRaw<uint16_t>(gpu(), d_out2, ref.size()))
      << c.name << ": two launches differ";
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

// The tensor-core prefill kernel (128-token tiles, 64-key tiles): lengths around both tile sizes,
// GQA groups 1, 5 and 8, block sizes 1, 7, 16 and 64 (a key tile spanning many blocks, or part of
// one). A 1-token prefill rides with another sequence, since a batch of only 1-token sequences is
// a decode batch and takes the other kernel.
INSTANTIATE_TEST_SUITE_P(
    Prefill, CudaAttentionTest,
    ::testing::Values(
        Case{"d128_len1_len15_g5_b7", 10, 2, 128, 7, {{1, 1}, {15, 15}}},
        Case{"d128_len64_g1_b64", 4, 4, 128, 64, {{64, 64}}},
        Case{"d128_len65_g8_b1", 8, 1, 128, 1, {{65, 65}}},
        Case{"d128_len127_g5_b16", 5, 1, 128, 16, {{127, 127}}},
        Case{"d128_len300_g1_b7", 2, 2, 128, 7, {{300, 300}}},
        Case{"d128_len1000_g8_b64", 8, 1, 128, 64, {{1000, 1000}}},
        Case{"d128_len4096_g5_b16", 5, 1, 128, 16, {{4096, 4096}}},
        Case{"d64_len1_len64_g8_b1", 8, 1, 64, 1, {{1, 1}, {64, 64}}},
        Case{"d64_len15_g1_b16", 3, 3, 64, 16, {{15, 15}}},
        Case{"d64_len65_g5_b7", 10, 2, 64, 7, {{65, 65}}},
        Case{"d64_len127_g8_b64", 8, 1, 64, 64, {{127, 127}}},
        Case{"d64_len300_g5_b1", 5, 1, 64, 1, {{300, 300}}},
        Case{"d64_len1000_g1_b16", 2, 2, 64, 16, {{1000, 1000}}},
        Case{"d64_len4096_g8_b64", 8, 1, 64, 64, {{4096, 4096}}},
        // Chunked prefill: this step's tokens after a cached prefix (queries < context), with
        // chunks that start inside a key tile and span several query tiles.
        Case{"d128_chunk200_after800_g8_b16", 8, 1, 128, 16, {{1000, 200}}},
        Case{"d128_chunk300_after400_g1_b1", 2, 2, 128, 1, {{700, 300}}},
        Case{"d64_chunk77_after223_g5_b7", 5, 1, 64, 7, {{300, 77}}},
        // Mixed batches: query tiles holding the end of one sequence and the start of the next,
        // prefills, a chunk and decode rows together.
        Case{"d128_mixed_g5_b16",
             10,
             2,
             128,
             16,
             {{200, 200}, {64, 64}, {500, 129}, {77, 1}, {1, 1}}},
        Case{"d64_mixed_g8_b7", 8, 1, 64, 7, {{30, 30}, {90, 90}, {45, 20}, {9, 1}, {3, 3}}}),
    CaseName);

// TESSERA_ATTN_BENCH=1: causal prefills of one sequence at Qwen3-14B's shape (40 q heads, 8 KV
// heads, head_dim 128), timed with events on a stream of our own, in TFLOP/s with
// FLOPs = 4 * q_heads * head_dim * n^2 / 2. Inputs are random; nothing is checked.
class CudaAttentionBench : public testing::CudaTest {};

TEST_F(CudaAttentionBench, CausalPrefill) {
  const char* env = std::getenv("TESSERA_ATTN_BENCH");
  if (env == nullptr || std::string(env) != "1") GTEST_SKIP() << "set TESSERA_ATTN_BENCH=1";
  constexpr int kQHeads = 40, kKvHeads = 8, kD = 128, kBlock = 16;
  std::mt19937 rng(7);
  // Device buffers filled from one random host chunk, over and over.
  const auto chunk = testing::RandomBf16(1 << 22, rng, -2, 2);
  auto fill = [&](DeviceBuffer& buf, size_t count) {
    for (size_t at = 0; at < count; at += chunk.size())
      gpu().UploadFloat(buf.as<uint16_t>() + at, DType::kBF16, chunk.data(),
                        std::min(chunk.size(), count - at));
  };
  cudaStream_t stream = nullptr;
  CUDA_CHECK(cudaStreamCreate(&stream));
  cudaEvent_t start = nullptr, stop = nullptr;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  for (const int n : {4096, 16384, 32768}) {
    const size_t q_count = static_cast<size_t>(n) * kQHeads * kD;
    const size_t kv_count = static_cast<size_t>(n) * kKvHeads * kD;
    DeviceBuffer q = gpu().Allocate(q_count * 2), out = gpu().Allocate(q_count * 2);
    DeviceBuffer k = gpu().Allocate(kv_count * 2), v = gpu().Allocate(kv_count * 2);
    fill(q, q_count);
    fill(k, kv_count);
    fill(v, kv_count);
    std::vector<int32_t> positions(n), token_seq(n, 0), table((n + kBlock - 1) / kBlock);
    std::iota(positions.begin(), positions.end(), 0);
    std::iota(table.begin(), table.end(), 0);
    DeviceBuffer d_pos = testing::UploadRaw(gpu(), positions);
    DeviceBuffer d_seq = testing::UploadRaw(gpu(), token_seq);
    DeviceBuffer d_table = testing::UploadRaw(gpu(), table);
    gpu().Synchronize();

    cuda::PagedAttentionArgs a;
    a.q = q.as<__nv_bfloat16>();
    a.q_row_stride = kQHeads * kD;
    a.k_cache = k.as<__nv_bfloat16>();
    a.v_cache = v.as<__nv_bfloat16>();
    a.positions = d_pos.as<int32_t>();
    a.token_seq = d_seq.as<int32_t>();
    a.block_tables = d_table.as<int32_t>();
    a.num_tokens = n;
    a.num_seqs = 1;
    a.max_blocks_per_seq = static_cast<int>(table.size());
    a.block_size = kBlock;
    a.q_heads = kQHeads;
    a.kv_heads = kKvHeads;
    a.head_dim = kD;
    a.scale = 1.0f / std::sqrt(static_cast<float>(kD));
    a.out = out.as<__nv_bfloat16>();
    const int iters = n <= 4096 ? 20 : 5;
    cuda::LaunchPagedAttention(a, stream);  // warm-up
    CUDA_CHECK(cudaEventRecord(start, stream));
    for (int i = 0; i < iters; ++i) cuda::LaunchPagedAttention(a, stream);
    CUDA_CHECK(cudaEventRecord(stop, stream));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    const double seconds = ms / 1e3 / iters;
    const double flops = 4.0 * kQHeads * kD * (static_cast<double>(n) * n / 2);
    std::printf("[bench] causal prefill n=%d q_heads=%d kv_heads=%d d=%d: %.3f ms, %.1f TFLOP/s\n",
                n, kQHeads, kKvHeads, kD, seconds * 1e3, flops / seconds / 1e12);
  }
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  CUDA_CHECK(cudaStreamDestroy(stream));
}

}  // namespace
}  // namespace tessera
