// Token sampling: penalties -> temperature -> top-k -> top-p -> min-p -> draw, one block per
// row, no sort.
//
// The rule (and the integer weights that make it exact) is kernels/base/sampling_rule.h. Each
// threshold is a value of the row found by radix select on a 16-bit orderable key of the bf16
// logit, high byte then low byte, over shared-memory histograms:
//   pass 1  argmax (greedy rows stop here: one read of the row);
//   top-k   two histogram passes counting keys: the k-th largest key;
//   top-p   one pass summing the top-k set's weights S, then two histogram passes summing
//           weights per key: the largest key whose mass from the top reaches ceil(p * S);
//   draw    each thread sums the kept weights of a contiguous run of ids, a block exclusive scan
//           orders the runs by id, and the one thread whose run holds the drawn point walks it.
// Weight sums are uint64 integers, so the atomics' order cannot change a single bit.
// Rows with penalties (SamplingPenalties) are first written to float32 scratch by PenaliseKernel
// (the row as float, then each (id, count) entry's Penalise): penalised logits are not bf16
// values, so those rows are sampled from the float copy with 32-bit keys (four radix passes).
// NOTE: the row (300 KB at 152K bf16) does not fit in shared memory; the passes re-read it from
// L2, where it stays between passes. Rows are independent: rows x 1 blocks.
#include "kernels/base/sampling_rule.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/sampling.h"

namespace tessera::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kBins = 256;  // one byte of the 16-bit key per radix pass
static_assert(kThreads % 32 == 0 && kWarps <= 32, "block reductions use one warp of partials");

// Orderable key: a larger value has a larger key; -0 and +0 share one (they compare equal, as in
// the CPU reference). -inf is 0x007f (bf16) / 0x007fffff (float), so key 0 is below every value.
// bf16 rows (as the model leaves them) have 16-bit keys; float rows (penalised, in scratch) 32.
__device__ __forceinline__ uint32_t Key(bf16 v) {
  uint32_t bits = __bfloat16_as_ushort(v);
  if ((bits & 0x7fffu) == 0) bits = 0;
  return (bits & 0x8000u) ? (~bits & 0xffffu) : (bits | 0x8000u);
}
__device__ __forceinline__ uint32_t Key(float v) {
  uint32_t bits = __float_as_uint(v);
  if ((bits & 0x7fffffffu) == 0) bits = 0;
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}
template <typename T>
constexpr int kKeyBits = 8 * static_cast<int>(sizeof(T));

__device__ __forceinline__ float Value(bf16 v) { return ToFloat(v); }
__device__ __forceinline__ float Value(float v) { return v; }

__device__ __forceinline__ int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Row r of logits [shards, rows, cols] (bf16), or of the penalised scratch (float, one shard).
template <typename T>
struct Row {
  const T* base;         // shard 0 of the row
  int64_t shard_stride;  // rows * cols
  int64_t cols;
};

// Walks ids begin, begin + 1, ... of a row across shard boundaries without a division per id.
template <typename T>
struct Cursor {
  __device__ Cursor(const Row<T>& row, int64_t begin) : row_(row) {
    shard_ = begin / row.cols;
    col_ = begin - shard_ * row.cols;
    p_ = row.base + shard_ * row.shard_stride;
  }
  __device__ __forceinline__ T Next() {
    const T v = p_[col_];
    if (++col_ == row_.cols) {
      col_ = 0;
      p_ = row_.base + ++shard_ * row_.shard_stride;
    }
    return v;
  }
  const Row<T>& row_;
  int64_t shard_, col_;
  const T* p_;
};

// f(id, value) for every id in [0, V): thread t takes ids t, t + kThreads, ... of each shard
// (coalesced), in ascending order.
template <typename T, typename F>
__device__ __forceinline__ void ForEach(const Row<T>& row, int64_t V, F f) {
  for (int64_t first = 0, s = 0; first < V; first += row.cols, ++s) {
    const T* p = row.base + s * row.shard_stride;
    const int64_t n = Min64(row.cols, V - first);
    for (int64_t c = threadIdx.x; c < n; c += kThreads) f(first + c, p[c]);
  }
}

