// cuBLASLt plans for F.linear in bf16 (see gemm.h).
//
// Row-major y [m, n] = x [m, k] w [n, k]^T is, in cuBLAS's column-major terms,
// y^T (n x m, ld n) = w^T (n x k) x^T (k x m), where the row-major w is a column-major k x n
// matrix (ld k) used transposed and the row-major x is a column-major k x m matrix (ld k).
#include "kernels/cuda/gemm.h"

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

}  // namespace

LtGemm::LtGemm(void* workspace, size_t workspace_bytes)
    : workspace_(workspace), workspace_bytes_(workspace_bytes) {
  CUBLAS_CHECK(cublasLtCreate(&handle_));
}

LtGemm::~LtGemm() {
  for (auto& [key, plan] : plans_) {
    cublasLtMatrixLayoutDestroy(plan.w_layout);
    cublasLtMatrixLayoutDestroy(plan.x_layout);
    cublasLtMatrixLayoutDestroy(plan.y_layout);
    cublasLtMatmulDescDestroy(plan.desc);
  }
  cublasLtDestroy(handle_);
}

const LtGemm::Plan& LtGemm::GetPlan(const Key& key) {
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
  cublasLtMatmulHeuristicResult_t result;
  int found = 0;
  CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle_, plan.desc, plan.w_layout, plan.x_layout,
                                              plan.y_layout, plan.y_layout, pref, 1, &result,
                                              &found));
  cublasLtMatmulPreferenceDestroy(pref);
  TESSERA_CHECK(found > 0) << "cuBLASLt has no bf16 algorithm for m=" << m << " n=" << n
                           << " k=" << k << " (alignments " << align_x << "/" << align_w << "/"
                           << align_y << " bytes)";
  plan.algo = result.algo;
  return plans_.emplace(key, plan).first->second;
}

void LtGemm::Linear(const __nv_bfloat16* x, const __nv_bfloat16* w, int64_t m, int64_t n, int64_t k,
                    __nv_bfloat16* y, cudaStream_t stream) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    CUDA_CHECK(cudaMemsetAsync(y, 0, static_cast<size_t>(m) * n * sizeof(*y), stream));
    return;
  }
  const Plan& plan = GetPlan({m, n, k, Alignment(x), Alignment(w), Alignment(y)});
  const float alpha = 1.0f, beta = 0.0f;
  CUBLAS_CHECK(cublasLtMatmul(handle_, plan.desc, &alpha, w, plan.w_layout, x, plan.x_layout, &beta,
                              y, plan.y_layout, y, plan.y_layout, &plan.algo, workspace_,
                              workspace_bytes_, stream));
}

}  // namespace tessera::cuda
