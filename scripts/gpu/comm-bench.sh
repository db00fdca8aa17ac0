#!/bin/bash
# tessera bench-comm on 2 and 4 GPUs of one machine (2 GPUs: CUDA_VISIBLE_DEVICES=0,1), one JSON
# per run under $OUT (comm-2gpu.json, comm-4gpu.json) and the tables in $OUT/comm-bench.log.
#   TESSERA=path/to/tessera (default build/tessera) OUT=dir scripts/gpu/comm-bench.sh [extra flags]
set -u
cd "$(dirname "$0")/../.."
TESSERA=${TESSERA:-build/tessera}
OUT=${OUT:-/tmp/comm-bench}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
MPI="mpirun --allow-run-as-root --oversubscribe --bind-to none -x NCCL_NVLS_ENABLE -x LD_LIBRARY_PATH"
gpus=$(nvidia-smi -L | wc -l)
status=0
for n in 2 4; do
  if [ "$gpus" -lt "$n" ]; then
    echo "comm-bench: $n GPUs: skipped ($gpus visible)" | tee -a "$OUT/comm-bench.log"
    continue
  fi
  visible=$(seq -s, 0 $((n - 1)))
  echo "===== $n GPUs (CUDA_VISIBLE_DEVICES=$visible)" | tee -a "$OUT/comm-bench.log"
  CUDA_VISIBLE_DEVICES=$visible timeout 540 $MPI -x CUDA_VISIBLE_DEVICES -np "$n" \
    "$TESSERA" bench-comm --device cuda --json "$@" \
    > "$OUT/comm-${n}gpu.json" 2>> "$OUT/comm-bench.log" || status=1
done
exit $status
