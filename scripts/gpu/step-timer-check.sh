#!/bin/bash
# The engine's per-step device time on the GPU (issue 15): the timer itself (cuda_sampling_test's
# timer and TakeSampledIds tests), then `tessera serve --load-format dummy` (MODEL, default
# Qwen3-14B) with and without --async-scheduling, each under a burst of BURST (default 300)
# requests of log-normal lengths around 256 in / 128 out from `tessera bench-serve`. Prints each
# run's throughput, device busy time, utilization (= bench-serve's efficiency) and bound, and
# checks what must hold on any GPU: 0 < device busy <= the window's wall time, efficiency equal to
# the utilization, bound x busy = output tokens, every step timed (the histogram's count equal to
# engine_step_seconds'). Async scheduling should show the higher utilization (reported, not
# asserted). Logs under $OUT; scripts/gpu/pack.sh prepares .devcarry. About 3 minutes on one H100.
set -u
cd "$(dirname "$0")/.."
root=$PWD
[ -d .devcarry/bin ] || python3 -c "import tarfile; tarfile.open('.devcarry/pack.tar.xz').extractall('.devcarry')" || exit 1
export LD_LIBRARY_PATH=$root/.devcarry/lib NCCL_NVLS_ENABLE=0
B=$root/.devcarry/bin
S=$OUT/step-timer-check.txt
fail=0
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a $S
timeout 300 $B/cuda_sampling_test --gtest_filter='*Timer*:*TakeSampledIds*' >$OUT/timer-test.log 2>&1
rc=$?; tail -3 $OUT/timer-test.log | tee -a $S; [ $rc = 0 ] || fail=1
model=${MODEL:-Qwen3-14B}
dir=/tmp/models/$model
mkdir -p $dir && cp scripts/bench/models/$model/config.json tests/data/qwen3/tokenizer-qwen3-0.6b/* $dir/
for mode in async sync; do
  flag=; [ $mode = sync ] && flag=--no-async-scheduling
  rm -f /tmp/port
  $B/tessera serve --model $dir --load-format dummy --device cuda --port 0 --http-port -1 \
    --metrics-port 0 --port-file /tmp/port --max-num-seqs 256 --max-num-batched-tokens 8192 \
    $flag >>$OUT/serve-$mode.log 2>&1 &
  pid=$!
  for _ in $(seq 600); do { [ -s /tmp/port ] || ! kill -0 $pid; } && break; sleep 0.5; done
  if ! read -r gport mport _ </tmp/port 2>/dev/null; then
    echo "$mode: serve did not start" | tee -a $S; kill $pid 2>/dev/null; fail=1; continue
  fi
  timeout 300 $B/tessera bench-serve --address 127.0.0.1:$gport --metrics-address 127.0.0.1:$mport \
    --warmup 4 --num-prompts ${BURST:-300} --request-rate inf --input-mean 256 --output-mean 128 \
    --json >/tmp/bs-$mode.json 2>>$OUT/bench-serve.log
  curl -s 127.0.0.1:$mport/metrics | grep -E "^tessera:engine_step(_device)?_seconds_(sum|count)" \
    >/tmp/metrics-$mode.txt
  kill -TERM $pid; wait $pid
  python3 - $mode <<'PY' | tee -a $S || fail=1
import json, sys
mode = sys.argv[1]
r = json.load(open(f"/tmp/bs-{mode}.json"))
m = {}
for line in open(f"/tmp/metrics-{mode}.txt"):
    name, value = line.split("{")[0], float(line.split()[-1])
    m[name] = value
busy, util, wall = r["device_busy_seconds"], r["device_utilization"], r["duration_s"]
print(f"{mode}: {r['completed']} ok, {r['failed']} failed; {r['output_throughput']:.0f} output tok/s; "
      f"device busy {busy:.2f} s of {wall:.2f} s = utilization {util:.3f} (efficiency "
      f"{r['efficiency']:.3f}); bound {r['bound_output_throughput']:.0f} tok/s; "
      f"step time sum {r['engine_step_seconds']:.2f} s over {r['engine_steps']} steps; "
      f"host {r['host_us_per_step']:.0f} us/step")
problems = []
if not 0 < busy <= wall * 1.001: problems.append("device busy outside (0, wall]")
if abs(r["efficiency"] - util) > 1e-9: problems.append("efficiency != utilization")
if abs(r["bound_output_throughput"] * busy - r["total_output_tokens"]) > 1e-3 * r["total_output_tokens"]:
    problems.append("bound x busy != output tokens")
if m.get("tessera:engine_step_device_seconds_count") != m.get("tessera:engine_step_seconds_count"):
    problems.append(f"device steps != steps: {m}")
if r["failed"]: problems.append("failed requests")
for p in problems: print(f"{mode}: FAIL {p}")
sys.exit(1 if problems else 0)
PY
done
echo "step-timer-check: $([ $fail = 0 ] && echo ok || echo FAILED)" | tee -a $S
exit $fail
