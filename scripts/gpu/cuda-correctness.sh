#!/bin/bash
# One device call: every CUDA test, the golden fixtures on CUDA, tessera run and serve with
# --device cuda, transformers' own bf16 error (HF=0 skips it), compute-sanitizer on small cases
# (SANITIZE=1), and with two GPUs or more the NCCL communicator, the parallel layouts and a
# two-rank serve. Logs under $OUT; scripts/gpu/pack.sh prepares .devcarry.
set -u
cd "$(dirname "$0")/.."
root=$PWD
python3 -c "import tarfile; tarfile.open('.devcarry/pack.tar.xz').extractall('.devcarry')" || exit 1
export PATH=$PATH:/usr/local/cuda/bin
export LD_LIBRARY_PATH=$root/.devcarry/lib NCCL_NVLS_ENABLE=0 OMP_NUM_THREADS=8
export TESSERA_SOURCE_DIR=$root  # the fixtures, for tests built in a checkout at another path
B=$root/.devcarry/bin
S=$OUT/summary.txt
T=$OUT/tests.log
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee -a $S
start=$(date +%s)
for t in ${TESTS:-cuda_elementwise_test cuda_norm_test cuda_rope_test cuda_linear_test cuda_attention_test cuda_moe_test cuda_random_test cuda_sampling_test cuda_convert_test cuda_moe_dispatch_test cuda_fp8_test cuda_moe_fp8_test cuda_golden_test cuda_graph_test}; do
  echo "===== $t" >> $T
  timeout 300 $B/$t >> $T 2>&1
  echo "$t: exit $? ($(grep -c '^\[       OK' $T) OK so far, $(( $(date +%s) - start )) s)" | tee -a $S
done
grep -E "^\[  FAILED  \]|Failure|fatal" $T | head -40 | tee -a $S
grep -E "^\[(cuda|golden)" $T > $OUT/figures.txt
echo "===== tessera run --device cuda" | tee -a $S
for f in dense_gqa moe_mixed_layers; do
  d=tests/golden/fixtures/$f
  ids=$(python3 -c "import json;print(','.join(map(str,json.load(open('$d/expected.json'))['prompt_ids'])))")
  want=$(python3 -c "import json;print(json.load(open('$d/expected.json'))['greedy_tokens'])")
  timeout 60 $B/tessera run --model $d --device cuda --prompt-ids $ids --max-new-tokens 12 --temperature 0 --json 2>&1 | tee -a $S
  echo "$f expected tokens $want" | tee -a $S
  timeout 60 $B/tessera run --model $d --device cuda --prompt-ids $ids --max-new-tokens 0 --prompt-logits-out /tmp/$f.npy --json >/dev/null 2>>$S && python3 .devcarry/compare_npy.py /tmp/$f.npy $d/prompt_logits.npy 2>&1 | sed "s/^/$f logits: /" | tee -a $S
done
gpus=$(nvidia-smi -L | wc -l)
serve_check() {  # serve_check LABEL [mpirun -np N] -- serve flags
  local label=$1; shift
  rm -f /tmp/port
  "$@" --port 0 --metrics-port -1 --http-port -1 --port-file /tmp/port --model tests/golden/fixtures/dense_gqa \
    --device cuda --kv-cache-memory 64MiB >/tmp/serve.log 2>&1 &
  local pid=$!
  for _ in $(seq 120); do { [ -s /tmp/port ] || ! kill -0 $pid; } && break; sleep 0.5; done
  local port; port=$(cut -d' ' -f1 /tmp/port 2>/dev/null)
  ids=$(python3 -c "import json;print(','.join(map(str,json.load(open('tests/golden/fixtures/dense_gqa/expected.json'))['prompt_ids'])))")
  echo "$label: $(timeout 60 $B/tessera client --address 127.0.0.1:$port generate --prompt-ids $ids --max-tokens 12 --temperature 0 --json 2>&1 | tail -1)" | tee -a $S
  kill -TERM $pid; wait $pid; echo "$label: exit $?; $(grep -E 'listening|stopped|fatal' /tmp/serve.log | tr '\n' ' ')" | tee -a $S
}
echo "===== tessera serve --device cuda" | tee -a $S
serve_check "serve 1 GPU" $B/tessera serve
echo "===== injected CUDA error (TESSERA_FAULT=cuda-error@0 after 20 steps)" | tee -a $S
# Want: the client's stream ends UNAVAILABLE, serve exits non-zero within seconds naming the CUDA
# error, and the GPU's memory is back to the idle figure once it is gone.
mem_idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0)
rm -f /tmp/port
TESSERA_FAULT=cuda-error@0 TESSERA_FAULT_AFTER_STEPS=20 $B/tessera serve --port 0 --metrics-port -1 \
  --port-file /tmp/port --model tests/golden/fixtures/dense_gqa --device cuda \
  --kv-cache-memory 64MiB >/tmp/fault.log 2>&1 &
