// FP8 (E4M3, block scales): the CPU reference for the FP8 kernels (kernels/cuda/fp8_*.cu).
//
// Quantization is the GPU's bit for bit: the same fp32 amax, the same correctly rounded division
// for the scale and for x / scale, and E4M3 rounding as Hopper's cvt.rn.satfinite does it
// (kernels/base/dtype.h FloatToF8E4M3). The products sum in fp32 per 128-k group and each group's
// sum is scaled once (the wgmma kernels' "scale promotion"), in a fixed order.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/base/dtype.h"
#include "kernels/cpu/reference.h"

namespace tessera::cpu {

float Fp8GroupScale(float amax) { return amax > 0.0f ? amax / kFp8Max : 1.0f; }

void QuantizeFp8(const float* x, int64_t m, int64_t k, uint8_t* data, float* scale,
                 int64_t scale_stride) {
  const int64_t groups = Fp8Blocks(k);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < m; ++t) {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t j0 = g * kFp8Block, j1 = std::min(k, j0 + kFp8Block);
      float amax = 0.0f;
      for (int64_t j = j0; j < j1; ++j) amax = std::max(amax, std::fabs(x[t * k + j]));
      const float s = Fp8GroupScale(amax);
      scale[g * scale_stride + t] = s;
      for (int64_t j = j0; j < j1; ++j) data[t * k + j] = FloatToF8E4M3(x[t * k + j] / s);
    }
  }
}

void DequantizeFp8Weight(const uint8_t* data, const float* scale, int64_t scale_stride, int64_t n,
                         int64_t k, float* w) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      w[i * k + j] =
          F8E4M3ToFloat(data[i * k + j]) * scale[(i / kFp8Block) * scale_stride + j / kFp8Block];
    }
  }
}

void DequantizeFp8Activations(const uint8_t* data, const float* scale, int64_t scale_stride,
                              int64_t m, int64_t k, float* x) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < m; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      x[t * k + j] = F8E4M3ToFloat(data[t * k + j]) * scale[(j / kFp8Block) * scale_stride + t];
    }
  }
}

void LinearFp8(const uint8_t* x_data, const float* x_scale, int64_t x_scale_stride,
               const uint8_t* w_data, const float* w_scale, int64_t w_scale_stride, int64_t m,
               int64_t n, int64_t k, float* y) {
  // The unscaled e4m3 values as floats (exact), so the inner loop is a plain dot product.
  std::vector<float> xf(m * k), wf(n * k);
  for (int64_t i = 0; i < m * k; ++i) xf[i] = F8E4M3ToFloat(x_data[i]);
  for (int64_t i = 0; i < n * k; ++i) wf[i] = F8E4M3ToFloat(w_data[i]);
  const int64_t groups = Fp8Blocks(k);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t t = 0; t < m; ++t) {
      float acc = 0.0f;
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t j0 = g * kFp8Block, j1 = std::min(k, j0 + kFp8Block);
        float partial = 0.0f;
        for (int64_t j = j0; j < j1; ++j) partial += xf[t * k + j] * wf[i * k + j];
        acc += partial *
               (x_scale[g * x_scale_stride + t] * w_scale[(i / kFp8Block) * w_scale_stride + g]);
      }
      y[t * n + i] = acc;
    }
  }
}

void DequantizeFp8Blocks(const uint8_t* data, const Fp8Weight& layout, int64_t n, int64_t k,
                         int64_t batch, int64_t scale_batch_stride, float* w, const int32_t* only) {
  for (int64_t b = 0; b < batch; ++b) {
    if (only != nullptr && only[b] == 0) continue;
    const uint8_t* d = data + b * n * k;
    const float* scale = layout.scale + b * scale_batch_stride;
    float* out = w + b * n * k;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < k; ++j) {
        out[i * k + j] = F8E4M3ToFloat(d[i * k + j]) * scale[Fp8ScaleIndex(layout, i, j)];
      }
    }
  }
}

void MarkExperts(const int32_t* ids, int64_t count, int first, int num, int32_t* used) {
  std::fill(used, used + num, 0);
  for (int64_t i = 0; i < count; ++i) {
    if (ids[i] >= first && ids[i] < first + num) used[ids[i] - first] = 1;
  }
}

void QuantizeFp8Weight(const float* w, int64_t n, int64_t k, uint8_t* data, float* scale,
                       int64_t scale_stride) {
  const int64_t row_blocks = Fp8Blocks(n), col_blocks = Fp8Blocks(k);
#pragma omp parallel for schedule(static)
  for (int64_t bi = 0; bi < row_blocks; ++bi) {
    const int64_t i0 = bi * kFp8Block, i1 = std::min(n, i0 + kFp8Block);
    for (int64_t bj = 0; bj < col_blocks; ++bj) {
      const int64_t j0 = bj * kFp8Block, j1 = std::min(k, j0 + kFp8Block);
      float amax = 0.0f;
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = j0; j < j1; ++j) amax = std::max(amax, std::fabs(w[i * k + j]));
      // transformers: scales = 448 / amax, stored as its reciprocal; 1 for an all-zero block.
      const float s = amax > 0.0f ? kFp8Max / amax : 1.0f;
      scale[bi * scale_stride + bj] = 1.0f / s;
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = j0; j < j1; ++j) data[i * k + j] = FloatToF8E4M3(w[i * k + j] * s);
    }
  }
}

void LinearFp8WeightOnly(const float* x, const uint8_t* w_data, const float* w_scale,
                         int64_t w_scale_stride, int64_t m, int64_t n, int64_t k, float* y) {
  std::vector<float> w(n * k);
  DequantizeFp8Weight(w_data, w_scale, w_scale_stride, n, k, w.data());
  Linear(x, w.data(), m, n, k, y);
}

void MoeExpertsFp8(const float* x, int n, const int32_t* ids, const float* weights, int top_k,
                   const ExpertWeightsFp8& experts, float* out) {
  const int64_t H = experts.hidden, I = experts.intermediate;
  std::vector<float> gate_up(2 * I * H), down(H * I);
  MoeExpertsWith(
      x, n, ids, weights, top_k, experts.first_expert, experts.num_local_experts, H, I,
      [&](int e, const float** gu, const float** dn) {
        const auto* gu_data = static_cast<const uint8_t*>(experts.gate_up.data);
        const auto* dn_data = static_cast<const uint8_t*>(experts.down.data);
        Fp8Weight gu_layout = experts.gate_up, dn_layout = experts.down;
        gu_layout.scale += e * experts.gate_up_scale_batch_stride;
        dn_layout.scale += e * experts.down_scale_batch_stride;
        DequantizeFp8Blocks(gu_data + e * 2 * I * H, gu_layout, 2 * I, H, 1, 0, gate_up.data());
        DequantizeFp8Blocks(dn_data + e * H * I, dn_layout, H, I, 1, 0, down.data());
        *gu = gate_up.data();
        *dn = down.data();
      },
      out);
}

}  // namespace tessera::cpu
