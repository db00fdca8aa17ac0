// Paged causal GQA attention and the cache write against the fp32 reference on the same bf16
// inputs. Each case is a batch of sequences, each with `context` cached positions of which the
// last `queries` are this step's tokens: queries == context is a prefill, 1 a decode row, in
// between a prefill chunk after earlier chunks. Physical blocks are shuffled, q rows are strided
// like the fused qkv projection's, and the output is poisoned before the call. Pure decode
// batches (one token per sequence) run the split-KV kernel (decode_attention.cu); its split plan
// is also tested on its own, without a GPU. Batches with prefill rows and head_dim 64 or 128 take
// the tensor-core kernel (flash_prefill.cu; on sm_90 at head_dim 128 the wgmma one,
// flash_prefill_sm90.cu, and both are also tested directly); the rest the fp32 one. A batch whose
// leading sequences are one token each, with AttentionBatch::num_single saying so, runs those on
// the split-KV kernel and the rest on the tensor-core one (the whole batch on the old path where
// either declines). Every case runs
// twice and the two outputs must be bit-identical. TESSERA_ATTN_BENCH=1 adds a timing of long
// causal prefills (off by default).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <utility>

#include <gtest/gtest.h>

#include "kernels/cpu/reference.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/flash_prefill.h"
#include "kernels/cuda/flash_prefill_sm90.h"
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
  // Block-table entries per sequence beyond those its context needs: a key capacity far above
  // every context, as a CUDA graph captured for the longest context sees at shorter ones.
  int spare_blocks = 0;
  // AttentionBatch::num_single: the leading one-token sequences (0 = not said).
  int num_single = 0;
};

// One case's inputs on the GPU (the cache written by WriteKvCache from the same rows, NaN in
// every other slot) and the fp32 reference output.
struct Problem {
  int n = 0;        // query tokens
  int row = 0;      // elements per [q | k | v] row
  int q_width = 0;  // q_heads * head_dim
  int kv_width = 0;
  float scale = 0;
  std::vector<int32_t> all_slots;  // slot of every cached position
  std::vector<float> k_cache;      // host cache, [num_slots, kv_width]
  std::vector<float> ref;          // [n, q_width]
  DeviceBuffer d_qkv, d_k, d_v, d_slots, d_q, d_pos, d_seq, d_tables;
  AttentionBatch batch;
};

Problem Build(Backend& gpu, const Case& c) {
  Problem pr;
  std::mt19937 rng(c.q_heads * 7 + c.head_dim + c.block_size + c.seqs.size());
  const int num_seqs = static_cast<int>(c.seqs.size());
  int used_blocks = 0, total_blocks = 0, cached = 0;
  for (const Seq& s : c.seqs) {
    const int blocks = (s.context + c.block_size - 1) / c.block_size;
    used_blocks = std::max(used_blocks, blocks);
    total_blocks += blocks;
    cached += s.context;
    pr.n += s.queries;
  }
  // Table width = the key capacity the launch is planned for; spare entries are -1, as an
  // engine's unused table entries may be.
  const int max_blocks = used_blocks + c.spare_blocks;
  std::vector<int32_t> physical(total_blocks + 5);
  std::iota(physical.begin(), physical.end(), 0);
  std::shuffle(physical.begin(), physical.end(), rng);
  std::vector<int32_t> tables(static_cast<size_t>(num_seqs) * max_blocks, -1);
  int next = 0;
  for (int s = 0; s < num_seqs; ++s)
    for (int b = 0; b * c.block_size < c.seqs[s].context; ++b)
      tables[static_cast<size_t>(s) * max_blocks + b] = physical[next++];

  // Every cached position's [q | k | v] row; the step's tokens are the last rows of each sequence.
  pr.q_width = c.q_heads * c.head_dim;
  pr.kv_width = c.kv_heads * c.head_dim;
  pr.row = pr.q_width + 2 * pr.kv_width;
  const int row = pr.row, q_width = pr.q_width, kv_width = pr.kv_width;
  auto qkv = testing::RandomBf16(static_cast<size_t>(cached) * row, rng, -2, 2);
  std::vector<int32_t> positions, token_seq, step_rows;
  int base = 0;
  for (int s = 0; s < num_seqs; ++s) {
    for (int p = 0; p < c.seqs[s].context; ++p) {
      pr.all_slots.push_back(tables[static_cast<size_t>(s) * max_blocks + p / c.block_size] *
                                 c.block_size +
                             p % c.block_size);
      if (p >= c.seqs[s].context - c.seqs[s].queries) {
        positions.push_back(p);
        token_seq.push_back(s);
        step_rows.push_back(base + p);
      }
    }
    base += c.seqs[s].context;
  }
  std::vector<float> q_rows(static_cast<size_t>(pr.n) * row);
  for (int t = 0; t < pr.n; ++t)
    std::copy(qkv.begin() + static_cast<size_t>(step_rows[t]) * row,
              qkv.begin() + static_cast<size_t>(step_rows[t] + 1) * row,
              q_rows.begin() + static_cast<size_t>(t) * row);

  const size_t num_slots = physical.size() * c.block_size;
  pr.k_cache.assign(num_slots * kv_width, 0.0f);
  std::vector<float> v_cache(num_slots * kv_width, 0.0f);
  cpu::WriteKvCache(qkv.data() + q_width, qkv.data() + q_width + kv_width, row, cached, c.kv_heads,
                    c.head_dim, pr.all_slots.data(), pr.k_cache.data(), v_cache.data());
  pr.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  pr.ref.resize(static_cast<size_t>(pr.n) * q_width);
  cpu::Attention(q_rows.data(), row, pr.k_cache.data(), v_cache.data(), pr.n, positions.data(),
                 token_seq.data(), tables.data(), max_blocks, c.block_size, c.q_heads, c.kv_heads,
                 c.head_dim, pr.scale, pr.ref.data());

  pr.d_qkv = testing::UploadBf16(gpu, qkv);
  pr.d_k = testing::PoisonedBf16(gpu, num_slots * kv_width);
  pr.d_v = testing::PoisonedBf16(gpu, num_slots * kv_width);
  pr.d_slots = testing::UploadRaw(gpu, pr.all_slots);
  const auto* qkv_b = pr.d_qkv.as<uint16_t>();
  gpu.WriteKvCache(qkv_b + q_width, qkv_b + q_width + kv_width, row, cached, c.kv_heads, c.head_dim,
                   pr.d_slots.as<int32_t>(), pr.d_k.data(), pr.d_v.data());
  pr.d_q = testing::UploadBf16(gpu, q_rows);
  pr.d_pos = testing::UploadRaw(gpu, positions);
  pr.d_seq = testing::UploadRaw(gpu, token_seq);
  pr.d_tables = testing::UploadRaw(gpu, tables);
  pr.batch.num_tokens = pr.n;
  pr.batch.num_seqs = num_seqs;
  pr.batch.num_single = c.num_single;
  pr.batch.positions = pr.d_pos.as<int32_t>();
  pr.batch.token_seq = pr.d_seq.as<int32_t>();
  pr.batch.block_tables = pr.d_tables.as<int32_t>();
  pr.batch.max_blocks_per_seq = max_blocks;
  pr.batch.block_size = c.block_size;
  return pr;
}