pid=$!
for _ in $(seq 120); do { [ -s /tmp/port ] || ! kill -0 $pid; } && break; sleep 0.5; done
port=$(cut -d' ' -f1 /tmp/port 2>/dev/null)
fault_start=$(date +%s)
echo "cuda-error client: $(timeout 60 $B/tessera client --address 127.0.0.1:$port generate --prompt-ids 1,2,3 --max-tokens 200 --ignore-eos --json 2>&1 | tail -1)" | tee -a $S
timeout 60 tail --pid=$pid -f /dev/null; wait $pid; code=$?
sleep 2
echo "cuda-error: serve exit $code after $(( $(date +%s) - fault_start )) s (want non-zero); $(grep -E 'injecting|CUDA|cuda' /tmp/fault.log | head -3 | tr '\n' ' ')" | tee -a $S
echo "cuda-error: GPU 0 memory used $mem_idle MiB before, $(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0) MiB after exit (want equal)" | tee -a $S
if [ "$gpus" -ge 2 ]; then
  echo "===== $gpus GPUs: NCCL" | tee -a $S
  MPI="mpirun --allow-run-as-root --oversubscribe --bind-to none -x LD_LIBRARY_PATH -x NCCL_NVLS_ENABLE"
  timeout 120 $MPI -np 2 $B/nccl_communicator_test > $OUT/multi.log 2>&1; echo "nccl_communicator_test np=2: exit $?" | tee -a $S
  grep -E "^\[  (PASSED|FAILED|SKIPPED)" $OUT/multi.log | tee -a $S
  if [ "$gpus" -ge 4 ]; then
    timeout 120 $MPI -np 4 $B/nccl_communicator_test > $OUT/multi4.log 2>&1; echo "nccl_communicator_test np=4: exit $?" | tee -a $S
    grep -E "^\[  (PASSED|FAILED|SKIPPED)" $OUT/multi4.log | tee -a $S
  fi
  timeout 150 python3 .devcarry/nccl_fault_test.py $B/nccl_communicator_test $MPI 2>&1 | tail -5 | sed "s/^/nccl_fault_test: /" | tee -a $S
  timeout 400 python3 .devcarry/cuda_parity_test.py $B/tessera tests/golden/fixtures $gpus $MPI 2>&1 | tee -a $OUT/multi.log | tee -a $S
  serve_check "serve 2 GPUs --tp 2" $MPI -np 2 $B/tessera serve --tp 2
fi
if [ "${SANITIZE:-0}" = 1 ]; then
echo "===== compute-sanitizer" | tee -a $S
CS="timeout 150 compute-sanitizer --error-exitcode 9 --print-limit 20"
$CS --tool memcheck $B/cuda_attention_test --gtest_filter='*prefill_gqa_d16*:*mixed*:*tiny*:*d256*' > $OUT/sanitizer.log 2>&1; echo "memcheck attention: exit $?" | tee -a $S
$CS --tool memcheck $B/cuda_moe_test --gtest_filter='*odd_sizes*:*expert_parallel*:*Router*' >> $OUT/sanitizer.log 2>&1; echo "memcheck moe: exit $?" | tee -a $S
$CS --tool memcheck $B/cuda_linear_test --gtest_filter='*/8:*/9' >> $OUT/sanitizer.log 2>&1; echo "memcheck linear offsets: exit $?" | tee -a $S
$CS --tool memcheck $B/cuda_rope_test >> $OUT/sanitizer.log 2>&1; echo "memcheck rope: exit $?" | tee -a $S
$CS --tool racecheck $B/cuda_attention_test --gtest_filter='*prefill_gqa_d16*:*tiny*' >> $OUT/sanitizer.log 2>&1; echo "racecheck attention: exit $?" | tee -a $S
$CS --tool racecheck $B/cuda_moe_test --gtest_filter='*Router*' >> $OUT/sanitizer.log 2>&1; echo "racecheck router: exit $?" | tee -a $S
grep -E "ERROR SUMMARY|Error|error" $OUT/sanitizer.log | sort | uniq -c | head -20 | tee -a $S
fi
if [ "${HF:-1}" = 1 ]; then
echo "===== transformers bf16 (yardstick)" | tee -a $S
PYTHONUNBUFFERED=1 timeout 150 python3 .devcarry/hf_bf16.py tests/golden/fixtures 2>&1 | grep "^\[hf" | tee -a $S
fi
echo "total $(( $(date +%s) - start )) s" | tee -a $S
