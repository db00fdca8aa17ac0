#!/bin/bash
# One device call, or a checks.sh stage ("fp8-dispatch:560"): issue 16's dispatch of every m to a
# fast FP8 linear and the two decode GEMVs. cuda_fp8_test (GEMV v1 and v2 for m = 1..8 and exact on
# every e4m3 code; LinearFp8 on cuBLASLt's padded rows for m = 1, 3, 17, 100, 333), then
# TESSERA_FP8_BENCH=1 cuda_fp8_bench_test (Qwen3-14B's projections at m = 1, 8, 16, 64 with GEMV
# v1 / v2 / v2 x4 and the 40-layer sums; padded cuBLASLt against mma.sync at m = 17, 100, 333,
# 1000 and 4095; the backend's first-use log of each path), then `tessera bench`
# of MODEL (default Qwen3-14B, dummy weights, --quantization fp8) at decode batch 1 and 8 and TTFT
# 1023 (cuBLASLt on 1024 padded rows) with TESSERA_FP8_GEMV=v1 and v2 side by side (the log
# lines say which path each shape took). Summary in $OUT/summary.txt, logs beside it.
# PARTS (default "tests bench e2e") picks parts, in that order, for a second call if the first runs
# out of the device's 600 s (expected: ~1, ~2 and ~2 x 1.5 minutes).
# scripts/gpu/pack.sh prepares .devcarry; run as: bash .devcarry/fp8-dispatch.sh
set -u
cd "$(dirname "$0")/.."
root=$PWD
[ -d .devcarry/bin ] || python3 -c "import tarfile; tarfile.open('.devcarry/pack.tar.xz').extractall('.devcarry')" || exit 1
export PATH=$PATH:/usr/local/cuda/bin LD_LIBRARY_PATH=$root/.devcarry/lib OMP_NUM_THREADS=8
B=$root/.devcarry/bin
S=$OUT/summary.txt
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee -a $S
parts=${PARTS:-tests bench e2e}
if [[ " $parts " == *" tests "* ]]; then
  timeout 150 $B/cuda_fp8_test > $OUT/cuda_fp8_test.log 2>&1
  echo "cuda_fp8_test: exit $? ($(grep -c '^\[       OK' $OUT/cuda_fp8_test.log) OK)" | tee -a $S
  grep -E '^\[  FAILED|Failure|not supported' $OUT/cuda_fp8_test.log | head -20 | tee -a $S
  # The backend's ops with v2 as the default variant (the kernel tests above take both anyway).
  TESSERA_FP8_GEMV=v2 timeout 60 $B/cuda_fp8_test --gtest_filter='*WeightOnly*:*ModeTest*' \
    > $OUT/cuda_fp8_test_v2.log 2>&1
  echo "cuda_fp8_test (TESSERA_FP8_GEMV=v2, ops): exit $? ($(grep -c '^\[       OK' $OUT/cuda_fp8_test_v2.log) OK)" | tee -a $S
fi
if [[ " $parts " == *" bench "* ]]; then
  TESSERA_FP8_BENCH=1 timeout 200 $B/cuda_fp8_bench_test > $OUT/cuda_fp8_bench_test.log 2>&1
  echo "cuda_fp8_bench_test: exit $?" | tee -a $S
  grep -E '^FP8BENCH|^tessera: FP8|FAILED' $OUT/cuda_fp8_bench_test.log | tee -a $S
fi
if [[ " $parts " == *" e2e "* ]]; then
  m=${MODEL:-scripts/bench/models/Qwen3-14B}
  for v in v1 v2; do
    echo "===== bench $m --quantization fp8, TESSERA_FP8_GEMV=$v" | tee -a $S
    TESSERA_FP8_GEMV=$v timeout 150 $B/tessera bench --model $m --device cuda --ttft 1023 \
      --decode-batch 1,8 --throughput-requests 0 --quantization fp8 2>>$OUT/bench.log | tee -a $S
  done
  grep '^tessera: FP8' $OUT/bench.log | sort -u | tee -a $S
fi