// The dispatch rule of cuda::LaunchPagedAttention, for the tolerance: batches that are not pure
// decode, at head_dim 64 or 128, run the tensor-core prefill kernel.
bool TakesFlashPrefill(const Case& c) {
  int n = 0;
  for (const Seq& s : c.seqs) n += s.queries;
  return n != static_cast<int>(c.seqs.size()) && (c.head_dim == 64 || c.head_dim == 128);
}

class CudaAttentionTest : public testing::CudaParamTest<Case> {};

TEST_P(CudaAttentionTest, MatchesReference) {
  const Case& c = GetParam();
  Problem pr = Build(gpu(), c);
  // The cache write is a copy: bit for bit where written.
  const size_t num_slots = pr.k_cache.size() / pr.kv_width;
  const auto k_got = testing::DownloadBf16(gpu(), pr.d_k, num_slots * pr.kv_width);
  for (int32_t slot : pr.all_slots) {
    const size_t at = static_cast<size_t>(slot) * pr.kv_width;
    ASSERT_TRUE(std::equal(pr.k_cache.begin() + at, pr.k_cache.begin() + at + pr.kv_width,
                           k_got.begin() + at))
        << "cache slot " << slot;
  }

  DeviceBuffer d_out = testing::PoisonedBf16(gpu(), pr.ref.size());
  gpu().Attention(pr.d_q.data(), pr.row, pr.d_k.data(), pr.d_v.data(), pr.batch, c.q_heads,
                  c.kv_heads, c.head_dim, pr.scale, d_out.data());
  testing::ExpectRelativeL2(c.name, testing::DownloadBf16(gpu(), d_out, pr.ref.size()), pr.ref,
                            TakesFlashPrefill(c) ? kTwoRoundings : kOneRounding);

  // A second launch gives the same bits (no order-dependent reductions, no stale state).
  DeviceBuffer d_out2 = testing::PoisonedBf16(gpu(), pr.ref.size());
  gpu().Attention(pr.d_q.data(), pr.row, pr.d_k.data(), pr.d_v.data(), pr.batch, c.q_heads,
                  c.kv_heads, c.head_dim, pr.scale, d_out2.data());
  EXPECT_EQ(testing::DownloadRaw<uint16_t>(gpu(), d_out, pr.ref.size()),
            testing::DownloadRaw<uint16_t>(gpu(), d_out2, pr.ref.size()))
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
        Case{"tiny_d2_block1", 3, 1, 2, 1, {{5, 5}, {3, 1}}},
        // Pure decode batches (one token per sequence) take the split-KV kernel
        // (decode_attention.cu): contexts around its 128-key tiles and splits, every compiled
        // group size, the 16-byte and the 4-byte load paths, block sizes that straddle tiles.
        // It is fp32 inside (partials included) with one final bf16 rounding: tolerance u.
        Case{"decode_contexts_group5_d128",
             40,
             8,
             128,
             16,
             {{1, 1}, {2, 1}, {31, 1}, {257, 1}, {1000, 1}, {4097, 1}}},
        Case{"decode_33000_with_context1", 5, 1, 128, 32, {{33000, 1}, {1, 1}}},
        Case{"decode_group1_d64_block1", 4, 4, 64, 1, {{300, 1}, {31, 1}, {2, 1}, {1, 1}}},
        Case{"decode_group2_d128", 16, 8, 128, 16, {{3000, 1}, {64, 1}}},
        Case{"decode_group8_d256_block7", 16, 2, 256, 7, {{1000, 1}, {45, 1}, {129, 1}}},
        Case{"decode_group16_d256", 16, 1, 256, 16, {{700, 1}, {3, 1}}},
        Case{"decode_group16_d80_block32", 32, 2, 80, 32, {{257, 1}, {4097, 1}}},
        Case{"decode_group3_d66", 6, 2, 66, 16, {{500, 1}, {130, 1}}},
        Case{"decode_d2_group4_block7", 4, 1, 2, 7, {{1000, 1}, {3, 1}}},
        Case{"decode_capacity_far_above_contexts",
             40,
             8,
             128,
             16,
             {{100, 1}, {1, 1}, {2000, 1}},
             /*spare_blocks=*/4000},
        // Mixed steps with their one-token sequences first (num_single): decodes of varied
        // contexts on the split-KV kernel, then prefill chunks of odd lengths on the flash one,
        // whose token_seq values still index the whole block table.
        Case{"mixed_single_decodes_then_chunks_d128",
             32,
             4,
             128,
             16,
             {{40, 1}, {1, 1}, {257, 1}, {1000, 1}, {3, 1}, {90, 30}, {25, 25}, {77, 13}},
             /*spare_blocks=*/0,
             /*num_single=*/5},
        Case{"mixed_single_d64_group8_block7",
             8,
             1,
             64,
             7,
             {{300, 1}, {2, 1}, {31, 1}, {45, 20}, {9, 9}, {130, 3}},
             /*spare_blocks=*/0,
             /*num_single=*/3},
        Case{"mixed_single_one_chunk_token_d128",
             40,
             8,
             128,
             16,
             {{17, 1}, {513, 1}, {200, 129}},
             /*spare_blocks=*/0,
             /*num_single=*/2},
        // head_dim 80: the flash kernel declines the rest, so the whole batch takes the old path.
        Case{"mixed_single_fallback_d80_block7",
             10,
             5,
             80,
             7,
             {{61, 1}, {29, 1}, {40, 13}},
             /*spare_blocks=*/0,
             /*num_single=*/2}),
    CaseName);

