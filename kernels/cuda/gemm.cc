// cuBLASLt plans for F.linear in bf16, and their autotuning (see gemm.h).
//
// Row-major y [m, n] = x [m, k] w [n, k]^T is, in cuBLAS's column-major terms,
// y^T (n x m, ld n) = w^T (n x k) x^T (k x m), where the row-major w is a column-major k x n
// matrix (ld k) used transposed and the row-major x is a column-major k x m matrix (ld k).
#include "kernels/cuda/gemm.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "kernels/cuda/cuda_check.h"

namespace tessera::cuda {
namespace {

// The largest power of two (<= 256) dividing the address: cuBLASLt's heuristic assumes 256-byte
// aligned operands unless told otherwise, and slices of activations (expert rows, token ranges)
// are not.
int Alignment(const void* p) {
  const auto addr = reinterpret_cast<uintptr_t>(p);
  int a = 256;
  while (a > 2 && addr % a != 0) a /= 2;
  return a;
}

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
      tuning_(TuningFromEnvironment()) {
  CUBLAS_CHECK(cublasLtCreate(&handle_));
  CUDA_CHECK(cudaEventCreate(&start_));
  CUDA_CHECK(cudaEventCreate(&stop_));
}

LtGemm::~LtGemm() {
  for (auto& [key, plan] : plans_) {
    cublasLtMatrixLayoutDestroy(plan.w_layout);
    cublasLtMatrixLayoutDestroy(plan.x_layout);
    cublasLtMatrixLayoutDestroy(plan.y_layout);
    cublasLtMatmulDescDestroy(plan.desc);
  }
  cudaEventDestroy(start_);
  cudaEventDestroy(stop_);
  cublasLtDestroy(handle_);
}

LtGemm::Plan& LtGemm::GetDescriptors(const Key& key) {
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;
  const auto [m, n, k, align_x, align_w, align_y] = key;
  Plan plan;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t trans = CUBLAS_OP_T, no_trans = CUBLAS_OP_N;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans,
                                              sizeof(trans)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &no_trans,
                                              sizeof(no_trans)));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.w_layout, CUDA_R_16BF, k, n, k));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.x_layout, CUDA_R_16BF, k, m, k));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.y_layout, CUDA_R_16BF, n, m, n));
  return plans_.emplace(key, plan).first->second;
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
    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref,
                                                      CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                      &workspace_bytes_, sizeof(workspace_bytes_)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &reduction_mask, sizeof(reduction_mask)));
    const uint32_t a_align = align_w, b_align = align_x, cd_align = align_y;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &a_align, sizeof(a_align)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &b_align, sizeof(b_align)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &cd_align, sizeof(cd_align)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &cd_align, sizeof(cd_align)));
    std::vector<cublasLtMatmulHeuristicResult_t> results(wanted);
    int found = 0;
    const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
        handle_, plan.desc, plan.w_layout, plan.x_layout, plan.y_layout, plan.y_layout, pref,
        wanted, results.data(), &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (status != CUBLAS_STATUS_SUCCESS) return;  // e.g. no split-K algorithm for this shape
    for (int i = 0; i < found; ++i) {
      if (results[i].state != CUBLAS_STATUS_SUCCESS) continue;
      const bool seen = std::any_of(algos.begin(), algos.end(),
                                    [&](const auto& a) { return SameAlgo(a, results[i].algo); });
      if (!seen) algos.push_back(results[i].algo);
    }
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
  const float alpha = 1.0f, beta = 0.0f;
  return cublasLtMatmul(handle_, plan.desc, &alpha, w, plan.w_layout, x, plan.x_layout, &beta, y,
                        plan.y_layout, y, plan.y_layout, &algo, workspace_, workspace_bytes_,
                        stream) == CUBLAS_STATUS_SUCCESS;
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
  const Key key{m, n, k, Alignment(x), Alignment(w), Alignment(y)};
  Plan& plan = GetDescriptors(key);
  if (!plan.settled) {
    Key bucket = key;
    std::get<0>(bucket) = TuneBucket(m);
    const auto winner = tuning_ ? winners_.find(bucket) : winners_.end();
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
    if (winner != winners_.end()) {
      // Another m of the bucket was tuned: take its winner if it fits this shape.
      cublasLtMatmulHeuristicResult_t check;
      if (cublasLtMatmulAlgoCheck(handle_, plan.desc, plan.w_layout, plan.x_layout, plan.y_layout,
                                  plan.y_layout, &winner->second,
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
  const float alpha = 1.0f, beta = 0.0f;
  CUBLAS_CHECK(cublasLtMatmul(handle_, plan.desc, &alpha, w, plan.w_layout, x, plan.x_layout, &beta,
                              y, plan.y_layout, y, plan.y_layout, &plan.algo, workspace_,
                              workspace_bytes_, stream));
}

int LtGemm::CandidateCount(const __nv_bfloat16* x, const __nv_bfloat16* w, int64_t m, int64_t n,
                           int64_t k, const __nv_bfloat16* y) {
  const Key key{m, n, k, Alignment(x), Alignment(w), Alignment(y)};
  return static_cast<int>(Candidates(GetDescriptors(key), key, true).size());
}

void LtGemm::LinearWithCandidate(int i, const __nv_bfloat16* x, const __nv_bfloat16* w, int64_t m,
                                 int64_t n, int64_t k, __nv_bfloat16* y, cudaStream_t stream) {
  const Key key{m, n, k, Alignment(x), Alignment(w), Alignment(y)};
  const Plan& plan = GetDescriptors(key);
  const std::vector<cublasLtMatmulAlgo_t> algos = Candidates(plan, key, true);
  TESSERA_CHECK(i >= 0 && i < static_cast<int>(algos.size())) << "candidate " << i;
  const float alpha = 1.0f, beta = 0.0f;
  CUBLAS_CHECK(cublasLtMatmul(handle_, plan.desc, &alpha, w, plan.w_layout, x, plan.x_layout, &beta,
                              y, plan.y_layout, y, plan.y_layout, &algos[i], workspace_,
                              workspace_bytes_, stream));
}

}  // namespace tessera::cuda
