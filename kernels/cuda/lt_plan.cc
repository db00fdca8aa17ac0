// cuBLASLt plan set-up shared by gemm.cc and fp8_gemm.cc (see lt_plan.h).
#include "kernels/cuda/lt_plan.h"

#include "kernels/cuda/cuda_check.h"

namespace tessera::cuda {

int LtAlignment(const void* p) {
  const auto addr = reinterpret_cast<uintptr_t>(p);
  int a = 256;
  while (a > 2 && addr % a != 0) a /= 2;
  return a;
}

LtDescriptors CreateLtDescriptors(const LtKey& key, const LtOperands& operands) {
  const auto [m, n, k, align_x, align_w, align_y] = key;
  LtDescriptors d;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&d.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t trans = CUBLAS_OP_T, no_trans = CUBLAS_OP_N;
  CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans, sizeof(trans)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_TRANSB, &no_trans,
                                              sizeof(no_trans)));
  if (operands.configure) operands.configure(d.desc);
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.w_layout, operands.in_type, k, n, k));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.x_layout, operands.in_type, k, m, k));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.y_layout, operands.out_type, n, m, n));
  return d;
}

void DestroyLtDescriptors(LtDescriptors& d) {
  cublasLtMatrixLayoutDestroy(d.w_layout);
  cublasLtMatrixLayoutDestroy(d.x_layout);
  cublasLtMatrixLayoutDestroy(d.y_layout);
  cublasLtMatmulDescDestroy(d.desc);
  d = LtDescriptors();
}

cublasLtMatmulPreference_t CreateLtPreference(const LtKey& key, size_t workspace_bytes,
                                              uint32_t reduction_mask) {
  const auto [m, n, k, align_x, align_w, align_y] = key;
  cublasLtMatmulPreference_t pref;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                    &workspace_bytes, sizeof(workspace_bytes)));
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
  return pref;
}

std::vector<cublasLtMatmulAlgo_t> LtHeuristic(cublasLtHandle_t handle, const LtDescriptors& d,
                                              cublasLtMatmulPreference_t pref, int wanted) {
  std::vector<cublasLtMatmulHeuristicResult_t> results(wanted);
  int found = 0;
  std::vector<cublasLtMatmulAlgo_t> algos;
  if (cublasLtMatmulAlgoGetHeuristic(handle, d.desc, d.w_layout, d.x_layout, d.y_layout, d.y_layout,
                                     pref, wanted, results.data(),
                                     &found) != CUBLAS_STATUS_SUCCESS) {
    return algos;  // e.g. no split-K algorithm for this shape
  }
  for (int i = 0; i < found; ++i)
    if (results[i].state == CUBLAS_STATUS_SUCCESS) algos.push_back(results[i].algo);
  return algos;
}

cublasStatus_t LtMatmul(cublasLtHandle_t handle, const LtDescriptors& d,
                        const cublasLtMatmulAlgo_t& algo, const void* x, const void* w, void* y,
                        void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  const float alpha = 1.0f, beta = 0.0f;
  return cublasLtMatmul(handle, d.desc, &alpha, w, d.w_layout, x, d.x_layout, &beta, y, d.y_layout,
                        y, d.y_layout, &algo, workspace, workspace_bytes, stream);
}

}  // namespace tessera::cuda