// The split plan (host code, runs without a GPU): whole tiles, no split past the capacity,
// partials that fit the workspace, never more blocks than one wave of resident blocks (unless
// the batch alone needs more), and 2-4 blocks per SM at batch 1.
TEST(DecodeSplitPlan, CoversCapacityAndFitsWorkspace) {
  for (int tokens : {1, 3, 32, 256}) {
    for (int kv_heads : {1, 8}) {
      for (int group : {1, 5, 16}) {
        for (int head_dim : {2, 128, 256}) {
          for (int64_t capacity : {1, 17, 128, 129, 4097, 40960, 1 << 20}) {
            for (int resident : {1, 132, 396, 528}) {
              for (size_t ws : {size_t{0}, size_t{1} << 20, size_t{32} << 20}) {
                const int q_heads = group * kv_heads;
                const auto plan = cuda::PlanDecodeSplits(tokens, q_heads, kv_heads, head_dim,
                                                         capacity, resident, ws);
                SCOPED_TRACE(::testing::Message()
                             << tokens << " tokens, " << kv_heads << " kv heads, group " << group
                             << ", head_dim " << head_dim << ", capacity " << capacity << ", "
                             << resident << " resident blocks, workspace " << ws);
                ASSERT_GE(plan.num_splits, 1);
                ASSERT_LE(plan.num_splits, cuda::kMaxDecodeSplits);
                ASSERT_GT(plan.split_len, 0);
                EXPECT_EQ(plan.split_len % cuda::kDecodeTileKeys, 0);
                EXPECT_GE(int64_t{plan.num_splits} * plan.split_len, capacity);
                EXPECT_LT(int64_t{plan.num_splits - 1} * plan.split_len, capacity);
                if (plan.num_splits > 1) {
                  EXPECT_LE(cuda::DecodeWorkspaceBytes(tokens, q_heads, head_dim, plan.num_splits),
                            ws);
                }
                const int64_t blocks = int64_t{tokens} * kv_heads;
                EXPECT_LE(blocks * plan.num_splits, std::max<int64_t>(blocks, resident));
              }
            }
          }
        }
      }
    }
  }
}