__device__ __forceinline__ uint64_t BlockSumU64(uint64_t v, uint64_t* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < kWarps ? scratch[lane] : 0;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Exclusive prefix sum over the block in thread order; *total gets the block's sum.
__device__ __forceinline__ uint64_t BlockExclusiveScanU64(uint64_t v, uint64_t* scratch,
                                                          uint64_t* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint64_t inclusive = v;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const uint64_t up = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += up;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    uint64_t w = lane < kWarps ? scratch[lane] : 0;
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
      const uint64_t up = __shfl_up_sync(0xffffffffu, w, offset);
      if (lane >= offset) w += up;
    }
    if (lane < kWarps) scratch[lane] = w;  // inclusive sums of the warps' totals
  }
  __syncthreads();
  *total = scratch[kWarps - 1];
  return (warp > 0 ? scratch[warp - 1] : 0) + inclusive - v;
}

struct Shared {
  uint32_t count_hist[kBins];
  unsigned long long mass_hist[kBins];
  uint64_t scratch[kWarps];
  float best_value[kWarps];
  int32_t best_id[kWarps];
  uint32_t chosen_digit;
  uint64_t chosen_rest;
};

// *token = the id drawn from ids [0, V) of `row` by the rule, all threads of the block.
template <typename T>
__device__ __forceinline__ void SampleRow(const Row<T>& row, int64_t V, const SamplingRowParams& p,
                                          Shared& sh, int32_t* token) {
  auto& count_hist = sh.count_hist;
  auto& mass_hist = sh.mass_hist;
  auto& scratch = sh.scratch;
  auto& best_value = sh.best_value;
  auto& best_id = sh.best_id;
  auto& chosen_digit = sh.chosen_digit;
  auto& chosen_rest = sh.chosen_rest;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  // Pass 1: argmax, ties to the lowest id (each thread sees its ids in ascending order).
  float bv = -INFINITY;
  int32_t bi = -1;
  ForEach(row, V, [&](int64_t id, T v) {
    const float x = Value(v);
    if (bi < 0 || x > bv) {
      bv = x;
      bi = static_cast<int32_t>(id);
    }
  });
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, offset);
    const int32_t oi = __shfl_xor_sync(0xffffffffu, bi, offset);
    if (oi >= 0 && (bi < 0 || ov > bv || (ov == bv && oi < bi))) {
      bv = ov;
      bi = oi;
    }
  }
  if (lane == 0) {
    best_value[warp] = bv;
    best_id[warp] = bi;
  }
  __syncthreads();
  float m = best_value[0];
  int32_t best = best_id[0];
  for (int w = 1; w < kWarps; ++w) {
    const float ov = best_value[w];
    const int32_t oi = best_id[w];
    if (oi >= 0 && (best < 0 || ov > m || (ov == m && oi < best))) {
      m = ov;
      best = oi;
    }
  }
  if (p.temperature == 0.0f || V == 1) {
    if (tid == 0) *token = best;
    return;
  }
  const float scale = sampling::WeightScale(p.temperature);

  // top-k: the k-th largest key (count of larger keys < k <= count of keys >= it).
  uint32_t key_k = 0;
  if (p.top_k > 0 && p.top_k < V) {
    uint32_t prefix = 0, mask = 0, remaining = static_cast<uint32_t>(p.top_k);
    for (int shift = kKeyBits<T> - 8; shift >= 0; shift -= 8) {
      for (int b = tid; b < kBins; b += kThreads) count_hist[b] = 0;
      __syncthreads();
      ForEach(row, V, [&](int64_t, T v) {
        const uint32_t key = Key(v);
        if ((key & mask) == prefix) atomicAdd(&count_hist[(key >> shift) & 0xffu], 1u);
      });
      __syncthreads();
      if (tid == 0) {
        uint32_t above = 0;
        int d = kBins - 1;
        for (; d > 0 && above + count_hist[d] < remaining; --d) above += count_hist[d];
        chosen_digit = static_cast<uint32_t>(d);
        chosen_rest = remaining - above;
      }
      __syncthreads();
      prefix |= chosen_digit << shift;
      mask |= 0xffu << shift;
      remaining = static_cast<uint32_t>(chosen_rest);
      __syncthreads();  // chosen_* are rewritten next pass
    }
    key_k = prefix;
  }

  // top-p: the largest key whose mass from the top (within the top-k set) reaches the target.
  uint32_t key_p = 0;
  if (p.top_p < 1.0f) {
    uint64_t local = 0;
    ForEach(row, V, [&](int64_t, T v) {
      if (Key(v) >= key_k) local += sampling::Weight(Value(v), m, scale);
    });
    const uint64_t target = sampling::FractionOf(p.top_p, BlockSumU64(local, scratch));
    uint32_t prefix = 0, mask = 0;
    uint64_t above = 0;  // mass of the keys above the prefix's range
    for (int shift = kKeyBits<T> - 8; shift >= 0; shift -= 8) {
      for (int b = tid; b < kBins; b += kThreads) mass_hist[b] = 0;
      __syncthreads();
      ForEach(row, V, [&](int64_t, T v) {
        const uint32_t key = Key(v);
        if (key < key_k || (key & mask) != prefix) return;
        const uint64_t q = sampling::Weight(Value(v), m, scale);
        if (q > 0)
          atomicAdd(&mass_hist[(key >> shift) & 0xffu], static_cast<unsigned long long>(q));
      });
      __syncthreads();
      if (tid == 0) {
        uint64_t cumulative = above;
        int d = kBins - 1;
        for (; d > 0 && cumulative + mass_hist[d] < target; --d) cumulative += mass_hist[d];
        chosen_digit = static_cast<uint32_t>(d);
        chosen_rest = cumulative;
      }
      __syncthreads();
      prefix |= chosen_digit << shift;
      mask |= 0xffu << shift;
      above = chosen_rest;
      __syncthreads();
    }
    key_p = prefix;
  }

  // min-p and the draw: thread t owns ids [t * span, (t + 1) * span).
  const uint64_t min_weight =
      p.min_p > 0.0f ? sampling::FractionOf(p.min_p, uint64_t{1} << sampling::kWeightBits) : 0;
  auto kept_weight = [&](T v) -> uint64_t {
    const uint32_t key = Key(v);
    if (key < key_k || key < key_p) return 0;
    const uint64_t q = sampling::Weight(Value(v), m, scale);
    return q >= min_weight ? q : 0;
  };
  const int64_t span = (V + kThreads - 1) / kThreads;
  const int64_t begin = Min64(V, tid * span), end = Min64(V, begin + span);
  uint64_t mine = 0;
  {
    Cursor<T> cursor(row, begin);
    for (int64_t id = begin; id < end; ++id) mine += kept_weight(cursor.Next());
  }
  uint64_t total = 0;
  const uint64_t before = BlockExclusiveScanU64(mine, scratch, &total);
  if (total == 0) {  // only when every logit is -inf
    if (tid == 0) *token = best;
    return;
  }
  const uint64_t t = sampling::ScaleDraw(sampling::DrawBits(p.seed, p.step), total);
  if (mine > 0 && before <= t && t < before + mine) {
    uint64_t running = before;
    Cursor<T> cursor(row, begin);
    for (int64_t id = begin; id < end; ++id) {
      running += kept_weight(cursor.Next());
      if (running > t) {
        *token = static_cast<int32_t>(id);
        break;
      }
    }
  }
}

