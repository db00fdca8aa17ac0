// Token sampling on the GPU (sampling.cu): one id per row of bf16 logits, by the rule of
// kernels/base/sampling_rule.h, so that only int32 ids leave the device.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/ops.h"

namespace tessera::cuda {

// tokens [rows] from logits [shards, rows, vocab / shards] (shards == 1: [rows, vocab]) with
// params [rows]; all on the device. With `penalties` (null: none), rows with entries are first
// penalised into penalties->scratch (float32 [rows, vocab]) and sampled from there.
void LaunchSampleTokens(const __nv_bfloat16* logits, int rows, int64_t vocab, int shards,
                        const SamplingRowParams* params, const SamplingPenalties* penalties,
                        int32_t* tokens, cudaStream_t stream);

// ids[t] = sampled[from[t]] for t < n where 0 <= from[t] < num_sampled (Backend::TakeSampledIds).
void LaunchTakeSampledIds(const int32_t* sampled, int num_sampled, const int32_t* from, int n,
                          int32_t* ids, cudaStream_t stream);

}  // namespace tessera::cuda