TEST(DecodeSplitPlan, FillsTheGpuAtSmallBatches) {
  constexpr int kSms = 132;            // H200
  constexpr int kResident = 3 * kSms;  // the group-5 kernel's occupancy: 3 blocks per SM
  constexpr size_t kWorkspace = size_t{32} << 20;
  // Qwen3-14B on one GPU (40 query, 8 KV heads, head_dim 128), 40960-key capacity.
  const auto batch1 = cuda::PlanDecodeSplits(1, 40, 8, 128, 40960, kResident, kWorkspace);
  EXPECT_GE(8 * batch1.num_splits, 2 * kSms);
  EXPECT_LE(8 * batch1.num_splits, 4 * kSms);
  EXPECT_EQ(cuda::PlanDecodeSplits(16, 40, 8, 128, 4096, kResident, kWorkspace).num_splits, 3);
  // 256 (token, KV head) blocks already fill most of a wave; 2 splits would need a second one.
  EXPECT_EQ(cuda::PlanDecodeSplits(32, 40, 8, 128, 4096, kResident, kWorkspace).num_splits, 1);
  EXPECT_EQ(cuda::PlanDecodeSplits(256, 40, 8, 128, 40960, kResident, kWorkspace).num_splits, 1);
  // No workspace: one split.
  EXPECT_EQ(cuda::PlanDecodeSplits(1, 40, 8, 128, 40960, kResident, 0).num_splits, 1);
  // A workspace for 3 splits' partials caps the plan at 3.
  const size_t three = cuda::DecodeWorkspaceBytes(1, 40, 128, 3);
  EXPECT_EQ(cuda::PlanDecodeSplits(1, 40, 8, 128, 40960, kResident, three).num_splits, 3);
}

// The split-KV kernel launched directly with workspaces that allow 1, 3 and the planned number
// of splits, against the reference and against each other, and twice with the same workspace.
//
// Tolerance: each launch is fp32 inside with one final bf16 rounding, so each is within u of
// the reference (relative L2, cuda_test_util.h); two launches with different split counts then
// differ by at most 2u relative to the reference, which is 2u / (1 - u) relative to either of
// them. Two launches with the same split count run the same instructions in the same order:
// their outputs must be bit-identical.
class CudaSplitKvDecodeTest : public testing::CudaTest {};

// Arguments of a direct split-KV launch on Build's problem.
cuda::PagedAttentionArgs DecodeArgs(const Problem& pr, const Case& c, const DeviceBuffer& out,
                                    const DeviceBuffer& workspace, size_t workspace_bytes) {
  cuda::PagedAttentionArgs a;
  a.q = pr.d_q.as<__nv_bfloat16>();
  a.q_row_stride = pr.row;
  a.k_cache = pr.d_k.as<__nv_bfloat16>();
  a.v_cache = pr.d_v.as<__nv_bfloat16>();
  a.positions = pr.batch.positions;
  a.token_seq = pr.batch.token_seq;
  a.block_tables = pr.batch.block_tables;
  a.num_tokens = pr.n;
  a.num_seqs = pr.batch.num_seqs;
  a.max_blocks_per_seq = pr.batch.max_blocks_per_seq;
  a.block_size = c.block_size;
  a.q_heads = c.q_heads;
  a.kv_heads = c.kv_heads;
  a.head_dim = c.head_dim;
  a.scale = pr.scale;
  a.out = out.as<__nv_bfloat16>();
  a.workspace = workspace.data();
  a.workspace_bytes = workspace_bytes;
  return a;
}

TEST_F(CudaSplitKvDecodeTest, SplitCountDoesNotChangeTheResultAndRunsAreDeterministic) {
  const Case c{"split_counts", 40, 8, 128, 16, {{4097, 1}, {1, 1}, {33, 1}, {1500, 1}}, 64};
  Problem pr = Build(gpu(), c);
  const int tokens = pr.n;
  const size_t planned_bytes = size_t{32} << 20;
  DeviceBuffer workspace = gpu().Allocate(planned_bytes);

  auto run = [&](size_t workspace_bytes, int* splits) {
    DeviceBuffer d_out = testing::PoisonedBf16(gpu(), pr.ref.size());
    const cuda::PagedAttentionArgs a = DecodeArgs(pr, c, d_out, workspace, workspace_bytes);
    *splits = cuda::PlanSplitKvDecode(a).num_splits;
    EXPECT_TRUE(cuda::LaunchSplitKvDecode(a, static_cast<cudaStream_t>(gpu().stream())));
    return testing::DownloadBf16(gpu(), d_out, pr.ref.size());
  };

  int one = 0, three = 0, planned = 0, again = 0;
  const auto out_one = run(1, &one);
  const auto out_three = run(cuda::DecodeWorkspaceBytes(tokens, c.q_heads, c.head_dim, 3), &three);
  const auto out_planned = run(planned_bytes, &planned);
  const auto out_again = run(planned_bytes, &again);
  ASSERT_EQ(one, 1);
  ASSERT_EQ(three, 3);
  ASSERT_GT(planned, 3) << "the test should exercise many splits on this GPU";
  ASSERT_EQ(again, planned);
  testing::ExpectRelativeL2("1 split", out_one, pr.ref, kOneRounding);
  testing::ExpectRelativeL2("3 splits", out_three, pr.ref, kOneRounding);
  testing::ExpectRelativeL2("planned splits", out_planned, pr.ref, kOneRounding);
  const double between = 2 * kOneRounding / (1 - kOneRounding);
  testing::ExpectRelativeL2("3 splits vs 1", out_three, out_one, between);
  testing::ExpectRelativeL2("planned splits vs 1", out_planned, out_one, between);

  const auto bits = [](const std::vector<float>& v) {
    std::vector<uint32_t> b(v.size());
    std::memcpy(b.data(), v.data(), v.size() * sizeof(float));
    return b;
  };
  EXPECT_EQ(bits(out_planned), bits(out_again)) << "two identical launches differ";
}