__device__ __forceinline__ Row<bf16> LogitRow(const bf16* logits, int r, int rows, int64_t vocab,
                                              int shards) {
  const int64_t cols = vocab / shards;
  return {logits + static_cast<int64_t>(r) * cols, static_cast<int64_t>(rows) * cols, cols};
}

__device__ __forceinline__ int64_t SampleableVocab(const SamplingRowParams& p, int64_t vocab) {
  return p.sampleable_vocab > 0 ? Min64(p.sampleable_vocab, vocab) : vocab;
}

__device__ __forceinline__ bool Penalised(const SamplingPenalties& penalties, int r) {
  return penalties.rows != nullptr && penalties.rows[r].end > penalties.rows[r].begin;
}

// Rows with penalties: scratch row r = the row's logits [0, V) as float, then each entry's id
// rewritten with its penalised logit. One block per row; other rows return at once.
__global__ void __launch_bounds__(kThreads)
    PenaliseKernel(const bf16* logits, int rows, int64_t vocab, int shards,
                   const SamplingRowParams* params, SamplingPenalties penalties) {
  const int r = blockIdx.x;
  if (!Penalised(penalties, r)) return;
  const SamplingPenaltyRow pr = penalties.rows[r];
  const Row<bf16> row = LogitRow(logits, r, rows, vocab, shards);
  const int64_t V = SampleableVocab(params[r], vocab);
  float* out = penalties.scratch + static_cast<int64_t>(r) * vocab;
  ForEach(row, V, [&](int64_t id, bf16 v) { out[id] = ToFloat(v); });
  __syncthreads();  // the entries' writes land after the copy's
  for (int32_t e = pr.begin + threadIdx.x; e < pr.end; e += kThreads) {
    const int32_t id = penalties.entries[2 * e], count = penalties.entries[2 * e + 1];
    if (id < 0 || id >= V) continue;
    const int64_t s = id / row.cols;
    const float x = ToFloat(row.base[s * row.shard_stride + (id - s * row.cols)]);
    out[id] = sampling::Penalise(x, count, pr.repetition, pr.presence, pr.frequency);
  }
}

