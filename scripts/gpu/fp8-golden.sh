#!/bin/bash
# One device call: the FP8 fixtures (written here by tests/golden/make_fp8_fixtures.py) against
# transformers' FP8 (FineGrainedFP8, bf16 compute) on the GPU, `tessera run --device cuda` W8A8
# and W8A16 against it, cuda_fp8_test, and a dummy-weight bench of a real shape in bf16 and FP8
# (MODEL=dir with a config.json, e.g. scripts/bench/models/Qwen3-14B; BENCH=0 skips it).
# MOE_BENCH=1 adds the MoE side (issue 16's 30B-A3B rows): cuda_moe_fp8_test, the grouped FP8
# expert GEMMs against bf16 and the dequantize fallback at decode sizes (cuda_moe_bench_test
# *Fp8*), and `tessera bench` of MOE_MODEL (default Qwen3-30B-A3B) at decode batch 1 and 128 in
# bf16, FP8 (grouped FP8 experts) and FP8 with TESSERA_FP8_MOE=dequantize (the old path), side by
# side. MOE_ONLY=1 runs only that part (fp8-moe.sh: its own checks.sh stage). FP8_TEST=0 skips
# cuda_fp8_test (when fp8-dispatch.sh ran it in the same call).
# scripts/gpu/pack.sh prepares .devcarry; run as: bash .devcarry/fp8-golden.sh
set -u
cd "$(dirname "$0")/.."
root=$PWD
python3 -c "import tarfile; tarfile.open('.devcarry/pack.tar.xz').extractall('.devcarry')" || exit 1
export PATH=$PATH:/usr/local/cuda/bin LD_LIBRARY_PATH=$root/.devcarry/lib OMP_NUM_THREADS=8
export TESSERA_SOURCE_DIR=$root  # the fixtures, for tests built in a checkout at another path
B=$root/.devcarry/bin
S=$OUT/summary.txt
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a $S
[ "${FP8_TEST:-1}" = 1 ] && [ -x $B/cuda_fp8_test ] && { timeout 300 $B/cuda_fp8_test > $OUT/cuda_fp8_test.log 2>&1; echo "cuda_fp8_test: exit $? ($(grep -c '^\[       OK' $OUT/cuda_fp8_test.log) OK)" | tee -a $S; }
if [ "${MOE_BENCH:-0}" = 1 ]; then
  [ -x $B/cuda_moe_fp8_test ] && { timeout 200 $B/cuda_moe_fp8_test > $OUT/cuda_moe_fp8_test.log 2>&1; echo "cuda_moe_fp8_test: exit $? ($(grep -c '^\[       OK' $OUT/cuda_moe_fp8_test.log) OK)" | tee -a $S; grep -E '^\[  FAILED|Failure' $OUT/cuda_moe_fp8_test.log | head -10 | tee -a $S; }
  [ -x $B/cuda_moe_bench_test ] && TESSERA_MOE_BENCH=1 timeout 200 $B/cuda_moe_bench_test --gtest_filter='*Fp8*' 2>&1 | grep -E '^\[moe-fp8-bench\]|FAILED|Failure' | tee -a $S
  mm=${MOE_MODEL:-scripts/bench/models/Qwen3-30B-A3B}
  for v in "bf16:" "fp8:--quantization fp8" "fp8-dequantize:--quantization fp8"; do
    label=${v%%:*}
    mode=fused; [ $label = fp8-dequantize ] && mode=dequantize
    echo "===== bench $mm $label" | tee -a $S
    TESSERA_FP8_MOE=$mode timeout 300 $B/tessera bench --model $mm --device cuda --ttft 1024 \
      --decode-batch 1,128 --throughput-requests 0 ${v#*:} 2>>$OUT/bench_moe.log | tee -a $S
  done
fi
[ "${MOE_ONLY:-0}" = 1 ] && exit 0
fx=/tmp/fp8-fixtures
python3 tests/golden/make_fp8_fixtures.py --out $fx 2>&1 | tee -a $S
python3 .devcarry/fp8_golden.py $fx $B/tessera $OUT 2>&1 | grep -v Warning | tee -a $S
if [ "${BENCH:-1}" = 1 ]; then
  m=${MODEL:-scripts/bench/models/Qwen3-14B}
  for q in "" "--quantization fp8"; do
    echo "===== bench $m $q" | tee -a $S
    timeout 400 $B/tessera bench --model $m --device cuda --ttft 4096 --decode-batch 1,64 \
      --throughput-requests 0 $q 2>>$OUT/bench.log | tee -a $S
  done
fi