// A decode graph is recorded once and replayed at every step, so a launch must leave no state
// behind that changes the next one. Contexts of 1 to 4097 keys under a 36K-key capacity: splits
// planned for the capacity, of which the short contexts fill 1 or 2 and the long ones all. Three
// replays over poisoned output must give the direct launch's bits.
TEST_F(CudaSplitKvDecodeTest, GraphReplaysMatchTheLaunch) {
  const Case c{"graph_replays", 40, 8, 128, 16, {{1000, 1}, {1, 1}, {65, 1}, {4097, 1}}, 2000};
  Problem pr = Build(gpu(), c);
  const auto stream = static_cast<cudaStream_t>(gpu().stream());
  const size_t bytes = size_t{32} << 20;
  DeviceBuffer workspace = gpu().Allocate(bytes);

  DeviceBuffer out = testing::PoisonedBf16(gpu(), pr.ref.size());
  const cuda::PagedAttentionArgs a = DecodeArgs(pr, c, out, workspace, bytes);
  ASSERT_GE(cuda::PlanSplitKvDecode(a).num_splits, 4)
      << "the short contexts should leave splits idle";
  ASSERT_TRUE(cuda::LaunchSplitKvDecode(a, stream));
  const auto direct = testing::DownloadRaw<uint16_t>(gpu(), out, pr.ref.size());
  testing::ExpectRelativeL2(c.name, testing::DownloadBf16(gpu(), out, pr.ref.size()), pr.ref,
                            kOneRounding);

  gpu().BeginCapture();
  EXPECT_TRUE(cuda::LaunchSplitKvDecode(a, stream));
  std::unique_ptr<DeviceGraph> graph = gpu().EndCapture();
  ASSERT_NE(graph, nullptr);
  for (int replay = 0; replay < 3; ++replay) {
    ASSERT_EQ(cudaMemsetAsync(out.data(), 0xff, pr.ref.size() * 2, stream), cudaSuccess);  // NaN
    graph->Replay();
    EXPECT_EQ(testing::DownloadRaw<uint16_t>(gpu(), out, pr.ref.size()), direct)
        << "replay " << replay;
  }
}

// Through the backend (the path the model takes), twice on the same inputs: bit-identical.
TEST_F(CudaSplitKvDecodeTest, BackendDecodeIsDeterministic) {
  const Case c{"deterministic", 10, 2, 128, 16, {{33000, 1}, {1, 1}, {517, 1}}};
  Problem pr = Build(gpu(), c);
  DeviceBuffer out_a = testing::PoisonedBf16(gpu(), pr.ref.size());
  DeviceBuffer out_b = testing::PoisonedBf16(gpu(), pr.ref.size());
  for (DeviceBuffer* out : {&out_a, &out_b}) {
    gpu().Attention(pr.d_q.data(), pr.row, pr.d_k.data(), pr.d_v.data(), pr.batch, c.q_heads,
                    c.kv_heads, c.head_dim, pr.scale, out->data());
  }
  const auto a = testing::DownloadRaw<uint16_t>(gpu(), out_a, pr.ref.size());
  const auto b = testing::DownloadRaw<uint16_t>(gpu(), out_b, pr.ref.size());
  EXPECT_EQ(a, b);
  testing::ExpectRelativeL2(c.name, testing::DownloadBf16(gpu(), out_a, pr.ref.size()), pr.ref,
                            kOneRounding);
}

