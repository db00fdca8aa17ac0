// Dense bf16 GEMMs through cuBLASLt: y [m, n] = x [m, k] @ w [n, k]^T (F.linear), fp32 compute.
//
// The algorithm is chosen once per (m, n, k, pointer alignments) by cuBLASLt's heuristic and
// cached with its descriptors; the workspace is the caller's, allocated once. Operands need no
// particular alignment: the heuristic is told each pointer's (cuBLASLt handles bf16 operands at
// any even address; tests/kernels/cuda/linear_test.cc covers odd element offsets). Not
// thread-safe: one instance per backend (one stream).
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <tuple>

namespace tessera::cuda {

class LtGemm {
 public:
  LtGemm(void* workspace, size_t workspace_bytes);
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  void Linear(const __nv_bfloat16* x, const __nv_bfloat16* w, int64_t m, int64_t n, int64_t k,
              __nv_bfloat16* y, cudaStream_t stream);

 private:
  // (m, n, k, alignment of x, w, y in bytes)
  using Key = std::tuple<int64_t, int64_t, int64_t, int, int, int>;
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t w_layout = nullptr, x_layout = nullptr, y_layout = nullptr;
    cublasLtMatmulAlgo_t algo;
  };
  const Plan& GetPlan(const Key& key);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_;
  size_t workspace_bytes_;
  std::map<Key, Plan> plans_;
};

}  // namespace tessera::cuda