// Row r: from the penalised scratch when it has penalties, else straight from the bf16 logits.
__global__ void __launch_bounds__(kThreads)
    SampleKernel(const bf16* logits, int rows, int64_t vocab, int shards,
                 const SamplingRowParams* params, SamplingPenalties penalties, int32_t* tokens) {
  __shared__ Shared sh;
  const int r = blockIdx.x;
  const SamplingRowParams p = params[r];
  const int64_t V = SampleableVocab(p, vocab);
  if (Penalised(penalties, r)) {
    const Row<float> row{penalties.scratch + static_cast<int64_t>(r) * vocab, 0, vocab};
    SampleRow(row, V, p, sh, tokens + r);
  } else {
    SampleRow(LogitRow(logits, r, rows, vocab, shards), V, p, sh, tokens + r);
  }
}

// One thread per token: ids[t] = sampled[from[t]] where from[t] names a sampled row.
__global__ void TakeSampledIdsKernel(const int32_t* __restrict__ sampled, int num_sampled,
                                     const int32_t* __restrict__ from, int n,
                                     int32_t* __restrict__ ids) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= n) return;
  const int32_t f = from[t];
  if (f >= 0 && f < num_sampled) ids[t] = sampled[f];
}

}  // namespace

void LaunchTakeSampledIds(const int32_t* sampled, int num_sampled, const int32_t* from, int n,
                          int32_t* ids, cudaStream_t stream) {
  if (n == 0) return;
  TakeSampledIdsKernel<<<(n + kThreads - 1) / kThreads, kThreads, 0, stream>>>(sampled, num_sampled,
                                                                               from, n, ids);
  CUDA_CHECK_LAUNCH();
}

void LaunchSampleTokens(const bf16* logits, int rows, int64_t vocab, int shards,
                        const SamplingRowParams* params, const SamplingPenalties* penalties,
                        int32_t* tokens, cudaStream_t stream) {
  if (rows == 0) return;
  SamplingPenalties pen;
  if (penalties != nullptr) {
    pen = *penalties;
    PenaliseKernel<<<rows, kThreads, 0, stream>>>(logits, rows, vocab, shards, params, pen);
    CUDA_CHECK_LAUNCH();
  }
  SampleKernel<<<rows, kThreads, 0, stream>>>(logits, rows, vocab, shards, params, pen, tokens);
  CUDA_CHECK_LAUNCH();
}

}  // namespace tessera::cuda
