#!/bin/bash
# Issue 17's one-GPU evidence in one device call: the dispatch kernels' unit test against the CPU
# reference (cuda_moe_dispatch_test: packed and fixed-block layouts, pack, combine) and
# `tessera bench-comm`'s MoE section at Qwen3-235B-A22B's shapes (hidden 4096, top-8 of 128
# experts, 1..4096 tokens per rank): the layout kernels (packed and low-latency blocks), the FP8
# payload's quantize + dequantize, and the exchange with one rank (every block a local copy through
# the same calls) in normal and low-latency modes, bf16 and FP8 payloads, low-latency replayed
# from a CUDA graph, beside the all-gather exchange. With 2 GPUs or more it runs again over them,
# and checks the expert-load counters at EP2 with decode steps in CUDA graphs (a padded batch
# included: tests/launch/bench_expert_load_test.py, exact totals in both exchange modes).
# Logs and JSON under $OUT (a2a-bench.log, a2a-<n>gpu.json).
#   on this machine: BINS="tessera tests/kernels/cuda_moe_dispatch_test" scripts/gpu/pack.sh BUILD .
#   on the device:   bash .devcarry/a2a-bench.sh   (with carry [".devcarry"])
set -u
cd "$(dirname "$0")/.."
root=$PWD
OUT=${OUT:-/tmp/a2a-bench}
mkdir -p "$OUT"
python3 -c "import tarfile; tarfile.open('.devcarry/pack.tar.xz').extractall('.devcarry')" || exit 1
export LD_LIBRARY_PATH=$root/.devcarry/lib NCCL_NVLS_ENABLE=0
B=$root/.devcarry/bin
L=$OUT/a2a-bench.log
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee -a "$L"
status=0
echo "===== cuda_moe_dispatch_test" | tee -a "$L"
timeout 300 "$B/cuda_moe_dispatch_test" >> "$L" 2>&1 || status=1
grep -E "^\[  (PASSED|FAILED) " "$L" | tail -3
# Only the MoE section matters here: the other sections at their smallest.
flags=(--device cuda --json --sizes-kb 8 --bw-sizes-mb 1 --a2a-sizes-mb 1 --rs-ag-sizes-mb 16
  --skew-mb 1 --moe-tokens 1,2,4,8,16,32,64,128,256,512,1024,2048,4096 --repeats 20 --warmup 5)
MPI="mpirun --allow-run-as-root --oversubscribe --bind-to none -x NCCL_NVLS_ENABLE -x LD_LIBRARY_PATH"
echo "===== bench-comm, 1 GPU" | tee -a "$L"
timeout 400 $MPI -np 1 "$B/tessera" bench-comm "${flags[@]}" > "$OUT/a2a-1gpu.json" 2>> "$L" ||
  status=1
gpus=$(nvidia-smi -L | wc -l)
if [ "$gpus" -ge 2 ]; then
  echo "===== bench-comm, $gpus GPUs" | tee -a "$L"
  timeout 400 $MPI -np "$gpus" "$B/tessera" bench-comm "${flags[@]}" \
    > "$OUT/a2a-${gpus}gpu.json" 2>> "$L" || status=1
  echo "===== expert load, EP2, decode graphs" | tee -a "$L"
  BENCH_DEVICE=cuda timeout 400 python3 .devcarry/bench_expert_load_test.py "$B/tessera" \
    tests/golden/fixtures $MPI >> "$L" 2>&1 || status=1
fi
sed -n '/MoE dispatch kernels/,$p' "$L"
exit $status
