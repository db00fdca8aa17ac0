// cuBLASLt block-scaled FP8 plans (see fp8_gemm.h).
//
// The TN form of lt_plan.h: A = w (k x n, ld k, transposed), B = x (k x m, ld k), D = y (n x m,
// ld n); FP8 on Hopper needs exactly this form. A's scale mode is 128x128 blocks, B's 1 x 128
// (per column of B, i.e. per token); D is bf16 with no scale (beta = 0, C = D).
#include "kernels/cuda/fp8_gemm.h"

#include "kernels/base/check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/ops.h"

namespace tessera::cuda {

LtFp8Gemm::LtFp8Gemm(void* workspace, size_t workspace_bytes)
    : workspace_(workspace),
      workspace_bytes_(workspace_bytes),
      plans_(LtOperands{
          CUDA_R_8F_E4M3, CUDA_R_16BF, [workspace](cublasLtMatmulDesc_t desc) {
            const int32_t w_mode = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
            const int32_t x_mode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
            CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE,
                                                        &w_mode, sizeof(w_mode)));
            CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE,
                                                        &x_mode, sizeof(x_mode)));
            // Placeholders until the first call sets the real scale tables.
            const void* placeholder = workspace;
            CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                                                        &placeholder, sizeof(placeholder)));
            CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                                                        &placeholder, sizeof(placeholder)));
          }}) {
  CUBLAS_CHECK(cublasLtCreate(&handle_));
  int device = 0, major = 0, minor = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  hopper_ = major == 9 && minor == 0;
}

LtFp8Gemm::~LtFp8Gemm() { cublasLtDestroy(handle_); }

std::vector<cublasLtMatmulAlgo_t> LtFp8Gemm::Candidates(const LtKey& key, const Plan& plan,
                                                        int wanted) {
  cublasLtMatmulPreference_t pref = CreateLtPreference(key, workspace_bytes_);
  std::vector<cublasLtMatmulAlgo_t> algos = LtHeuristic(handle_, plan.lt, pref, wanted);
  cublasLtMatmulPreferenceDestroy(pref);
  return algos;
}

LtFp8Gemm::Plan& LtFp8Gemm::GetPlan(const LtKey& key) {
  bool created = false;
  Plan& plan = plans_.Get(key, &created);
  if (created) {
    const std::vector<cublasLtMatmulAlgo_t> algos = Candidates(key, plan, 1);
    plan.ok = !algos.empty();
    if (plan.ok) plan.algo = algos[0];
  }
  return plan;
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
  return GetPlan(MakeLtKey(x, w, y, m, n, k)).ok;
}

void LtFp8Gemm::Run(Plan& plan, const cublasLtMatmulAlgo_t& algo, const uint8_t* x,
                    const float* x_scale, const uint8_t* w, const float* w_scale, __nv_bfloat16* y,
                    cudaStream_t stream) {
  // The scale pointers are per call (weights differ per layer; activation buffers may too).
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.lt.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                                              &w_scale, sizeof(w_scale)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.lt.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                                              &x_scale, sizeof(x_scale)));
  CUBLAS_CHECK(LtMatmul(handle_, plan.lt, algo, x, w, y, workspace_, workspace_bytes_, stream));
}

void LtFp8Gemm::Linear(const uint8_t* x, const float* x_scale, const uint8_t* w,
                       const float* w_scale, int64_t m, int64_t n, int64_t k, __nv_bfloat16* y,
                       cudaStream_t stream) {
  Plan& plan = GetPlan(MakeLtKey(x, w, y, m, n, k));
  TESSERA_CHECK(plan.ok) << "cuBLASLt has no block-scaled FP8 algorithm for m=" << m << " n=" << n
                         << " k=" << k;
  Run(plan, plan.algo, x, x_scale, w, w_scale, y, stream);
}

int LtFp8Gemm::CandidateCount(const uint8_t* x, const uint8_t* w, const __nv_bfloat16* y, int64_t m,
                              int64_t n, int64_t k) {
  const LtKey key = MakeLtKey(x, w, y, m, n, k);
  return static_cast<int>(Candidates(key, GetPlan(key), 16).size());
}

void LtFp8Gemm::LinearWithCandidate(int i, const uint8_t* x, const float* x_scale, const uint8_t* w,
                                    const float* w_scale, int64_t m, int64_t n, int64_t k,
                                    __nv_bfloat16* y, cudaStream_t stream) {
  const LtKey key = MakeLtKey(x, w, y, m, n, k);
  Plan& plan = GetPlan(key);
  const std::vector<cublasLtMatmulAlgo_t> algos = Candidates(key, plan, 16);
  TESSERA_CHECK(i >= 0 && i < static_cast<int>(algos.size())) << "candidate " << i;
  Run(plan, algos[i], x, x_scale, w, w_scale, y, stream);
}

}  // namespace tessera::cuda
