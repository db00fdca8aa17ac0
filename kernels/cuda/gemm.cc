// cuBLASLt plans for F.linear in bf16, and their autotuning (see gemm.h).
//
// The TN form and the plan cache are lt_plan.h's, bf16 operands throughout.
#include "kernels/cuda/gemm.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "kernels/cuda/cuda_check.h"

namespace tessera::cuda {
namespace {

bool TuningFromEnvironment() {
  const char* v = std::getenv("TESSERA_GEMM_TUNE");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

bool SameAlgo(const cublasLtMatmulAlgo_t& a, const cublasLtMatmulAlgo_t& b) {
  return std::memcmp(&a, &b, sizeof(a)) == 0;
}

// Split-K candidates asked for on top of the plain heuristic list (see Candidates).
constexpr int kSplitKCandidates = 8;
// Each candidate is timed over enough back-to-back runs to fill about this long (at least
// kMinRepeats, at most kMaxRepeats), twice, keeping the faster pass.
constexpr float kTimedMs = 0.5f;
constexpr int kMinRepeats = 2, kMaxRepeats = 32, kPasses = 2;

}  // namespace

int64_t TuneBucket(int64_t m) {
  if (m <= 16) return m;
  for (const int64_t b : {24, 32, 48, 64, 96, 128})
    if (m <= b) return b;
  int64_t b = 256;
  while (b < m) b *= 2;
  return b;
}

LtGemm::LtGemm(void* workspace, size_t workspace_bytes, std::function<void()> drain)
    : workspace_(workspace),
      workspace_bytes_(workspace_bytes),
      drain_(std::move(drain)),
      tuning_(TuningFromEnvironment()),
      plans_(LtOperands{CUDA_R_16BF, CUDA_R_16BF, {}}) {
  CUBLAS_CHECK(cublasLtCreate(&handle_));
  CUDA_CHECK(cudaEventCreate(&start_));
  CUDA_CHECK(cudaEventCreate(&stop_));
}

LtGemm::~LtGemm() {
  cudaEventDestroy(start_);
  cudaEventDestroy(stop_);
  cublasLtDestroy(handle_);
}

// Without `for_tuning`: the heuristic's top-1 for the exact shape and alignments, any reduction
// scheme (as before tuning existed). For tuning: the heuristic's list, then its best split-K
// algorithms, which the plain list ranks low or leaves out (for small m one row of output tiles
// cannot fill 132 SMs: splitting k can); both keep split-K partial sums in fp32 (COMPUTE_TYPE),
// since the INPLACE and OUTPUT_TYPE schemes add them up in bf16, a rounding per split on top of
// the output's one (the tests hold Linear to one rounding).
std::vector<cublasLtMatmulAlgo_t> LtGemm::Candidates(const Plan& plan, const Key& key,
                                                     bool for_tuning) {
  const auto [m, n, k, align_x, align_w, align_y] = key;
  std::vector<cublasLtMatmulAlgo_t> algos;
  auto ask = [&](uint32_t reduction_mask, int wanted) {
    cublasLtMatmulPreference_t pref = CreateLtPreference(key, workspace_bytes_, reduction_mask);
    for (const cublasLtMatmulAlgo_t& algo : LtHeuristic(handle_, plan.lt, pref, wanted)) {
      const bool seen =
          std::any_of(algos.begin(), algos.end(), [&](const auto& a) { return SameAlgo(a, algo); });
      if (!seen) algos.push_back(algo);
    }
    cublasLtMatmulPreferenceDestroy(pref);
  };
  if (!for_tuning) {
    ask(CUBLASLT_REDUCTION_SCHEME_MASK, 1);
  } else {
    ask(CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE, kMaxCandidates);
    if (split_k_candidates_) ask(CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE, kSplitKCandidates);
  }
  TESSERA_CHECK(!algos.empty()) << "cuBLASLt has no bf16 algorithm for m=" << m << " n=" << n
                                << " k=" << k << " (alignments " << align_x << "/" << align_w << "/"
                                << align_y << " bytes)";
  return algos;
}

bool LtGemm::Run(const Plan& plan, const cublasLtMatmulAlgo_t& algo, const __nv_bfloat16* x,
                 const __nv_bfloat16* w, __nv_bfloat16* y, cudaStream_t stream) {
  return LtMatmul(handle_, plan.lt, algo, x, w, y, workspace_, workspace_bytes_, stream) ==
         CUBLAS_STATUS_SUCCESS;
}

void LtGemm::Tune(Plan& plan, const Key& key, const __nv_bfloat16* x, const __nv_bfloat16* w,
                  __nv_bfloat16* y, cudaStream_t stream) {
  const std::vector<cublasLtMatmulAlgo_t> algos = Candidates(plan, key, true);
  if (drain_) {
    drain_();
  } else {
    CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  auto time_ms = [&](const cublasLtMatmulAlgo_t& algo, int repeats) {
    CUDA_CHECK(cudaEventRecord(start_, stream));
    for (int r = 0; r < repeats; ++r) {
      if (!Run(plan, algo, x, w, y, stream)) return std::numeric_limits<float>::infinity();
    }
    CUDA_CHECK(cudaEventRecord(stop_, stream));
    CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return ms / repeats;
  };
  // The heuristic's first choice sets the repeat count (and warms the clocks and caches).
  const float first = time_ms(algos[0], 1);
  const int repeats = std::clamp(static_cast<int>(std::ceil(kTimedMs / std::max(first, 1e-4f))),
                                 kMinRepeats, kMaxRepeats);
  std::vector<float> best(algos.size(), std::numeric_limits<float>::infinity());
  for (int pass = 0; pass < kPasses; ++pass) {
    for (size_t i = 0; i < algos.size(); ++i) {
      if (pass == 0 && time_ms(algos[i], 1) == std::numeric_limits<float>::infinity()) {
        continue;  // warm-up; a candidate cuBLASLt refuses to launch is dropped
      }
      if (pass > 0 && best[i] == std::numeric_limits<float>::infinity()) continue;
      best[i] = std::min(best[i], time_ms(algos[i], repeats));
    }
  }
  const size_t winner = std::min_element(best.begin(), best.end()) - best.begin();
  TESSERA_CHECK(best[winner] < std::numeric_limits<float>::infinity())
      << "cuBLASLt launched none of its " << algos.size()
      << " algorithms for m=" << std::get<0>(key) << " n=" << std::get<1>(key)
      << " k=" << std::get<2>(key);
  plan.algo = algos[winner];
  plan.has_algo = plan.settled = true;
  Key bucket = key;
  std::get<0>(bucket) = TuneBucket(std::get<0>(key));
  winners_[bucket] = plan.algo;
}

void LtGemm::Linear(const __nv_bfloat16* x, const __nv_bfloat16* w, int64_t m, int64_t n, int64_t k,
                    __nv_bfloat16* y, cudaStream_t stream) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    CUDA_CHECK(cudaMemsetAsync(y, 0, static_cast<size_t>(m) * n * sizeof(*y), stream));
    return;
  }
  const Key key = MakeLtKey(x, w, y, m, n, k);
  Plan& plan = plans_.Get(key);
  if (!plan.settled) {
    Key bucket = key;
    std::get<0>(bucket) = TuneBucket(m);
    const auto winner = tuning_ ? winners_.find(bucket) : winners_.end();
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
    if (winner != winners_.end()) {
      // Another m of the bucket was tuned: take its winner if it fits this shape.
      cublasLtMatmulHeuristicResult_t check;
      if (cublasLtMatmulAlgoCheck(handle_, plan.lt.desc, plan.lt.w_layout, plan.lt.x_layout,
                                  plan.lt.y_layout, plan.lt.y_layout, &winner->second,
                                  &check) == CUBLAS_STATUS_SUCCESS &&
          check.workspaceSize <= workspace_bytes_) {
        plan.algo = winner->second;
      } else {
        plan.algo = Candidates(plan, key, false)[0];
      }
      plan.has_algo = plan.settled = true;
    } else if (tuning_ && capture == cudaStreamCaptureStatusNone) {
      Tune(plan, key, x, w, y, stream);
    } else if (!plan.has_algo) {
      plan.algo = Candidates(plan, key, false)[0];
      plan.has_algo = true;
      plan.settled = !tuning_;  // else tuned at the next call outside a capture
    }
  }
  CUBLAS_CHECK(
      LtMatmul(handle_, plan.lt, plan.algo, x, w, y, workspace_, workspace_bytes_, stream));
}

int LtGemm::CandidateCount(const __nv_bfloat16* x, const __nv_bfloat16* w, int64_t m, int64_t n,
                           int64_t k, const __nv_bfloat16* y) {
  const Key key = MakeLtKey(x, w, y, m, n, k);
  return static_cast<int>(Candidates(plans_.Get(key), key, true).size());
}

void LtGemm::LinearWithCandidate(int i, const __nv_bfloat16* x, const __nv_bfloat16* w, int64_t m,
                                 int64_t n, int64_t k, __nv_bfloat16* y, cudaStream_t stream) {
  const Key key = MakeLtKey(x, w, y, m, n, k);
  const Plan& plan = plans_.Get(key);
  const std::vector<cublasLtMatmulAlgo_t> algos = Candidates(plan, key, true);
  TESSERA_CHECK(i >= 0 && i < static_cast<int>(algos.size())) << "candidate " << i;
  CUBLAS_CHECK(LtMatmul(handle_, plan.lt, algos[i], x, w, y, workspace_, workspace_bytes_, stream));
}

}  // namespace tessera::cuda
