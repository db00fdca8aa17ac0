#!/bin/bash
# Weight loading on a real-size checkpoint (issue 20), one device call, under 6 minutes: writes a
# Qwen3-14B-shaped bf16 checkpoint (29.5 GB, 6 shards, by transformers' save_pretrained), then
# with the files in the page cache: `tessera run` on 1 GPU (load time, GB/s, peak host memory),
# transformers' from_pretrained(device_map="cuda") on the same files, `tessera run` again; with 2+
# GPUs the same at --tp 2 (and --tp 4 with 4+); then from a cold page cache: dd of the files
# (the disk's speed) and `tessera run` with each read path (TESSERA_LOAD_DIRECT=0: buffered pread,
# 1: O_DIRECT, auto: O_DIRECT for files not in the page cache, the default), the files evicted
# before each. Everything goes to $OUT/load-bench.log.
#
#   scripts/gpu/pack.sh BUILD_DIR CHECKOUT   (here), then on the device, with carry [".devcarry"]:
#   bash .devcarry/load-bench.sh               (everything, ~6 minutes)
#   COLD_ONLY=1 bash .devcarry/load-bench.sh   (write, one warm run, then cold: dd, buffered,
#                                               O_DIRECT, auto; ~3.5 minutes)
# Knobs: TESSERA (binary; default .devcarry/bin/tessera), LOAD_DIR (default /tmp/qwen3-14b-shape;
# kept with KEEP=1), COLD=0 skips the cold-cache part, HF=0 skips transformers, COLD_MODES (the
# TESSERA_LOAD_DIRECT values to time cold; default "0 1 auto").
set -u
here=$(dirname "$(realpath "$0")")
case $here in */.devcarry) root=$here/.. ;; *) root=$here/../.. ;; esac
cd "$root" || exit 1
root=$PWD
OUT=${OUT:-/tmp/load-bench}
mkdir -p "$OUT"
L=$OUT/load-bench.log
if [ -z "${TESSERA:-}" ]; then
  [ -x .devcarry/bin/tessera ] || python3 -c "import tarfile; tarfile.open('.devcarry/pack.tar.xz').extractall('.devcarry')" || exit 1
  export LD_LIBRARY_PATH=$root/.devcarry/lib
  TESSERA=$root/.devcarry/bin/tessera
fi
export PATH=$PATH:/usr/local/cuda/bin NCCL_NVLS_ENABLE=0
PY=$root/.devcarry/load_bench.py
[ -f "$PY" ] || PY=$root/scripts/gpu/load_bench.py
# Not on a tmpfs: its pages cannot be evicted, so "cold" would read from RAM.
if [ "$(df --output=fstype /tmp | tail -1)" = tmpfs ]; then D=${LOAD_DIR:-$root/.load-bench-ckpt}
else D=${LOAD_DIR:-/tmp/qwen3-14b-shape}; fi
start=$(date +%s)
say() { echo "$*" | tee -a "$L"; }
elapsed() { echo "$(( $(date +%s) - start )) s"; }
say "===== load-bench $(date -u +%FT%TZ) $(git -C "$root" rev-parse --short HEAD 2>/dev/null)"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$L"
say "host: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GB RAM; disk: $(df -h "$(dirname "$D")" | tail -1)"
gpus=$(nvidia-smi -L | wc -l)

if [ ! -f "$D/model.safetensors.index.json" ]; then
  rm -rf "$D"
  timeout 240 python3 "$PY" write "$D" > "$OUT/write.log" 2>&1
  rc=$?
  grep "^\[write\]" "$OUT/write.log" | tee -a "$L"
  [ $rc = 0 ] || { tail -5 "$OUT/write.log" | tee -a "$L"; say "write: exit $rc"; exit 1; }
fi
ls -l "$D"/*.safetensors | awk '{print $5, $9}' | tee -a "$L"
python3 "$PY" cached "$D" | tee -a "$L"
say "($(elapsed))"

# tessera run: load, one token; the load lines and the wall time of the whole command.
run() {  # run LABEL "EXTRA FLAGS" [mpirun ...]
  local label=$1 flags=$2; shift 2
  local t0; t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  timeout 120 "$@" "$TESSERA" run --model "$D" --device cuda --prompt-ids 151643,9707,11,1879 \
    --max-new-tokens 1 --temperature 0 $flags > "$OUT/run.out" 2> "$OUT/run.err"
  local rc=$?
  local t1; t1=$(date +%s.%N)
  say "--- $label: exit $rc, wall $(python3 -c "print(f'{$t1 - $t0:.2f}')") s"
  grep -E "loaded its shard" "$OUT/run.err" | head -8 | tee -a "$L"
  [ $rc = 0 ] || tail -4 "$OUT/run.err" | tee -a "$L"
}
say "===== warm page cache"
run "tessera run, 1 GPU (warm)" ""
if [ "${COLD_ONLY:-0}" = 1 ]; then HF=0; fi
if [ "${HF:-1}" = 1 ]; then
  timeout 200 python3 "$PY" hf "$D" > "$OUT/hf.log" 2>&1
  say "--- transformers: exit $?"
  if grep -q "^\[hf\]" "$OUT/hf.log"; then grep "^\[hf\]" "$OUT/hf.log" | tee -a "$L"
  else tail -5 "$OUT/hf.log" | tee -a "$L"; fi
fi
if [ "${COLD_ONLY:-0}" != 1 ]; then
  run "tessera run, 1 GPU (warm, again)" ""
  MPI="mpirun --allow-run-as-root --oversubscribe --bind-to none -x LD_LIBRARY_PATH -x NCCL_NVLS_ENABLE"
  for tp in 2 4; do
    [ "$gpus" -ge $tp ] && run "tessera run --tp $tp (warm)" "--tp $tp" $MPI -np $tp
  done
fi
say "($(elapsed))"

# The cold part reads the 29.5 GB from the disk once per mode and once for dd (~20-25 s each
# at ~1.4 GB/s): only with time left in the budget (6 minutes; 4 with COLD_ONLY=1).
modes=${COLD_MODES:-0 1 auto}
n_modes=$(echo "$modes" | wc -w)
if [ "${COLD:-1}" = 1 ] && [ $(( $(date +%s) - start + 30 * (n_modes + 1) )) -gt 330 ]; then
  say "cold page cache: skipped, $(elapsed) already used"
elif [ "${COLD:-1}" = 1 ]; then
  say "===== cold page cache (POSIX_FADV_DONTNEED on every shard before each)"
  python3 "$PY" evict "$D" | tee -a "$L"
  t0=$(date +%s.%N)
  for f in "$D"/*.safetensors; do dd if="$f" of=/dev/null bs=16M 2>/dev/null & done; wait
  t1=$(date +%s.%N)
  say "dd, the $(find "$D" -name '*.safetensors' | wc -l) files in parallel: $(python3 -c "import glob,os; s=sum(os.path.getsize(f) for f in glob.glob('$D/*.safetensors')); print(f'{s/1e9:.2f} GB in {$t1-$t0:.2f} s = {s/1e9/($t1-$t0):.2f} GB/s')")"
  for mode in $modes; do
    python3 "$PY" evict "$D" | tee -a "$L"
    export TESSERA_LOAD_DIRECT=$mode
    run "tessera run, 1 GPU (cold, TESSERA_LOAD_DIRECT=$mode)" ""
    unset TESSERA_LOAD_DIRECT
    say "($(elapsed))"
  done
  python3 "$PY" cached "$D" | tee -a "$L"
fi
[ "${KEEP:-0}" = 1 ] || rm -rf "$D"
say "total $(elapsed)"
