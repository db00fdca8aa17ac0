// Dense bf16 GEMMs through cuBLASLt: y [m, n] = x [m, k] @ w [n, k]^T (F.linear), fp32 compute.
//
// The algorithm is picked once per shape and cached with its descriptors (lt_plan.h's plan cache,
// shared with the FP8 GEMM); the workspace is the caller's, allocated once. Operands need no
// particular alignment: cuBLASLt is told each pointer's (it handles bf16 operands at any even
// address; tests/kernels/cuda/linear_test.cc covers odd element offsets). Not thread-safe: one
// instance per backend (one stream).
//
// Picking by measurement (autotuning), opt-in: TESSERA_GEMM_TUNE=1. The first time a tuning key
// (n, k, alignments, m rounded up to a bucket: TuneBucket) is seen on a stream that is not
// capturing a graph, Linear asks the heuristic for up to kMaxCandidates algorithms (plus its best
// split-K ones), times each on the call's own operands with events on the stream (y is
// overwritten by every candidate, then computed again by the winner) and caches the fastest for
// the bucket. Other m of the bucket reuse that winner when cublasLtMatmulAlgoCheck accepts it for
// their exact shape, else their own heuristic top-1. While the stream is capturing nothing is
// timed (events cannot be waited on): a shape without a winner runs the heuristic top-1 and is
// tuned at its next uncaptured call. NOTE: tuning waits on the host (once per key): `drain` is
// called first, so that work already on the stream (e.g. NCCL collectives) is waited for the way
// the backend waits, and the host then waits only on the GEMMs it timed.
//
// NOTE: off by default because it measured no faster (docs/perf/2026-11-22-gemm-tune.md, H200):
// the heuristic's top-1 already runs Qwen3-14B's projections near the ceilings (qkv at m=4096
// 687 TFLOP/s, every shape at m=1 3.0-4.1 TB/s); tuning gained 4-8% on down and lm_head at
// m <= 64 but lost 10-16% on gate_up and down at m=4096 (a short burst of timings is a poor
// guide for compute-bound GEMMs), and end to end (tessera bench) it changed nothing beyond noise.
// Without tuning the choice is exactly the heuristic top-1 of before. Every algorithm cuBLASLt
// offers is deterministic for a fixed choice (split-K reductions included), so a cached plan
// repeats bit for bit; two tuned processes may pick different algorithms and differ by rounding.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <map>
#include <vector>

#include "kernels/cuda/lt_plan.h"

namespace tessera::cuda {

// The tuning bucket of m: exact up to 16, then 24, 32, 48, 64, 96, 128, then powers of two.
int64_t TuneBucket(int64_t m);

class LtGemm {
 public:
  static constexpr int kMaxCandidates = 16;

  // `drain` waits for everything enqueued on the stream so far (empty: cudaStreamSynchronize).
  LtGemm(void* workspace, size_t workspace_bytes, std::function<void()> drain = {});
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  void Linear(const __nv_bfloat16* x, const __nv_bfloat16* w, int64_t m, int64_t n, int64_t k,
              __nv_bfloat16* y, cudaStream_t stream);

  // Defaults to the environment (TESSERA_GEMM_TUNE=1: on); the benchmark compares both.
  void set_tuning(bool on) { tuning_ = on; }
  bool tuning() const { return tuning_; }
  // For the benchmark: whether tuning also times the heuristic's best split-K algorithms (on).
  void set_split_k_candidates(bool on) { split_k_candidates_ = on; }

  // For tests: how many algorithms tuning would time for this call's shape, and one call with
  // candidate i (0 <= i < CandidateCount) instead of the cached choice.
  int CandidateCount(const __nv_bfloat16* x, const __nv_bfloat16* w, int64_t m, int64_t n,
                     int64_t k, const __nv_bfloat16* y);
  void LinearWithCandidate(int i, const __nv_bfloat16* x, const __nv_bfloat16* w, int64_t m,
                           int64_t n, int64_t k, __nv_bfloat16* y, cudaStream_t stream);

 private:
  using Key = LtKey;
  struct Plan {
    LtDescriptors lt;
    cublasLtMatmulAlgo_t algo;
    bool has_algo = false;
    bool settled = false;  // algo is final: tuned, a bucket winner, or tuning is off
  };
  // Heuristic candidates for the plan's shape, best-first, without duplicates: the top-1 alone,
  // or the list tuning times.
  std::vector<cublasLtMatmulAlgo_t> Candidates(const Plan& plan, const Key& key, bool for_tuning);
  bool Run(const Plan& plan, const cublasLtMatmulAlgo_t& algo, const __nv_bfloat16* x,
           const __nv_bfloat16* w, __nv_bfloat16* y, cudaStream_t stream);
  void Tune(Plan& plan, const Key& key, const __nv_bfloat16* x, const __nv_bfloat16* w,
            __nv_bfloat16* y, cudaStream_t stream);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_;
  size_t workspace_bytes_;
  std::function<void()> drain_;
  bool tuning_;
  bool split_k_candidates_ = true;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
  LtPlanCache<Plan> plans_;                      // by exact shape
  std::map<Key, cublasLtMatmulAlgo_t> winners_;  // by tuning key (m = TuneBucket(m))
};

}  // namespace tessera::cuda
