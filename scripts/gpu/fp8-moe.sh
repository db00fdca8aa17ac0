#!/bin/bash
# One device call, or a checks.sh stage ("fp8-moe:240"): the MoE part of fp8-golden.sh alone
# (issue 16's grouped FP8 expert GEMMs: cuda_moe_fp8_test, the kernel timings against bf16 and the
# dequantize fallback, and Qwen3-30B-A3B decode batch 1 and 128 in bf16 / FP8 / FP8-dequantize).
# scripts/gpu/pack.sh prepares .devcarry; run as: bash .devcarry/fp8-moe.sh
MOE_BENCH=1 MOE_ONLY=1 exec bash "$(dirname "$0")/fp8-golden.sh"
