// cuBLASLt block-scaled FP8 plans (see fp8_gemm.h).
//
// As in gemm.cc, row-major y [m, n] = x [m, k] w [n, k]^T is y^T (n x m) = w^T x^T in cuBLAS's
// column-major terms: A = w (k x n, ld k, transposed), B = x (k x m, ld k), D = y (n x m, ld n).
// FP8 on Hopper needs exactly this "TN" form. A's scale mode is 128x128 blocks, B's 1 x 128
// (per column of B, i.e. per token); D is bf16 with no scale (beta = 0, C = D).
#include "kernels/cuda/fp8_gemm.h"

#include "kernels/base/check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/ops.h"

namespace tessera::cuda {
namespace {

// The largest power of two (<= 256) dividing the address (cuBLASLt assumes 256 unless told).
int Alignment(const void* p) {
  const auto addr = reinterpret_cast<uintptr_t>(p);
  int a = 256;
  while (a > 2 && addr % a != 0) a /= 2;
  return a;
}

}  // namespace

LtFp8Gemm::LtFp8Gemm(void* workspace, size_t workspace_bytes)
    : workspace_(workspace), workspace_bytes_(workspace_bytes) {
  CUBLAS_CHECK(cublasLtCreate(&handle_));
  int device = 0, major = 0, minor = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  hopper_ = major == 9 && minor == 0;
}

LtFp8Gemm::~LtFp8Gemm() {
  for (auto& [key, plan] : plans_) {
    cublasLtMatrixLayoutDestroy(plan.w_layout);
    cublasLtMatrixLayoutDestroy(plan.x_layout);
    cublasLtMatrixLayoutDestroy(plan.y_layout);
    cublasLtMatmulDescDestroy(plan.desc);
    cublasLtMatmulPreferenceDestroy(plan.pref);
  }
  cublasLtDestroy(handle_);
}

LtFp8Gemm::Plan& LtFp8Gemm::GetPlan(const Key& key) {
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
  const int32_t w_mode = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
  const int32_t x_mode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &w_mode,
                                              sizeof(w_mode)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &x_mode,
                                              sizeof(x_mode)));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.w_layout, CUDA_R_8F_E4M3, k, n, k));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.x_layout, CUDA_R_8F_E4M3, k, m, k));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.y_layout, CUDA_R_16BF, n, m, n));

  cublasLtMatmulPreference_t pref;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                    &workspace_bytes_, sizeof(workspace_bytes_)));
  const uint32_t a_align = align_w, b_align = align_x, cd_align = align_y;
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &a_align, sizeof(a_align)));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &b_align, sizeof(b_align)));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &cd_align, sizeof(cd_align)));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &cd_align, sizeof(cd_align)));
  // Placeholders until the first call sets the real scale tables.
  const void* placeholder = workspace_;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                                              &placeholder, sizeof(placeholder)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                                              &placeholder, sizeof(placeholder)));
  cublasLtMatmulHeuristicResult_t result = {};
  int found = 0;
  const cublasStatus_t status =
      cublasLtMatmulAlgoGetHeuristic(handle_, plan.desc, plan.w_layout, plan.x_layout,
                                     plan.y_layout, plan.y_layout, pref, 1, &result, &found);
  plan.pref = pref;
  plan.ok = status == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS;
  if (plan.ok) plan.algo = result.algo;
  return plans_.emplace(key, plan).first->second;
}

bool LtFp8Gemm::Supported(const uint8_t* x, const uint8_t* w, const __nv_bfloat16* y, int64_t m,
                          int64_t n, int64_t k, int64_t w_scale_stride, int64_t x_scale_stride) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (!hopper_ || m <= 0 || n <= 0 || k <= 0 || k % 16 != 0 || !aligned(x) || !aligned(w)) {
    return false;
  }
  // cuBLASLt's scale layouts have fixed strides (fp8_gemm.h).
  if (w_scale_stride != Fp8WeightScaleStride(k) || x_scale_stride != Fp8ActivationScaleStride(m)) {
    return false;
  }
  return GetPlan({m, n, k, Alignment(x), Alignment(w), Alignment(y)}).ok;
}

void LtFp8Gemm::Linear(const uint8_t* x, const float* x_scale, const uint8_t* w,
                       const float* w_scale, int64_t m, int64_t n, int64_t k, __nv_bfloat16* y,
                       cudaStream_t stream) {
  Plan& plan = GetPlan({m, n, k, Alignment(x), Alignment(w), Alignment(y)});
  TESSERA_CHECK(plan.ok) << "cuBLASLt has no block-scaled FP8 algorithm for m=" << m << " n=" << n
                         << " k=" << k;
  // The scale pointers are per call (weights differ per layer; activation buffers may too).
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                                              &w_scale, sizeof(w_scale)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                                              &x_scale, sizeof(x_scale)));
  const float alpha = 1.0f, beta = 0.0f;
  CUBLAS_CHECK(cublasLtMatmul(handle_, plan.desc, &alpha, w, plan.w_layout, x, plan.x_layout, &beta,
                              y, plan.y_layout, y, plan.y_layout, &plan.algo, workspace_,
                              workspace_bytes_, stream));
}

std::vector<cublasLtMatmulAlgo_t> LtFp8Gemm::Candidates(const Plan& plan) {
  constexpr int kWanted = 16;
  std::vector<cublasLtMatmulHeuristicResult_t> results(kWanted);
  int found = 0;
  std::vector<cublasLtMatmulAlgo_t> algos;
  if (cublasLtMatmulAlgoGetHeuristic(handle_, plan.desc, plan.w_layout, plan.x_layout,
                                     plan.y_layout, plan.y_layout, plan.pref, kWanted,
                                     results.data(), &found) != CUBLAS_STATUS_SUCCESS) {
    return algos;
  }
  for (int i = 0; i < found; ++i)
    if (results[i].state == CUBLAS_STATUS_SUCCESS) algos.push_back(results[i].algo);
  return algos;
}

int LtFp8Gemm::CandidateCount(const uint8_t* x, const uint8_t* w, const __nv_bfloat16* y, int64_t m,
                              int64_t n, int64_t k) {
  return static_cast<int>(
      Candidates(GetPlan({m, n, k, Alignment(x), Alignment(w), Alignment(y)})).size());
}

void LtFp8Gemm::LinearWithCandidate(int i, const uint8_t* x, const float* x_scale, const uint8_t* w,
                                    const float* w_scale, int64_t m, int64_t n, int64_t k,
                                    __nv_bfloat16* y, cudaStream_t stream) {
  Plan& plan = GetPlan({m, n, k, Alignment(x), Alignment(w), Alignment(y)});
  const std::vector<cublasLtMatmulAlgo_t> algos = Candidates(plan);
  TESSERA_CHECK(i >= 0 && i < static_cast<int>(algos.size())) << "candidate " << i;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                                              &w_scale, sizeof(w_scale)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                                              &x_scale, sizeof(x_scale)));
  const float alpha = 1.0f, beta = 0.0f;
  CUBLAS_CHECK(cublasLtMatmul(handle_, plan.desc, &alpha, w, plan.w_layout, x, plan.x_layout, &beta,
                              y, plan.y_layout, y, plan.y_layout, &algos[i], workspace_,
                              workspace_bytes_, stream));
}

}  // namespace tessera::cuda
