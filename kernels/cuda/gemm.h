// Dense bf16 GEMMs through cuBLASLt: y [m, n] = x [m, k] @ w [n, k]^T (F.linear), fp32 compute.
//
// The algorithm is picked once per shape and cached with its descriptors; the workspace is the
// caller's, allocated once. Operands need no particular alignment: cuBLASLt is told each
// pointer's (it handles bf16 operands at any even address; tests/kernels/cuda/linear_test.cc
// covers odd element offsets). Not thread-safe: one instance per backend (one stream).
//
// Picking by measurement (autotuning): cuBLASLt's heuristic top-1 is far from the best for some
// of Qwen3's shapes (qkv n=7168 k=5120 ran at ~200 TFLOP/s at m=4096 where gate_up reaches ~800,
// and at ~1 TB/s at m=1). So the first time a tuning key (n, k, alignments, m rounded up to a
// bucket: TuneBucket) is seen on a stream that is not capturing a graph, Linear asks the
// heuristic for up to kMaxCandidates algorithms (plus split-K ones for small m), times each on
// the call's own operands with events on the stream (y is overwritten by every candidate, then
// computed again by the winner) and caches the fastest for the bucket. Other m of the bucket
// reuse that winner when cublasLtMatmulAlgoCheck accepts it for their exact shape, else their own
// heuristic top-1. While the stream is capturing nothing is timed (events cannot be waited on):
// a shape without a winner runs the heuristic top-1 and is tuned at its next uncaptured call.
// NOTE: tuning waits on the host (once per key): `drain` is called first, so that work already
// on the stream (e.g. NCCL collectives) is waited for the way the backend waits, and the
// host then waits only on the GEMMs it timed. TESSERA_GEMM_TUNE=0 turns tuning off (heuristic
// top-1 everywhere, as before). Every algorithm cuBLASLt offers is deterministic for a fixed
// choice (split-K reductions included), so a cached plan repeats bit for bit; two processes may
// tune to different algorithms and so differ by rounding.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <map>
#include <tuple>
#include <vector>

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

  // Defaults to the environment (TESSERA_GEMM_TUNE, on unless "0"); the benchmark compares both.
  void set_tuning(bool on) { tuning_ = on; }
  bool tuning() const { return tuning_; }
  // For the benchmark: whether tuning also times the heuristic's best split-K algorithms, and
  // whether split-K sums must stay fp32 (both on by default; off, off with tuning off is the
  // plain heuristic top-1 of before tuning).
  void set_split_k_candidates(bool on) { split_k_candidates_ = on; }
  void set_fp32_reductions_only(bool on) { fp32_reductions_only_ = on; }

  // For tests: how many algorithms tuning would time for this call's shape, and one call with
  // candidate i (0 <= i < CandidateCount) instead of the cached choice.
  int CandidateCount(const __nv_bfloat16* x, const __nv_bfloat16* w, int64_t m, int64_t n,
                     int64_t k, const __nv_bfloat16* y);
  void LinearWithCandidate(int i, const __nv_bfloat16* x, const __nv_bfloat16* w, int64_t m,
                           int64_t n, int64_t k, __nv_bfloat16* y, cudaStream_t stream);

 private:
  // (m, n, k, alignment of x, w, y in bytes)
  using Key = std::tuple<int64_t, int64_t, int64_t, int, int, int>;
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t w_layout = nullptr, x_layout = nullptr, y_layout = nullptr;
    cublasLtMatmulAlgo_t algo;
    bool has_algo = false;
    bool settled = false;  // algo is final: tuned, a bucket winner, or tuning is off
  };
  Plan& GetDescriptors(const Key& key);
  // Heuristic candidates for the plan's shape, best-first, without duplicates.
  std::vector<cublasLtMatmulAlgo_t> Candidates(const Plan& plan, const Key& key, int count);
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
  bool fp32_reductions_only_ = true;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
  std::map<Key, Plan> plans_;                    // by exact shape
  std::map<Key, cublasLtMatmulAlgo_t> winners_;  // by tuning key (m = TuneBucket(m))
};

}  // namespace tessera::cuda
