// Block-scaled FP8 GEMMs (W8A8) through cuBLASLt on Hopper: y [m, n] bf16 = X @ W^T with X the
// e4m3 activations in 1 x 128 groups (fp8_quant.h) and W the e4m3 weight in 128 x 128 blocks, both
// with fp32 scales (kernels/ops.h, Fp8Activations / Fp8Weight).
//
// cuBLASLt 12.9+ runs these on sm_90 only (CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F for the
// weight, _VEC128_32F for the activations; Blackwell takes MX formats instead): wgmma FP8 tiles
// with each 128-k group's products promoted to fp32 and scaled, the semantics of the CPU reference
// (kernels/cpu/fp8.cc). Scale tables in cuBLASLt's layouts: the weight's [ceil(n/128),
// Fp8WeightScaleStride(k)], the activations' [ceil(k/128), Fp8ActivationScaleStride(m)],
// tokens fastest. (On an H100 it lists algorithms for m a multiple of 8 but not for 1, 3, 17, 100,
// 333: CudaBackend::LinearFp8 passes m = Fp8PaddedRows(m), kernels/ops.h.) Plans (descriptors
// and the heuristic's top-1) are cached per (m, n, k) and alignments in lt_plan.h's cache, shared
// with the bf16 GEMM; the scale modes are this GEMM's LtOperands hook.
// Not thread-safe: one instance per backend (one stream).
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "kernels/cuda/lt_plan.h"

namespace tessera::cuda {

class LtFp8Gemm {
 public:
  // The workspace may be the bf16 LtGemm's: both run on the backend's one stream.
  LtFp8Gemm(void* workspace, size_t workspace_bytes);
  ~LtFp8Gemm();
  LtFp8Gemm(const LtFp8Gemm&) = delete;
  LtFp8Gemm& operator=(const LtFp8Gemm&) = delete;

  // Whether cuBLASLt runs this shape here: an sm_90 device, k % 16 == 0, 16-byte aligned operands,
  // and an algorithm from the heuristic (cached per shape).
  bool Supported(const uint8_t* x, const uint8_t* w, const __nv_bfloat16* y, int64_t m, int64_t n,
                 int64_t k, int64_t w_scale_stride, int64_t x_scale_stride);

  // Enqueues the GEMM; the shape must be Supported.
  void Linear(const uint8_t* x, const float* x_scale, const uint8_t* w, const float* w_scale,
              int64_t m, int64_t n, int64_t k, __nv_bfloat16* y, cudaStream_t stream);

  // For the benchmark: how many algorithms the heuristic lists for a Supported shape (up to 16),
  // and a call with the i-th (0 is Linear's choice).
  int CandidateCount(const uint8_t* x, const uint8_t* w, const __nv_bfloat16* y, int64_t m,
                     int64_t n, int64_t k);
  void LinearWithCandidate(int i, const uint8_t* x, const float* x_scale, const uint8_t* w,
                           const float* w_scale, int64_t m, int64_t n, int64_t k, __nv_bfloat16* y,
                           cudaStream_t stream);

 private:
  struct Plan {
    LtDescriptors lt;
    cublasLtMatmulAlgo_t algo;
    bool ok = false;  // the heuristic offered an algorithm
  };
  Plan& GetPlan(const LtKey& key);
  // Up to `wanted` algorithms of the heuristic for the plan's shape.
  std::vector<cublasLtMatmulAlgo_t> Candidates(const LtKey& key, const Plan& plan, int wanted);
  void Run(Plan& plan, const cublasLtMatmulAlgo_t& algo, const uint8_t* x, const float* x_scale,
           const uint8_t* w, const float* w_scale, __nv_bfloat16* y, cudaStream_t stream);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_;
  size_t workspace_bytes_;
  bool hopper_ = false;
  LtPlanCache<Plan> plans_;
};

}  // namespace tessera::cuda