// Speed on a GPU, printed for the log: the split-KV kernel against the general kernel on pure
// decode batches, as KV bytes read per second (the roofline for decode attention) and as
// microseconds per launch, both from back-to-back stream launches and from a CUDA graph of them
// (how a decode step runs it: the graph figure is the latency a model's layer pays). Asserts
// only that the split path is the faster one; the figures are for a person to read (target on
// an H200: > 3 TB/s at batch 32 x 4K and 64 x 1K). A capacity above the context is the launch a
// decode graph captured for the longest context makes at a shorter one: splits planned for the
// capacity, block-table entries past the context -1 (runtime/model/qwen3.cc rounds the capacity up
// to a power of two of blocks: 2048 keys for a 1K-token decode).
TEST_F(CudaSplitKvDecodeTest, ReportsKvBandwidth) {
  struct Shape {
    int batch, context, q_heads, kv_heads, head_dim, block_size;
    int capacity = 0;  // keys the launch is planned for; 0: the context
  };
  for (const Shape sh :
       {Shape{32, 4096, 40, 8, 128, 16}, Shape{64, 1024, 40, 8, 128, 16},
        Shape{1, 32768, 40, 8, 128, 16}, Shape{1, 4096, 40, 8, 128, 16},
        Shape{1, 1024, 40, 8, 128, 16, 2048}, Shape{1, 1024, 40, 8, 128, 16, 40960},
        Shape{16, 1024, 40, 8, 128, 16, 2048}, Shape{64, 1024, 40, 8, 128, 16, 2048},
        Shape{64, 1024, 40, 8, 128, 16, 40960}}) {
    const int blocks_per_seq = (sh.context + sh.block_size - 1) / sh.block_size;
    const int table_width = (std::max(sh.context, sh.capacity) + sh.block_size - 1) / sh.block_size;
    const size_t slots = static_cast<size_t>(sh.batch) * blocks_per_seq * sh.block_size;
    const size_t kv_elems = slots * sh.kv_heads * sh.head_dim;
    const size_t q_elems = static_cast<size_t>(sh.batch) * sh.q_heads * sh.head_dim;
    // NOTE: launches rotate among copies of the caches, together past 256 MB, so that a small
    // cache (16 MB at 1 x 4K) is read from memory, not from the 60 MB L2, as in a model's step.
    const size_t copies =
        std::max<size_t>(1, ((size_t{256} << 20) + kv_elems * 2 - 1) / (kv_elems * 2));
    DeviceBuffer q = gpu().Allocate(q_elems * 2);
    gpu().FillRandom(q.data(), DType::kBF16, q_elems, 1, 0.0f, 1.0f);
    DeviceBuffer k = gpu().Allocate(copies * kv_elems * 2),
                 v = gpu().Allocate(copies * kv_elems * 2);
    const auto stream = static_cast<cudaStream_t>(gpu().stream());
    // NOTE: constant caches: the bytes read, not their values, set the time.
    ASSERT_EQ(cudaMemsetAsync(k.data(), 0x3c, copies * kv_elems * 2, stream), cudaSuccess);
    ASSERT_EQ(cudaMemsetAsync(v.data(), 0x3c, copies * kv_elems * 2, stream), cudaSuccess);
    std::vector<int32_t> positions(sh.batch, sh.context - 1), token_seq(sh.batch);
    std::iota(token_seq.begin(), token_seq.end(), 0);
    std::vector<int32_t> tables(static_cast<size_t>(sh.batch) * table_width, -1);
    for (int s = 0; s < sh.batch; ++s)
      for (int b = 0; b < blocks_per_seq; ++b)
        tables[static_cast<size_t>(s) * table_width + b] = s * blocks_per_seq + b;
    DeviceBuffer d_pos = testing::UploadRaw(gpu(), positions);
    DeviceBuffer d_seq = testing::UploadRaw(gpu(), token_seq);
    DeviceBuffer d_tables = testing::UploadRaw(gpu(), tables);
    DeviceBuffer out = testing::PoisonedBf16(gpu(), q_elems);
    DeviceBuffer workspace = gpu().Allocate(size_t{32} << 20);
    ASSERT_EQ(cudaMemsetAsync(workspace.data(), 0, size_t{32} << 20, stream), cudaSuccess);

    cuda::PagedAttentionArgs a;
    a.q = q.as<__nv_bfloat16>();
    a.q_row_stride = int64_t{sh.q_heads} * sh.head_dim;
    a.k_cache = k.as<__nv_bfloat16>();
    a.v_cache = v.as<__nv_bfloat16>();
    a.positions = d_pos.as<int32_t>();
    a.token_seq = d_seq.as<int32_t>();
    a.block_tables = d_tables.as<int32_t>();
    a.num_tokens = sh.batch;
    a.num_seqs = sh.batch;
    a.max_blocks_per_seq = table_width;
    a.block_size = sh.block_size;
    a.q_heads = sh.q_heads;
    a.kv_heads = sh.kv_heads;
    a.head_dim = sh.head_dim;
    a.scale = 1.0f / std::sqrt(static_cast<float>(sh.head_dim));
    a.out = out.as<__nv_bfloat16>();

    constexpr int kIters = 32;
    auto launch = [&](int i) {
      const size_t at = static_cast<size_t>(i) % copies * kv_elems;
      a.k_cache = k.as<__nv_bfloat16>() + at;
      a.v_cache = v.as<__nv_bfloat16>() + at;
      cuda::LaunchPagedAttention(a, stream);
    };
    // Median over 5 timed rounds of kIters launches each (or of one replay of a graph of them).
    auto median_ms = [&](const std::function<void()>& round) {
      cudaEvent_t begin, end;
      EXPECT_EQ(cudaEventCreate(&begin), cudaSuccess);
      EXPECT_EQ(cudaEventCreate(&end), cudaSuccess);
      std::vector<double> ms_per_launch;
      for (int r = 0; r < 5; ++r) {
        EXPECT_EQ(cudaEventRecord(begin, stream), cudaSuccess);
        round();
        EXPECT_EQ(cudaEventRecord(end, stream), cudaSuccess);
        EXPECT_EQ(cudaEventSynchronize(end), cudaSuccess);
        float ms = 0;
        EXPECT_EQ(cudaEventElapsedTime(&ms, begin, end), cudaSuccess);
        ms_per_launch.push_back(static_cast<double>(ms) / kIters);
      }
      cudaEventDestroy(begin);
      cudaEventDestroy(end);
      std::sort(ms_per_launch.begin(), ms_per_launch.end());
      return ms_per_launch[ms_per_launch.size() / 2];
    };
    auto time_ms = [&](void* ws, size_t ws_bytes) {
      a.workspace = ws;
      a.workspace_bytes = ws_bytes;
      for (int i = 0; i < 3; ++i) launch(i);
      return median_ms([&] {
        for (int i = 0; i < kIters; ++i) launch(i);
      });
    };
    auto graph_ms = [&](void* ws, size_t ws_bytes) {
      a.workspace = ws;
      a.workspace_bytes = ws_bytes;
      for (int i = 0; i < 3; ++i) launch(i);
      gpu().BeginCapture();
      for (int i = 0; i < kIters; ++i) launch(i);
      std::unique_ptr<DeviceGraph> graph = gpu().EndCapture();
      EXPECT_NE(graph, nullptr);
      if (graph == nullptr) return 0.0;
      graph->Replay();
      return median_ms([&] { graph->Replay(); });
    };
    a.workspace = workspace.data();
    a.workspace_bytes = size_t{32} << 20;
    const int splits = cuda::PlanSplitKvDecode(a).num_splits;
    const double split_ms = time_ms(workspace.data(), size_t{32} << 20);
    const double split_graph_ms = graph_ms(workspace.data(), size_t{32} << 20);
    EXPECT_EQ(testing::CountNaN(testing::DownloadBf16(gpu(), out, q_elems)), 0u);
    const double general_ms = time_ms(nullptr, 0);
    const double kv_bytes = 2.0 * sh.batch * sh.context * sh.kv_heads * sh.head_dim * 2;
    std::printf(
        "[cuda] decode %d x %d keys (capacity %d, %d/%d heads, d%d, %d splits): split-KV %.1f us "
        "= %.2f TB/s, in a graph %.1f us = %.2f TB/s; general kernel %.1f us = %.2f TB/s\n",
        sh.batch, sh.context, std::max(sh.context, sh.capacity), sh.q_heads, sh.kv_heads,
        sh.head_dim, splits, split_ms * 1e3, kv_bytes / split_ms * 1e-9, split_graph_ms * 1e3,
        kv_bytes / split_graph_ms * 1e-9, general_ms * 1e3, kv_bytes / general_ms * 1e-9);
    EXPECT_LT(split_ms, general_ms);
  }
}

