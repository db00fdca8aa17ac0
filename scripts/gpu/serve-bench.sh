#!/bin/bash
# One device call: serving throughput through the real server (issue table of docs/perf), with
# dummy weights at the real shapes. For each model in MODELS (default Qwen3-14B and
# Qwen3-30B-A3B), `tessera serve --load-format dummy` on GPU 0, then `tessera bench-serve` runs
# against it: a burst of BURST (1000) requests of log-normal lengths around 256 in / 128 out, and
# for dense models concurrency 64 with 1K in / 1K out (CONC_PROMPTS requests; 0 skips it). `tessera bench`
# gives the engine's own decode step time at batch 64 beside it. Logs and JSON under $OUT;
# scripts/gpu/pack.sh prepares .devcarry. The server writes its step timeline (--step-trace, the
# last TRACE_STEPS steps): $OUT/steps-MODEL.json.gz (Perfetto opens it) and a per-phase summary
# in serve-bench.txt. SERVE_FLAGS=--no-async-output measures without the output thread;
# LONG_PREFILL="256 512" repeats concurrency 64 with --long-prefill-token-threshold at each value.
# A/B of async scheduling in the same call: for each model in AB_MODELS (default Qwen3-14B) the
# burst runs again on a server started with --no-async-scheduling ("sync" in its label; AB_MODELS=
# skips it). bench-serve's efficiency is the GPU's utilization (tessera:engine_step_device_seconds
# over the window's wall time: device_utilization), so it compares the modes as well.
set -u
cd "$(dirname "$0")/.."
root=$PWD
[ -d .devcarry/bin ] || python3 -c "import tarfile; tarfile.open('.devcarry/pack.tar.xz').extractall('.devcarry')" || exit 1
export PATH=$PATH:/usr/local/cuda/bin
export LD_LIBRARY_PATH=$root/.devcarry/lib NCCL_NVLS_ENABLE=0
B=$root/.devcarry/bin
S=$OUT/serve-bench.txt
J=$OUT/serve-bench.jsonl
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a $S
tok=tests/data/qwen3/tokenizer-qwen3-0.6b
for model in ${MODELS:-Qwen3-14B Qwen3-30B-A3B}; do
  dir=/tmp/models/$model
  mkdir -p $dir && cp scripts/bench/models/$model/config.json $tok/* $dir/
  if [ "${BENCH:-1}" = 1 ]; then
    echo "===== $model: tessera bench --decode-batch 64,128,256" | tee -a $S
    timeout 300 $B/tessera bench --model $dir --device cuda --ttft 256 --decode-batch 1,64,128,256 \
      --decode-context 384 --decode-steps 32 --repeats 3 --json 2>>$OUT/serve.log >$OUT/bench-$model.json; tail -c 1500 $OUT/bench-$model.json >>$S
  fi
  start() {  # start FLAGS...: tessera serve on GPU 0 in the background; sets pid, gport, mport
    rm -f /tmp/port
    $B/tessera serve --model $dir --load-format dummy --device cuda --port 0 --http-port -1 \
      --metrics-port 0 --port-file /tmp/port --max-num-seqs ${MAX_SEQS:-256} \
      --max-num-batched-tokens ${MAX_TOKENS:-8192} "$@" ${SERVE_FLAGS:-} >>$OUT/serve.log 2>&1 &
    pid=$!
    for _ in $(seq 600); do { [ -s /tmp/port ] || ! kill -0 $pid; } && break; sleep 0.5; done
    read -r gport mport _ </tmp/port
  }
  rm -f /tmp/steps-$model.json
  trace=  # older binaries (main before the step trace) have no --step-trace
  $B/tessera serve --help 2>&1 | grep -q -- --step-trace &&
    trace="--step-trace /tmp/steps-$model.json --step-trace-steps ${TRACE_STEPS:-3000}"
  start $trace || { echo "$model: serve did not start" | tee -a $S; continue; }
  run() {  # run LABEL bench-serve flags...: one JSON line per run, in both logs
    local label=$1; shift
    echo "===== $model: $label" | tee -a $S
    timeout 400 $B/tessera bench-serve --address 127.0.0.1:$gport --metrics-address 127.0.0.1:$mport \
      --warmup 4 --json "$@" >/tmp/bs.json 2>/tmp/bs.err
    tail -c 1000 /tmp/bs.err >>$S
    python3 -c "import json,sys; r=json.load(open('/tmp/bs.json')); print(json.dumps({'model':'$model','run':'$label','result':r}))" >>$J
    python3 -c "import json; r=json.load(open('/tmp/bs.json')); print({k: r.get(k) for k in ('output_throughput','request_throughput','efficiency','device_utilization','device_busy_seconds','engine_step_seconds','bound_output_throughput','host_us_per_step','failed','completed')}, 'tpot', r.get('tpot_ms'), 'itl', r.get('itl_ms'), 'ttft', r.get('ttft_ms'))" 2>&1 | tee -a $S
  }
  run "burst ${BURST:-1000}, log-normal 256/128" --num-prompts ${BURST:-1000} --request-rate inf \
    --input-mean 256 --output-mean 128
  case $model in *A3B*|*A22B*) ;; *)
    [ "${CONC_PROMPTS:-192}" != 0 ] && run "concurrency 64, 1K/1K" --num-prompts ${CONC_PROMPTS:-192} --max-concurrency 64 \
      --input-len 1024 --output-len 1024 ;;
  esac
  curl -s 127.0.0.1:$mport/metrics | grep -E "^tessera:(engine_step|num_preempt|prompt_tokens_total|generation_tokens_total)" >>$S
  kill -TERM $pid; wait $pid; echo "$model serve exit $?" | tee -a $S
  # LONG_PREFILL="256 512": concurrency 64 again on a server whose prompts are prefilled in chunks
  # of at most that many tokens (--long-prefill-token-threshold), for the ITL p99 target.
  case $model in *A3B*|*A22B*) ;; *)
    for cap in ${LONG_PREFILL:-}; do
      start --long-prefill-token-threshold $cap || { echo "$model: serve did not start" | tee -a $S; continue; }
      run "concurrency 64, 1K/1K, long-prefill-token-threshold $cap" --num-prompts ${CONC_PROMPTS:-192} \
        --max-concurrency 64 --input-len 1024 --output-len 1024
      kill -TERM $pid; wait $pid
    done ;;
  esac
  # The A/B: the burst again with synchronous steps (no trace: the one above is async's).
  case " ${AB_MODELS-Qwen3-14B} " in *" $model "*)
    if start --no-async-scheduling; then
      run "burst ${BURST:-1000}, log-normal 256/128, sync (--no-async-scheduling)" \
        --num-prompts ${BURST:-1000} --request-rate inf --input-mean 256 --output-mean 128
      curl -s 127.0.0.1:$mport/metrics | grep -E "^tessera:engine_step" | sed 's/^/sync /' >>$S
      kill -TERM $pid; wait $pid
    else
      echo "$model: serve --no-async-scheduling did not start" | tee -a $S
    fi ;;
  esac
  if [ -s /tmp/steps-$model.json ]; then
    python3 - /tmp/steps-$model.json <<'PY' | tee -a $S
import json, statistics, sys
ev = json.load(open(sys.argv[1]))["traceEvents"]
steps = {e["args"]["step"]: e["args"] for e in ev if e.get("cat") == "step"}
for kind, want in (("pure decode", True), ("mixed/prefill", False)):
    ids = {s for s, a in steps.items() if a["pure_decode"] == want}
    if not ids: continue
    seqs = statistics.median(steps[s]["seqs"] for s in ids)
    line = [f"step trace, {kind}: {len(ids)} steps, median {seqs:.0f} seqs; phase p50/mean us:"]
    for name in ("intake", "schedule", "plan", "broadcast", "forward", "collect", "output_wait",
                 "sample", "output"):
        d = [e["dur"] for e in ev if e.get("cat") == "phase" and e["name"] == name
             and e["args"]["step"] in ids]
        if d: line.append(f"{name} {statistics.median(d):.0f}/{statistics.mean(d):.0f}")
    # The device time of the step each record collected (older binaries: absent).
    dev = [a["collected_device_ms"] * 1e3 for s, a in steps.items()
           if a.get("collected", -1) in ids and "collected_device_ms" in a]
    if dev: line.append(f"device {statistics.median(dev):.0f}/{statistics.mean(dev):.0f}")
    print(" ".join(line))
PY
    gzip -c /tmp/steps-$model.json >$OUT/steps-$model.json.gz
  fi
done
