// cuBLASLt set-up shared by the bf16 GEMM (gemm.h) and the block-scaled FP8 GEMM (fp8_gemm.h):
// F.linear's row-major y [m, n] = x [m, k] w [n, k]^T as cuBLAS's column-major "TN" product
// y^T (n x m, ld n) = w^T x^T, w a column-major k x n matrix (ld k) used transposed and x a k x m
// one (ld k). Plans are keyed by shape and operand alignments and cached with their descriptors;
// what differs per dtype (operand types, the FP8 GEMM's scale modes) is an LtOperands value.
#pragma once

#include <cublasLt.h>
#include <library_types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <tuple>
#include <utility>
#include <vector>

namespace tessera::cuda {

// The largest power of two (<= 256) dividing the address: cuBLASLt's heuristic assumes 256-byte
// aligned operands unless told otherwise, and slices of activations (expert rows, token ranges)
// are not.
int LtAlignment(const void* p);

// (m, n, k, alignment of x, w, y in bytes)
using LtKey = std::tuple<int64_t, int64_t, int64_t, int, int, int>;
inline LtKey MakeLtKey(const void* x, const void* w, const void* y, int64_t m, int64_t n,
                       int64_t k) {
  return {m, n, k, LtAlignment(x), LtAlignment(w), LtAlignment(y)};
}

// A plan's matmul descriptor (fp32 compute and scale, TN) and its three layouts.
struct LtDescriptors {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t w_layout = nullptr, x_layout = nullptr, y_layout = nullptr;
};

// What a GEMM's plans differ in: the operands' element types and further descriptor attributes
// (`configure`, called once per new descriptor; may be empty).
struct LtOperands {
  cudaDataType_t in_type;   // x and w
  cudaDataType_t out_type;  // y
  std::function<void(cublasLtMatmulDesc_t)> configure;
};

// A preference for `key`: at most `workspace_bytes` of workspace, the key's alignments, and the
// reduction schemes in `reduction_mask` (all by default). The caller destroys it.
cublasLtMatmulPreference_t CreateLtPreference(
    const LtKey& key, size_t workspace_bytes,
    uint32_t reduction_mask = CUBLASLT_REDUCTION_SCHEME_MASK);

// Up to `wanted` algorithms the heuristic offers under `pref`, in its order (those it reports
// as launchable only); empty when it offers none.
std::vector<cublasLtMatmulAlgo_t> LtHeuristic(cublasLtHandle_t handle, const LtDescriptors& d,
                                              cublasLtMatmulPreference_t pref, int wanted);

// The descriptors of `key` (caller destroys them with DestroyLtDescriptors).
LtDescriptors CreateLtDescriptors(const LtKey& key, const LtOperands& operands);
void DestroyLtDescriptors(LtDescriptors& d);

// y = x w^T with `algo` (beta 0: C = D = y).
cublasStatus_t LtMatmul(cublasLtHandle_t handle, const LtDescriptors& d,
                        const cublasLtMatmulAlgo_t& algo, const void* x, const void* w, void* y,
                        void* workspace, size_t workspace_bytes, cudaStream_t stream);

// Plans by LtKey: each a `Plan` (a struct with an `LtDescriptors lt` member and whatever the GEMM
// caches beside it), its descriptors created on first use and destroyed with the cache.
template <typename Plan>
class LtPlanCache {
 public:
  explicit LtPlanCache(LtOperands operands) : operands_(std::move(operands)) {}
  ~LtPlanCache() {
    for (auto& [key, plan] : plans_) DestroyLtDescriptors(plan.lt);
  }
  LtPlanCache(const LtPlanCache&) = delete;
  LtPlanCache& operator=(const LtPlanCache&) = delete;

  // The plan of `key`; `created` (may be null) says whether this call made it.
  Plan& Get(const LtKey& key, bool* created = nullptr) {
    auto it = plans_.find(key);
    if (created != nullptr) *created = it == plans_.end();
    if (it != plans_.end()) return it->second;
    Plan plan{};
    plan.lt = CreateLtDescriptors(key, operands_);
    return plans_.emplace(key, plan).first->second;
  }

 private:
  LtOperands operands_;
  std::map<LtKey, Plan> plans_;
};

}  // namespace tessera::cuda
