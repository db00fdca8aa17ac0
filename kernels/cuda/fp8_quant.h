// Per-token dynamic FP8 quantization of bf16 activations in 1 x 128 groups (Backend::QuantizeFp8,
// kernels/ops.h), the input side of the W8A8 GEMMs (fp8_gemm.h, fp8_mma.h).
//
// Bit for bit the CPU reference's (kernels/cpu/fp8.cc): amax in fp32, scale = amax / 448 (IEEE
// division; 1 for an all-zero group), data = cvt.rn.satfinite.e4m3(x / scale). One warp per
// (token, group): 4 elements per lane, one 8-byte load where the row allows it. A variant fuses
// the SwiGLU activation in front (the down projection's input).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/ops.h"

namespace tessera::cuda {

// x bf16 [m, k] -> data e4m3 [m, k], scale fp32 [ceil(k / 128), scale_stride] (tokens fastest;
// scale_stride >= m). Any k; no alignment required.
void LaunchQuantizeFp8(const __nv_bfloat16* x, int64_t m, int64_t k, uint8_t* data, float* scale,
                       int64_t scale_stride, cudaStream_t stream);

// Fused SwiGLU + quantization (Backend::SiluMulQuantizeFp8): quantizes silu(gate) * up, computed
// in fp32 from gate_up bf16 [m, 2 * intermediate], into data [m, intermediate] and its scales,
// saving SiluMul's bf16 round trip through memory before the down projection.
void LaunchSiluMulQuantizeFp8(const __nv_bfloat16* gate_up, int64_t m, int64_t intermediate,
                              uint8_t* data, float* scale, int64_t scale_stride,
                              cudaStream_t stream);

// out bf16 [batch, n, k] = the batch of e4m3 weights (w.data + b * n * k, w.scale +
// b * scale_batch_stride) times their block scales (Fp8ScaleIndex: offsets and parts allowed),
// the product in fp32 rounded once (Backend::DequantizeFp8Weight; bit for bit the CPU reference's
// float32 product, rounded to bf16).
// `only`: null or int32 [batch]: weights with only[b] == 0 are skipped (whole thread blocks
// return at once, so an unused expert costs one load).
void LaunchDequantizeFp8Weight(const Fp8Weight& w, int64_t n, int64_t k, int64_t batch,
                               int64_t scale_batch_stride, __nv_bfloat16* out, const int32_t* only,
                               cudaStream_t stream);

// used [num] = 1 where first + e occurs in ids [count], else 0 (Backend::MarkExperts).
void LaunchMarkExperts(const int32_t* ids, int64_t count, int first, int num, int32_t* used,
                       cudaStream_t stream);

// Block quantization of a bf16 weight [n, k] as transformers' FineGrainedFP8 quantizer does it
// (Backend::QuantizeFp8Weight): one thread block per 128 x 128 block, amax in fp32, s = 448 / amax,
// data = cvt.rn.satfinite.e4m3(w * s), scale = 1 / s. Bit for bit the CPU reference.
void LaunchQuantizeFp8Weight(const __nv_bfloat16* w, int64_t n, int64_t k, uint8_t* data,
                             float* scale, int64_t scale_stride, cudaStream_t stream);

}  // namespace tessera::cuda
