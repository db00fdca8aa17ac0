// RMSNorm as Qwen3 computes it: in fp32, x * rsqrt(mean(x^2) + eps) * weight.
#include <cmath>

#include "kernels/cpu/reference.h"

namespace tessera::cpu {

namespace {
inline void NormRow(const float* x, const float* weight, int64_t dim, float eps, float* out) {
  double sum_sq = 0.0;  // NOTE: double accumulation keeps the mean exact to fp32 for any dim.
  for (int64_t i = 0; i < dim; ++i) sum_sq += static_cast<double>(x[i]) * x[i];
  const float variance = static_cast<float>(sum_sq / static_cast<double>(dim));
  const float inv = 1.0f / std::sqrt(variance + eps);
  for (int64_t i = 0; i < dim; ++i) out[i] = weight[i] * (x[i] * inv);
}
}  // namespace

void RmsNorm(const float* x, const float* weight, int64_t rows, int64_t dim, float eps,
             float* out) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) NormRow(x + r * dim, weight, dim, eps, out + r * dim);
}

void AddRmsNorm(float* residual, const float* x, const float* weight, int64_t rows, int64_t dim,
                float eps, float* out) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    float* res = residual + r * dim;
    const float* xr = x + r * dim;
    for (int64_t i = 0; i < dim; ++i) res[i] += xr[i];
    NormRow(res, weight, dim, eps, out + r * dim);
  }
}

}  // namespace tessera::cpu