// The tensor-core prefill kernels: the mma.sync one (256-token tiles, 128-key tiles; 64 where
// shared memory is short) and on sm_90 the wgmma one (128-token tiles, 128-key tiles, head_dim
// 128): lengths around and across those tile sizes, GQA groups 1, 5 and 8, block sizes 1, 7, 16
// and 64 (a key tile spanning many blocks, or part of one). A 1-token prefill rides with another
// sequence, since a batch of only 1-token sequences is a decode batch and takes the other kernel.
std::vector<Case> PrefillCases() {
  return {
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
      Case{
          "d128_mixed_g5_b16", 10, 2, 128, 16, {{200, 200}, {64, 64}, {500, 129}, {77, 1}, {1, 1}}},
      Case{"d64_mixed_g8_b7", 8, 1, 64, 7, {{30, 30}, {90, 90}, {45, 20}, {9, 1}, {3, 3}}},
      // Many key tiles, several query tiles, a long prefix: a chunk after a prefix longer than
      // itself, a chunk starting mid-tile after a prefix of thousands of keys, and a long
      // prefill at the 14B model's GQA group with a block size that straddles tiles.
      Case{"d128_chunk1000_after3000_g5_b16", 10, 2, 128, 16, {{4000, 1000}}},
      Case{"d128_chunk129_after5000_g8_b7", 8, 1, 128, 7, {{5129, 129}}},
      Case{"d128_len2500_len700_g5_b32", 5, 1, 128, 32, {{2500, 2500}, {700, 700}}},
      // The wgmma producer's per-page table lookups at their edges: 32 pages of 4 keys per
      // tile, and pages of 256 keys that a tile enters half-way.
      Case{"d128_len333_len40_g8_b4", 8, 1, 128, 4, {{333, 333}, {40, 40}}},
      Case{"d128_len700_chunk150_after450_g5_b256", 10, 2, 128, 256, {{700, 700}, {600, 150}}},
      // Several sequences (and decode rows) inside one 128-token tile, each with its own
      // table; short ones that end in the same tile as they start.
      Case{"d128_many_segments_g5_b16",
           10,
           2,
           128,
           16,
           {{5, 5}, {17, 17}, {40, 40}, {3, 1}, {100, 100}, {1, 1}, {60, 33}, {9, 9}, {250, 250}}},
      Case{"d128_segments_across_tiles_g1_b1",
           4,
           4,
           128,
           1,
           {{130, 130}, {2, 2}, {126, 126}, {300, 64}, {7, 7}}}};
}

INSTANTIATE_TEST_SUITE_P(Prefill, CudaAttentionTest, ::testing::ValuesIn(PrefillCases()), CaseName);

// Each prefill kernel launched directly (the backend takes the wgmma one where it applies), so
// both stay tested on an sm_90 GPU: the same reference and tolerance, and two launches agree bit
// for bit.
class CudaPrefillKernelsTest : public testing::CudaParamTest<Case> {};

TEST_P(CudaPrefillKernelsTest, EachKernelMatchesReference) {
  const Case& c = GetParam();
  Problem pr = Build(gpu(), c);
  const auto stream = static_cast<cudaStream_t>(gpu().stream());
  DeviceBuffer no_workspace;
  const struct {
    const char* name;
    bool (*launch)(const cuda::PagedAttentionArgs&, cudaStream_t);
  } kernels[] = {{"mma.sync", cuda::LaunchFlashPrefillMmaSync},
                 {"wgmma", cuda::LaunchFlashPrefillSm90}};
  for (const auto& k : kernels) {
    SCOPED_TRACE(k.name);
    DeviceBuffer out = testing::PoisonedBf16(gpu(), pr.ref.size());
    DeviceBuffer out2 = testing::PoisonedBf16(gpu(), pr.ref.size());
    if (!k.launch(DecodeArgs(pr, c, out, no_workspace, 0), stream)) {
      std::printf("[cuda] %s: %s kernel does not apply here\n", c.name, k.name);
      continue;
    }
    ASSERT_TRUE(k.launch(DecodeArgs(pr, c, out2, no_workspace, 0), stream));
    testing::ExpectRelativeL2((std::string(c.name) + " " + k.name).c_str(),
                              testing::DownloadBf16(gpu(), out, pr.ref.size()), pr.ref,
                              kTwoRoundings);
    EXPECT_EQ(testing::DownloadRaw<uint16_t>(gpu(), out, pr.ref.size()),
              testing::DownloadRaw<uint16_t>(gpu(), out2, pr.ref.size()))
        << "two launches differ";
  }
}

INSTANTIATE_TEST_SUITE_P(Prefill, CudaPrefillKernelsTest, ::testing::ValuesIn(PrefillCases()),
                         CaseName);

// TESSERA_ATTN_BENCH=1: causal prefills of one sequence at Qwen3-14B's shapes (40 q / 8 KV heads
// at TP1, 10 / 2 at TP4, head_dim 128; and head_dim 64 at one length), each prefill kernel
// launched directly (mma.sync, and wgmma where it applies), timed with events on a stream of our
// own, in TFLOP/s with FLOPs = 4 * q_heads * head_dim * n^2 / 2. Inputs are random; nothing is
// checked.
class CudaAttentionBench : public testing::CudaTest {};

TEST_F(CudaAttentionBench, CausalPrefill) {
  const char* env = std::getenv("TESSERA_ATTN_BENCH");
  if (env == nullptr || std::string(env) != "1") GTEST_SKIP() << "set TESSERA_ATTN_BENCH=1";
  constexpr int kBlock = 16;
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
  struct Shape {
    int q_heads, kv_heads, d, n;
  };
  const Shape shapes[] = {{40, 8, 128, 4096}, {40, 8, 128, 16384}, {40, 8, 128, 32768},
                          {10, 2, 128, 4096}, {10, 2, 128, 16384}, {10, 2, 128, 32768},
                          {40, 8, 64, 16384}};
  for (const auto& [q_heads, kv_heads, d, n] : shapes) {
    const size_t q_count = static_cast<size_t>(n) * q_heads * d;
    const size_t kv_count = static_cast<size_t>(n) * kv_heads * d;
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
    a.q_row_stride = q_heads * d;
    a.k_cache = k.as<__nv_bfloat16>();
    a.v_cache = v.as<__nv_bfloat16>();
    a.positions = d_pos.as<int32_t>();
    a.token_seq = d_seq.as<int32_t>();
    a.block_tables = d_table.as<int32_t>();
    a.num_tokens = n;
    a.num_seqs = 1;
    a.max_blocks_per_seq = static_cast<int>(table.size());
    a.block_size = kBlock;
    a.q_heads = q_heads;
    a.kv_heads = kv_heads;
    a.head_dim = d;
    a.scale = 1.0f / std::sqrt(static_cast<float>(d));
    a.out = out.as<__nv_bfloat16>();
    const int iters = n <= 4096 ? 20 : 5;
    const struct {
      const char* name;
      bool (*launch)(const cuda::PagedAttentionArgs&, cudaStream_t);
    } kernels[] = {{"mma.sync", cuda::LaunchFlashPrefillMmaSync},
                   {"wgmma", cuda::LaunchFlashPrefillSm90}};
    for (const auto& k : kernels) {
      if (!k.launch(a, stream)) continue;  // warm-up; false: not on this GPU or shape
      CUDA_CHECK(cudaEventRecord(start, stream));
      for (int i = 0; i < iters; ++i) k.launch(a, stream);
      CUDA_CHECK(cudaEventRecord(stop, stream));
      CUDA_CHECK(cudaEventSynchronize(stop));
      float ms = 0;
      CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
      const double seconds = ms / 1e3 / iters;
      const double flops = 4.0 * q_heads * d * (static_cast<double>(n) * n / 2);
      std::printf(
          "[bench] causal prefill n=%d q_heads=%d kv_heads=%d d=%d %s: %.3f ms, %.1f TFLOP/s\n", n,
          q_heads, kv_heads, d, k.name, seconds * 1e3, flops / seconds / 1e12);
    }
  }
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  CUDA_CHECK(cudaStreamDestroy(stream));
}

}  // namespace
}  // namespace tessera
